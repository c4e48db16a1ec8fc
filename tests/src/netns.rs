//! Named network namespaces (`ip netns`) that delete themselves.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{ip, run_checked, run_output};
use crate::process::Signal;

/// Every namespace made by [`Netns::new`] starts with this; [`crate::sweep_leftovers`] removes
/// whatever is left of them.
pub const TEST_NETNS_PREFIX: &str = "pt-";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace at `/run/netns/NAME`. Dropping it kills every process inside it and
/// deletes it, unless [`Netns::keep`] was called.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    delete_on_drop: bool,
}

impl Netns {
    /// A new namespace with a unique name: `pt-<pid>-<n>-<role>`.
    pub fn new(role: &str) -> Result<Netns> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEST_NETNS_PREFIX}{:x}-{n}-{role}", std::process::id());
        Netns::create(&name)
    }

    /// A new namespace with exactly this name (for the demo, where commands are copy-pasted).
    /// Fails if it already exists.
    pub fn named(name: &str) -> Result<Netns> {
        if Netns::exists(name) {
            bail!("network namespace {name:?} already exists (/run/netns/{name})");
        }
        Netns::create(name)
    }

    /// Takes ownership of an existing namespace: dropping the result deletes it.
    pub fn adopt(name: &str) -> Result<Netns> {
        if !Netns::exists(name) {
            bail!("network namespace {name:?} does not exist");
        }
        Ok(Netns::owning(name))
    }

    /// Whether `/run/netns/NAME` exists.
    pub fn exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }

    fn create(name: &str) -> Result<Netns> {
        ip(["netns", "add", name]).with_context(|| format!("cannot create netns {name}"))?;
        Ok(Netns::owning(name))
    }

    fn owning(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
            delete_on_drop: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `nsenter --net=/run/netns/NAME PROGRAM`: add arguments, then spawn or run it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace; fails (with its stderr) unless it exits 0.
    pub fn run<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = argv.into_iter();
        let program = argv.next().context("empty command line")?;
        run_checked(self.command(program).args(argv))
    }

    /// Runs `argv` inside the namespace and returns its output whatever its exit status.
    pub fn output<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = argv.into_iter();
        let program = argv.next().context("empty command line")?;
        run_output(self.command(program).args(argv))
    }

    /// `ip -n NAME ARGS...`, checked.
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run_checked(&mut cmd)
    }

    /// Links this namespace (its end named `link`) to `peer` (its end named `peer_link`) by a
    /// veth pair, gives each end its addresses (`/24` and `/64`, the IPv6 one without duplicate
    /// address detection) and brings both ends and both `lo` up.
    pub fn link_veth(
        &self,
        (link, ipv4, ipv6): (&str, Ipv4Addr, Ipv6Addr),
        peer: &Netns,
        (peer_link, peer_ipv4, peer_ipv6): (&str, Ipv4Addr, Ipv6Addr),
    ) -> Result<()> {
        self.ip([
            "link", "add", link, "type", "veth", "peer", "name", peer_link, "netns", &peer.name,
        ])?;
        for (ns, link, v4, v6) in [
            (self, link, ipv4, ipv6),
            (peer, peer_link, peer_ipv4, peer_ipv6),
        ] {
            ns.ip(["addr", "add", &format!("{v4}/24"), "dev", link])?;
            ns.ip(["addr", "add", &format!("{v6}/64"), "dev", link, "nodad"])?;
            ns.ip(["link", "set", link, "up"])?;
            ns.ip(["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let out = ip(["netns", "pids", &self.name])?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|pid| pid.parse().with_context(|| format!("bad pid {pid:?}")))
            .collect()
    }

    /// Leaves the namespace (and what runs in it) in place when this value is dropped.
    pub fn keep(mut self) -> String {
        self.disarm();
        self.name.clone()
    }

    pub(crate) fn disarm(&mut self) {
        self.delete_on_drop = false;
    }

    /// Kills every process inside the namespace and deletes it. Dropping does the same.
    pub fn delete(mut self) -> Result<()> {
        self.delete_on_drop = false;
        destroy(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.delete_on_drop {
            if let Err(e) = destroy(&self.name) {
                eprintln!("postern-testbed: {e:#}");
            }
        }
    }
}

/// Kills the processes in netns `name` and deletes it.
pub(crate) fn destroy(name: &str) -> Result<()> {
    for _ in 0..100 {
        let out = ip(["netns", "pids", name])?;
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = Signal::Kill.send(pid);
        }
        sleep(Duration::from_millis(20));
    }
    ip(["netns", "del", name]).with_context(|| format!("cannot delete netns {name}"))?;
    Ok(())
}
