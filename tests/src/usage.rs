//! What a process holds, read from `/proc`: resident memory and open file descriptors, now and
//! at their peak over a stretch of time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often [`PeakUsage`] samples.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// A process's resident memory and descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
}

impl Usage {
    /// `VmRSS` from `/proc/PID/status` and the entries of `/proc/PID/fd`.
    pub fn of(pid: u32) -> Result<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("cannot list /proc/{pid}/fd"))?
            .count() as u64;
        Ok(Usage { rss_kib, fds })
    }

    /// Each field's larger value.
    pub fn max(self, other: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }

    /// `12.3 MiB RSS, 45 fds`.
    pub fn describe(&self) -> String {
        format!(
            "{:.1} MiB RSS, {} fds",
            self.rss_kib as f64 / 1024.0,
            self.fds
        )
    }
}

/// Samples a process's [`Usage`] on a thread of its own until stopped; keeps the peak.
pub struct PeakUsage {
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<Usage>>,
}

impl PeakUsage {
    /// Starts sampling `pid` every 50 ms. A process that is gone stops the sampling.
    pub fn start(pid: u32) -> PeakUsage {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut peak = Usage::default();
            while !stopping.load(Ordering::Relaxed) {
                match Usage::of(pid) {
                    Ok(now) => peak = peak.max(now),
                    Err(_) => break,
                }
                std::thread::sleep(SAMPLE_INTERVAL);
            }
            peak
        });
        PeakUsage {
            stop,
            sampler: Some(sampler),
        }
    }

    /// Stops sampling and returns the peak seen.
    pub fn stop(mut self) -> Usage {
        self.finish()
    }

    fn finish(&mut self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler
            .take()
            .and_then(|sampler| sampler.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for PeakUsage {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_usage_is_read() {
        let usage = Usage::of(std::process::id()).unwrap();
        assert!(usage.rss_kib > 0 && usage.fds >= 3, "{usage:?}");
        let peak = PeakUsage::start(std::process::id());
        std::thread::sleep(Duration::from_millis(120));
        assert!(peak.stop().rss_kib > 0);
    }
}
