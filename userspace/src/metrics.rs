//! Per-listener metrics, updated with atomics on the connection path and rendered in the
//! Prometheus text format at scrape time.
//!
//! Names follow Prometheus conventions (`_total` counters, base units). Where Istio has a
//! standard metric for the same thing, it is offered under Istio's name and labels too, so
//! dashboards built for sidecars keep working.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a TLS handshake failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// MUTUAL, and the client sent no certificate.
    NoClientCert,
    /// The client certificate was not issued by a configured CA.
    UnknownCa,
    /// The client certificate names none of the allowed subjects.
    BadSan,
    /// The client certificate is otherwise unacceptable (expired, revoked, pinned elsewhere).
    BadCertificate,
    /// No finished handshake within the handshake timeout.
    Timeout,
    /// The client did not speak TLS at all (plaintext to a TLS port).
    NotTls,
    /// Anything else the TLS protocol refused (versions, ciphers, alerts).
    Protocol,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::BadSan,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::NotTls,
        HandshakeFailure::Protocol,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::BadSan => "bad_san",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Protocol => "protocol",
        }
    }

    /// Classifies the error tokio-rustls returned from a handshake.
    pub fn of(error: &std::io::Error) -> HandshakeFailure {
        use rustls::{CertificateError as C, Error as E};
        match error.get_ref().and_then(|e| e.downcast_ref::<E>()) {
            Some(E::NoCertificatesPresented) => HandshakeFailure::NoClientCert,
            Some(E::InvalidCertificate(C::UnknownIssuer)) => HandshakeFailure::UnknownCa,
            Some(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
                HandshakeFailure::BadSan
            }
            Some(E::InvalidCertificate(_)) => HandshakeFailure::BadCertificate,
            Some(E::InvalidMessage(_)) => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// Why `accept(2)` failed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// Out of file descriptors, postern's own (EMFILE) or the system's (ENFILE).
    FdLimit,
    /// Out of kernel memory for sockets (ENOBUFS, ENOMEM).
    Memory,
    /// Anything else.
    Other,
}

impl AcceptError {
    const ALL: [AcceptError; 3] = [
        AcceptError::FdLimit,
        AcceptError::Memory,
        AcceptError::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            AcceptError::FdLimit => "fd_limit",
            AcceptError::Memory => "memory",
            AcceptError::Other => "other",
        }
    }

    pub fn of(error: &std::io::Error) -> AcceptError {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => AcceptError::FdLimit,
            Some(libc::ENOBUFS | libc::ENOMEM) => AcceptError::Memory,
            _ => AcceptError::Other,
        }
    }
}

/// postern's process-wide limits, all listeners together: the connection cap and what it
/// refused, and failed accepts.
#[derive(Debug, Default)]
pub struct LimitMetrics {
    /// Connections reset at accept because postern already held its maximum.
    refused_max_connections: AtomicU64,
    accept_errors: [AtomicU64; AcceptError::ALL.len()],
}

impl LimitMetrics {
    pub fn refused_max_connections(&self) {
        self.refused_max_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_failed(&self, error: AcceptError) {
        count_one(&AcceptError::ALL, &self.accept_errors, error);
    }

    /// The families, given the cap (`--max-connections`) and the connections held now.
    pub fn render(&self, limit: usize, active: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP postern_connections_limit Most connections postern holds at once, all ports together (--max-connections).\n# TYPE postern_connections_limit gauge\npostern_connections_limit {limit}"
        );
        let _ = writeln!(
            out,
            "# HELP postern_connections_held Connections postern holds now, all ports together.\n# TYPE postern_connections_held gauge\npostern_connections_held {active}"
        );
        let _ = writeln!(
            out,
            "# HELP postern_connections_refused_total Connections reset at accept, before any policy, by reason.\n# TYPE postern_connections_refused_total counter\npostern_connections_refused_total{{reason=\"max_connections\"}} {}",
            self.refused_max_connections.load(Ordering::Relaxed)
        );
        let name = "postern_accept_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed accepts, by reason; each is followed by a short pause, not a retry loop.\n# TYPE {name} counter"
        );
        for (reason, count) in AcceptError::ALL.iter().zip(&self.accept_errors) {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.label(),
                count.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Upper bounds of the handshake-duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The metrics of one listener.
#[derive(Debug)]
pub struct PortMetrics {
    namespace: String,
    workload: String,
    /// The configured port, or `*` for a workload's every-other-port listener.
    port: String,
    opened: AtomicU64,
    closed: AtomicU64,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Cumulative counts per bucket, then +Inf.
    handshake_buckets: [AtomicU64; BUCKETS.len() + 1],
    handshake_sum_nanos: AtomicU64,
}

impl PortMetrics {
    pub fn new(namespace: &str, workload: &str, port: Option<u16>) -> PortMetrics {
        PortMetrics {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            port: port.map_or_else(|| "*".to_string(), |p| p.to_string()),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            failures: Default::default(),
            handshake_buckets: Default::default(),
            handshake_sum_nanos: AtomicU64::new(0),
        }
    }

    /// Connections opened and not yet closed.
    pub fn active(&self) -> u64 {
        let opened = self.opened.load(Ordering::Relaxed);
        opened.saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self, bytes_from_client: u64, bytes_to_client: u64) {
        self.bytes_from_client
            .fetch_add(bytes_from_client, Ordering::Relaxed);
        self.bytes_to_client
            .fetch_add(bytes_to_client, Ordering::Relaxed);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        count_one(&HandshakeFailure::ALL, &self.failures, reason);
    }

    pub fn handshake_done(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.handshake_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.handshake_sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// `namespace="...",workload="...",port="..."`, for this listener's series.
    pub fn labels(&self) -> String {
        format!(
            "namespace=\"{}\",workload=\"{}\",port=\"{}\"",
            escape(&self.namespace),
            escape(&self.workload),
            self.port
        )
    }

    fn istio_labels(&self) -> String {
        format!(
            "reporter=\"destination\",destination_workload=\"{}\",destination_workload_namespace=\"{}\",destination_port=\"{}\"",
            escape(&self.workload),
            escape(&self.namespace),
            self.port
        )
    }
}

/// One metric family: its help, type, and a sample per listener.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    ports: &[&PortMetrics],
    labels: fn(&PortMetrics) -> String,
    value: fn(&PortMetrics) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for port in ports {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(port), value(port));
    }
}

type Counter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PortMetrics) -> u64,
);

/// postern's counter, Istio's name for the same, help, value.
const COUNTERS: [Counter; 4] = [
    (
        "postern_connections_opened_total",
        "istio_tcp_connections_opened_total",
        "Connections accepted.",
        |p| p.opened.load(Ordering::Relaxed),
    ),
    (
        "postern_connections_closed_total",
        "istio_tcp_connections_closed_total",
        "Connections finished.",
        |p| p.closed.load(Ordering::Relaxed),
    ),
    (
        "postern_received_bytes_total",
        "istio_tcp_received_bytes_total",
        "Bytes received from clients (after TLS).",
        |p| p.bytes_from_client.load(Ordering::Relaxed),
    ),
    (
        "postern_sent_bytes_total",
        "istio_tcp_sent_bytes_total",
        "Bytes sent to clients (before TLS).",
        |p| p.bytes_to_client.load(Ordering::Relaxed),
    ),
];

/// Renders every listener's metrics, and `extra` (already formatted families), as Prometheus
/// text.
pub fn render(ports: &[&PortMetrics], extra: &str) -> String {
    let mut out = String::new();
    for (name, istio_name, help, value) in COUNTERS {
        family(
            &mut out,
            name,
            "counter",
            help,
            ports,
            PortMetrics::labels,
            value,
        );
        family(
            &mut out,
            istio_name,
            "counter",
            help,
            ports,
            PortMetrics::istio_labels,
            value,
        );
    }
    family(
        &mut out,
        "postern_connections_active",
        "gauge",
        "Connections in progress.",
        ports,
        PortMetrics::labels,
        PortMetrics::active,
    );
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let name = "postern_tls_handshake_failures_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes refused, by reason.\n# TYPE {name} counter"
    );
    for port in ports {
        for (reason, count) in HandshakeFailure::ALL.iter().zip(&port.failures) {
            let _ = writeln!(
                out,
                "{name}{{{},reason=\"{}\"}} {}",
                port.labels(),
                reason.label(),
                load(count)
            );
        }
    }
    let name = "postern_tls_handshake_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from accept to a finished TLS handshake.\n# TYPE {name} histogram"
    );
    for port in ports {
        let mut cumulative = 0;
        let bounds = BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()]);
        for (bound, count) in bounds.zip(&port.handshake_buckets) {
            cumulative += load(count);
            let _ = writeln!(
                out,
                "{name}_bucket{{{},le=\"{bound}\"}} {cumulative}",
                port.labels()
            );
        }
        let sum = load(&port.handshake_sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{}}} {sum}", port.labels());
        let _ = writeln!(out, "{name}_count{{{}}} {cumulative}", port.labels());
    }
    out.push_str(extra);
    out
}

/// Adds one to the counter of `which`, given every label value (`all`) and one counter for each,
/// in the same order.
fn count_one<T: PartialEq>(all: &[T], counters: &[AtomicU64], which: T) {
    let index = all
        .iter()
        .position(|value| *value == which)
        .expect("ALL lists every value");
    counters[index].fetch_add(1, Ordering::Relaxed);
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Configuration reloads: how many, how they went, and what serves now.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// 1 for the configuration read at start, one more for each successful reload.
    pub generation: u64,
    pub successes: u64,
    pub failures: u64,
    /// When the configuration now serving was read (seconds since the epoch).
    pub loaded_unix: u64,
    /// Why the last reload failed, until one succeeds.
    pub last_error: Option<String>,
    pub last_failure_unix: Option<u64>,
}

impl ReloadStatus {
    /// Generation 1, read now.
    pub fn started() -> ReloadStatus {
        ReloadStatus {
            generation: 1,
            loaded_unix: unix_now(),
            ..ReloadStatus::default()
        }
    }

    pub fn record(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.generation += 1;
                self.successes += 1;
                self.loaded_unix = unix_now();
                self.last_error = None;
            }
            Err(error) => {
                self.failures += 1;
                self.last_error = Some(error);
                self.last_failure_unix = Some(unix_now());
            }
        }
    }

    /// The reload families, in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "# HELP postern_config_reloads_total Configuration reloads (SIGHUP or changed files), by result.\n\
             # TYPE postern_config_reloads_total counter\n\
             postern_config_reloads_total{{result=\"success\"}} {}\n\
             postern_config_reloads_total{{result=\"failure\"}} {}\n\
             # HELP postern_config_generation The configuration serving: 1 at start, one more per successful reload.\n\
             # TYPE postern_config_generation gauge\n\
             postern_config_generation {}\n\
             # HELP postern_config_last_reload_success_timestamp_seconds When the configuration serving was read.\n\
             # TYPE postern_config_last_reload_success_timestamp_seconds gauge\n\
             postern_config_last_reload_success_timestamp_seconds {}\n\
             # HELP postern_config_last_reload_successful 0 while the last reload failed (the previous configuration serves), else 1.\n\
             # TYPE postern_config_last_reload_successful gauge\n\
             postern_config_last_reload_successful {}\n",
            self.successes,
            self.failures,
            self.generation,
            self.loaded_unix,
            u8::from(self.last_error.is_none()),
        );
        out
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histogram_render_in_prometheus_text() {
        let port = PortMetrics::new("test", "httpbin", Some(9080));
        port.opened();
        port.opened();
        port.closed(10, 20);
        port.handshake_failed(HandshakeFailure::UnknownCa);
        port.handshake_done(Duration::from_millis(3));
        let text = render(&[&port], "");
        for line in [
            r#"postern_connections_opened_total{namespace="test",workload="httpbin",port="9080"} 2"#,
            r#"postern_connections_active{namespace="test",workload="httpbin",port="9080"} 1"#,
            r#"istio_tcp_received_bytes_total{reporter="destination",destination_workload="httpbin",destination_workload_namespace="test",destination_port="9080"} 10"#,
            r#"postern_sent_bytes_total{namespace="test",workload="httpbin",port="9080"} 20"#,
            r#"postern_tls_handshake_failures_total{namespace="test",workload="httpbin",port="9080",reason="unknown_ca"} 1"#,
            r#"postern_tls_handshake_failures_total{namespace="test",workload="httpbin",port="9080",reason="timeout"} 0"#,
            r#"postern_tls_handshake_duration_seconds_bucket{namespace="test",workload="httpbin",port="9080",le="0.0025"} 0"#,
            r#"postern_tls_handshake_duration_seconds_bucket{namespace="test",workload="httpbin",port="9080",le="0.005"} 1"#,
            r#"postern_tls_handshake_duration_seconds_bucket{namespace="test",workload="httpbin",port="9080",le="+Inf"} 1"#,
            r#"postern_tls_handshake_duration_seconds_count{namespace="test",workload="httpbin",port="9080"} 1"#,
            "# TYPE postern_tls_handshake_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn limits_render_with_reasons() {
        let limits = LimitMetrics::default();
        limits.refused_max_connections();
        limits.refused_max_connections();
        limits.accept_failed(AcceptError::of(&std::io::Error::from_raw_os_error(
            libc::EMFILE,
        )));
        let text = limits.render(100, 7);
        for line in [
            "postern_connections_limit 100",
            "postern_connections_held 7",
            r#"postern_connections_refused_total{reason="max_connections"} 2"#,
            r#"postern_accept_errors_total{reason="fd_limit"} 1"#,
            r#"postern_accept_errors_total{reason="memory"} 0"#,
            "# TYPE postern_accept_errors_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn rustls_errors_map_to_reasons() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            HandshakeFailure::of(&wrap(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::NoClientCert
        );
        assert_eq!(
            HandshakeFailure::of(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            HandshakeFailure::of(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))),
            HandshakeFailure::BadCertificate
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::Error::other("reset")),
            HandshakeFailure::Protocol
        );
    }
}
