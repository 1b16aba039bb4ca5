//! What the host offers: CPU, memory, SIMD features, and GPUs where the build can see them.

use hearth_protocol::{Backend, KernelFamily};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Version of Hearth's kernels. It is part of every numeric class, so peers running different kernel
/// code never have their outputs compared bit for bit.
pub const KERNELS_VERSION: &str = "k1";

/// What names the bits of Hearth's CPU LLM kernels in place of the CPU: they quantize activations to
/// 8 bits per block of 32 and compute in f32 with a fixed order, the same on every instruction set.
pub const CPU_LLM_DTYPE: &str = "q8act-f32";

/// The host's hardware, read once at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Hardware {
    /// CPU brand string, for example `AMD EPYC 9B14`.
    pub cpu_model: String,
    /// Logical cores this process may use (respects affinity and cgroup limits).
    pub cpu_cores: u32,
    /// SIMD features the kernels care about, as the Rust `target_feature` names them.
    pub cpu_features: Vec<String>,
    /// Host RAM, bytes.
    pub memory_total_bytes: u64,
    /// Host RAM available to new work, bytes.
    pub memory_free_bytes: u64,
    /// `linux`, `macos`, `windows`, …
    pub os: String,
    /// `x86_64`, `aarch64`, …
    pub arch: String,
    /// GPUs found through the backends this build has (`cuda`, `metal` features).
    pub gpus: Vec<Device>,
}

/// A device a node can compute on.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Which backend drives it.
    pub backend: Backend,
    /// Its name.
    pub name: String,
    /// Its memory, bytes.
    pub memory_total_bytes: u64,
    /// Of which free, bytes.
    pub memory_free_bytes: u64,
}

impl Hardware {
    /// Read the host's hardware. Never fails: what cannot be read is reported empty or zero, and GPU
    /// probing problems are logged and leave the CPU as the device.
    pub fn detect() -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .inspect_err(|error| tracing::warn!(%error, "cannot read CPU and memory details"))
        .ok();
        let cpu_model = system
            .as_ref()
            .and_then(|s| s.cpus().first().map(|cpu| cpu.brand().trim().to_string()))
            .filter(|brand| !brand.is_empty())
            .unwrap_or_else(|| "unknown CPU".to_string());
        let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            cpu_model,
            cpu_cores,
            cpu_features: cpu_features(),
            memory_total_bytes: system.as_ref().map_or(0, System::total_memory),
            memory_free_bytes: system.as_ref().map_or(0, System::available_memory),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            gpus: gpus(),
        }
    }

    /// Host RAM available to new work now, bytes; `None` where it cannot be read.
    pub fn available_memory_bytes() -> Option<u64> {
        System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .ok()
        .map(|system| system.available_memory())
    }

    /// The device a node computes on: the first GPU if the build found one, else the CPU.
    pub fn primary_device(&self) -> Device {
        self.gpus.first().cloned().unwrap_or_else(|| Device {
            backend: Backend::Cpu,
            name: self.cpu_model.clone(),
            memory_total_bytes: self.memory_total_bytes,
            memory_free_bytes: self.memory_free_bytes,
        })
    }

    /// The widest SIMD tier the CPU kernels dispatch to on this host.
    pub fn simd_tier(&self) -> &'static str {
        let has = |f: &str| self.cpu_features.iter().any(|x| x == f);
        if has("avx512f") && has("avx512bw") {
            "avx512"
        } else if has("avx2") && has("fma") {
            "avx2"
        } else if has("neon") {
            "neon"
        } else {
            "scalar"
        }
    }
}

/// Cores free for work now: those this process may use, less the host's one-minute load average
/// (rounded), at least 1. BOINC's reading of "spare": what the owner is not using.
pub fn free_cores() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let busy = System::load_average()
        .map_or(0.0, |load| load.one)
        .round()
        .max(0.0) as u32;
    cores.saturating_sub(busy).clamp(1, cores)
}

/// The device models run on: the first CUDA GPU in a `cuda` build, the Apple GPU in a `metal` build,
/// the CPU otherwise or when no such GPU answers.
pub fn compute_device() -> candle_core::Device {
    let gpu = if cfg!(feature = "cuda") {
        candle_core::Device::cuda_if_available(0)
    } else if cfg!(feature = "metal") {
        candle_core::Device::metal_if_available(0)
    } else {
        Ok(candle_core::Device::Cpu)
    };
    gpu.unwrap_or_else(|error| {
        tracing::warn!(%error, "GPU unavailable; computing on the CPU");
        candle_core::Device::Cpu
    })
}

/// The LLM class of Hearth's own CPU kernels: every CPU peer's, and the only class whose stages
/// promise the same bits however a window is batched (so replays of it are compared exactly).
pub fn batch_invariant_llm_class() -> String {
    format!("{KERNELS_VERSION}/llm/cpu/{CPU_LLM_DTYPE}")
}

/// Suffix a node adds to its LLM class in the receipts of a stage that runs on candle instead of
/// its kernels (a model they do not run): its bits are not the class's own.
pub const CANDLE_STAGE_SUFFIX: &str = "+candle";

/// The numeric class of `family` kernels on `device` of this host: kernel version, backend, and what
/// decides the bits. Two peers with the same class are expected to produce identical bits. On the CPU
/// the LLM kernels are Hearth's own, identical on every instruction set, so their class names only
/// the kernel version and dtype and every CPU peer compares with every other; the embedder still runs
/// on candle, whose AVX2 and AVX-512 paths differ, so its class names the architecture and SIMD tier.
/// On a GPU the class names the device.
pub fn numeric_class(family: KernelFamily, hardware: &Hardware, device: &Device) -> String {
    let family = match family {
        KernelFamily::Llm => "llm",
        KernelFamily::Embed => "embed",
    };
    let path = match device.backend {
        Backend::Cpu if family == "llm" => CPU_LLM_DTYPE.to_string(),
        Backend::Cpu => format!("{}-{}", hardware.arch, hardware.simd_tier()),
        Backend::Cuda | Backend::Metal => device.name.to_lowercase().replace(' ', "-"),
    };
    format!(
        "{KERNELS_VERSION}/{family}/{}/{path}",
        device.backend.as_str()
    )
}

fn cpu_features() -> Vec<String> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) {
                    found.push($name.to_string());
                }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($name) {
                    found.push($name.to_string());
                }
            )*};
        }
        probe!("neon", "dotprod", "i8mm", "fp16", "sve");
    }
    found
}

#[allow(clippy::vec_init_then_push, unused_mut)] // each backend adds its devices only where built in
fn gpus() -> Vec<Device> {
    let mut gpus = Vec::new();
    #[cfg(feature = "cuda")]
    gpus.extend(cuda_devices());
    #[cfg(all(feature = "metal", target_os = "macos"))]
    gpus.extend(metal_device());
    #[cfg(all(feature = "metal", not(target_os = "macos")))]
    tracing::warn!("built with the metal feature, which only finds devices on macOS");
    gpus
}

#[cfg(feature = "cuda")]
fn cuda_devices() -> Vec<Device> {
    use nvml_wrapper::Nvml;

    let probe = || -> Result<Vec<Device>, nvml_wrapper::error::NvmlError> {
        let nvml = Nvml::init()?;
        let mut devices = Vec::new();
        for index in 0..nvml.device_count()? {
            let device = nvml.device_by_index(index)?;
            let memory = device.memory_info()?;
            devices.push(Device {
                backend: Backend::Cuda,
                name: device.name()?,
                memory_total_bytes: memory.total,
                memory_free_bytes: memory.free,
            });
        }
        Ok(devices)
    };
    probe().unwrap_or_else(|error| {
        tracing::warn!(%error, "built with cuda but no NVIDIA device could be read; computing on the CPU");
        Vec::new()
    })
}

#[cfg(all(feature = "metal", target_os = "macos"))]
fn metal_device() -> Option<Device> {
    let device = metal::Device::system_default()?;
    let total = device.recommended_max_working_set_size();
    Some(Device {
        backend: Backend::Metal,
        name: device.name().to_string(),
        memory_total_bytes: total,
        memory_free_bytes: total.saturating_sub(device.current_allocated_size()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_this_host() {
        let hw = Hardware::detect();
        assert!(hw.cpu_cores >= 1);
        assert!(hw.memory_total_bytes > 0 && hw.memory_free_bytes <= hw.memory_total_bytes);
        assert_eq!(hw.arch, std::env::consts::ARCH);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            hw.cpu_features.iter().any(|f| f == "avx2"),
            std::arch::is_x86_feature_detected!("avx2")
        );
    }

    #[test]
    fn class_names_the_code_path() {
        let mut hw = Hardware::detect();
        hw.gpus.clear();
        hw.arch = "x86_64".into();
        hw.cpu_features = vec!["avx2".into(), "fma".into()];
        let cpu = hw.primary_device();
        assert_eq!(cpu.backend, Backend::Cpu);
        assert_eq!(
            numeric_class(KernelFamily::Llm, &hw, &cpu),
            "k1/llm/cpu/q8act-f32"
        );
        assert_eq!(
            numeric_class(KernelFamily::Embed, &hw, &cpu),
            "k1/embed/cpu/x86_64-avx2"
        );
        hw.cpu_features
            .extend(["avx512f".into(), "avx512bw".into()]);
        assert_eq!(
            numeric_class(KernelFamily::Llm, &hw, &cpu),
            "k1/llm/cpu/q8act-f32",
            "the LLM class does not depend on the SIMD tier"
        );
        assert_eq!(
            numeric_class(KernelFamily::Embed, &hw, &cpu),
            "k1/embed/cpu/x86_64-avx512"
        );
        let gpu = Device {
            backend: Backend::Cuda,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_bytes: 1,
            memory_free_bytes: 1,
        };
        assert_eq!(
            numeric_class(KernelFamily::Llm, &hw, &gpu),
            "k1/llm/cuda/nvidia-h100-80gb-hbm3"
        );
    }
}
