//! `postern run`: turns the effective policy table into listeners, kernel steering and accept
//! loops, and takes all of it down again on shutdown.
//!
//! Everything that can fail is done before anything is attached: TLS material is loaded and
//! every listener created first, so a bad certificate never leaves a port half-served. If
//! attaching to one namespace fails, the namespaces already attached are detached again.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::PortMetrics;
use crate::netns::Netns;
use crate::policy::{
    ConnectionLimits, MtlsMode, NetnsRef, PolicyTable, PortAction, PortPolicy, WorkloadPolicy,
};
use crate::redirect::{Steering, SteeringRule};
use crate::terminator::{self, Action, PortService, Timeouts};
use crate::tls::reload::TlsSource;

/// How often certificate files are looked at: new material serves within about this long.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

const STRICT_WITHOUT_IDENTITY: &str =
    "PeerAuthentication STRICT requires mesh mTLS, and no mesh identity is configured";
const PERMISSIVE_TLS_WITHOUT_IDENTITY: &str =
    "PeerAuthentication PERMISSIVE: mesh mTLS is not available without a mesh identity; only plaintext is served";

/// Settings of `postern run` that are not policy.
#[derive(Debug, Clone)]
pub struct RunOptions {
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
    listener: TcpListener,
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
}

/// Serves `table` until `shutdown` completes, then drains and detaches everything.
pub async fn run(
    table: &PolicyTable,
    options: &RunOptions,
    process: Process,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    for warning in &table.warnings {
        tracing::warn!("{warning}");
    }
    crate::redirect::check_kernel()?;
    let Plan {
        namespaces: plans,
        sources,
        metrics,
    } = plan(table, options.timeouts)?;
    let http = TcpListener::bind(options.admin_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on the admin address {}",
                options.admin_address
            )
        })?;
    tracing::info!(address = %http.local_addr()?, "admin endpoint listening");
    let admin = crate::admin::bind(&options.admin_socket).with_context(|| {
        format!(
            "cannot listen on the admin socket {}",
            options.admin_socket.display()
        )
    })?;
    let attached = match attach_all(&plans, options) {
        Ok(attached) => attached,
        Err(e) => {
            let _ = std::fs::remove_file(&options.admin_socket);
            return Err(e);
        }
    };

    // Two stages of shutdown: accepting stops first (the drain); the admin socket and the
    // certificate watch stay until the very end, so readiness can say "draining".
    let (stop_accepting, accepting) = watch::channel(false);
    let (stop_admin, admin_running) = watch::channel(false);
    let namespaces = attached.len();
    let state = Arc::new(
        crate::admin::AdminState::new(table, sources, metrics, attached)
            .with_log_filter(process.set_log_filter),
    );
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
    let connections = Arc::new(terminator::Connections::default());
    let mut accept_loops = Vec::new();
    let mut ports = 0;
    for plan in plans {
        for planned in plan.planned {
            ports += usize::from(planned.port.is_some());
            tracing::info!(listener = %planned.label, "serving");
            accept_loops.push(tokio::spawn(terminator::serve(
                planned.listener,
                planned.service,
                Arc::clone(&connections),
                accepting.clone(),
            )));
        }
    }
    tracing::info!(
        ports,
        workloads = table.workloads.len(),
        namespaces,
        "postern is ready"
    );

    shutdown.await;
    drain(
        &state,
        stop_accepting,
        accept_loops,
        &connections,
        options.drain_timeout,
    )
    .await;
    let _ = stop_admin.send(true);
    for task in background {
        let _ = task.await;
    }
    tracing::info!("detaching from every network namespace");
    detach_all(state.take_steering())
}

/// Readiness turns false, the listeners close (the still-attached kernel program then resets
/// new connections: fail closed, and clients retry elsewhere), and the connections in progress
/// get up to `deadline` to finish. Those left after it are closed when the runtime stops.
async fn drain(
    state: &crate::admin::AdminState,
    stop_accepting: watch::Sender<bool>,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    connections: &terminator::Connections,
    deadline: Duration,
) {
    state.start_draining();
    tracing::info!(
        connections = connections.active(),
        deadline = ?deadline,
        "draining: not ready, new connections are reset, established ones may finish"
    );
    let _ = stop_accepting.send(true);
    for task in accept_loops {
        let _ = task.await;
    }
    match tokio::time::timeout(deadline, connections.all_closed()).await {
        Ok(()) => tracing::info!("drained: every connection finished"),
        Err(_) => tracing::warn!(
            connections = connections.active(),
            "drain deadline passed; closing the connections left"
        ),
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

/// Loads TLS material and creates every listener, per network namespace.
fn plan(table: &PolicyTable, timeouts: Timeouts) -> anyhow::Result<Plan> {
    let mut by_netns: BTreeMap<&NetnsRef, Vec<&WorkloadPolicy>> = BTreeMap::new();
    for workload in &table.workloads {
        by_netns.entry(&workload.netns).or_default().push(workload);
    }
    let mut plans = Vec::new();
    let mut sources = Vec::new();
    let mut metrics = Vec::new();
    for (reference, workloads) in by_netns {
        let netns = Arc::new(Netns::open(reference)?);
        let mut planned = Vec::new();
        for workload in workloads {
            for port in &workload.ports {
                planned.push(plan_port(workload, port, &netns, timeouts, &mut sources)?);
            }
            if workload.other_ports == MtlsMode::Strict {
                planned.push(plan_other_ports(workload, &netns, timeouts)?);
            }
        }
        metrics.extend(planned.iter().map(|p| Arc::clone(&p.service.metrics)));
        if !planned.is_empty() {
            plans.push(NetnsPlan { netns, planned });
        }
    }
    Ok(Plan {
        namespaces: plans,
        sources,
        metrics,
    })
}

fn plan_port(
    workload: &WorkloadPolicy,
    port: &PortPolicy,
    netns: &Arc<Netns>,
    timeouts: Timeouts,
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
        PortAction::MeshStrict => Action::Reset(STRICT_WITHOUT_IDENTITY),
        PortAction::Permissive => Action::Permissive(PERMISSIVE_TLS_WITHOUT_IDENTITY),
    };
    let destinations = match port.bind {
        Some(bind) => vec![Some(bind)],
        None => workload_destinations(workload),
    };
    Ok(Planned {
        port: Some(port.port),
        destinations,
        intercept_loopback: true,
        listener: listener(netns, &label)?,
        service: Arc::new(PortService {
            workload: workload.id(),
            action,
            endpoint: Some(port.endpoint.clone()),
            netns: Arc::clone(netns),
            timeouts,
            limits: port.limits,
            metrics: Arc::new(PortMetrics::new(
                &workload.namespace,
                &workload.name,
                Some(port.port),
            )),
        }),
        label,
    })
}

/// STRICT covers every port, not only the configured ones, as Istio captures every inbound
/// port: the rest are reset until mesh identities exist.
fn plan_other_ports(
    workload: &WorkloadPolicy,
    netns: &Arc<Netns>,
    timeouts: Timeouts,
) -> anyhow::Result<Planned> {
    let label = format!("{}:*", workload.id());
    Ok(Planned {
        port: None,
        destinations: workload_destinations(workload),
        intercept_loopback: false,
        listener: listener(netns, &label)?,
        service: Arc::new(PortService {
            workload: workload.id(),
            action: Action::Reset(STRICT_WITHOUT_IDENTITY),
            endpoint: None,
            netns: Arc::clone(netns),
            timeouts,
            limits: ConnectionLimits::default(),
            metrics: Arc::new(PortMetrics::new(&workload.namespace, &workload.name, None)),
        }),
        label,
    })
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

fn attach_all(plans: &[NetnsPlan], options: &RunOptions) -> anyhow::Result<Vec<Attached>> {
    let mut attached = Vec::new();
    for plan in plans {
        let mut rules = Vec::new();
        let mut labelled = Vec::new();
        for planned in &plan.planned {
            for destination in &planned.destinations {
                rules.push(SteeringRule {
                    port: planned.port,
                    destination: *destination,
                    intercept_loopback: planned.intercept_loopback,
                    listener: &planned.listener,
                });
                labelled.push((Arc::clone(&planned.service.metrics), *destination));
            }
        }
        match Steering::attach(&plan.netns, &options.bpffs, &rules) {
            Ok(steering) => attached.push(Attached {
                steering,
                rules: labelled,
            }),
            Err(e) => {
                if let Err(undo) = detach_all(attached) {
                    tracing::error!("while undoing a partial start: {undo:#}");
                }
                return Err(e.into());
            }
        }
    }
    Ok(attached)
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
