//! Outbound capture, from userspace: loads the `connect4`, `connect6` and `sock_ops` programs
//! for one mesh workload's cgroup, fills its mesh destination table, attaches them and pins
//! the attachments in bpffs; later, tells the outbound proxy where each captured connection
//! was going.
//!
//! The attachments are pinned so that they outlive postern: if postern dies, a captured connect
//! still goes to the outbound port on loopback, where nothing listens any more, and is refused
//! instead of leaving in clear. A clean shutdown unpins them, which detaches them.
//!
//! Each cgroup gets its own copy of the programs and maps, so that client addresses (keys of
//! the original-destination table) of different network namespaces never meet.
//!
//! Layout in bpffs: `<root>/cgroup-<inode>/{record_original_destination,capture_connect4,
//! capture_connect6}` (the attachments) and `{destinations,original}` (the maps), so that a
//! newer postern adopts them as they are, like the `sk_lookup` state.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::Ebpf;
use postern_common::{SocketEndpoint, MESH_DESTINATION_CAPTURE, MESH_DESTINATION_PASS};

use crate::redirect::{
    adopt_stale_link, load_program, open_pinned, prepare_pin_dir, remove_pins, take_and_pin,
    unpin_all, BoxError, RedirectError, EBPF_OBJECT,
};

/// The programs, in attach order: `sock_ops` first, so that every connection the connect
/// programs redirect is recorded once established.
const PROGRAMS: [&str; 3] = [
    "record_original_destination",
    "capture_connect4",
    "capture_connect6",
];

/// Whether connects to a destination are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Capture,
    /// Passes untouched even where an every-port entry of the address would capture it.
    Pass,
}

/// One entry of the mesh destination table: an address and a port (`None`: every port of the
/// address without an entry of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshDestination {
    pub address: IpAddr,
    pub port: Option<u16>,
    pub verdict: Verdict,
}

/// Client socket's local address → original destination, filled by the `sock_ops` program.
type OriginalTable = HashMap<MapData, SocketEndpoint, SocketEndpoint>;

/// Mesh destination → verdict, read by the connect programs.
type DestinationTable = HashMap<MapData, SocketEndpoint, u32>;

/// File names of the pinned maps in `<root>/cgroup-<inode>/`: the destination table, which a
/// reload changes in place, and the original destinations, which a newer postern reads for
/// connections captured before it took over.
const MAP_PINS: [&str; 2] = ["destinations", "original"];

/// Where each captured connection was going, keyed by the client socket's address. It
/// outlives the attachment (a connection in progress may still ask) as long as it is shared.
pub struct OriginalDestinations(Mutex<OriginalTable>);

impl OriginalDestinations {
    /// Where the captured connection from `client` (the peer of an accepted outbound
    /// connection) was going; each answer is given once.
    pub fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
        let key = endpoint(client.ip(), client.port());
        let mut original = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let destination = original.get(&key, 0).ok()?;
        // Left behind, the LRU table would evict it in time; taking it keeps the table small.
        let _ = original.remove(&key);
        let ip = std::net::Ipv6Addr::from(destination.addr);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Some(SocketAddr::new(ip, destination.port))
    }
}

/// The capture programs attached to one cgroup.
pub struct Capture {
    cgroup: PathBuf,
    inode: u64,
    dir: PathBuf,
    links: Vec<PinnedLink>,
    destinations: DestinationTable,
    original: Arc<OriginalDestinations>,
    /// Keeps the programs loaded by this process (none when adopted) for as long as this lives.
    ebpf: Option<Ebpf>,
}

impl Capture {
    /// Captures connects to `destinations` from `cgroup`, with the kernel state pinned under
    /// `root`.
    ///
    /// State pinned by an earlier postern (one that handed over, or died) is adopted: its
    /// programs stay attached, and its destination table is changed in place to
    /// `destinations`, so no connect escapes and connections it captured can still be looked
    /// up. Otherwise the programs are loaded, their table filled, then attached and pinned;
    /// attachments pinned without their maps (an older layout) are replaced: the new ones are
    /// attached first (cgroup links run side by side), then the old ones go.
    pub fn attach(
        cgroup: &Path,
        root: &Path,
        destinations: &[MeshDestination],
    ) -> Result<Capture, RedirectError> {
        let io_error = |what: &'static str| {
            move |source: std::io::Error| RedirectError::Io {
                what,
                path: cgroup.to_path_buf(),
                source,
            }
        };
        let cgroup_file = File::open(cgroup).map_err(io_error("cannot open cgroup"))?;
        let inode = cgroup_file
            .metadata()
            .map_err(io_error("cannot stat cgroup"))?
            .ino();
        let dir = prepare_pin_dir(root, &format!("cgroup-{inode}"))?;
        let ebpf_error = |what: &'static str| {
            let cgroup = cgroup.display().to_string();
            move |source: BoxError| RedirectError::Ebpf {
                netns: format!("cgroup {cgroup}"),
                what,
                source,
            }
        };
        match adopt(&dir) {
            Ok(Some((links, destinations_table, original))) => {
                let mut capture = Capture {
                    cgroup: cgroup.to_path_buf(),
                    inode,
                    dir,
                    links,
                    destinations: destinations_table,
                    original: Arc::new(OriginalDestinations(Mutex::new(original))),
                    ebpf: None,
                };
                capture.set_destinations(destinations)?;
                tracing::info!(cgroup = %cgroup.display(), "adopted the pinned outbound capture");
                return Ok(capture);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(cgroup = %cgroup.display(), error = %e, "cannot adopt the pinned outbound capture; replacing it")
            }
        }
        let stale = PROGRAMS
            .iter()
            .map(|name| adopt_stale_link(&dir.join(name)))
            .collect::<Result<Vec<_>, _>>()?;
        remove_pins(&dir, &MAP_PINS)?;
        let loaded = load(&dir).map_err(ebpf_error("loading the capture programs"));
        let attached = loaded.and_then(|(mut ebpf, destinations_table, original)| {
            let mut capture = Capture {
                cgroup: cgroup.to_path_buf(),
                inode,
                dir: dir.clone(),
                links: Vec::new(),
                destinations: destinations_table,
                original: Arc::new(OriginalDestinations(Mutex::new(original))),
                ebpf: None,
            };
            capture.set_destinations(destinations)?;
            capture.links = attach_and_pin(&mut ebpf, &cgroup_file, &dir)
                .map_err(ebpf_error("attaching the capture programs"))?;
            capture.ebpf = Some(ebpf);
            Ok(capture)
        });
        if attached.is_err() {
            remove_pins(&dir, &MAP_PINS)?;
        }
        // Only now, with the new programs attached, let the old ones go.
        drop(stale);
        attached
    }

    /// Makes `wanted` the destination table, changing only what differs: entries are added or
    /// changed first, then those no longer wanted removed. Each update is atomic, so a connect
    /// sees the entry before or after, never a missing one that stays.
    pub fn set_destinations(&mut self, wanted: &[MeshDestination]) -> Result<(), RedirectError> {
        let cgroup = self.cgroup.display().to_string();
        let map_error = |what: &'static str| {
            let cgroup = cgroup.clone();
            move |source: aya::maps::MapError| RedirectError::Ebpf {
                netns: format!("cgroup {cgroup}"),
                what,
                source: Box::new(source),
            }
        };
        let wanted: Vec<(SocketEndpoint, u32)> = wanted
            .iter()
            .map(|destination| {
                let verdict = match destination.verdict {
                    Verdict::Capture => MESH_DESTINATION_CAPTURE,
                    Verdict::Pass => MESH_DESTINATION_PASS,
                };
                (
                    endpoint(destination.address, destination.port.unwrap_or(0)),
                    verdict,
                )
            })
            .collect();
        let present = self
            .destinations
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error("reading MESH_DESTINATIONS"))?;
        for (key, verdict) in &wanted {
            if self.destinations.get(key, 0).ok() != Some(*verdict) {
                self.destinations
                    .insert(key, verdict, 0)
                    .map_err(map_error("updating MESH_DESTINATIONS"))?;
            }
        }
        for key in present {
            if !wanted.iter().any(|(wanted, _)| *wanted == key) {
                self.destinations
                    .remove(&key)
                    .map_err(map_error("removing from MESH_DESTINATIONS"))?;
            }
        }
        Ok(())
    }

    /// The cgroup, as configured.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The cgroup's inode, which names its pin directory.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Whether this process found the programs attached (pinned by an earlier postern) rather
    /// than attaching them.
    pub fn adopted(&self) -> bool {
        self.ebpf.is_none()
    }

    /// The table of where captured connections were going, for the outbound proxy.
    pub fn original_destinations(&self) -> Arc<OriginalDestinations> {
        Arc::clone(&self.original)
    }

    /// Unpins and detaches the programs: the cgroup's connects are no longer captured.
    pub fn detach(self) -> Result<(), RedirectError> {
        let Capture {
            cgroup, dir, links, ..
        } = self;
        remove_pins(&dir, &MAP_PINS)?;
        unpin_all(&dir, links.into_iter().zip(PROGRAMS))?;
        tracing::debug!(cgroup = %cgroup.display(), "detached outbound capture");
        Ok(())
    }
}

/// Opens the links and maps an earlier postern pinned in `dir`; `None` if there is no complete
/// set.
fn adopt(
    dir: &Path,
) -> Result<Option<(Vec<PinnedLink>, DestinationTable, OriginalTable)>, BoxError> {
    let complete = PROGRAMS
        .iter()
        .chain(MAP_PINS.iter())
        .all(|name| dir.join(name).exists());
    if !complete {
        return Ok(None);
    }
    let open = |name: &str| open_pinned(&dir.join(name));
    let destinations = open(MAP_PINS[0])?.try_into()?;
    let original = open(MAP_PINS[1])?.try_into()?;
    let links = PROGRAMS
        .iter()
        .map(|name| PinnedLink::from_pin(dir.join(name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((links, destinations, original)))
}

/// An address as the maps hold it: IPv4 as `::ffff:a.b.c.d`.
fn endpoint(ip: IpAddr, port: u16) -> SocketEndpoint {
    let ip = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketEndpoint::new(ip.octets(), port)
}

/// Loads the eBPF object and pins its (empty) tables in `dir`.
fn load(dir: &Path) -> Result<(Ebpf, DestinationTable, OriginalTable), BoxError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let mut take = |name: &str, pin: &str| take_and_pin(&mut ebpf, name, &dir.join(pin));
    let destinations = take("MESH_DESTINATIONS", MAP_PINS[0])?.try_into()?;
    let original = take("ORIGINAL_DESTINATIONS", MAP_PINS[1])?.try_into()?;
    Ok((ebpf, destinations, original))
}

fn attach_and_pin(ebpf: &mut Ebpf, cgroup: &File, dir: &Path) -> Result<Vec<PinnedLink>, BoxError> {
    let mut links = Vec::new();
    for name in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("no {name} program in the eBPF object"))?;
        // cgroup links always run side by side with others on the cgroup; `Single` is the only
        // mode the kernel accepts for them (see ebpf-facts).
        let link: FdLink = match program {
            aya::programs::Program::SockOps(program) => {
                let program: &mut SockOps = program;
                load_program(|| program.load())?;
                let id = program.attach(cgroup, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            aya::programs::Program::CgroupSockAddr(program) => {
                let program: &mut CgroupSockAddr = program;
                load_program(|| program.load())?;
                let id = program.attach(cgroup, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            _ => return Err(format!("{name} is not a capture program").into()),
        };
        links.push(link.pin(dir.join(name))?);
    }
    Ok(links)
}
