//! The kernel side, from userspace: loads the `sk_lookup` program, fills its maps, attaches it
//! to a workload network namespace and pins the attachment in bpffs.
//!
//! The attachment is pinned so that it outlives postern: if postern dies, its listeners close,
//! their SOCKMAP entries vanish, and the still-attached program drops every connection to an
//! intercepted port (the client sees a reset) instead of letting it reach the app in clear.
//! A clean shutdown unpins it, which detaches it.
//!
//! Layout in bpffs: `<root>/netns-<inode>/link`, one directory per network namespace.

use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, MapData, PerCpuArray, PerCpuValues, SockMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::SkLookup;
use aya::Ebpf;
use postern_common::{
    Rule, RuleCounters, RuleKey, ANY_PORT, MAX_RULES, RULE_FLAG_INTERCEPT_LOOPBACK,
    RULE_PORT_PREFIX_LEN, V4_MAPPED_PREFIX_LEN,
};

use crate::netns::Netns;

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/postern-ebpf"));

const PROGRAM: &str = "steer_to_postern";
/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("{path} is not on a bpf file system; mount one with `mount -t bpf bpf /sys/fs/bpf` (postern pins its kernel state there so that ports stay closed if it dies)")]
    NotBpffs { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("network namespace {netns}: {what}: {source}")]
    Ebpf {
        netns: String,
        what: &'static str,
        source: BoxError,
    },
    #[error("network namespace {netns}: {count} rules exceed the limit of {MAX_RULES}")]
    TooManyRules { netns: String, count: usize },
    #[error("this kernel ({release}) lacks {feature}, which postern's kernel side needs; refusing to start rather than leave ports unprotected")]
    KernelLacks {
        release: String,
        feature: &'static str,
    },
}

/// Probes the running kernel for everything the kernel side uses, before anything is loaded,
/// so that an old kernel is named with what it lacks instead of failing somewhere later. A
/// probe that cannot decide is logged and skipped: loading then reports the real error.
pub fn check_kernel() -> Result<(), RedirectError> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown release".to_string());
    for (feature, probe) in kernel_needs() {
        match probe() {
            Ok(true) => {}
            Ok(false) => return Err(RedirectError::KernelLacks { release, feature }),
            Err(e) => tracing::warn!(%release, feature, error = %e, "cannot probe the kernel"),
        }
    }
    tracing::debug!(%release, "kernel has everything postern needs");
    Ok(())
}

type Probe = Box<dyn Fn() -> Result<bool, String>>;

/// Each kernel feature the kernel side uses, with its probe.
fn kernel_needs() -> [(&'static str, Probe); 5] {
    use aya::maps::MapType;
    use aya::programs::ProgramType;
    use aya::sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper};

    [
        (
            "sk_lookup programs (BPF_PROG_TYPE_SK_LOOKUP, Linux 5.9)",
            Box::new(|| is_program_supported(ProgramType::SkLookup).map_err(|e| e.to_string())),
        ),
        (
            "bpf_sk_assign in sk_lookup programs (Linux 5.9)",
            Box::new(|| {
                is_helper_supported(ProgramType::SkLookup, BpfHelper::BPF_FUNC_sk_assign)
                    .map_err(|e| e.to_string())
            }),
        ),
        (
            "SOCKMAP maps (Linux 4.14)",
            Box::new(|| is_map_supported(MapType::SockMap).map_err(|e| e.to_string())),
        ),
        (
            "LPM trie maps (Linux 4.11)",
            Box::new(|| is_map_supported(MapType::LpmTrie).map_err(|e| e.to_string())),
        ),
        (
            "per-CPU array maps (Linux 4.6)",
            Box::new(|| is_map_supported(MapType::PerCpuArray).map_err(|e| e.to_string())),
        ),
    ]
}

/// Which connections one rule covers, and the listener that receives them.
#[derive(Debug)]
pub struct SteeringRule<'a> {
    /// A port, or `None` for every port that has no rule of its own.
    pub port: Option<u16>,
    /// Only connections to this destination address; `None` for every address.
    pub destination: Option<IpAddr>,
    /// Steer connections from loopback sources too (explicit ports); the catch-all rule leaves
    /// a workload's own loopback traffic alone, as Istio does.
    pub intercept_loopback: bool,
    pub listener: &'a tokio::net::TcpListener,
}

/// Steered and dropped connections of one rule, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub steered: u64,
    pub dropped: u64,
}

/// The `sk_lookup` program attached to one network namespace.
pub struct Steering {
    netns: String,
    dir: PathBuf,
    link: PinnedLink,
    counters: PerCpuArray<MapData, RuleCounters>,
    /// Keeps the program and maps loaded for as long as this value lives.
    _ebpf: Ebpf,
}

impl Steering {
    /// Loads the program, installs `rules`, attaches it to `netns` and pins the attachment
    /// under `root`. Rules and listeners are in the maps before the program is attached, so
    /// there is no moment where an intercepted port is served by nothing.
    ///
    /// A pinned attachment left by a postern that died is replaced: the new one is attached
    /// first, then the old one is detached, so the namespace is never unprotected.
    pub fn attach(
        netns: &Netns,
        root: &Path,
        rules: &[SteeringRule<'_>],
    ) -> Result<Steering, RedirectError> {
        let name = netns.reference().to_string();
        let ebpf_error = |what: &'static str| {
            let netns = name.clone();
            move |source: BoxError| RedirectError::Ebpf {
                netns,
                what,
                source,
            }
        };
        if rules.len() > MAX_RULES as usize {
            return Err(RedirectError::TooManyRules {
                netns: name,
                count: rules.len(),
            });
        }
        let dir = prepare_pin_dir(root, netns.inode())?;
        let link_path = dir.join("link");
        let stale = adopt_stale_link(&link_path)?;

        let (mut ebpf, counters) =
            load_with_rules(rules).map_err(ebpf_error("loading the sk_lookup program"))?;
        let netns_fd = netns.fd().map_err(|source| RedirectError::Io {
            what: "cannot open network namespace",
            path: PathBuf::from(&name),
            source,
        })?;
        let link = attach_and_pin(&mut ebpf, &netns_fd, &link_path)
            .map_err(ebpf_error("attaching sk_lookup"))?;
        // Only now, with the new program attached, let the old one go.
        drop(stale);
        Ok(Steering {
            netns: name,
            dir,
            link,
            counters,
            _ebpf: ebpf,
        })
    }

    /// The network namespace, as configured.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Where the attachment is pinned.
    pub fn pin(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// The counters of rule `index` (the position in the `rules` given to `attach`).
    pub fn counters(&self, index: usize) -> io::Result<Counters> {
        let values: PerCpuValues<RuleCounters> = self
            .counters
            .get(&(index as u32), 0)
            .map_err(io::Error::other)?;
        Ok(values.iter().fold(Counters::default(), |sum, c| Counters {
            steered: sum.steered + c.steered,
            dropped: sum.dropped + c.dropped,
        }))
    }

    /// Unpins and detaches the program: the namespace's ports are no longer intercepted.
    pub fn detach(self) -> Result<(), RedirectError> {
        let Steering {
            netns, dir, link, ..
        } = self;
        let fd_link = link.unpin().map_err(|source| RedirectError::Io {
            what: "cannot unpin",
            path: dir.join("link"),
            source,
        })?;
        drop(fd_link);
        fs::remove_dir(&dir).map_err(|source| RedirectError::Io {
            what: "cannot remove",
            path: dir.clone(),
            source,
        })?;
        tracing::debug!(%netns, "detached sk_lookup");
        Ok(())
    }
}

/// Creates `<root>/netns-<inode>` on bpffs.
fn prepare_pin_dir(root: &Path, inode: u64) -> Result<PathBuf, RedirectError> {
    let parent = root.parent().unwrap_or(root);
    let stat = nix::sys::statfs::statfs(parent).map_err(|e| RedirectError::Io {
        what: "cannot stat",
        path: parent.to_path_buf(),
        source: e.into(),
    })?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(RedirectError::NotBpffs {
            path: parent.to_path_buf(),
        });
    }
    let dir = root.join(format!("netns-{inode}"));
    fs::create_dir_all(&dir).map_err(|source| RedirectError::Io {
        what: "cannot create",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Takes over a link pinned by an earlier postern (which died without cleaning up): unpins it
/// so the new one can be pinned at the same path, and keeps it attached until dropped.
fn adopt_stale_link(path: &Path) -> Result<Option<FdLink>, RedirectError> {
    if !path.exists() {
        return Ok(None);
    }
    let pinned = PinnedLink::from_pin(path).map_err(|e| RedirectError::Io {
        what: "cannot open stale pinned link",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let link = pinned.unpin().map_err(|source| RedirectError::Io {
        what: "cannot unpin stale link",
        path: path.to_path_buf(),
        source,
    })?;
    tracing::warn!(path = %path.display(), "replacing the sk_lookup attachment of a postern that did not shut down cleanly");
    Ok(Some(link))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Loads the eBPF object and fills its maps: listeners first, then the rules that point at
/// them.
fn load_with_rules(
    rules: &[SteeringRule<'_>],
) -> Result<(Ebpf, PerCpuArray<MapData, RuleCounters>), BoxError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let mut listeners: SockMap<_> = ebpf
        .map_mut("LISTENERS")
        .ok_or("no LISTENERS map in the eBPF object")?
        .try_into()?;
    for (index, rule) in rules.iter().enumerate() {
        listeners.set(index as u32, &rule.listener.as_raw_fd(), 0)?;
    }
    let mut table: LpmTrie<_, RuleKey, Rule> = ebpf
        .map_mut("RULES")
        .ok_or("no RULES map in the eBPF object")?
        .try_into()?;
    for (index, rule) in rules.iter().enumerate() {
        let (prefix_len, addr) = destination_prefix(rule.destination);
        let key = Key::new(
            prefix_len,
            RuleKey::new(rule.port.unwrap_or(ANY_PORT), addr),
        );
        let value = Rule {
            listener: index as u32,
            counter: index as u32,
            flags: if rule.intercept_loopback {
                RULE_FLAG_INTERCEPT_LOOPBACK
            } else {
                0
            },
            pad: 0,
        };
        table.insert(&key, value, 0)?;
    }
    let counters = ebpf
        .take_map("COUNTERS")
        .ok_or("no COUNTERS map in the eBPF object")?
        .try_into()?;
    Ok((ebpf, counters))
}

fn attach_and_pin(
    ebpf: &mut Ebpf,
    netns_fd: &File,
    link_path: &Path,
) -> Result<PinnedLink, BoxError> {
    let program: &mut SkLookup = ebpf
        .program_mut(PROGRAM)
        .ok_or("no sk_lookup program in the eBPF object")?
        .try_into()?;
    program.load()?;
    let link_id = program.attach(netns_fd)?;
    let link: FdLink = program.take_link(link_id)?.into();
    Ok(link.pin(link_path)?)
}

/// The LPM prefix length and address bytes for a rule's destination.
fn destination_prefix(destination: Option<IpAddr>) -> (u32, [u8; 16]) {
    match destination {
        None => (RULE_PORT_PREFIX_LEN, [0; 16]),
        Some(IpAddr::V4(v4)) => (
            RULE_PORT_PREFIX_LEN + V4_MAPPED_PREFIX_LEN + 32,
            v4.to_ipv6_mapped().octets(),
        ),
        Some(IpAddr::V6(v6)) => (RULE_PORT_PREFIX_LEN + 128, v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Every probe must answer yes on the kernels postern runs on (the host's, and vm-test's
    /// guests); a broken probe would refuse a good kernel.
    #[test]
    fn this_kernel_has_what_postern_needs() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "probing needs root"
        );
        check_kernel().unwrap();
    }

    #[test]
    fn a_missing_feature_is_named_with_the_kernel() {
        let error = RedirectError::KernelLacks {
            release: "4.19.0-27-amd64".into(),
            feature: "sk_lookup programs (BPF_PROG_TYPE_SK_LOOKUP, Linux 5.9)",
        }
        .to_string();
        assert!(
            error.contains("4.19.0-27-amd64")
                && error.contains("sk_lookup")
                && error.contains("refusing"),
            "{error}"
        );
    }

    #[test]
    fn prefixes_cover_port_then_address() {
        assert_eq!(destination_prefix(None), (32, [0; 16]));
        let (len, addr) = destination_prefix(Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        assert_eq!(len, 160);
        assert_eq!(&addr[10..], &[0xff, 0xff, 198, 18, 0, 2]);
        let (len, addr) = destination_prefix(Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(len, 160);
        assert_eq!(addr[15], 1);
    }
}
