//! Outbound origination: a mesh workload's app connects in plain TCP to another mesh
//! workload; the kernel (`capture`) redirects the connect to postern's outbound listener in the
//! app's network namespace, and postern carries the bytes over mesh mutual TLS, with the
//! client workload's identity, to the original destination, whose SPIFFE ID it verifies.
//!
//! The app never sees a certificate. A destination whose identity does not match is refused
//! before any of the app's bytes are sent.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use anyhow::Context as _;

use crate::capture::{Capture, MeshDestination, OriginalDestinations, Verdict};
use crate::daemon::REMOVED_LISTENER_LINGER;
use crate::handover::Key;
use crate::netns::Netns;
use crate::policy::{ConnectionLimits, MtlsMode, PolicyTable, PortAction, WorkloadPolicy};
use crate::terminator::{self, canonical, reset, Connections, Failure, Record, Timeouts};
use crate::tls::mesh::peer_spiffe_id;
use crate::tls::reload::TlsSource;

/// How long to look for a captured connection's original destination. The kernel records it
/// before the client acknowledges the handshake, so the first look finds it; the bound only
/// guards against a record that never comes (e.g. the table was full).
const LOOKUP_ATTEMPTS: u32 = 20;
const LOOKUP_INTERVAL: Duration = Duration::from_millis(5);

/// Where a captured connection goes, and who must answer there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MeshTarget {
    /// The SPIFFE ID the server must present.
    identity: String,
    /// For a Service's virtual IP, the selected workload's address and the target port;
    /// `None` for the original destination itself.
    upstream: Option<SocketAddr>,
}

/// Every mesh destination, and the SPIFFE ID postern expects to find there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MeshDirectory {
    /// (address, port) → where to and whom, or `None` for a port that is not in the mesh
    /// (DISABLE). Port 0 stands for every other port of a STRICT workload.
    entries: BTreeMap<(IpAddr, u16), Option<MeshTarget>>,
}

impl MeshDirectory {
    /// The mesh ports of every workload that has a mesh identity, at the addresses
    /// `addresses` gives for it: STRICT and PERMISSIVE ports, and every other port of a
    /// STRICT workload. DISABLE ports of those workloads are listed as not in the mesh. Then
    /// each Service's virtual IP and ports, sent to the first selected workload with a mesh
    /// identity (postern does not balance load), where its target port is a mesh port.
    pub fn build(
        table: &PolicyTable,
        addresses: impl Fn(&WorkloadPolicy) -> io::Result<Vec<IpAddr>>,
    ) -> io::Result<MeshDirectory> {
        let mut entries = BTreeMap::new();
        let mut found = BTreeMap::new();
        for workload in table.workloads.iter().filter(|w| w.mesh.is_some()) {
            let mut ports: Vec<u16> = workload.ports.iter().map(|port| port.port).collect();
            if workload.other_ports == MtlsMode::Strict {
                ports.push(0);
            }
            let workload_addresses = addresses(workload)?;
            for address in &workload_addresses {
                for port in &ports {
                    let target = mesh_identity_at(workload, *port).map(|identity| MeshTarget {
                        identity,
                        upstream: None,
                    });
                    entries.insert((*address, *port), target);
                }
            }
            found.insert(workload.id(), (workload, workload_addresses));
        }
        for service in &table.services {
            let backend = service.workloads.iter().find_map(|id| {
                let (workload, addresses) = found.get(id)?;
                Some((*workload, same_family_first(addresses, service.cluster_ip)?))
            });
            for (port, target_port) in &service.ports {
                let target = backend.and_then(|(workload, address)| {
                    Some(MeshTarget {
                        identity: mesh_identity_at(workload, *target_port)?,
                        upstream: Some(SocketAddr::new(address, *target_port)),
                    })
                });
                entries.insert((service.cluster_ip, *port), target);
            }
        }
        Ok(MeshDirectory { entries })
    }

    /// Where a connection captured on its way to `destination` goes, and the SPIFFE ID
    /// expected there; `None` if `destination` is not in the mesh.
    pub fn target(&self, destination: SocketAddr) -> Option<(SocketAddr, &str)> {
        let address = destination.ip().to_canonical();
        let target = self
            .entries
            .get(&(address, destination.port()))
            .or_else(|| self.entries.get(&(address, 0)))?
            .as_ref()?;
        let upstream = target
            .upstream
            .unwrap_or(SocketAddr::new(address, destination.port()));
        Some((upstream, target.identity.as_str()))
    }

    /// The table the kernel's capture programs consult.
    pub fn destinations(&self) -> Vec<MeshDestination> {
        self.entries
            .iter()
            .map(|((address, port), target)| MeshDestination {
                address: *address,
                port: (*port != 0).then_some(*port),
                verdict: if target.is_some() {
                    Verdict::Capture
                } else {
                    Verdict::Pass
                },
            })
            .collect()
    }
}

/// The workload's SPIFFE ID if `port` (0: any port without a rule of its own) takes mesh mTLS:
/// a STRICT or PERMISSIVE port, or any other port of a STRICT workload.
fn mesh_identity_at(workload: &WorkloadPolicy, port: u16) -> Option<String> {
    let in_mesh = match workload.ports.iter().find(|p| p.port == port) {
        Some(policy) => matches!(
            policy.action,
            PortAction::MeshStrict | PortAction::Permissive
        ),
        None => workload.other_ports == MtlsMode::Strict,
    };
    let identity = workload.mesh.as_ref()?.spiffe_id.clone();
    in_mesh.then_some(identity)
}

/// The first of `addresses` of the same family as `like`, else the first.
fn same_family_first(addresses: &[IpAddr], like: IpAddr) -> Option<IpAddr> {
    addresses
        .iter()
        .find(|address| address.is_ipv4() == like.is_ipv4())
        .or(addresses.first())
        .copied()
}

/// The addresses a workload is reached at: its configured ones, else every address of its
/// network namespace.
fn workload_addresses(workload: &WorkloadPolicy) -> io::Result<Vec<IpAddr>> {
    if !workload.addresses.is_empty() {
        return Ok(workload.addresses.clone());
    }
    Netns::open(&workload.netns)?.addresses()
}

/// One mesh workload's outbound side.
struct OutboundService {
    /// `namespace/name` of the client workload.
    pub workload: String,
    pub netns: Arc<Netns>,
    /// The client workload's identity: its client configuration originates mTLS.
    pub identity: Arc<TlsSource>,
    /// Where captured connections were going.
    pub original: Arc<OriginalDestinations>,
    pub directory: Arc<MeshDirectory>,
    pub timeouts: Timeouts,
}

/// The label of an outbound listener in a handover, by its address: `outbound:127.0.0.1` or
/// `outbound:::1`. With the network namespace's inode, it keys the listener.
fn listener_label(address: IpAddr) -> String {
    format!("{LISTENER_LABEL_PREFIX}{address}")
}

const LISTENER_LABEL_PREFIX: &str = "outbound:";

/// Whether a handover key's label names an outbound listener.
pub fn is_listener_label(label: &str) -> bool {
    label.starts_with(LISTENER_LABEL_PREFIX)
}

/// postern's outbound listeners in `netns`: `127.0.0.1` and `::1` on `OUTBOUND_PORT`, where the
/// capture programs send connects, each taken from `reusable` (kept across a reload, or
/// taken over) if there, else bound. Without IPv6 in the namespace, IPv4 alone (IPv6 connects
/// are then refused: they fail closed).
fn outbound_listeners(
    netns: &Netns,
    reusable: &mut HashMap<Key, Arc<TcpListener>>,
) -> io::Result<Vec<(Key, Arc<TcpListener>)>> {
    let mut listeners = Vec::new();
    for address in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let key = (netns.inode(), listener_label(address));
        if let Some(listener) = reusable.remove(&key) {
            listeners.push((key, listener));
            continue;
        }
        let bound = netns
            .run(|| terminator::listen_on(SocketAddr::new(address, postern_common::OUTBOUND_PORT)))
            .and_then(TcpListener::from_std);
        match (bound, address) {
            (Ok(listener), _) => listeners.push((key, Arc::new(listener))),
            (Err(e), IpAddr::V6(_)) => {
                tracing::warn!(netns = %netns.reference(), error = %e, "no IPv6 outbound listener; IPv6 mesh destinations will be refused")
            }
            (Err(e), IpAddr::V4(_)) => return Err(e),
        }
    }
    Ok(listeners)
}

/// The outbound side of every mesh workload whose cgroup is captured, by cgroup: the capture,
/// and the accept loops of the outbound listeners.
pub struct Outbound {
    captured: BTreeMap<PathBuf, Captured>,
    connections: Arc<Connections>,
}

/// One captured cgroup being served.
struct Captured {
    capture: Capture,
    listeners: Vec<(Key, Arc<TcpListener>)>,
    service: watch::Sender<Arc<OutboundService>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One captured workload, its outbound listeners ready, before anything is attached.
struct PlannedWorkload {
    workload: String,
    netns: Arc<Netns>,
    cgroup: PathBuf,
    identity: Arc<TlsSource>,
    listeners: Vec<(Key, Arc<TcpListener>)>,
}

/// The outbound side to serve, ready before anything is attached, so that a port already
/// taken or a namespace whose addresses cannot be read fails the start or the reload with
/// nothing changed.
pub struct OutboundPlan {
    workloads: Vec<PlannedWorkload>,
    directory: Arc<MeshDirectory>,
    timeouts: Timeouts,
}

impl OutboundPlan {
    /// The outbound listeners of every workload with a captured cgroup (those in `reusable`
    /// are taken, the others bound), and the mesh directory. `identities` are the workloads'
    /// mesh identities by `namespace/name`.
    pub fn bind(
        table: &PolicyTable,
        identities: &BTreeMap<String, Arc<TlsSource>>,
        reusable: &HashMap<Key, Arc<TcpListener>>,
        timeouts: Timeouts,
    ) -> anyhow::Result<OutboundPlan> {
        let mut reusable = reusable.clone();
        let mut workloads = Vec::new();
        for workload in &table.workloads {
            let (Some(mesh), Some(identity)) = (&workload.mesh, identities.get(&workload.id()))
            else {
                continue;
            };
            let Some(cgroup) = &mesh.cgroup else {
                continue;
            };
            let netns = Arc::new(Netns::open(&workload.netns)?);
            let listeners = outbound_listeners(&netns, &mut reusable).with_context(|| {
                format!(
                    "{}: cannot create the outbound listener (port {}) in network namespace {}",
                    workload.id(),
                    postern_common::OUTBOUND_PORT,
                    netns.reference()
                )
            })?;
            workloads.push(PlannedWorkload {
                workload: workload.id(),
                netns,
                cgroup: cgroup.clone(),
                identity: Arc::clone(identity),
                listeners,
            });
        }
        // Finding workloads' addresses means entering their namespaces: only when needed.
        let directory = match workloads.is_empty() {
            true => MeshDirectory::default(),
            false => MeshDirectory::build(table, workload_addresses)
                .context("cannot find the addresses of the mesh workloads")?,
        };
        Ok(OutboundPlan {
            workloads,
            directory: Arc::new(directory),
            timeouts,
        })
    }
}

impl Outbound {
    /// Nothing captured yet; connections will be counted in `connections`.
    pub fn new(connections: Arc<Connections>) -> Outbound {
        Outbound {
            captured: BTreeMap::new(),
            connections,
        }
    }

    /// Makes `plan` what is captured and served. New cgroups are captured first (if one
    /// fails, those just captured are let go again and nothing else changes); then the kept
    /// ones get the new destination table, and the ones no longer configured are detached;
    /// last, every workload's outbound listeners serve new connections with the new
    /// directory and identity. A listener no longer used stops accepting after a short
    /// linger, for connections captured just before.
    pub fn apply(&mut self, plan: OutboundPlan, bpffs: &Path) -> anyhow::Result<()> {
        let OutboundPlan {
            workloads,
            directory,
            timeouts,
        } = plan;
        let destinations = directory.destinations();
        let mut attached = BTreeMap::new();
        for planned in &workloads {
            if self.captured.contains_key(&planned.cgroup) {
                continue;
            }
            match Capture::attach(&planned.cgroup, bpffs, &destinations) {
                Ok(capture) => {
                    attached.insert(planned.cgroup.clone(), capture);
                }
                Err(e) => {
                    undo(attached.into_values());
                    return Err(anyhow::Error::from(e)
                        .context(format!("{}: outbound capture", planned.workload)));
                }
            }
        }
        let updated = self
            .captured
            .values_mut()
            .filter(|captured| {
                workloads
                    .iter()
                    .any(|w| w.cgroup == captured.capture.cgroup())
            })
            .try_for_each(|captured| captured.capture.set_destinations(&destinations));
        if let Err(e) = updated {
            // Those just captured are let go; kept ones already changed keep the new table.
            undo(attached.into_values());
            return Err(e.into());
        }
        let removed: Vec<PathBuf> = self
            .captured
            .keys()
            .filter(|cgroup| !workloads.iter().any(|w| &w.cgroup == *cgroup))
            .cloned()
            .collect();
        for cgroup in removed {
            let captured = self.captured.remove(&cgroup).expect("listed");
            tracing::info!(cgroup = %cgroup.display(), "no longer configured: outbound capture detached");
            if let Err(e) = captured.capture.detach() {
                tracing::error!(cgroup = %cgroup.display(), "{e:#}");
            }
            stop_after_linger(captured.stop, captured.tasks);
        }
        for planned in workloads {
            let PlannedWorkload {
                workload,
                netns,
                cgroup,
                identity,
                listeners,
            } = planned;
            let service = |original| {
                Arc::new(OutboundService {
                    workload,
                    netns,
                    identity,
                    original,
                    directory: Arc::clone(&directory),
                    timeouts,
                })
            };
            let captured = match self.captured.remove(&cgroup) {
                Some(kept) => {
                    let service = service(kept.capture.original_destinations());
                    if same_listeners(&kept.listeners, &listeners) {
                        kept.service.send_replace(service);
                        kept
                    } else {
                        stop_after_linger(kept.stop, kept.tasks);
                        self.serve(kept.capture, listeners, service)
                    }
                }
                None => {
                    let capture = attached.remove(&cgroup).expect("captured above");
                    let service = service(capture.original_destinations());
                    tracing::info!(workload = %service.workload, cgroup = %cgroup.display(), "originating mesh mTLS for captured connections");
                    self.serve(capture, listeners, service)
                }
            };
            self.captured.insert(cgroup, captured);
        }
        Ok(())
    }

    /// Starts the accept loops of `listeners`, serving with `service`.
    fn serve(
        &self,
        capture: Capture,
        listeners: Vec<(Key, Arc<TcpListener>)>,
        service: Arc<OutboundService>,
    ) -> Captured {
        let (service, services) = watch::channel(service);
        let (stop, stopped) = watch::channel(false);
        let tasks = listeners
            .iter()
            .map(|(_, listener)| {
                tokio::spawn(serve(
                    Arc::clone(listener),
                    services.clone(),
                    Arc::clone(&self.connections),
                    stopped.clone(),
                ))
            })
            .collect();
        Captured {
            capture,
            listeners,
            service,
            stop,
            tasks,
        }
    }

    /// Every outbound listener, by network namespace inode and label: for a reload to keep,
    /// or a newer postern to take over.
    pub fn listeners(&self) -> impl Iterator<Item = (&Key, &Arc<TcpListener>)> {
        self.captured
            .values()
            .flat_map(|captured| captured.listeners.iter().map(|(key, l)| (key, l)))
    }

    /// The inodes of the captured cgroups.
    pub fn cgroup_inodes(&self) -> Vec<u64> {
        self.captured
            .values()
            .map(|captured| captured.capture.inode())
            .collect()
    }

    /// Stops accepting and closes the outbound listeners (unless a newer postern holds them
    /// too). The capture stays attached, so new connects of the workloads are refused, never
    /// sent in clear.
    pub async fn stop_accepting(&mut self) {
        for captured in self.captured.values_mut() {
            let _ = captured.stop.send(true);
            for task in captured.tasks.drain(..) {
                let _ = task.await;
            }
            captured.listeners.clear();
        }
    }

    /// Detaches the captures this process attached, after a failed start; adopted ones stay,
    /// for the postern that pinned them.
    pub fn undo(self) {
        undo(self.captured.into_values().map(|captured| captured.capture));
    }

    /// Unpins and detaches every capture.
    pub fn detach(self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for captured in self.captured.into_values() {
            let cgroup = captured.capture.cgroup().display().to_string();
            if let Err(e) = captured.capture.detach() {
                failures.push(format!("cgroup {cgroup}: {e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("could not detach cleanly: {}", failures.join("; "))
        }
    }
}

/// Detaches each of `captures` that this process attached.
fn undo(captures: impl Iterator<Item = Capture>) {
    for capture in captures.filter(|capture| !capture.adopted()) {
        if let Err(e) = capture.detach() {
            tracing::error!("while undoing outbound capture: {e:#}");
        }
    }
}

/// Whether two sets of listeners are the very same sockets.
fn same_listeners(a: &[(Key, Arc<TcpListener>)], b: &[(Key, Arc<TcpListener>)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((_, a), (_, b))| Arc::ptr_eq(a, b))
}

/// Stops accept loops after [`REMOVED_LISTENER_LINGER`]: connections the kernel sent to their
/// listeners just before are accepted still.
fn stop_after_linger(stop: watch::Sender<bool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    tokio::spawn(async move {
        tokio::time::sleep(REMOVED_LISTENER_LINGER).await;
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
    });
}

/// Accepts until `shutdown` turns true; each connection runs on its own task, counted in
/// `connections`, with the service current when it was accepted.
async fn serve(
    listener: Arc<TcpListener>,
    mut service: watch::Receiver<Arc<OutboundService>>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
) {
    terminator::accept_until(&listener, connections, shutdown, |stream, peer| {
        let service = Arc::clone(&service.borrow_and_update());
        async move { handle(stream, peer, &service).await }
    })
    .await
}

/// Where a captured connection was going, and where postern sent it, for the access log.
#[derive(Default)]
struct Route {
    original: Option<SocketAddr>,
    /// The original destination, or for a Service, the selected workload's target port.
    upstream: Option<SocketAddr>,
}

async fn handle(client: TcpStream, peer: SocketAddr, service: &OutboundService) {
    let started = Instant::now();
    let mut record = Record::default();
    let mut route = Route::default();
    let result = originate(client, peer, service, &mut route, &mut record).await;
    let shown =
        |address: Option<SocketAddr>| address.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let (outcome, reason) = match &result {
        Ok(()) => ("ok", String::new()),
        Err(failure) => (failure.outcome(), failure.to_string()),
    };
    tracing::info!(
        target: "postern::access",
        direction = %"outbound",
        workload = %service.workload,
        original_dst = %shown(route.original),
        upstream = %shown(route.upstream),
        peer = %canonical(peer),
        tls_version = %record.tls_version.unwrap_or("-"),
        peer_identity = %record.peer_identity.as_deref().unwrap_or("-"),
        bytes_from_client = record.bytes_from_client,
        bytes_to_client = record.bytes_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = %outcome,
        reason = ?reason,
    );
}

async fn originate(
    client: TcpStream,
    peer: SocketAddr,
    service: &OutboundService,
    route: &mut Route,
    record: &mut Record,
) -> Result<(), Failure> {
    let Some(original) = original_destination(&service.original, peer).await else {
        reset(client);
        return Err(Failure::Reset(
            "the kernel recorded no original destination for this connection",
        ));
    };
    route.original = Some(original);
    let Some((target, expected)) = service.directory.target(original) else {
        reset(client);
        return Err(Failure::Reset(
            "the original destination is not in the mesh",
        ));
    };
    route.upstream = Some(target);
    let upstream =
        match tokio::time::timeout(service.timeouts.connect, connect(&service.netns, target)).await
        {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                reset(client);
                return Err(Failure::Upstream {
                    destination: target,
                    error,
                });
            }
            Err(_) => {
                reset(client);
                let timeout = service.timeouts.connect;
                return Err(Failure::Upstream {
                    destination: target,
                    error: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ),
                });
            }
        };
    let Some(config) = service.identity.client() else {
        reset(client);
        return Err(Failure::Reset(
            "the workload's identity has no client configuration",
        ));
    };
    let connector = TlsConnector::from(config);
    let name = ServerName::IpAddress(target.ip().into());
    let handshake = tokio::time::timeout(
        service.timeouts.handshake,
        connector.connect(name, upstream),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            reset(client);
            return Err(Failure::Handshake(e));
        }
        Err(_) => {
            reset(client);
            return Err(Failure::HandshakeTimeout(service.timeouts.handshake));
        }
    };
    let (_, session) = tls.get_ref();
    record.tls_version = session.protocol_version().map(crate::tls::version_name);
    record.peer_identity = peer_spiffe_id(session.peer_certificates());
    if record.peer_identity.as_deref() != Some(expected) {
        reset(client);
        return Err(Failure::Handshake(io::Error::other(format!(
            "the server at {target} is {}, expected {expected}",
            record.peer_identity.as_deref().unwrap_or("no SPIFFE ID")
        ))));
    }
    terminator::splice(client, tls, record, &ConnectionLimits::default()).await
}

async fn original_destination(
    original: &OriginalDestinations,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    for _ in 0..LOOKUP_ATTEMPTS {
        if let Some(destination) = original.take(peer) {
            return Some(destination);
        }
        tokio::time::sleep(LOOKUP_INTERVAL).await;
    }
    None
}

/// Connects from inside the client workload's network namespace, so that the connection
/// leaves by its routes and addresses. The socket belongs to postern's cgroup, so the capture
/// programs do not see it.
async fn connect(netns: &Netns, destination: SocketAddr) -> io::Result<TcpStream> {
    let socket = netns.tcp_socket(destination)?;
    socket.set_nodelay(true)?;
    socket.connect(destination).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{
        load, stream, SEED_DEPLOYMENT, SEED_DISABLE_PORT, SEED_GLOBAL_MTLS, SEED_SIDECAR,
    };

    const HTTPBIN: &str = "apiVersion: postern.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: httpbin, labels: {app: httpbin, version: v1}}\n\
        spec: {networkNamespace: /run/netns/httpbin, serviceAccount: httpbin, \
        meshCertificates: /certs/httpbin}";
    const PLAIN: &str = "apiVersion: postern.dev/v1alpha1\nkind: Workload\n\
        metadata: {name: plain}\nspec: {networkNamespace: /run/netns/plain}";
    const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/test/sa/httpbin";

    /// The seed, httpbin at 198.18.0.2 and 2001:db8::2, a workload without identity at
    /// 198.18.9.9, and the seed's Service with `clusterIP`.
    fn seed_directory() -> MeshDirectory {
        let service = SEED_DEPLOYMENT.replacen(
            "spec:\n  ports:",
            "spec:\n  clusterIP: 10.96.78.113\n  ports:",
            1,
        );
        let yaml = stream(&[
            SEED_GLOBAL_MTLS,
            SEED_DISABLE_PORT,
            SEED_SIDECAR,
            HTTPBIN,
            PLAIN,
            &service,
        ]);
        MeshDirectory::build(&load(&yaml).unwrap(), |workload| {
            Ok(match workload.name.as_str() {
                "httpbin" => vec![
                    "2001:db8::2".parse().unwrap(),
                    "198.18.0.2".parse().unwrap(),
                ],
                _ => vec!["198.18.9.9".parse().unwrap()],
            })
        })
        .unwrap()
    }

    fn target(directory: &MeshDirectory, destination: &str) -> Option<(String, String)> {
        directory
            .target(destination.parse().unwrap())
            .map(|(upstream, identity)| (upstream.to_string(), identity.to_owned()))
    }

    fn to(upstream: &str) -> Option<(String, String)> {
        Some((upstream.to_owned(), HTTPBIN_ID.to_owned()))
    }

    #[test]
    fn the_seed_puts_9081_and_other_ports_in_the_mesh_but_not_9080() {
        let directory = seed_directory();
        assert_eq!(target(&directory, "198.18.0.2:9081"), to("198.18.0.2:9081"));
        assert_eq!(target(&directory, "198.18.0.2:22"), to("198.18.0.2:22"));
        assert_eq!(
            target(&directory, "[2001:db8::2]:9081"),
            to("[2001:db8::2]:9081")
        );
        assert_eq!(target(&directory, "198.18.0.2:9080"), None);
        // A v4-mapped destination is the same address.
        assert_eq!(
            target(&directory, "[::ffff:198.18.0.2]:9081"),
            to("198.18.0.2:9081")
        );
        // A workload without identity is not a mesh destination.
        assert_eq!(target(&directory, "198.18.9.9:9081"), None);
        let pod: IpAddr = "198.18.0.2".parse().unwrap();
        let at_pod: Vec<MeshDestination> = directory
            .destinations()
            .into_iter()
            .filter(|destination| destination.address == pod)
            .collect();
        assert_eq!(
            at_pod,
            [
                MeshDestination {
                    address: pod,
                    port: None,
                    verdict: Verdict::Capture
                },
                MeshDestination {
                    address: pod,
                    port: Some(9080),
                    verdict: Verdict::Pass
                },
                MeshDestination {
                    address: pod,
                    port: Some(9081),
                    verdict: Verdict::Capture
                },
            ]
        );
    }

    #[test]
    fn a_service_port_goes_to_its_target_port_when_that_is_a_mesh_port() {
        let directory = seed_directory();
        // 8080 targets 9081 (STRICT), at the pod's address of the virtual IP's family.
        assert_eq!(
            target(&directory, "10.96.78.113:8080"),
            to("198.18.0.2:9081")
        );
        // 8443 targets 9080 (DISABLE): not in the mesh, and listed so, so it is not captured.
        assert_eq!(target(&directory, "10.96.78.113:8443"), None);
        let vip: IpAddr = "10.96.78.113".parse().unwrap();
        let at_vip: Vec<(Option<u16>, Verdict)> = directory
            .destinations()
            .into_iter()
            .filter(|destination| destination.address == vip)
            .map(|destination| (destination.port, destination.verdict))
            .collect();
        assert_eq!(
            at_vip,
            [(Some(8080), Verdict::Capture), (Some(8443), Verdict::Pass)]
        );
    }
}
