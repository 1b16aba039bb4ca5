//! Which instruction set the matrix products run on.
//!
//! Every path computes the same bits (see [`crate::dot`]); the choice only changes speed. The best
//! path the CPU has is taken unless `HEARTH_KERNEL_PATH` forces one, so tests can compare paths on
//! one machine.

use std::fmt;
use std::str::FromStr;

/// The environment variable that forces a path.
pub const KERNEL_PATH_ENV: &str = "HEARTH_KERNEL_PATH";

/// A code path for the quantized products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 with AVX2 and F16C (256-bit integer products).
    Avx2,
    /// x86-64 with AVX-512 F and BW (two rows per 512-bit register; VNNI used where present).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl KernelPath {
    /// Every path, in order of preference from the slowest.
    pub const ALL: [KernelPath; 4] = [Self::Scalar, Self::Avx2, Self::Avx512, Self::Neon];

    /// Its name, as `HEARTH_KERNEL_PATH` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            Self::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run.
    pub fn available() -> Vec<KernelPath> {
        Self::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The fastest path this CPU has.
    pub fn best() -> KernelPath {
        Self::available()
            .pop()
            .expect("the scalar path is always available")
    }

    /// `HEARTH_KERNEL_PATH` if set (an error when unknown or unsupported here), else [`Self::best`].
    pub fn from_env() -> Result<KernelPath, String> {
        match std::env::var(KERNEL_PATH_ENV) {
            Ok(name) if !name.is_empty() => {
                let path: KernelPath = name.parse()?;
                if path.supported() {
                    Ok(path)
                } else {
                    Err(format!(
                        "{KERNEL_PATH_ENV}={name}: this CPU lacks it (available: {})",
                        names(&Self::available())
                    ))
                }
            }
            _ => Ok(Self::best()),
        }
    }
}

fn names(paths: &[KernelPath]) -> String {
    paths
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KernelPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{KERNEL_PATH_ENV}={s}: unknown path (one of {})",
                    names(&Self::ALL)
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_scalar_is_everywhere() {
        for p in KernelPath::ALL {
            assert_eq!(p.as_str().parse::<KernelPath>(), Ok(p));
        }
        assert!("sse9".parse::<KernelPath>().is_err());
        assert!(KernelPath::available().contains(&KernelPath::Scalar));
        assert!(KernelPath::best().supported());
    }
}
