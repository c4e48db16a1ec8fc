//! Signals, processes and host checks.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where bpffs must be mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The signals tests send to processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
    Hup,
    Usr1,
    Usr2,
    Stop,
    Cont,
}

impl Signal {
    pub fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }

    /// Sends this signal to `pid`.
    pub fn send(self, pid: u32) -> Result<()> {
        let pid_t = libc::pid_t::try_from(pid).with_context(|| format!("bad pid {pid}"))?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid_t, self.raw()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot send {self:?} to pid {pid}"));
        }
        Ok(())
    }
}

/// Whether a process with this pid exists (zombies count as gone).
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Stops a process that is not our child: SIGTERM, then SIGKILL if it is still there after
/// `grace`. Returns once it is gone (a process that is already gone is fine).
pub fn stop_process(pid: u32, grace: Duration) -> Result<()> {
    if !process_alive(pid) {
        return Ok(());
    }
    let _ = Signal::Term.send(pid);
    if wait_gone(pid, grace) {
        return Ok(());
    }
    let _ = Signal::Kill.send(pid);
    if wait_gone(pid, Duration::from_secs(5)) {
        return Ok(());
    }
    bail!("pid {pid} is still alive after SIGKILL")
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    !process_alive(pid)
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "this needs root (network namespaces, bpffs, bind mounts): run it as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

/// Whether a bpf filesystem is mounted at `dir`.
pub fn bpffs_mounted(dir: &Path) -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(&*dir.to_string_lossy()) && fstype == Some("bpf")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }
}
