//! The kernel side, from userspace: loads the `sk_lookup` program, fills its maps, attaches it
//! to a workload network namespace and pins the attachment in bpffs.
//!
//! The attachment is pinned so that it outlives postern: if postern dies, its listeners close,
//! their SOCKMAP entries vanish, and the still-attached program drops every connection to an
//! intercepted port (the client sees a reset) instead of letting it reach the app in clear.
//! A clean shutdown unpins it, which detaches it. The maps are pinned too, so that the next
//! postern (after a handover, or a crash) adopts them and switches each rule to its own
//! listeners in place, with no moment where the namespace has no program.
//!
//! Layout in bpffs: `<root>/netns-<inode>/{link,rules,listeners,counters}`, one directory per
//! network namespace.

use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, SockMap};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{ProgramError, SkLookup};
use aya::Ebpf;
use postern_common::{
    Rule, RuleCounters, RuleKey, ANY_PORT, MAX_RULES, RULE_FLAG_INTERCEPT_LOOPBACK,
    RULE_PORT_PREFIX_LEN, V4_MAPPED_PREFIX_LEN,
};

use crate::netns::Netns;

/// The eBPF object built by `build.rs`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/postern-ebpf"));

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
fn kernel_needs() -> [(&'static str, Probe); 9] {
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
        // Outbound capture, for mesh workloads with a cgroup.
        (
            "cgroup sock_addr programs (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, Linux 4.17)",
            Box::new(|| {
                is_program_supported(ProgramType::CgroupSockAddr).map_err(|e| e.to_string())
            }),
        ),
        (
            "sock_ops programs (BPF_PROG_TYPE_SOCK_OPS, Linux 4.13)",
            Box::new(|| is_program_supported(ProgramType::SockOps).map_err(|e| e.to_string())),
        ),
        (
            "bpf_get_socket_cookie in sock_ops programs (Linux 4.19)",
            Box::new(|| {
                is_helper_supported(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_socket_cookie)
                    .map_err(|e| e.to_string())
            }),
        ),
        (
            "LRU hash maps (Linux 4.10)",
            Box::new(|| is_map_supported(MapType::LruHash).map_err(|e| e.to_string())),
        ),
    ]
}

/// Which connections one rule covers, and the listener that receives them.
#[derive(Debug)]
pub struct SteeringRule<'a> {
    /// The listener's label (`namespace/name:port`): a rule whose key and label are unchanged
    /// across [`Steering::install`] calls keeps its slot and its counters.
    pub label: &'a str,
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

/// The maps of one namespace's program, pinned next to its link.
struct Maps {
    rules: LpmTrie<MapData, RuleKey, Rule>,
    listeners: SockMap<MapData>,
    counters: PerCpuArray<MapData, RuleCounters>,
}

/// File names of the pinned maps, in `<root>/netns-<inode>/`.
const MAP_PINS: [&str; 3] = ["rules", "listeners", "counters"];

/// One rule in the kernel's table: its key, the label of its listener (empty for rules found
/// pinned, whose listener is unknown), and the slot of its listener and counters.
#[derive(Clone, PartialEq, Eq)]
struct Installed {
    key: (u32, RuleKey),
    label: String,
    slot: u32,
}

/// One namespace's rules: the maps, and what is in them.
struct Table {
    netns: String,
    maps: Maps,
    /// The rules in the kernel, in the order of the last `install`.
    installed: Vec<Installed>,
}

/// The `sk_lookup` program attached to one network namespace.
pub struct Steering {
    inode: u64,
    dir: PathBuf,
    link: PinnedLink,
    table: Table,
    /// Keeps the program loaded by this process (none when adopted) for as long as this lives.
    ebpf: Option<Ebpf>,
}

impl Steering {
    /// Serves `rules` in `netns` and pins the kernel state under `root`.
    ///
    /// State pinned by an earlier postern (one that handed over, or died) is adopted: the
    /// attached program stays, the listeners go into free slots, then each rule is switched
    /// over to them, then the rules and slots left over are removed. A lookup sees either the
    /// old rule or the new one, never none, so there is no gap; while a slot is empty (its
    /// postern died) the program drops, so ports fail closed until then.
    ///
    /// Otherwise the program is loaded and its maps filled before it is attached, so there is no
    /// moment where an intercepted port is served by nothing. A pinned link without pinned maps
    /// (an older layout) is replaced: the new program is attached first, then the old one
    /// detached; when both are attached, a drop from either wins.
    pub fn attach(
        netns: &Netns,
        root: &Path,
        rules: &[SteeringRule<'_>],
    ) -> Result<Steering, RedirectError> {
        let name = netns.reference().to_string();
        let dir = prepare_pin_dir(root, &format!("netns-{}", netns.inode()))?;
        let link_path = dir.join("link");
        match adopt(&dir) {
            Ok(Some((link, maps, installed))) => {
                let mut table = Table {
                    netns: name,
                    maps,
                    installed,
                };
                table.install(rules)?;
                tracing::info!(netns = %table.netns, pin = %link_path.display(), "adopted the pinned sk_lookup program and maps");
                return Ok(Steering {
                    inode: netns.inode(),
                    dir,
                    link,
                    table,
                    ebpf: None,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(netns = %name, error = %e, "cannot adopt the pinned state; replacing it")
            }
        }
        let ebpf_error = |what: &'static str| {
            let netns = name.clone();
            move |source: BoxError| RedirectError::Ebpf {
                netns,
                what,
                source,
            }
        };
        let stale = adopt_stale_link(&link_path)?;
        remove_pins(&dir, &MAP_PINS)?;
        let netns_fd = netns.fd().map_err(|source| RedirectError::Io {
            what: "cannot open network namespace",
            path: PathBuf::from(&name),
            source,
        })?;
        let loaded = load(&dir).map_err(ebpf_error("loading the sk_lookup program"));
        let attached = loaded.and_then(|(mut ebpf, maps)| {
            let mut table = Table {
                netns: name.clone(),
                maps,
                installed: Vec::new(),
            };
            table.install(rules)?;
            let link = attach_and_pin(&mut ebpf, &netns_fd, &link_path)
                .map_err(ebpf_error("attaching sk_lookup"))?;
            Ok((ebpf, table, link))
        });
        let (ebpf, table, link) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                remove_pins(&dir, &MAP_PINS)?;
                return Err(e);
            }
        };
        // Only now, with the new program attached, let the old one go.
        drop(stale);
        Ok(Steering {
            inode: netns.inode(),
            dir,
            link,
            table,
            ebpf: Some(ebpf),
        })
    }

    /// Makes `rules` the namespace's rules; see [`Table::install`].
    pub fn install(&mut self, rules: &[SteeringRule<'_>]) -> Result<(), RedirectError> {
        self.table.install(rules)
    }

    /// The network namespace, as configured.
    pub fn netns(&self) -> &str {
        &self.table.netns
    }

    /// The network namespace's inode.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether this process found the program attached (pinned by an earlier postern) rather
    /// than attaching it.
    pub fn adopted(&self) -> bool {
        self.ebpf.is_none()
    }

    /// Where the attachment is pinned.
    pub fn pin(&self) -> PathBuf {
        self.dir.join("link")
    }

    /// The counters of rule `index` (the position in the `rules` given to the last `install`).
    pub fn counters(&self, index: usize) -> io::Result<Counters> {
        let slot = self
            .table
            .installed
            .get(index)
            .ok_or_else(|| io::Error::other(format!("no rule {index}")))?
            .slot;
        let values: PerCpuValues<RuleCounters> = self
            .table
            .maps
            .counters
            .get(&slot, 0)
            .map_err(io::Error::other)?;
        Ok(values.iter().fold(Counters::default(), |sum, c| Counters {
            steered: sum.steered + c.steered,
            dropped: sum.dropped + c.dropped,
        }))
    }

    /// Unpins and detaches the program: the namespace's ports are no longer intercepted.
    pub fn detach(self) -> Result<(), RedirectError> {
        let Steering {
            table, dir, link, ..
        } = self;
        remove_pins(&dir, &MAP_PINS)?;
        unpin_all(&dir, [(link, "link")])?;
        tracing::debug!(netns = %table.netns, "detached sk_lookup");
        Ok(())
    }
}

/// Unpins each `(link, name)` pinned at `dir/name`, which detaches it once this process lets
/// go of it, then removes `dir`.
pub(crate) fn unpin_all<'a>(
    dir: &Path,
    links: impl IntoIterator<Item = (PinnedLink, &'a str)>,
) -> Result<(), RedirectError> {
    for (link, name) in links {
        let fd_link = link.unpin().map_err(|source| RedirectError::Io {
            what: "cannot unpin",
            path: dir.join(name),
            source,
        })?;
        drop(fd_link);
    }
    fs::remove_dir(dir).map_err(|source| RedirectError::Io {
        what: "cannot remove",
        path: dir.to_path_buf(),
        source,
    })
}

impl Table {
    /// Makes `rules` the namespace's rules, changing only what differs: a rule with the same
    /// key and label keeps its slot (and counters); a new one gets a free slot, filled before
    /// the rule points at it; rules no longer wanted are removed before their slots are
    /// emptied. Each map update is atomic, so every lookup finds a listener throughout.
    fn install(&mut self, rules: &[SteeringRule<'_>]) -> Result<(), RedirectError> {
        let netns = self.netns.clone();
        let map_error = move |what: &'static str| {
            let netns = netns.clone();
            move |e: MapError| RedirectError::Ebpf {
                netns,
                what,
                source: Box::new(e),
            }
        };
        let mut taken: Vec<u32> = self.installed.iter().map(|i| i.slot).collect();
        let mut wanted: Vec<(Installed, u32)> = Vec::with_capacity(rules.len());
        for rule in rules {
            let (prefix_len, addr) = destination_prefix(rule.destination);
            let key = (
                prefix_len,
                RuleKey::new(rule.port.unwrap_or(ANY_PORT), addr),
            );
            let kept = self
                .installed
                .iter()
                .find(|i| i.key == key && i.label == rule.label);
            let slot = match kept {
                Some(kept) => kept.slot,
                None => {
                    let slot = (0..MAX_RULES).find(|s| !taken.contains(s)).ok_or_else(|| {
                        RedirectError::TooManyRules {
                            netns: self.netns.clone(),
                            count: taken.len() + 1,
                        }
                    })?;
                    taken.push(slot);
                    slot
                }
            };
            let flags = if rule.intercept_loopback {
                RULE_FLAG_INTERCEPT_LOOPBACK
            } else {
                0
            };
            let label = rule.label.to_string();
            wanted.push((Installed { key, label, slot }, flags));
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| RedirectError::Io {
            what: "cannot count CPUs",
            path: PathBuf::from(what),
            source: e,
        })?;
        for ((installed, _), rule) in wanted.iter().zip(rules) {
            if !self.installed.contains(installed) {
                self.maps
                    .listeners
                    .set(installed.slot, &rule.listener.as_raw_fd(), 0)
                    .map_err(map_error("filling LISTENERS"))?;
                let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); cpus]).map_err(
                    |source| RedirectError::Io {
                        what: "cannot size the counters",
                        path: PathBuf::from(&self.netns),
                        source,
                    },
                )?;
                self.maps
                    .counters
                    .set(installed.slot, zeros, 0)
                    .map_err(map_error("zeroing COUNTERS"))?;
            }
        }
        for (installed, flags) in &wanted {
            let (prefix_len, key) = installed.key;
            let value = Rule {
                listener: installed.slot,
                counter: installed.slot,
                flags: *flags,
                pad: 0,
            };
            self.maps
                .rules
                .insert(&Key::new(prefix_len, key), value, 0)
                .map_err(map_error("updating RULES"))?;
        }
        let next: Vec<Installed> = wanted.into_iter().map(|(i, _)| i).collect();
        for old in &self.installed {
            if !next.iter().any(|n| n.key == old.key) {
                let (prefix_len, key) = old.key;
                self.maps
                    .rules
                    .remove(&Key::new(prefix_len, key))
                    .map_err(map_error("removing from RULES"))?;
            }
        }
        for old in &self.installed {
            if !next.iter().any(|n| n.slot == old.slot) {
                // Already empty if its socket closed (its postern died): nothing to undo.
                let _ = self.maps.listeners.clear_index(&old.slot);
            }
        }
        self.installed = next;
        Ok(())
    }
}

/// Detaches and unpins the state under `root` of every namespace (`kind` `netns`) or cgroup
/// (`kind` `cgroup`) whose inode is not in `keep`: state left by an earlier postern for
/// namespaces or cgroups this one does not serve.
pub fn remove_unused(root: &Path, kind: &str, keep: &[u64]) -> Result<(), RedirectError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(RedirectError::Io {
                what: "cannot list",
                path: root.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(inode) = name
            .to_str()
            .and_then(|n| n.strip_prefix(kind)?.strip_prefix('-'))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if keep.contains(&inode) {
            continue;
        }
        // Unlinking the last reference to a pinned link detaches it.
        fs::remove_dir_all(entry.path()).map_err(|source| RedirectError::Io {
            what: "cannot remove stale state",
            path: entry.path(),
            source,
        })?;
        let what = if kind == "netns" { "namespace" } else { kind };
        tracing::warn!(path = %entry.path().display(), "removed the kernel state of a {what} no longer configured");
    }
    Ok(())
}

/// Creates `<root>/<name>` on bpffs.
pub(crate) fn prepare_pin_dir(root: &Path, name: &str) -> Result<PathBuf, RedirectError> {
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
    let dir = root.join(name);
    fs::create_dir_all(&dir).map_err(|source| RedirectError::Io {
        what: "cannot create",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Opens the link and maps an earlier postern pinned in `dir`, and the rules in them; `None`
/// if there is no complete set.
fn adopt(dir: &Path) -> Result<Option<(PinnedLink, Maps, Vec<Installed>)>, BoxError> {
    let link_path = dir.join("link");
    if !link_path.exists() || MAP_PINS.iter().any(|name| !dir.join(name).exists()) {
        return Ok(None);
    }
    let open = |name: &str| open_pinned(&dir.join(name));
    let maps = Maps {
        rules: open(MAP_PINS[0])?.try_into()?,
        listeners: open(MAP_PINS[1])?.try_into()?,
        counters: open(MAP_PINS[2])?.try_into()?,
    };
    let mut installed = Vec::new();
    for entry in maps.rules.iter() {
        let (key, rule) = entry?;
        installed.push(Installed {
            key: (key.prefix_len(), key.data()),
            label: String::new(),
            slot: rule.listener,
        });
    }
    let link = PinnedLink::from_pin(&link_path)?;
    Ok(Some((link, maps, installed)))
}

/// Removes the pins `names` in `dir`, if there.
pub(crate) fn remove_pins(dir: &Path, names: &[&str]) -> Result<(), RedirectError> {
    for name in names {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RedirectError::Io {
                    what: "cannot remove",
                    path,
                    source: e,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Takes over a link pinned by an earlier postern whose maps cannot be adopted: unpins it so
/// the new one can be pinned at the same path, and keeps it attached until dropped.
pub(crate) fn adopt_stale_link(path: &Path) -> Result<Option<FdLink>, RedirectError> {
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
    tracing::warn!(path = %path.display(), "replacing the kernel attachment of a postern that did not shut down cleanly");
    Ok(Some(link))
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Takes the map `name` out of `ebpf` and pins it at `path`.
pub(crate) fn take_and_pin(ebpf: &mut Ebpf, name: &str, path: &Path) -> Result<Map, BoxError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| format!("no {name} map in the eBPF object"))?;
    map.pin(path)?;
    Ok(map)
}

/// Opens the map pinned at `path`.
pub(crate) fn open_pinned(path: &Path) -> Result<Map, BoxError> {
    Ok(Map::from_map_data(MapData::from_pin(path)?)?)
}

/// Loads the eBPF object and pins its (empty) maps in `dir`.
fn load(dir: &Path) -> Result<(Ebpf, Maps), BoxError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let mut take = |name: &str, pin: &str| take_and_pin(&mut ebpf, name, &dir.join(pin));
    let maps = Maps {
        rules: take("RULES", MAP_PINS[0])?.try_into()?,
        listeners: take("LISTENERS", MAP_PINS[1])?.try_into()?,
        counters: take("COUNTERS", MAP_PINS[2])?.try_into()?,
    };
    Ok((ebpf, maps))
}

/// How often a program load the verifier abandoned for a signal is tried again.
const LOAD_ATTEMPTS: usize = 5;

/// Runs `load` (a program's `load`) again when the verifier gave up because a signal arrived
/// while it worked (`EAGAIN`): a SIGHUP asking for a reload while postern starts must not
/// fail the start. libbpf retries the same way.
pub(crate) fn load_program(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                tracing::debug!(
                    attempt,
                    "a signal interrupted the eBPF verifier; loading again"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
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
    load_program(|| program.load())?;
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
