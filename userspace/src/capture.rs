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
//! Layout in bpffs: `<root>/cgroup-<inode>/{sock_ops,connect4,connect6}`.

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
    adopt_stale_link, prepare_pin_dir, unpin_all, BoxError, RedirectError, EBPF_OBJECT,
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
    dir: PathBuf,
    links: Vec<PinnedLink>,
    original: Arc<OriginalDestinations>,
    /// Keeps the programs and maps loaded for as long as this value lives.
    _ebpf: Ebpf,
}

impl Capture {
    /// Loads the programs, fills the destination table, attaches them to `cgroup` and pins the
    /// attachments under `root`. Attachments pinned by a postern that died are replaced: the
    /// new ones are attached first (cgroup links run side by side), then the old ones go.
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
        let stale = PROGRAMS
            .iter()
            .map(|name| adopt_stale_link(&dir.join(name)))
            .collect::<Result<Vec<_>, _>>()?;
        let ebpf_error = |what: &'static str| {
            let cgroup = cgroup.display().to_string();
            move |source: BoxError| RedirectError::Ebpf {
                netns: format!("cgroup {cgroup}"),
                what,
                source,
            }
        };
        let (mut ebpf, original) = load_with_destinations(destinations)
            .map_err(ebpf_error("loading the capture programs"))?;
        let links = attach_and_pin(&mut ebpf, &cgroup_file, &dir)
            .map_err(ebpf_error("attaching the capture programs"))?;
        // Only now, with the new programs attached, let the old ones go.
        drop(stale);
        Ok(Capture {
            cgroup: cgroup.to_path_buf(),
            dir,
            links,
            original: Arc::new(OriginalDestinations(Mutex::new(original))),
            _ebpf: ebpf,
        })
    }

    /// The cgroup, as configured.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
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
        unpin_all(&dir, links.into_iter().zip(PROGRAMS))?;
        tracing::debug!(cgroup = %cgroup.display(), "detached outbound capture");
        Ok(())
    }
}

/// An address as the maps hold it: IPv4 as `::ffff:a.b.c.d`.
fn endpoint(ip: IpAddr, port: u16) -> SocketEndpoint {
    let ip = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketEndpoint::new(ip.octets(), port)
}

fn load_with_destinations(
    destinations: &[MeshDestination],
) -> Result<(Ebpf, OriginalTable), BoxError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let mut table: HashMap<_, SocketEndpoint, u32> = ebpf
        .map_mut("MESH_DESTINATIONS")
        .ok_or("no MESH_DESTINATIONS map in the eBPF object")?
        .try_into()?;
    for destination in destinations {
        let verdict = match destination.verdict {
            Verdict::Capture => MESH_DESTINATION_CAPTURE,
            Verdict::Pass => MESH_DESTINATION_PASS,
        };
        let key = endpoint(destination.address, destination.port.unwrap_or(0));
        table.insert(key, verdict, 0)?;
    }
    let original = ebpf
        .take_map("ORIGINAL_DESTINATIONS")
        .ok_or("no ORIGINAL_DESTINATIONS map in the eBPF object")?
        .try_into()?;
    Ok((ebpf, original))
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
                program.load()?;
                let id = program.attach(cgroup, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            aya::programs::Program::CgroupSockAddr(program) => {
                let program: &mut CgroupSockAddr = program;
                program.load()?;
                let id = program.attach(cgroup, CgroupAttachMode::Single)?;
                program.take_link(id)?.try_into()?
            }
            _ => return Err(format!("{name} is not a capture program").into()),
        };
        links.push(link.pin(dir.join(name))?);
    }
    Ok(links)
}
