//! Istio's `ConnectionPoolSettings`, on a Sidecar ingress port (`connectionPool`) and for the
//! whole Sidecar (`inboundConnectionPool`), as far as a TCP terminator can honour them. A
//! port's own settings win field by field over the Sidecar's.

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::error::{FieldPath, Report};
use crate::policy::ConnectionLimits;

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub(super) struct RawConnectionPool {
    tcp: Option<RawTcp>,
    http: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
struct RawTcp {
    max_connections: Option<i64>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connection_duration: Option<String>,
    tcp_keepalive: Option<IgnoredAny>,
}

/// The limits `raw` (at `path`) sets, each field falling back to `defaults`.
pub(super) fn limits(
    raw: Option<RawConnectionPool>,
    path: &FieldPath,
    defaults: ConnectionLimits,
    report: &mut Report,
) -> Option<ConnectionLimits> {
    let Some(raw) = raw else {
        return Some(defaults);
    };
    if raw.http.is_some() {
        report.warn(
            &path.key("http"),
            "HTTP settings do not apply: postern terminates TLS and passes bytes on (L4)",
        );
    }
    let Some(tcp) = raw.tcp else {
        return Some(defaults);
    };
    let tcp_path = path.key("tcp");
    if tcp.tcp_keepalive.is_some() {
        report.warn(&tcp_path.key("tcpKeepalive"), "not applied yet");
    }
    let max_connections = match tcp.max_connections {
        None => Some(defaults.max_connections),
        Some(n) => report
            .check(
                &tcp_path.key("maxConnections"),
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("expected a positive number of connections, found {n}")),
            )
            .map(Some),
    };
    let mut duration = |field: &str, value: Option<String>, default: Option<Duration>| match value {
        None => Some(default),
        Some(text) => report
            .check(&tcp_path.key(field), parse_duration(&text))
            .map(Some),
    };
    let connect_timeout = duration(
        "connectTimeout",
        tcp.connect_timeout,
        defaults.connect_timeout,
    );
    let idle_timeout = duration("idleTimeout", tcp.idle_timeout, defaults.idle_timeout);
    let max_connection_duration = duration(
        "maxConnectionDuration",
        tcp.max_connection_duration,
        defaults.max_connection_duration,
    );
    Some(ConnectionLimits {
        max_connections: max_connections?,
        connect_timeout: connect_timeout?,
        idle_timeout: idle_timeout?,
        max_connection_duration: max_connection_duration?,
    })
}

/// A duration as Istio's YAML writes them (Go's syntax): `30ms`, `1.5s`, `10m`, `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("expected a duration such as 30ms, 10s or 1h30m, found {text:?}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_end);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        total += value * seconds;
        rest = after;
    }
    if total <= 0.0 {
        return Err(format!("expected a duration above zero, found {text:?}"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_istio_writes_them() {
        assert_eq!(parse_duration("30ms"), Ok(Duration::from_millis(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").unwrap_err().contains("30ms"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
    }
}
