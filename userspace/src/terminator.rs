//! Accepts the connections the kernel steers to postern, applies the port's policy, and
//! splices the result to the app.
//!
//! One accept loop per listener, one task per connection. Every connection ends with exactly
//! one access-log line (target `postern::access`).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::copy_buffer::CopyBuffer;
use crate::metrics::{AcceptError, HandshakeFailure, LimitMetrics, PortMetrics};
use crate::netns::Netns;
use crate::policy::{ConnectionLimits, Endpoint};
use crate::tls::reload::TlsSource;

/// Source address of postern's connections to the app; the eBPF program never intercepts it.
pub const APP_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What the listener does with each connection.
pub enum Action {
    /// Terminate TLS with the source's current material, then splice to the app.
    Tls(Arc<TlsSource>),
    /// Splice the bytes as they come.
    Plaintext,
    /// Reset every connection once the client has spoken (or the handshake timeout passed),
    /// so the client sees "connection reset by peer", as Istio's clients do on a STRICT port.
    Reset(&'static str),
    /// A TLS ClientHello is reset with the given reason; anything else is spliced.
    Permissive(&'static str),
    /// Mesh mutual TLS with the workload's identity (STRICT). With `permissive`, a client whose
    /// first bytes are not a TLS ClientHello is spliced as plaintext instead of reset.
    Mesh {
        identity: Arc<TlsSource>,
        permissive: bool,
    },
}

/// Why a STRICT port with a mesh identity resets a client that does not start TLS.
const STRICT_NOT_TLS: &str =
    "PeerAuthentication STRICT requires mesh mTLS, and the client did not start a TLS handshake";

/// Timeouts that bound every connection's set-up.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept to a finished TLS handshake (or to the first bytes, for `Reset`).
    pub handshake: Duration,
    /// How long `Permissive` waits for the first bytes before taking the connection as a
    /// plaintext protocol in which the server speaks first.
    pub detect: Duration,
    /// To connect to the app.
    pub connect: Duration,
}

/// Counts the connections in progress, all ports together, so a drain can wait for them to
/// finish, and caps them (`--max-connections`): past the cap, a new connection is reset at
/// once, before any policy work, so a flood cannot exhaust postern's file descriptors.
#[derive(Debug)]
pub struct Connections {
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    limit: usize,
    metrics: LimitMetrics,
    /// Seconds (since `started`) of the last warning about the cap, to keep floods out of the
    /// log: at most one warning per [`LIMIT_WARNING_INTERVAL`].
    warned_at: AtomicU64,
    started: Instant,
}

/// At most one warning per this many seconds while connections are refused at the cap.
const LIMIT_WARNING_INTERVAL: u64 = 10;

/// How long an accept loop pauses after `accept(2)` fails (out of descriptors or memory),
/// instead of spinning on a listener whose queue stays non-empty.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One connection's place in [`Connections`], released when the connection ends.
struct Tracked(Arc<Connections>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Connections {
    /// At most `limit` connections at once.
    pub fn new(limit: usize) -> Connections {
        Connections {
            active: Default::default(),
            idle: Default::default(),
            limit,
            metrics: LimitMetrics::default(),
            warned_at: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A place for one more connection, or `None` (counted) when the cap is reached.
    fn admit(self: &Arc<Self>) -> Option<Tracked> {
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |active| {
                (active < self.limit).then_some(active + 1)
            });
        match admitted {
            Ok(_) => Some(Tracked(Arc::clone(self))),
            Err(_) => {
                self.metrics.refused_max_connections();
                self.warn_at_limit();
                None
            }
        }
    }

    fn warn_at_limit(&self) {
        // Offset by one interval, so that the first refusal always warns.
        let now = self.started.elapsed().as_secs() + LIMIT_WARNING_INTERVAL;
        let last = self.warned_at.load(Ordering::Relaxed);
        if now >= last + LIMIT_WARNING_INTERVAL
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.limit,
                "at the connection cap: new connections are reset (postern_connections_refused_total counts them)"
            );
        }
    }

    /// The cap's metrics, in Prometheus text.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.limit, self.active())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Completes once no connection is in progress.
    pub async fn all_closed(&self) {
        loop {
            let idle = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One listener's policy: which workload, what to do, where the app is.
pub struct PortService {
    /// `namespace/name` of the workload.
    pub workload: String,
    pub action: Action,
    /// Where the app is; `None` for the connection's own destination port on loopback (a
    /// STRICT workload's other ports).
    pub endpoint: Option<Endpoint>,
    pub netns: Arc<Netns>,
    pub timeouts: Timeouts,
    /// The port's `connectionPool` limits.
    pub limits: ConnectionLimits,
    pub metrics: Arc<PortMetrics>,
}

/// Creates a listening socket inside `netns`. The kernel hands it connections through
/// `bpf_sk_assign`, whatever their destination, so it only needs a local address nobody else
/// reaches: an ephemeral port on IPv4 loopback. It is an IPv6 socket bound to the v4-mapped
/// `::ffff:127.0.0.1`: binding a non-mapped IPv6 address would make the kernel mark it
/// IPv6-only, and `bpf_sk_assign` then refuses IPv4 connections. So one socket takes both
/// families. Where IPv6 sockets cannot be created at all, an IPv4 socket serves IPv4 alone
/// (IPv6 connections then fail closed in the kernel).
pub fn bind_listener(netns: &Netns) -> io::Result<TcpListener> {
    let listener = netns.run(|| {
        let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), 0));
        listen_on(mapped).or_else(|e| {
            tracing::warn!(netns = %netns.reference(), error = %e, "no IPv6 sockets in the network namespace; serving IPv4 only");
            listen_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        })
    })?;
    TcpListener::from_std(listener)
}

pub(crate) fn listen_on(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // A fixed port (the outbound one) must bind again while connections it accepted before
    // (a reload let it go, or a postern died) linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts until `shutdown` turns true; each connection runs on its own task, counted in
/// `connections`, and is not affected by the shutdown. Each connection gets the policy
/// `service` holds when it is accepted, so a reload changes new connections only. The
/// listener closes when its last holder drops it.
pub async fn serve(
    listener: Arc<TcpListener>,
    mut service: watch::Receiver<Arc<PortService>>,
    connections: Arc<Connections>,
    shutdown: watch::Receiver<bool>,
) {
    accept_until(&listener, connections, shutdown, |stream, peer| {
        let service = Arc::clone(&service.borrow_and_update());
        tracing::debug!(workload = %service.workload, %peer, "accepted");
        // Counted here, before the task runs, so a burst cannot slip past the limit.
        let admitted = service
            .limits
            .max_connections
            .is_none_or(|max| service.metrics.active() < u64::from(max));
        service.metrics.opened();
        async move { handle(stream, peer, service, admitted).await }
    })
    .await
}

/// The accept loop of every listener: until `shutdown` turns true, each accepted connection
/// gets the task `on_accept` makes for it, counted in `connections`.
pub(crate) async fn accept_until<F, T>(
    listener: &TcpListener,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    mut on_accept: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> T,
    T: Future<Output = ()> + Send + 'static,
{
    loop {
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            // The value only ever turns true: any change (or a dropped sender) means stop.
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(tracked) = connections.admit() else {
                        reset(stream);
                        continue;
                    };
                    let task = on_accept(stream, peer);
                    tokio::spawn(async move {
                        task.await;
                        drop(tracked);
                    });
                }
                Err(e) => {
                    // Out of file descriptors or memory: back off rather than spin.
                    connections.metrics.accept_failed(AcceptError::of(&e));
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// What one connection did, for its access-log line.
#[derive(Default)]
pub(crate) struct Record {
    pub(crate) tls_version: Option<&'static str>,
    client_subject: Option<String>,
    /// The peer's SPIFFE ID, over mesh mTLS.
    pub(crate) peer_identity: Option<String>,
    alpn: Option<String>,
    pub(crate) bytes_from_client: u64,
    pub(crate) bytes_to_client: u64,
}

/// Why a connection ended before or during splicing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0}")]
    Reset(&'static str),
    #[error("cannot connect to the app at {endpoint}: {error}")]
    Connect { endpoint: String, error: io::Error },
    #[error("cannot connect to the mesh destination {destination}: {error}")]
    Upstream {
        destination: SocketAddr,
        error: io::Error,
    },
    #[error("connection broke: {0}")]
    Splice(io::Error),
    #[error(
        "the port already has its maximum of {0} connections (connectionPool.tcp.maxConnections)"
    )]
    OverLimit(u32),
    #[error("no bytes either way for {0:?} (connectionPool.tcp.idleTimeout)")]
    Idle(Duration),
    #[error("open for {0:?} (connectionPool.tcp.maxConnectionDuration)")]
    MaxDuration(Duration),
}

impl Failure {
    /// A short, stable word for dashboards and grep.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Failure::HandshakeTimeout(_) => "handshake_timeout",
            Failure::Handshake(_) => "handshake_failed",
            Failure::Reset(_) => "reset",
            Failure::Connect { .. } => "app_unreachable",
            Failure::Upstream { .. } => "upstream_unreachable",
            Failure::Splice(_) => "broken",
            Failure::OverLimit(_) => "over_limit",
            Failure::Idle(_) => "idle_timeout",
            Failure::MaxDuration(_) => "max_duration",
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, service: Arc<PortService>, admitted: bool) {
    let started = Instant::now();
    let original_dst = stream
        .local_addr()
        .map(canonical)
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut record = Record::default();
    let result = match (admitted, service.limits.max_connections) {
        (false, Some(max)) => {
            reset(stream);
            Err(Failure::OverLimit(max))
        }
        _ => apply_policy(stream, &service, original_dst.port(), &mut record).await,
    };
    service
        .metrics
        .closed(record.bytes_from_client, record.bytes_to_client);
    let (outcome, reason) = match &result {
        Ok(()) => ("ok", String::new()),
        Err(failure) => (failure.outcome(), failure.to_string()),
    };
    tracing::info!(
        target: "postern::access",
        workload = %service.workload,
        port = original_dst.port(),
        original_dst = %original_dst,
        peer = %canonical(peer),
        tls_version = %record.tls_version.unwrap_or("-"),
        client_subject = ?record.client_subject.as_deref().unwrap_or("-"),
        peer_identity = %record.peer_identity.as_deref().unwrap_or("-"),
        alpn = %record.alpn.as_deref().unwrap_or("-"),
        bytes_from_client = record.bytes_from_client,
        bytes_to_client = record.bytes_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = %outcome,
        reason = ?reason,
    );
}

/// Completes the server side of a TLS handshake under the handshake timeout and records the
/// session. On failure, the connection is handed back (unless the timeout took it) so the
/// caller can decide how to close it.
///
/// The handshake's state and the resulting stream (over a kilobyte each) live on the heap:
/// held inline, every future that waits on them or moves the stream along would reserve room
/// for them for the connection's whole life, an idle one's too.
async fn accept_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    service: &PortService,
    record: &mut Record,
) -> Result<Box<tokio_rustls::server::TlsStream<TcpStream>>, (Failure, Option<TcpStream>)> {
    let timeout = service.timeouts.handshake;
    let started = Instant::now();
    let accepting = Box::pin(TlsAcceptor::from(config).accept(stream).into_fallible());
    let tls = match tokio::time::timeout(timeout, accepting).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((e, stream))) => {
            service.metrics.handshake_failed(HandshakeFailure::of(&e));
            return Err((Failure::Handshake(e), Some(stream)));
        }
        Err(_) => {
            service.metrics.handshake_failed(HandshakeFailure::Timeout);
            return Err((Failure::HandshakeTimeout(timeout), None));
        }
    };
    service.metrics.handshake_done(started.elapsed());
    let (_, session) = tls.get_ref();
    record.tls_version = session.protocol_version().map(crate::tls::version_name);
    // Parsing the client's certificate for its subject and SPIFFE ID serves only the access
    // log: with the log off, a connection neither spends the time nor keeps the strings.
    if tracing::enabled!(target: "postern::access", tracing::Level::INFO) {
        record.client_subject = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(crate::tls::certificate_subject);
        record.peer_identity = crate::tls::mesh::peer_spiffe_id(session.peer_certificates());
        record.alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
    }
    Ok(Box::new(tls))
}

/// Whether the client's first byte, waited for up to `wait`, starts a TLS handshake.
async fn starts_tls(stream: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(wait, stream.peek(&mut first)).await;
    matches!(peeked, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE_RECORD
}

async fn apply_policy(
    stream: TcpStream,
    service: &PortService,
    port: u16,
    record: &mut Record,
) -> Result<(), Failure> {
    let timeouts = service.timeouts;
    match &service.action {
        Action::Tls(source) => {
            let tls = accept_tls(stream, source.current(), service, record)
                .await
                .map_err(|(failure, _)| failure)?;
            to_app(tls, service, port, record).await
        }
        Action::Mesh {
            identity,
            permissive,
        } => {
            let wait = if *permissive {
                timeouts.detect
            } else {
                timeouts.handshake
            };
            if !starts_tls(&stream, wait).await {
                if *permissive {
                    return plain_to_app(stream, service, port, record).await;
                }
                reset(stream);
                return Err(Failure::Reset(STRICT_NOT_TLS));
            }
            match accept_tls(stream, identity.current(), service, record).await {
                Ok(tls) => to_app(tls, service, port, record).await,
                Err((failure, stream)) => {
                    // As Istio's sidecars do: a client the mesh refuses sees a reset.
                    if let Some(stream) = stream {
                        reset(stream);
                    }
                    Err(failure)
                }
            }
        }
        Action::Plaintext => plain_to_app(stream, service, port, record).await,
        Action::Reset(reason) => {
            // Wait for the client's first bytes so it sees a reset in answer to what it sent,
            // not a refusal of its connect: the same error (curl exit 56) as from Istio.
            let mut first = [0u8; 1];
            let _ = tokio::time::timeout(timeouts.handshake, stream.peek(&mut first)).await;
            reset(stream);
            Err(Failure::Reset(reason))
        }
        Action::Permissive(tls_reason) => {
            if starts_tls(&stream, timeouts.detect).await {
                reset(stream);
                return Err(Failure::Reset(tls_reason));
            }
            plain_to_app(stream, service, port, record).await
        }
    }
}

/// Closes with RST instead of FIN.
pub(crate) fn reset(stream: TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0; closing with FIN");
    }
}

/// Relays a client whose bytes pass through rustls to the app, with the copy loop.
async fn to_app<C>(
    client: C,
    service: &PortService,
    port: u16,
    record: &mut Record,
) -> Result<(), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match connect_app(service, port).await? {
        App::Tcp(app) => splice(client, app, record, &service.limits).await,
        App::Unix(app) => splice(client, app, record, &service.limits).await,
    }
}

/// Relays a plaintext client to the app with the copy loop, like [`to_app`] for TLS.
///
/// Its state lives on the heap, so that it does not add to the size of every connection's
/// task, a TLS connection's too.
fn plain_to_app<'a>(
    client: TcpStream,
    service: &'a PortService,
    port: u16,
    record: &'a mut Record,
) -> Pin<Box<impl Future<Output = Result<(), Failure>> + 'a>> {
    Box::pin(to_app(client, service, port, record))
}

/// Connects to the port's app under the connect timeout.
async fn connect_app(service: &PortService, port: u16) -> Result<App, Failure> {
    let own_port = Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let endpoint = service.endpoint.as_ref().unwrap_or(&own_port);
    let connect_failed = |error: io::Error| Failure::Connect {
        endpoint: endpoint.to_string(),
        error,
    };
    let timeout = service
        .limits
        .connect_timeout
        .unwrap_or(service.timeouts.connect);
    let connecting = async {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let app = connect_tcp(&service.netns, *addr).await?;
                Ok(App::Tcp(app))
            }
            Endpoint::Unix(path) => Ok(App::Unix(UnixStream::connect(path).await?)),
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            connect_failed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        })?
        .map_err(connect_failed)
}

enum App {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to the app from 127.0.0.6, inside the workload's network namespace.
async fn connect_tcp(netns: &Netns, addr: SocketAddr) -> io::Result<TcpStream> {
    let source = SocketAddr::from((APP_SOURCE, 0));
    let socket = netns.tcp_socket(source)?;
    socket.bind(source)?;
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// Copies both ways until both sides have finished sending. Each side's end of stream is
/// passed on as a half-close (FIN, or TLS close_notify then FIN), so a client that stops
/// sending can still receive the whole answer, and the other way round. The port's idle
/// timeout and maximum duration end it early.
pub(crate) async fn splice<C, A>(
    client: C,
    app: A,
    record: &mut Record,
    limits: &ConnectionLimits,
) -> Result<(), Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut app_read, mut app_write) = tokio::io::split(app);
    let activity = Activity::new();
    let upstream = pin!(pump(
        &mut client_read,
        &mut app_write,
        &mut record.bytes_from_client,
        &activity,
    ));
    let downstream = pin!(pump(
        &mut app_read,
        &mut client_write,
        &mut record.bytes_to_client,
        &activity,
    ));
    let both = pin!(async { tokio::try_join!(upstream, downstream) });
    bounded(both, limits, &activity).await
}

/// When a connection started and when a byte last moved either way, for the idle timeout.
struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte either way.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }
}

/// Runs both directions of a connection until they finish, the port's idle timeout or its
/// maximum duration, whichever comes first.
///
/// Every future here lives as long as the connection, so none is held twice: `both` comes
/// pinned by its caller, and the timers are made where `select!` keeps them. (A future passed
/// by value, or kept in a local before `select!` moves it, occupies room in the connection's
/// task twice.)
async fn bounded<T>(
    both: Pin<&mut impl Future<Output = io::Result<T>>>,
    limits: &ConnectionLimits,
    activity: &Activity,
) -> Result<(), Failure> {
    tokio::select! {
        done = both => done.map(|_| ()).map_err(Failure::Splice),
        failure = idle_limit(limits.idle_timeout, activity) => Err(failure),
        failure = lifetime_limit(limits.max_connection_duration) => Err(failure),
    }
}

/// Completes when the connection has been idle for the port's idle timeout, if it has one.
async fn idle_limit(limit: Option<Duration>, activity: &Activity) -> Failure {
    match limit {
        Some(limit) => idle_watch(limit, activity).await,
        None => std::future::pending().await,
    }
}

/// Completes when the connection has been open for the port's maximum duration, if it has one.
async fn lifetime_limit(limit: Option<Duration>) -> Failure {
    match limit {
        Some(limit) => {
            tokio::time::sleep(limit).await;
            Failure::MaxDuration(limit)
        }
        None => std::future::pending().await,
    }
}

/// Completes once no byte has moved either way for `limit`.
async fn idle_watch(limit: Duration, activity: &Activity) -> Failure {
    loop {
        let last = Duration::from_millis(activity.last.load(Ordering::Relaxed));
        let quiet = activity.started.elapsed().saturating_sub(last);
        if quiet >= limit {
            return Failure::Idle(limit);
        }
        tokio::time::sleep(limit - quiet).await;
    }
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    moved: &mut u64,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = CopyBuffer::default();
    loop {
        let bytes = match buffer.read(from).await {
            Ok(bytes) => bytes,
            // A TLS client that closes its TCP side without close_notify: its bytes so far are
            // complete records, so pass the end of stream on like a FIN, as a TCP proxy must.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => &[],
            Err(e) => return Err(e),
        };
        if bytes.is_empty() {
            return to.shutdown().await;
        }
        to.write_all(bytes).await?;
        to.flush().await?;
        *moved += bytes.len() as u64;
        activity.touch();
    }
}

/// `::ffff:a.b.c.d` (what a dual-stack socket reports for IPv4) as plain IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::to_canonical(&addr.ip()), addr.port())
}
