//! Fault injection: the ways a node can misbehave on purpose (`hearth node --fault KIND`).
//!
//! The swarm's security must never rest on peers running an unmodified binary, so the binary
//! itself can play the liar; tests and `hearth demo` use it to show each fault caught.

use std::fmt;
use std::str::FromStr;

/// The longest emulated delay (`delay=MS`): a minute, far past any real network.
pub const FAULT_DELAY_MS_MAX: u32 = 60_000;

/// How a node misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Plausible but wrong numbers, honestly signed: only replicas can tell.
    WrongOutput,
    /// A receipt whose signature does not verify.
    BadSignature,
    /// Answers a unit with the valid receipt and output of the unit before.
    Replay,
    /// Takes [`crate::FAULT_SLOW_DELAY`] longer per unit.
    Slow,
    /// Aborts the process after this many results are acknowledged.
    CrashAfter(u32),
    /// Floods the coordinator with requests for work, hundreds a second.
    Flood,
    /// Serves flipped bytes of the model files peers fetch from it (signed as what it sent).
    CorruptWeights,
    /// Not a lie: emulated distance. Everything the process sends to another peer waits this many
    /// milliseconds before it goes out (these machines' kernels have no `netem`).
    Delay(u32),
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wrong-output" => Ok(Self::WrongOutput),
            "bad-signature" => Ok(Self::BadSignature),
            "replay" => Ok(Self::Replay),
            "slow" => Ok(Self::Slow),
            "flood" => Ok(Self::Flood),
            "corrupt-weights" => Ok(Self::CorruptWeights),
            _ => match (
                s.strip_prefix("crash-after=").map(str::parse),
                s.strip_prefix("delay=").map(str::parse),
            ) {
                (Some(Ok(n)), _) if n > 0 => Ok(Self::CrashAfter(n)),
                (_, Some(Ok(ms))) if ms <= FAULT_DELAY_MS_MAX => Ok(Self::Delay(ms)),
                _ => Err(format!(
                    "unknown fault {s:?}: wrong-output, bad-signature, replay, slow, flood, corrupt-weights, crash-after=N (N ≥ 1), delay=MS (MS ≤ {FAULT_DELAY_MS_MAX})"
                )),
            },
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongOutput => f.write_str("wrong-output"),
            Self::BadSignature => f.write_str("bad-signature"),
            Self::Replay => f.write_str("replay"),
            Self::Slow => f.write_str("slow"),
            Self::Flood => f.write_str("flood"),
            Self::CorruptWeights => f.write_str("corrupt-weights"),
            Self::CrashAfter(n) => write!(f, "crash-after={n}"),
            Self::Delay(ms) => write!(f, "delay={ms}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for s in [
            "wrong-output",
            "bad-signature",
            "replay",
            "slow",
            "flood",
            "corrupt-weights",
            "crash-after=3",
            "delay=5",
            "delay=0",
        ] {
            assert_eq!(s.parse::<Fault>().expect(s).to_string(), s);
        }
        for bad in [
            "",
            "lie",
            "crash-after=0",
            "crash-after=x",
            "delay=-1",
            "delay=60001",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
