//! `--idle-only`: take work only while the host's owner is not using it, as BOINC does.
//!
//! Every second the governor reads how much CPU the whole machine spent (`/proc/stat`) less what this
//! process spent (`/proc/self/stat`): the owner's own load. Above [`BUSY_ABOVE`] of the machine, over
//! the last [`WINDOW`], the node pauses (asks for no new work; a unit running finishes); once the
//! owner's load has stayed below [`IDLE_BELOW`] for [`CALM`], it resumes. Where `/proc` cannot be
//! read (not Linux), it says so once and never pauses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The owner's share of the machine's CPU above which the node pauses.
pub(crate) const BUSY_ABOVE: f64 = 0.25;
/// The share below which a paused node may resume.
pub(crate) const IDLE_BELOW: f64 = 0.15;
/// Samples averaged for pausing.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);
/// How long the owner's load must stay low before resuming.
pub(crate) const CALM: Duration = Duration::from_secs(3);
/// How often the load is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// CPU time counters, in clock ticks.
#[derive(Clone, Copy, Debug)]
struct Counters {
    total: u64,
    idle: u64,
    own: u64,
}

fn read_counters() -> Option<Counters> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal …; idle time is idle + iowait.
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing bracket):
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after it.
    let after = own_stat.rsplit_once(')')?.1;
    let rest: Vec<&str> = after.split_whitespace().collect();
    let own = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(Counters { total, idle, own })
}

/// Whether the node may take work now.
#[derive(Debug)]
pub(crate) struct Governor {
    enabled: bool,
    last: Option<(Instant, Counters)>,
    /// The owner's share of the machine per sample, newest last.
    samples: VecDeque<(Instant, f64)>,
    paused: bool,
    warned: bool,
}

impl Governor {
    /// A governor that pauses the node when `idle_only`.
    pub(crate) fn new(idle_only: bool) -> Self {
        Self {
            enabled: idle_only,
            last: None,
            samples: VecDeque::new(),
            paused: false,
            warned: false,
        }
    }

    /// Sample the load if it is time; returns the new state when it changed.
    pub(crate) fn tick(&mut self) -> Option<bool> {
        if !self.enabled {
            return None;
        }
        let now = Instant::now();
        if self.last.is_some_and(|(at, _)| now - at < SAMPLE_EVERY) {
            return None;
        }
        let Some(counters) = read_counters() else {
            if !self.warned {
                tracing::warn!("--idle-only: cannot read the host's CPU load here; never pausing");
                self.warned = true;
            }
            return None;
        };
        if let Some((_, before)) = self.last {
            let total = counters.total.saturating_sub(before.total);
            if total > 0 {
                let busy = total.saturating_sub(counters.idle.saturating_sub(before.idle));
                let others = busy.saturating_sub(counters.own.saturating_sub(before.own));
                self.samples.push_back((now, others as f64 / total as f64));
            }
        }
        self.last = Some((now, counters));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now - *at > CALM.max(WINDOW))
        {
            self.samples.pop_front();
        }
        let recent: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| now - *at <= WINDOW)
            .map(|(_, s)| *s)
            .collect();
        let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
        let calm = self.samples.len() >= CALM.as_secs() as usize
            && self.samples.iter().all(|(_, s)| *s < IDLE_BELOW);
        if !self.paused && !recent.is_empty() && mean > BUSY_ABOVE {
            self.paused = true;
            tracing::info!(
                owner_load = format!("{:.0}%", mean * 100.0),
                "pausing: the host is busy with its owner's work"
            );
            return Some(true);
        }
        if self.paused && calm {
            self.paused = false;
            tracing::info!("resuming: the host is idle again");
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_on_linux() {
        if cfg!(target_os = "linux") {
            let c = read_counters().expect("/proc/stat and /proc/self/stat");
            assert!(c.total > 0 && c.idle <= c.total);
        }
    }

    #[test]
    fn disabled_never_pauses() {
        let mut g = Governor::new(false);
        for _ in 0..3 {
            assert_eq!(g.tick(), None);
        }
    }
}
