//! `postern run`: turns the effective policy table into listeners, kernel steering and accept
//! loops; follows the configuration (SIGHUP, or a change of its files) and applies only what
//! changed; hands everything over to a newer postern (`--takeover`); and takes all of it down
//! again on shutdown.
//!
//! Everything that can fail is done before anything is attached: the configuration is read
//! whole, TLS material loaded and every new listener created first, so a bad configuration
//! never leaves a port half-served, at start or at a reload.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::LoadOptions;
use crate::handover::{self, Key};
use crate::metrics::PortMetrics;
use crate::netns::Netns;
use crate::outbound::{Outbound, OutboundPlan};
use crate::policy::{
    ConnectionLimits, MtlsMode, NetnsRef, PolicyTable, PortAction, PortPolicy, WorkloadPolicy,
};
use crate::redirect::{Steering, SteeringRule};
use crate::terminator::{self, Action, PortService, Timeouts};
use crate::tls::reload::TlsSource;

/// How often certificate and configuration files are looked at: changes serve within about
/// this long.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How long a listener whose port a reload removed keeps accepting after its rule left the
/// kernel: connections steered to it just before are still completing their handshake.
pub(crate) const REMOVED_LISTENER_LINGER: Duration = Duration::from_millis(500);

const STRICT_WITHOUT_IDENTITY: &str =
    "PeerAuthentication STRICT requires mesh mTLS, and no mesh identity is configured";
const PERMISSIVE_TLS_WITHOUT_IDENTITY: &str =
    "PeerAuthentication PERMISSIVE: mesh mTLS is not available without a mesh identity; only plaintext is served";

/// Settings of `postern run` that are not policy.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The configuration's files and directories, read at start and at every reload.
    pub config: Vec<PathBuf>,
    pub load: LoadOptions,
    /// bpffs directory for pinned kernel state.
    pub bpffs: PathBuf,
    /// The admin socket `postern certs` asks.
    pub admin_socket: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (loopback).
    pub admin_address: SocketAddr,
    /// Warn this long before a served certificate expires.
    pub expiry_warning: Duration,
    /// How long established connections may take to finish after SIGTERM or SIGINT.
    pub drain_timeout: Duration,
    pub timeouts: Timeouts,
    /// Reload when the configuration files change, not only on SIGHUP.
    pub watch_config: bool,
    /// Take the listeners of the postern answering on `admin_socket`, if one does.
    pub takeover: bool,
    /// Most connections held at once, all ports together; more are reset at accept.
    pub max_connections: usize,
}

/// What `run` needs beyond options: things owned by the process, not the configuration.
pub struct Process {
    /// Changes the log filter at run time (`postern log-level`), if logging allows it.
    pub set_log_filter: Option<crate::admin::SetLogFilter>,
}

/// One listener and what it serves, before anything is attached.
struct Planned {
    /// `namespace/name:port`, or `namespace/name:*` for every other port.
    label: String,
    port: Option<u16>,
    destinations: Vec<Option<IpAddr>>,
    intercept_loopback: bool,
    listener: Arc<TcpListener>,
    service: Arc<PortService>,
}

/// Everything postern serves in one network namespace.
struct NetnsPlan {
    netns: Arc<Netns>,
    planned: Vec<Planned>,
}

/// Everything to serve, before anything is attached.
struct Plan {
    namespaces: Vec<NetnsPlan>,
    /// Every TLS port's material, followed for changes.
    sources: Vec<Arc<TlsSource>>,
    /// Every listener's metrics.
    metrics: Vec<Arc<PortMetrics>>,
    /// The captured cgroups and their outbound listeners.
    outbound: OutboundPlan,
}

/// What a new plan may reuse: listeners, inbound and outbound (kept across a reload, or taken
/// over from the previous postern) and metrics (kept across a reload), by namespace inode and
/// label.
#[derive(Default)]
struct Reusable {
    listeners: HashMap<Key, Arc<TcpListener>>,
    metrics: HashMap<Key, Arc<PortMetrics>>,
}

/// A listener being served: its accept loop, and the policy that loop hands each connection.
struct Live {
    listener: Arc<TcpListener>,
    metrics: Arc<PortMetrics>,
    service: watch::Sender<Arc<PortService>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Every listener being served, by namespace inode and label, and the outbound side.
struct Serving {
    lives: BTreeMap<Key, Live>,
    connections: Arc<terminator::Connections>,
    outbound: Outbound,
}

/// What a reload did to the listeners: kept ones serve new connections with the new policy.
#[derive(Default)]
struct Changes {
    added: usize,
    removed: usize,
    kept: usize,
}

/// Why serving ended.
enum Ending {
    /// SIGTERM or SIGINT: drain, then detach.
    Shutdown,
    /// A newer postern serves with our listeners and the pinned kernel state: drain, and
    /// leave the kernel state to it.
    HandedOver,
}

/// Serves the configuration until `shutdown` completes (then drains and detaches everything)
/// or a newer postern takes over (then drains and leaves the kernel state to it).
pub async fn run(
    options: &RunOptions,
    process: Process,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Caught from the start: a SIGHUP sent as soon as "ready" is logged (or earlier) is a
    // reload, never the default action, which ends the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    crate::redirect::check_kernel()?;
    let mut fingerprint = crate::config::fingerprint(&options.config);
    let table = crate::config::load(&options.config, &options.load)?;
    for warning in &table.warnings {
        tracing::warn!("{warning}");
    }
    let taken = match options.takeover {
        true => handover::take(&options.admin_socket).with_context(|| {
            format!(
                "cannot take over from the postern on {}",
                options.admin_socket.display()
            )
        })?,
        false => None,
    };
    let mut reusable = Reusable::default();
    if let Some(taken) = &taken {
        tracing::info!(
            listeners = taken.listeners.len(),
            "taking over from the running postern"
        );
        // Its listeners are steered by its pinned program: with another --bpffs this postern
        // would attach a second program beside it, and the two would fight over every
        // connection.
        let elsewhere: Vec<&Key> = taken
            .listeners
            .keys()
            .filter(|(inode, label)| {
                label != handover::ADMIN_HTTP
                    && !crate::outbound::is_listener_label(label)
                    && !options
                        .bpffs
                        .join(format!("netns-{inode}"))
                        .join("link")
                        .exists()
            })
            .collect();
        if let Some((_, label)) = elsewhere.first() {
            anyhow::bail!(
                "the running postern's kernel state for {label} is not pinned under {}: take over with the --bpffs it runs with",
                options.bpffs.display()
            );
        }
    }
    let mut inherited_http = None;
    for (key, fd) in taken.iter().flat_map(|t| t.listeners.iter()) {
        let listener = tcp_listener(fd.try_clone()?)?;
        if key.1 == handover::ADMIN_HTTP {
            inherited_http = Some(listener);
        } else {
            reusable.listeners.insert(key.clone(), Arc::new(listener));
        }
    }
    let plan = plan(&table, options.timeouts, &reusable)?;
    let http = admin_listener(inherited_http, options.admin_address).await?;
    tracing::info!(address = %http.local_addr()?, "admin endpoint listening");
    let admin = crate::admin::bind(&options.admin_socket, taken.is_some()).with_context(|| {
        format!(
            "cannot listen on the admin socket {}",
            options.admin_socket.display()
        )
    })?;

    // Two stages of shutdown: accepting stops first (the drain); the admin socket and the
    // file watch stay until the very end, so readiness can say "draining".
    let (stop_admin, admin_running) = watch::channel(false);
    let connections = Arc::new(terminator::Connections::new(options.max_connections));
    let (takeovers, mut takeover_requests) = mpsc::channel(1);
    let state = Arc::new(
        crate::admin::AdminState::new()
            .with_log_filter(process.set_log_filter)
            .with_takeover(takeovers)
            .with_admin_http(http.as_fd().try_clone_to_owned()?)
            .with_connections(Arc::clone(&connections)),
    );
    let mut serving = Serving {
        lives: BTreeMap::new(),
        outbound: Outbound::new(Arc::clone(&connections)),
        connections,
    };
    if let Err(e) = serving.apply(plan, &table, &state, options) {
        let _ = std::fs::remove_file(&options.admin_socket);
        for attached in state.take_steering() {
            if !attached.steering.adopted() {
                if let Err(undo) = attached.steering.detach() {
                    tracing::error!("while undoing a partial start: {undo:#}");
                }
            }
        }
        serving.outbound.undo();
        return Err(e);
    }
    drop(reusable);
    let inodes: Vec<u64> = serving.lives.keys().map(|(inode, _)| *inode).collect();
    crate::redirect::remove_unused(&options.bpffs, "netns", &inodes)?;
    crate::redirect::remove_unused(&options.bpffs, "cgroup", &serving.outbound.cgroup_inodes())?;

    let background = [
        tokio::spawn(crate::http_admin::serve(
            http,
            Arc::clone(&state),
            admin_running.clone(),
        )),
        tokio::spawn(crate::admin::serve(
            admin,
            options.admin_socket.clone(),
            Arc::clone(&state),
            admin_running.clone(),
        )),
        tokio::spawn(follow_files(
            Arc::clone(&state),
            options.expiry_warning,
            admin_running,
        )),
    ];
    if let Some(taken) = taken {
        taken
            .serving()
            .context("cannot tell the previous postern that this one serves")?;
        tracing::info!("took over: the previous postern stops accepting and drains");
    }
    tracing::info!(
        ports = serving
            .lives
            .keys()
            .filter(|(_, l)| !l.ends_with(":*"))
            .count(),
        workloads = table.workloads.len(),
        namespaces = state.steering().len(),
        "postern is ready"
    );
    crate::memory::release_free_memory();

    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    let mut handing: Option<oneshot::Receiver<std::io::Result<()>>> = None;
    tokio::pin!(shutdown);
    let ending = loop {
        tokio::select! {
            _ = &mut shutdown => match handing.take() {
                // Detaching now would pull the kernel state from under the newer postern:
                // let the handover finish (or fail) first.
                Some(given) => match given.await {
                    Ok(Ok(())) => break Ending::HandedOver,
                    _ => break Ending::Shutdown,
                },
                None => break Ending::Shutdown,
            },
            // Once a newer postern has the kernel state, this one leaves it alone.
            _ = hangup.recv(), if handing.is_none() => {
                fingerprint = crate::config::fingerprint(&options.config);
                serving.reload("SIGHUP", &state, options);
            }
            _ = tick.tick(), if options.watch_config && handing.is_none() => {
                let paths = options.config.clone();
                let now = tokio::task::spawn_blocking(move || crate::config::fingerprint(&paths))
                    .await
                    .unwrap_or(fingerprint);
                if now != fingerprint {
                    fingerprint = now;
                    serving.reload("configuration files changed", &state, options);
                }
            }
            Some(stream) = takeover_requests.recv(), if handing.is_none() => {
                handing = Some(serving.hand_over(stream, &state));
            }
            given = async { handing.as_mut().expect("guarded").await }, if handing.is_some() => {
                handing = None;
                match given {
                    Ok(Ok(())) => break Ending::HandedOver,
                    Ok(Err(e)) => tracing::warn!(error = %e, "takeover abandoned; serving on"),
                    Err(_) => tracing::warn!("takeover abandoned; serving on"),
                }
            }
        }
    };

    match ending {
        Ending::Shutdown => {
            let outbound = serving.drain(&state, options.drain_timeout).await;
            let _ = stop_admin.send(true);
            for task in background {
                let _ = task.await;
            }
            tracing::info!("detaching from every network namespace and cgroup");
            let steering = detach_all(state.take_steering());
            outbound.detach().and(steering)
        }
        Ending::HandedOver => {
            // The admin endpoints belong to the new postern now: stop answering at once, or
            // a probe reaching this one would see it draining.
            let _ = stop_admin.send(true);
            for task in background {
                let _ = task.await;
            }
            let outbound = serving.drain(&state, options.drain_timeout).await;
            // The new postern adopted the pinned links and maps: leave them be.
            drop(outbound);
            drop(state.take_steering());
            tracing::info!("handed over; exiting without detaching");
            Ok(())
        }
    }
}

/// A listening socket received from the previous postern.
fn tcp_listener(fd: OwnedFd) -> anyhow::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// The admin HTTP listener: the previous postern's, if it is on the requested address (or the
/// requested port is 0), else a new one.
async fn admin_listener(
    inherited: Option<TcpListener>,
    address: SocketAddr,
) -> anyhow::Result<TcpListener> {
    if let Some(listener) = inherited {
        let local = listener.local_addr()?;
        if local == address || (address.port() == 0 && local.ip() == address.ip()) {
            return Ok(listener);
        }
    }
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on the admin address {address}"))
}

impl Serving {
    /// Makes `plan` what is served: the kernel side first (new listeners steered, removed
    /// ones unsteered), then the accept loops (new policies for kept listeners, new loops for
    /// new ones, removed ones stopped after a short linger).
    fn apply(
        &mut self,
        plan: Plan,
        table: &PolicyTable,
        state: &crate::admin::AdminState,
        options: &RunOptions,
    ) -> anyhow::Result<Changes> {
        let Plan {
            namespaces,
            sources,
            metrics,
            outbound,
        } = plan;
        self.outbound.apply(outbound, &options.bpffs)?;
        steer(&namespaces, state, options)?;
        let mut wanted = BTreeMap::new();
        for netns_plan in namespaces {
            let inode = netns_plan.netns.inode();
            for planned in netns_plan.planned {
                wanted.insert((inode, planned.label.clone()), planned);
            }
        }
        let removed: Vec<Key> = self
            .lives
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        let mut changes = Changes {
            removed: removed.len(),
            ..Changes::default()
        };
        for key in removed {
            let live = self.lives.remove(&key).expect("listed");
            tracing::info!(listener = %key.1, "no longer configured: unsteered; established connections continue");
            tokio::spawn(async move {
                tokio::time::sleep(REMOVED_LISTENER_LINGER).await;
                let _ = live.stop.send(true);
                let _ = live.task.await;
            });
        }
        for (key, planned) in wanted {
            match self.lives.get(&key) {
                Some(live) => {
                    live.service.send_replace(planned.service);
                    changes.kept += 1;
                }
                None => {
                    tracing::info!(listener = %planned.label, "serving");
                    changes.added += 1;
                    let (service, services) = watch::channel(planned.service);
                    let (stop, stopped) = watch::channel(false);
                    let metrics = Arc::clone(&service.borrow().metrics);
                    let task = tokio::spawn(terminator::serve(
                        Arc::clone(&planned.listener),
                        services,
                        Arc::clone(&self.connections),
                        stopped,
                    ));
                    let live = Live {
                        listener: planned.listener,
                        metrics,
                        service,
                        stop,
                        task,
                    };
                    self.lives.insert(key, live);
                }
            }
        }
        state.serve_generation(table, sources, metrics);
        Ok(changes)
    }

    /// Reads the configuration again and applies what changed; if anything is wrong, nothing
    /// changes, and the error is logged and kept for `/config_dump`, `/readyz` and metrics.
    fn reload(&mut self, trigger: &str, state: &crate::admin::AdminState, options: &RunOptions) {
        let result = crate::config::load(&options.config, &options.load)
            .map_err(anyhow::Error::from)
            .and_then(|table| {
                let plan = plan(&table, options.timeouts, &self.reusable())?;
                let changes = self.apply(plan, &table, state, options)?;
                Ok((table, changes))
            });
        match result {
            Ok((table, changes)) => {
                for warning in &table.warnings {
                    tracing::warn!("{warning}");
                }
                let generation = state.reloaded(Ok(()));
                let Changes {
                    added,
                    removed,
                    kept,
                } = changes;
                tracing::info!(
                    trigger,
                    generation,
                    listeners_added = added,
                    listeners_removed = removed,
                    listeners_kept = kept,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                let error = format!("{e:#}");
                state.reloaded(Err(error.clone()));
                tracing::error!(trigger, error = %error, "configuration reload failed; the previous configuration keeps serving");
            }
        }
    }

    /// The listeners and metrics a new plan may keep.
    fn reusable(&self) -> Reusable {
        Reusable {
            listeners: self
                .lives
                .iter()
                .map(|(key, live)| (key, &live.listener))
                .chain(self.outbound.listeners())
                .map(|(key, listener)| (key.clone(), Arc::clone(listener)))
                .collect(),
            metrics: self
                .lives
                .iter()
                .map(|(key, live)| (key.clone(), Arc::clone(&live.metrics)))
                .collect(),
        }
    }

    /// Sends every listener (and the admin HTTP endpoint's) to a newer postern, on a thread
    /// of its own; the answer says whether it serves now.
    fn hand_over(
        &self,
        stream: std::os::unix::net::UnixStream,
        state: &crate::admin::AdminState,
    ) -> oneshot::Receiver<std::io::Result<()>> {
        let (done, answer) = oneshot::channel();
        let mut fds: Vec<(Key, OwnedFd)> = Vec::new();
        let mut duplicate = |key: Key, fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned().map(|fd| fds.push((key, fd)))
        };
        let collected = self
            .lives
            .iter()
            .map(|(key, live)| (key, &live.listener))
            .chain(self.outbound.listeners())
            .try_for_each(|(key, listener)| duplicate(key.clone(), listener.as_fd()))
            .and_then(|()| match state.admin_http_fd() {
                Some(fd) => duplicate((0, handover::ADMIN_HTTP.to_string()), fd.as_fd()),
                None => Ok(()),
            });
        tracing::info!(listeners = fds.len(), "a newer postern asks to take over");
        tokio::task::spawn_blocking(move || {
            let result = collected.and_then(|()| {
                let borrowed: Vec<(Key, std::os::fd::BorrowedFd<'_>)> = fds
                    .iter()
                    .map(|(key, fd)| (key.clone(), fd.as_fd()))
                    .collect();
                handover::give(stream, &borrowed)
            });
            let _ = done.send(result);
        });
        answer
    }

    /// Readiness turns false, the accept loops stop and the listeners close, outbound ones
    /// first (unless a newer postern holds them too; else the still-attached kernel programs
    /// reset or refuse new connections: fail closed, and clients retry elsewhere), and the
    /// connections in progress get up to `deadline` to finish. Those left after it are closed
    /// when the runtime stops. Returns the outbound side, still attached.
    async fn drain(mut self, state: &crate::admin::AdminState, deadline: Duration) -> Outbound {
        state.start_draining();
        tracing::info!(
            connections = self.connections.active(),
            deadline = ?deadline,
            "draining: not ready, new connections are reset, established ones may finish"
        );
        self.outbound.stop_accepting().await;
        for live in self.lives.into_values() {
            let _ = live.stop.send(true);
            let _ = live.task.await;
        }
        match tokio::time::timeout(deadline, self.connections.all_closed()).await {
            Ok(()) => tracing::info!("drained: every connection finished"),
            Err(_) => tracing::warn!(
                connections = self.connections.active(),
                "drain deadline passed; closing the connections left"
            ),
        }
        self.outbound
    }
}

/// Rebuilds TLS material whose files changed, and warns of certificates about to expire,
/// until `shutdown` turns true.
async fn follow_files(
    state: Arc<crate::admin::AdminState>,
    expiry_warning: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let state = Arc::clone(&state);
        // File reads and key parsing block: keep them off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || {
            for source in state.sources() {
                source.refresh();
                source.warn_expiring(expiry_warning);
            }
        })
        .await;
    }
}

/// Loads TLS material and creates every listener not in `reusable`, per network namespace.
fn plan(table: &PolicyTable, timeouts: Timeouts, reusable: &Reusable) -> anyhow::Result<Plan> {
    let mut by_netns: BTreeMap<&NetnsRef, Vec<&WorkloadPolicy>> = BTreeMap::new();
    for workload in &table.workloads {
        by_netns.entry(&workload.netns).or_default().push(workload);
    }
    let mut plans = Vec::new();
    let mut sources = Vec::new();
    let mut metrics = Vec::new();
    let mut identities = BTreeMap::new();
    for (reference, workloads) in by_netns {
        let netns = Arc::new(Netns::open(reference)?);
        let planner = Planner {
            netns: &netns,
            timeouts,
            reusable,
        };
        let mut planned = Vec::new();
        for workload in workloads {
            let identity = mesh_identity(workload)?;
            sources.extend(identity.iter().cloned());
            if let Some(identity) = &identity {
                identities.insert(workload.id(), Arc::clone(identity));
            }
            for port in &workload.ports {
                planned.push(planner.port(workload, port, identity.as_ref(), &mut sources)?);
            }
            if workload.other_ports == MtlsMode::Strict {
                planned.push(planner.other_ports(workload, identity.as_ref())?);
            }
        }
        metrics.extend(planned.iter().map(|p| Arc::clone(&p.service.metrics)));
        if !planned.is_empty() {
            plans.push(NetnsPlan { netns, planned });
        }
    }
    let outbound = OutboundPlan::bind(table, &identities, &reusable.listeners, timeouts)?;
    Ok(Plan {
        namespaces: plans,
        sources,
        metrics,
        outbound,
    })
}

/// The workload's mesh identity, loaded and checked (its certificate must name its SPIFFE ID),
/// if it has one.
fn mesh_identity(workload: &WorkloadPolicy) -> anyhow::Result<Option<Arc<TlsSource>>> {
    let Some(identity) = &workload.mesh else {
        return Ok(None);
    };
    let mut used_by: Vec<String> = workload
        .ports
        .iter()
        .filter(|port| matches!(port.action, PortAction::MeshStrict | PortAction::Permissive))
        .map(|port| format!("{}:{}", workload.id(), port.port))
        .collect();
    if workload.other_ports == MtlsMode::Strict {
        used_by.push(format!("{}:*", workload.id()));
    }
    let source = TlsSource::mesh(identity, used_by)
        .with_context(|| format!("{}: mesh identity {}", workload.id(), identity.spiffe_id))?;
    Ok(Some(Arc::new(source)))
}

/// What a STRICT or PERMISSIVE port does: mesh mTLS with the workload's identity, or, without
/// one, today's fallback (STRICT resets; PERMISSIVE serves plaintext only).
fn mesh_action(identity: Option<&Arc<TlsSource>>, permissive: bool) -> Action {
    match (identity, permissive) {
        (Some(identity), _) => Action::Mesh {
            identity: Arc::clone(identity),
            permissive,
        },
        (None, false) => Action::Reset(STRICT_WITHOUT_IDENTITY),
        (None, true) => Action::Permissive(PERMISSIVE_TLS_WITHOUT_IDENTITY),
    }
}

/// Plans the listeners of one network namespace.
struct Planner<'a> {
    netns: &'a Arc<Netns>,
    timeouts: Timeouts,
    reusable: &'a Reusable,
}

impl Planner<'_> {
    fn port(
        &self,
        workload: &WorkloadPolicy,
        port: &PortPolicy,
        identity: Option<&Arc<TlsSource>>,
        sources: &mut Vec<Arc<TlsSource>>,
    ) -> anyhow::Result<Planned> {
        let label = format!("{}:{}", workload.id(), port.port);
        let action = match &port.action {
            PortAction::Tls(settings) => {
                let source = TlsSource::load(settings, port.protocol.alpn(), vec![label.clone()])
                    .with_context(|| format!("{label}: {} TLS", settings.mode))?;
                let source = Arc::new(source);
                sources.push(Arc::clone(&source));
                Action::Tls(source)
            }
            PortAction::Plaintext => Action::Plaintext,
            PortAction::MeshStrict => mesh_action(identity, false),
            PortAction::Permissive => mesh_action(identity, true),
        };
        let destinations = match port.bind {
            Some(bind) => vec![Some(bind)],
            None => workload_destinations(workload),
        };
        self.planned(workload, Some(port.port), label, destinations, |metrics| {
            PortService {
                workload: workload.id(),
                action,
                endpoint: Some(port.endpoint.clone()),
                netns: Arc::clone(self.netns),
                timeouts: self.timeouts,
                limits: port.limits,
                metrics,
            }
        })
    }

    /// STRICT covers every port, not only the configured ones, as Istio captures every
    /// inbound port: mesh mTLS to the same port of the app, or a reset without a mesh
    /// identity.
    fn other_ports(
        &self,
        workload: &WorkloadPolicy,
        identity: Option<&Arc<TlsSource>>,
    ) -> anyhow::Result<Planned> {
        let label = format!("{}:*", workload.id());
        let destinations = workload_destinations(workload);
        self.planned(workload, None, label, destinations, |metrics| PortService {
            workload: workload.id(),
            action: mesh_action(identity, false),
            endpoint: None,
            netns: Arc::clone(self.netns),
            timeouts: self.timeouts,
            limits: ConnectionLimits::default(),
            metrics,
        })
    }

    /// The listener (kept, or new) and service for `label`; metrics are kept with the listener.
    fn planned(
        &self,
        workload: &WorkloadPolicy,
        port: Option<u16>,
        label: String,
        destinations: Vec<Option<IpAddr>>,
        service: impl FnOnce(Arc<PortMetrics>) -> PortService,
    ) -> anyhow::Result<Planned> {
        let key = (self.netns.inode(), label);
        let listener = match self.reusable.listeners.get(&key) {
            Some(listener) => Arc::clone(listener),
            None => Arc::new(listener(self.netns, &key.1)?),
        };
        let metrics = self.reusable.metrics.get(&key).cloned().unwrap_or_else(|| {
            Arc::new(PortMetrics::new(&workload.namespace, &workload.name, port))
        });
        Ok(Planned {
            label: key.1,
            port,
            destinations,
            intercept_loopback: port.is_some(),
            listener,
            service: Arc::new(service(metrics)),
        })
    }
}

fn workload_destinations(workload: &WorkloadPolicy) -> Vec<Option<IpAddr>> {
    if workload.addresses.is_empty() {
        vec![None]
    } else {
        workload.addresses.iter().copied().map(Some).collect()
    }
}

fn listener(netns: &Netns, label: &str) -> anyhow::Result<TcpListener> {
    terminator::bind_listener(netns).with_context(|| {
        format!(
            "{label}: cannot create a listener in network namespace {}",
            netns.reference()
        )
    })
}

/// The kernel side of one namespace, and for each of its rules (in order) the listener's
/// metrics and the rule's destination, to label the kernel's counters.
pub struct Attached {
    steering: Steering,
    rules: Vec<(Arc<PortMetrics>, Option<IpAddr>)>,
}

impl Attached {
    /// The namespace, its pin, and each rule with its kernel counters, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, (metrics, destination))| {
                let counters = self.steering.counters(index).ok();
                serde_json::json!({
                    "listener": metrics.labels(),
                    "destination": destination,
                    "steered": counters.map(|c| c.steered),
                    "dropped": counters.map(|c| c.dropped),
                })
            })
            .collect();
        serde_json::json!({
            "netns": self.steering.netns(),
            "pin": self.steering.pin(),
            "rules": rules,
        })
    }

    /// Each rule's labels (the listener's, plus `destination`) and kernel counters.
    pub fn counters(&self) -> Vec<(String, std::io::Result<crate::redirect::Counters>)> {
        self.rules
            .iter()
            .enumerate()
            .map(|(index, (metrics, destination))| {
                let destination = destination.map_or_else(|| "*".to_string(), |ip| ip.to_string());
                let labels = format!("{},destination=\"{destination}\"", metrics.labels());
                (labels, self.steering.counters(index))
            })
            .collect()
    }
}

/// Brings the kernel side in step with `plan`: each namespace's rules installed (the program
/// attached, or adopted, where this postern had none yet), and namespaces no longer in the
/// plan detached. On an error, the namespaces keep the steering they had (those already
/// changed keep their new rules).
fn steer(
    namespaces: &[NetnsPlan],
    state: &crate::admin::AdminState,
    options: &RunOptions,
) -> anyhow::Result<()> {
    let mut steering = state.steering();
    let mut before = std::mem::take(&mut *steering);
    let mut after = Vec::new();
    for netns_plan in namespaces {
        let mut rules = Vec::new();
        let mut labelled = Vec::new();
        for planned in &netns_plan.planned {
            for destination in &planned.destinations {
                rules.push(SteeringRule {
                    label: &planned.label,
                    port: planned.port,
                    destination: *destination,
                    intercept_loopback: planned.intercept_loopback,
                    listener: &planned.listener,
                });
                labelled.push((Arc::clone(&planned.service.metrics), *destination));
            }
        }
        let inode = netns_plan.netns.inode();
        let result = match before.iter().position(|a| a.steering.inode() == inode) {
            Some(index) => {
                let mut attached = before.swap_remove(index);
                let installed = attached.steering.install(&rules);
                attached.rules = labelled;
                after.push(attached);
                installed
            }
            None => Steering::attach(&netns_plan.netns, &options.bpffs, &rules).map(|steering| {
                after.push(Attached {
                    steering,
                    rules: labelled,
                })
            }),
        };
        if let Err(e) = result {
            before.extend(after);
            *steering = before;
            return Err(e.into());
        }
    }
    *steering = after;
    drop(steering);
    if !before.is_empty() {
        tracing::info!(
            namespaces = before.len(),
            "detaching from network namespaces no longer configured"
        );
        detach_all(before)?;
    }
    Ok(())
}

/// Logs what the kernel steered, then detaches. Tries every namespace even if one fails.
fn detach_all(attached: Vec<Attached>) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for attached in attached {
        for (labels, counters) in attached.counters() {
            match counters {
                Ok(c) => {
                    tracing::info!(rule = %labels, steered = c.steered, dropped = c.dropped, "kernel steering counters")
                }
                Err(e) => tracing::warn!(rule = %labels, error = %e, "cannot read kernel counters"),
            }
        }
        let steering = attached.steering;
        if let Err(e) = steering.detach() {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("could not detach cleanly: {}", failures.join("; "))
    }
}
