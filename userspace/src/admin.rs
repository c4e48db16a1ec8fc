//! The local admin socket: a Unix socket that only root can open (mode 0600 in a 0700
//! directory), through which `postern certs` asks the running daemon what it serves.
//!
//! The protocol is one request line and one answer, then the daemon closes:
//! - `certs`: JSON, the rows of `postern certs`;
//! - `ready`: `ready`, or `not ready: REASON; ...` while draining or while any TLS material is
//!   in error (the previous material still serves, but the operator's update did not take);
//! - `log-level SPEC`: replaces the log filter (`debug`, `info,postern::access=off`, ...);
//! - `takeover`: a newer postern asks for the listeners (see `handover`).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::daemon::Attached;
use crate::metrics::{PortMetrics, ReloadStatus};
use crate::policy::PolicyTable;
use crate::terminator::Connections;
use crate::tls::reload::{Secret, TlsSource};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/postern/admin.sock";

/// The longest request line accepted.
const MAX_REQUEST: u64 = 64;

/// Replaces the running log filter with the one a spec describes (tracing's `EnvFilter` syntax).
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the admin socket and the admin HTTP endpoint report on.
pub struct AdminState {
    /// What the current configuration serves; replaced whole by a reload.
    generation: Mutex<Generation>,
    reloads: Mutex<ReloadStatus>,
    /// The kernel side, held here while serving so its counters can be read; taken back to
    /// detach at the end.
    steering: Mutex<Vec<Attached>>,
    draining: AtomicBool,
    set_log_filter: Option<SetLogFilter>,
    /// Where `takeover` requests go (the daemon's main loop).
    takeover: Option<mpsc::Sender<std::os::unix::net::UnixStream>>,
    /// The admin HTTP endpoint's listener, handed over with the others.
    admin_http: Option<OwnedFd>,
    /// Every connection held, for the connection cap's metrics.
    connections: Option<Arc<Connections>>,
}

/// The served configuration's parts that the admin endpoints show.
#[derive(Default)]
struct Generation {
    /// The effective policy being served, as JSON.
    policy: serde_json::Value,
    sources: Vec<Arc<TlsSource>>,
    metrics: Vec<Arc<PortMetrics>>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState::new()
    }
}

impl AdminState {
    pub fn new() -> AdminState {
        AdminState {
            generation: Mutex::default(),
            reloads: Mutex::new(ReloadStatus::started()),
            steering: Mutex::default(),
            draining: AtomicBool::new(false),
            set_log_filter: None,
            takeover: None,
            admin_http: None,
            connections: None,
        }
    }

    /// Shows `policy`, `sources` and `metrics` from now on.
    pub fn serve_generation(
        &self,
        policy: &PolicyTable,
        sources: Vec<Arc<TlsSource>>,
        metrics: Vec<Arc<PortMetrics>>,
    ) {
        *lock(&self.generation) = Generation {
            policy: serde_json::to_value(policy).unwrap_or_default(),
            sources,
            metrics,
        };
    }

    /// Records a reload's outcome; returns the generation now serving.
    pub fn reloaded(&self, outcome: Result<(), String>) -> u64 {
        let mut reloads = lock(&self.reloads);
        reloads.record(outcome);
        reloads.generation
    }

    /// Why the last reload failed, while the configuration before it keeps serving.
    pub fn reload_warning(&self) -> Option<String> {
        let reloads = lock(&self.reloads);
        let error = reloads.last_error.as_ref()?;
        Some(format!(
            "the last configuration reload failed, generation {} keeps serving: {error}",
            reloads.generation
        ))
    }

    /// Lets `takeover` requests reach the daemon.
    pub fn with_takeover(
        mut self,
        requests: mpsc::Sender<std::os::unix::net::UnixStream>,
    ) -> AdminState {
        self.takeover = Some(requests);
        self
    }

    /// The admin HTTP endpoint's listener, to hand over with the others.
    pub fn with_admin_http(mut self, listener: OwnedFd) -> AdminState {
        self.admin_http = Some(listener);
        self
    }

    pub fn admin_http_fd(&self) -> Option<&OwnedFd> {
        self.admin_http.as_ref()
    }

    /// The kernel side, for the daemon to change.
    pub fn steering(&self) -> MutexGuard<'_, Vec<Attached>> {
        lock(&self.steering)
    }

    /// Reports the connection cap's metrics.
    pub fn with_connections(mut self, connections: Arc<Connections>) -> AdminState {
        self.connections = Some(connections);
        self
    }

    /// Lets `log-level` requests change the log filter.
    pub fn with_log_filter(mut self, set: Option<SetLogFilter>) -> AdminState {
        self.set_log_filter = set;
        self
    }

    fn set_log_level(&self, spec: &str) -> String {
        match &self.set_log_filter {
            None => "error: this postern's log level cannot be changed".to_string(),
            Some(set) => match set(spec) {
                Ok(()) => {
                    tracing::info!(filter = spec, "log filter changed");
                    format!("log filter is now {spec:?}")
                }
                Err(e) => format!("error: {e}"),
            },
        }
    }

    /// Everything postern is doing, for `/config_dump`: the effective policy, the kernel
    /// attachments with their counters, the certificates served, and readiness.
    pub fn config_dump(&self) -> String {
        let attachments: Vec<serde_json::Value> =
            self.steering().iter().map(Attached::dump).collect();
        let policy = lock(&self.generation).policy.clone();
        let dump = serde_json::json!({
            "policy": policy,
            "attachments": attachments,
            "certificates": secrets(&self.sources()),
            "ready": self.readiness().err().unwrap_or_else(|| "ready".to_string()),
            "reload": *lock(&self.reloads),
        });
        serde_json::to_string_pretty(&dump).unwrap_or_default()
    }

    /// Hands the kernel side back, for detaching.
    pub fn take_steering(&self) -> Vec<Attached> {
        std::mem::take(&mut self.steering())
    }

    /// Ready, or why not: draining, or TLS material whose update failed to load.
    pub fn readiness(&self) -> Result<(), String> {
        let mut problems: Vec<String> = secrets(&self.sources())
            .iter()
            .filter_map(|s| Some(format!("{}: {}", s.resource_name, s.error.as_ref()?)))
            .collect();
        if self.draining.load(Ordering::Acquire) {
            problems.insert(0, "draining".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Every listener's metrics and the served certificates' expiry, as Prometheus text.
    pub fn render_metrics(&self) -> String {
        let mut extra = String::from(
            "# HELP postern_certificate_expiry_timestamp_seconds When each served certificate expires.\n# TYPE postern_certificate_expiry_timestamp_seconds gauge\n",
        );
        for secret in secrets(&self.sources()) {
            extra += &format!(
                "postern_certificate_expiry_timestamp_seconds{{resource_name=\"{}\",type=\"{}\",serial_number=\"{}\"}} {}\n",
                crate::metrics::escape(&secret.resource_name),
                secret.kind,
                secret.serial_number,
                secret.not_after_unix
            );
        }
        extra += "# HELP postern_steered_connections_total Connections the kernel handed to postern, per rule.\n# TYPE postern_steered_connections_total counter\n";
        let counters: Vec<_> = self
            .steering()
            .iter()
            .flat_map(Attached::counters)
            .collect();
        for (labels, counters) in &counters {
            if let Ok(c) = counters {
                extra += &format!(
                    "postern_steered_connections_total{{{labels}}} {}\n",
                    c.steered
                );
            }
        }
        extra += "# HELP postern_steering_dropped_connections_total Connections the kernel reset because no postern listener was alive (fail closed), per rule.\n# TYPE postern_steering_dropped_connections_total counter\n";
        for (labels, counters) in &counters {
            if let Ok(c) = counters {
                extra += &format!(
                    "postern_steering_dropped_connections_total{{{labels}}} {}\n",
                    c.dropped
                );
            }
        }
        extra += &lock(&self.reloads).render();
        if let Some(connections) = &self.connections {
            extra += &connections.render_metrics();
        }
        let metrics = lock(&self.generation).metrics.clone();
        let ports: Vec<&PortMetrics> = metrics.iter().map(Arc::as_ref).collect();
        crate::metrics::render(&ports, &extra)
    }

    /// Every TLS port's material.
    pub fn sources(&self) -> Vec<Arc<TlsSource>> {
        lock(&self.generation).sources.clone()
    }

    /// From now on, readiness is false.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds the admin socket. A socket file that nobody answers on is left over from a postern
/// that died, and is replaced; one that answers belongs to a running postern, and is an error,
/// unless `replace` (this postern takes over from that one).
pub fn bind(path: &Path, replace: bool) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if path.exists() {
        if !replace && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another postern answers on {}; stop it first",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until `shutdown` turns true, then removes the socket file, unless a newer
/// postern has replaced it with its own.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::os::unix::fs::MetadataExt as _;
    let inode = |path: &Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    let ours = inode(&path);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, Arc::clone(&state)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    if inode(&path) != ours {
        return;
    }
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
    }
}

async fn answer(mut stream: UnixStream, state: Arc<AdminState>) {
    let mut line = String::new();
    // Only one line is ever sent before the answer, so the buffer reads nothing past it.
    let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST));
    let request = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    drop(reader);
    let reply = match (request, line.trim()) {
        (Ok(Ok(_)), "certs") => serde_json::to_string_pretty(&secrets(&state.sources()))
            .unwrap_or_else(|e| e.to_string()),
        (Ok(Ok(_)), "ready") => match (state.readiness(), state.reload_warning()) {
            (Ok(()), None) => "ready".to_string(),
            (Ok(()), Some(warning)) => format!("ready\nwarning: {warning}"),
            (Err(reasons), _) => format!("not ready: {reasons}"),
        },
        (Ok(Ok(_)), request) if request.starts_with("log-level ") => {
            state.set_log_level(request["log-level ".len()..].trim())
        }
        (Ok(Ok(_)), crate::handover::REQUEST) => match (&state.takeover, stream.into_std()) {
            (Some(requests), Ok(stream)) => {
                if let Err(e) = requests.try_send(stream) {
                    tracing::warn!(error = %e, "a takeover is already under way");
                }
                return;
            }
            _ => return,
        },
        (Ok(Ok(_)), other) => {
            format!("error: unknown request {other:?}; expected certs, ready, log-level SPEC or takeover")
        }
        _ => return,
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Every source's rows, one row per resource even where several ports share the files.
fn secrets(sources: &[Arc<TlsSource>]) -> Vec<Secret> {
    let mut rows: Vec<Secret> = Vec::new();
    for row in sources.iter().flat_map(|source| source.secrets()) {
        match rows
            .iter_mut()
            .find(|r| r.resource_name == row.resource_name)
        {
            Some(existing) => existing.used_by.extend(row.used_by),
            None => rows.push(row),
        }
    }
    rows
}

/// Asks the daemon on `path` for `request`, the client side used by `postern certs`.
pub fn request(path: &Path, request: &str) -> io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach postern's admin socket {}: {e} (is `postern run` running, and are you root?)",
                path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    if let Some(error) = reply.strip_prefix("error: ") {
        return Err(io::Error::other(error.to_string()));
    }
    Ok(reply)
}
