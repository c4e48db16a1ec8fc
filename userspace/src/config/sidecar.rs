//! Istio `Sidecar` documents: which inbound ports a workload serves, on what endpoint, and
//! with what TLS ("Ingress Sidecar TLS Termination").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::document::Kind;
use super::error::{expected, FieldPath, Report};
use super::values::{
    self, absolute_path, choose, ip_address, optional, port_number, Choice, Labels,
};
use crate::policy::{Endpoint, Protocol, TlsMode, TlsSettings};

/// A valid Sidecar.
#[derive(Debug)]
pub(super) struct Sidecar {
    /// `workloadSelector.labels`; `None` for a namespace-wide (or mesh-wide) Sidecar.
    pub selector: Option<Labels>,
    /// Distinct port numbers.
    pub ingress: Vec<IngressPort>,
}

/// One valid `spec.ingress[]` entry.
#[derive(Debug)]
pub(super) struct IngressPort {
    /// `spec.ingress[N]`, to point back at this entry from later problems.
    pub path: FieldPath,
    pub port: u16,
    pub name: Option<String>,
    pub protocol: Protocol,
    pub bind: Option<IpAddr>,
    pub endpoint: Endpoint,
    pub tls: Option<TlsSettings>,
}

/// Where an app listens when the Sidecar names no `defaultEndpoint`: the same port, on
/// loopback inside the workload's network namespace.
pub(super) fn loopback(port: u16) -> Endpoint {
    Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// The `spec` as written. Like every raw type here it says what it expects in YAML terms,
/// rather than serde's default `expected struct RawSidecarSpec`.
#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSidecarSpec {
    workload_selector: Option<RawWorkloadSelector>,
    #[serde(default)]
    ingress: Vec<RawIngress>,
    egress: Option<IgnoredAny>,
    outbound_traffic_policy: Option<IgnoredAny>,
    inbound_connection_pool: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
struct RawWorkloadSelector {
    labels: Option<Labels>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
struct RawIngress {
    port: RawPort,
    bind: Option<String>,
    capture_mode: Option<String>,
    default_endpoint: Option<String>,
    /// Kept as YAML so that unsupported TLS fields get their own message (see
    /// [`UNSUPPORTED_TLS_FIELDS`]) rather than serde's generic "unknown field".
    tls: Option<Mapping>,
    connection_pool: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    number: u64,
    protocol: Option<String>,
    name: Option<String>,
    target_port: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    mode: Option<String>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
}

const CAPTURE_MODES: &[Choice<()>] = &[
    Choice::Accept("DEFAULT", ()),
    Choice::Accept("IPTABLES", ()),
    Choice::Refuse("NONE", "postern intercepts every port it serves"),
];

const TLS_MODES: &[Choice<TlsMode>] = &[
    Choice::Accept("SIMPLE", TlsMode::Simple),
    Choice::Accept("MUTUAL", TlsMode::Mutual),
    Choice::Refuse(
        "ISTIO_MUTUAL",
        "Istio rejects ISTIO_MUTUAL on sidecar ingress as well",
    ),
    Choice::Refuse("PASSTHROUGH", "not supported: postern terminates TLS"),
    Choice::Refuse("AUTO_PASSTHROUGH", "not supported: postern terminates TLS"),
    Choice::Refuse("OPTIONAL_MUTUAL", "not supported"),
];

/// ServerTLSSettings fields postern does not implement. Each restricts who may connect or
/// how; accepting one without enforcing it would quietly weaken what the operator asked for.
const UNSUPPORTED_TLS_FIELDS: &[&str] = &[
    "subjectAltNames",
    "verifyCertificateSpki",
    "verifyCertificateHash",
    "caCrl",
    "minProtocolVersion",
    "maxProtocolVersion",
    "cipherSuites",
    "credentialName",
    "credentialNames",
    "httpsRedirect",
    "tlsCertificates",
];

impl Kind for Sidecar {
    const NAME: &'static str = "Sidecar";
    const GROUP: &'static str = "networking.istio.io";
    const VERSIONS: &'static [&'static str] = &["v1alpha3", "v1beta1", "v1"];
    type Raw = RawSidecarSpec;

    fn validate(raw: RawSidecarSpec, spec: &FieldPath, report: &mut Report) -> Option<Sidecar> {
        let selector = optional(raw.workload_selector, |selector| {
            let field = spec.key("workloadSelector").key("labels");
            report.check(&field, values::selector(selector.labels))
        });
        if raw.egress.is_some() || raw.outbound_traffic_policy.is_some() {
            tracing::debug!(
                document = %report.origin,
                "egress and outboundTrafficPolicy are outbound settings; ignored"
            );
        }
        if raw.inbound_connection_pool.is_some() {
            report.warn(&spec.key("inboundConnectionPool"), CONNECTION_LIMITS);
        }
        // Every entry is checked, so that all their problems are reported at once.
        let ingress: Vec<Option<IngressPort>> = raw
            .ingress
            .into_iter()
            .enumerate()
            .map(|(index, raw)| ingress_port(raw, spec.key("ingress").index(index), report))
            .collect();
        let ingress: Vec<IngressPort> = ingress.into_iter().collect::<Option<_>>()?;
        let ingress = distinct_ports(ingress, report)?;
        Some(Sidecar {
            selector: selector?,
            ingress,
        })
    }
}

const CONNECTION_LIMITS: &str = "connection limits are not enforced yet; accepted and ignored";

fn ingress_port(raw: RawIngress, path: FieldPath, report: &mut Report) -> Option<IngressPort> {
    let port_path = path.key("port");
    let port = report.check(&port_path.key("number"), port_number(raw.port.number));
    let protocol = report.check(
        &port_path.key("protocol"),
        protocol(raw.port.protocol.as_deref()),
    );
    let target_port = report.check(
        &port_path.key("targetPort"),
        match raw.port.target_port {
            Some(_) => Err("not supported; the app's port is given by defaultEndpoint".to_owned()),
            None => Ok(()),
        },
    );
    let bind = optional(raw.bind, |bind| {
        report.check(&path.key("bind"), ip_address(&bind))
    });
    let capture_mode = optional(raw.capture_mode, |mode| {
        report.check(&path.key("captureMode"), choose(Some(&mode), CAPTURE_MODES))
    });
    let endpoint = match raw.default_endpoint {
        Some(endpoint) => report.check(&path.key("defaultEndpoint"), app_endpoint(&endpoint)),
        None => port.map(loopback),
    };
    let tls = optional(raw.tls, |tls| tls_settings(tls, &path.key("tls"), report));
    if raw.connection_pool.is_some() {
        report.warn(&path.key("connectionPool"), CONNECTION_LIMITS);
    }
    target_port?;
    capture_mode?;
    Some(IngressPort {
        path,
        port: port?,
        name: raw.port.name,
        protocol: protocol?,
        bind: bind?,
        endpoint: endpoint?,
        tls: tls?,
    })
}

fn protocol(name: Option<&str>) -> Result<Protocol, String> {
    name.and_then(Protocol::parse).ok_or_else(|| {
        expected(
            &Protocol::ALL.map(Protocol::name),
            name.unwrap_or("nothing"),
        )
    })
}

/// `defaultEndpoint`: the app, reached over loopback inside the workload's network
/// namespace, or over a Unix socket.
fn app_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Some(path) = text.strip_prefix("unix://") {
        return absolute_path(path).map(Endpoint::Unix);
    }
    let forms = ["127.0.0.1:PORT", "0.0.0.0:PORT", "unix:///PATH"];
    let address: SocketAddr = text
        .parse()
        .map_err(|_| expected(&forms, format!("{text:?}")))?;
    if address.port() == 0 {
        return Err(expected(&["a port number 1-65535"], text));
    }
    match address.ip() {
        IpAddr::V6(_) => {
            Err("IPv6 app endpoints are not supported yet; use 127.0.0.1:PORT".to_owned())
        }
        // Istio sends `0.0.0.0:PORT` traffic to the pod's own address; inside the pod's
        // network namespace loopback reaches the same app without leaving it.
        IpAddr::V4(ip) if ip.is_unspecified() => Ok(loopback(address.port())),
        IpAddr::V4(ip) if ip.is_loopback() => Ok(Endpoint::Tcp(address)),
        IpAddr::V4(_) => Err(format!(
            "{} (decrypted traffic must not leave the workload's network namespace)",
            expected(&forms, text)
        )),
    }
}

fn tls_settings(mut tls: Mapping, path: &FieldPath, report: &mut Report) -> Option<TlsSettings> {
    let mut supported = true;
    for field in UNSUPPORTED_TLS_FIELDS {
        if tls.remove(*field).is_some() {
            supported = false;
            report.error(
                &path.key(field),
                format!(
                    "postern does not support {field} yet, and accepting it would silently \
                     ignore a security setting; remove it or use Envoy"
                ),
            );
        }
    }
    let raw: RawTls = report.deserialize(path, Value::Mapping(tls))?;
    let mode = report.check(&path.key("mode"), choose(raw.mode.as_deref(), TLS_MODES));
    let server_certificate = file(
        raw.server_certificate,
        &path.key("serverCertificate"),
        report,
    );
    let private_key = file(raw.private_key, &path.key("privateKey"), report);
    let ca_path = path.key("caCertificates");
    let ca_certificates = match (mode, raw.ca_certificates) {
        (Some(TlsMode::Simple), Some(_)) => {
            report.warn(
                &ca_path,
                "unused with mode SIMPLE, as in Istio: clients are not asked for a certificate",
            );
            Some(None)
        }
        (Some(TlsMode::Mutual), None) => {
            report.error(
                &ca_path,
                "required with mode MUTUAL, to verify client certificates: expected an \
                 absolute path, found nothing",
            );
            None
        }
        (_, ca) => optional(ca, |ca| report.check(&ca_path, absolute_path(&ca))),
    };
    if !supported {
        return None;
    }
    Some(TlsSettings {
        mode: mode?,
        server_certificate: server_certificate?,
        private_key: private_key?,
        ca_certificates: ca_certificates?,
    })
}

/// A required file path. The file is not read here: the `tls` module loads it, and again
/// whenever it changes.
fn file(
    value: Option<String>,
    path: &FieldPath,
    report: &mut Report,
) -> Option<std::path::PathBuf> {
    let value = value.ok_or_else(|| expected(&["an absolute path"], "nothing"));
    report.check(path, value.and_then(|value| absolute_path(&value)))
}

/// Refuses a port listed twice: which entry should win is not for postern to guess.
fn distinct_ports(ingress: Vec<IngressPort>, report: &mut Report) -> Option<Vec<IngressPort>> {
    let mut distinct = true;
    for (position, entry) in ingress.iter().enumerate() {
        if let Some(first) = ingress[..position]
            .iter()
            .find(|first| first.port == entry.port)
        {
            distinct = false;
            report.error(
                &entry.path.key("port").key("number"),
                format!("port {} is already listed at {}", entry.port, first.path),
            );
        }
    }
    distinct.then_some(ingress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{assert_error, load, stream, warnings, HTTPBIN};
    use crate::policy::PortPolicy;

    const LOCATION: &str = "test.yaml: document 1 (Sidecar test/s)";
    const TLS: &str = "serverCertificate: /c.crt, privateKey: /k.key";

    /// A Sidecar selecting httpbin, with these `spec.ingress` entries (flow mappings).
    fn sidecar(entries: &[&str]) -> String {
        let entries: Vec<String> = entries
            .iter()
            .map(|entry| format!("  - {entry}\n"))
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: s}}\nspec:\n  \
             workloadSelector: {{labels: {{app: httpbin}}}}\n  ingress:\n{}",
            entries.concat()
        )
    }

    #[track_caller]
    fn assert_entry_error(entry: &str, field: &str, message: &str) {
        assert_error(
            &sidecar(&[entry]),
            &format!("{LOCATION}: spec.ingress[0].{field}: {message}"),
        );
    }

    /// The ports httpbin gets from these entries, with PeerAuthentication DISABLE so that the
    /// Sidecar's settings show unaltered.
    fn ports(entries: &[&str]) -> Vec<PortPolicy> {
        let disable =
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d}\n\
                       spec: {mtls: {mode: DISABLE}}";
        let table = load(&stream(&[&sidecar(entries), HTTPBIN, disable])).unwrap();
        table.workloads[0].ports.clone()
    }

    #[test]
    fn every_protocol_name_parses_back_to_itself() {
        for protocol in Protocol::ALL {
            assert_eq!(Protocol::parse(protocol.name()), Some(protocol));
            assert_eq!(
                Protocol::parse(&protocol.name().to_lowercase()),
                Some(protocol)
            );
        }
    }

    #[test]
    fn an_entry_maps_to_a_port_policy() {
        let ports = ports(&[
            &format!("{{port: {{number: 8443, protocol: grpc, name: api}}, bind: 10.0.0.1, captureMode: IPTABLES, \
                      defaultEndpoint: '127.0.0.1:8080', tls: {{mode: SIMPLE, {TLS}}}}}"),
            "{port: {number: 9000, protocol: TCP}}",
        ]);
        assert_eq!(ports[0].name.as_deref(), Some("api"));
        assert_eq!(ports[0].protocol, Protocol::Grpc);
        assert_eq!(ports[0].bind, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            ports[0].endpoint,
            Endpoint::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        let expected = TlsSettings {
            mode: TlsMode::Simple,
            server_certificate: "/c.crt".into(),
            private_key: "/k.key".into(),
            ca_certificates: None,
        };
        assert_eq!(ports[0].action, crate::policy::PortAction::Tls(expected));
        // Without defaultEndpoint, the app is on the same port on loopback.
        assert_eq!(ports[1].endpoint, loopback(9000));
        assert_eq!(ports[1].name, None);
    }

    #[test]
    fn default_endpoints_are_loopback_or_unix_sockets() {
        assert_eq!(app_endpoint("0.0.0.0:80"), Ok(loopback(80)));
        assert_eq!(app_endpoint("127.0.0.1:80"), Ok(loopback(80)));
        assert_eq!(
            app_endpoint("127.0.0.5:81"),
            Ok(Endpoint::Tcp("127.0.0.5:81".parse().unwrap()))
        );
        assert_eq!(
            app_endpoint("unix:///run/app.sock"),
            Ok(Endpoint::Unix("/run/app.sock".into()))
        );
    }

    #[test]
    fn default_endpoint_errors() {
        let ipv6 = "IPv6 app endpoints are not supported yet; use 127.0.0.1:PORT";
        assert_eq!(app_endpoint("[::1]:80"), Err(ipv6.to_owned()));
        assert_eq!(app_endpoint("[::]:80"), Err(ipv6.to_owned()));
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, defaultEndpoint: '10.1.2.3:80'}",
            "defaultEndpoint",
            "expected 127.0.0.1:PORT, 0.0.0.0:PORT or unix:///PATH, found 10.1.2.3:80 \
             (decrypted traffic must not leave the workload's network namespace)",
        );
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, defaultEndpoint: 'localhost:80'}",
            "defaultEndpoint",
            r#"expected 127.0.0.1:PORT, 0.0.0.0:PORT or unix:///PATH, found "localhost:80""#,
        );
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, defaultEndpoint: 'unix://app.sock'}",
            "defaultEndpoint",
            r#"expected an absolute path, found "app.sock""#,
        );
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, defaultEndpoint: '127.0.0.1:0'}",
            "defaultEndpoint",
            "expected a port number 1-65535, found 127.0.0.1:0",
        );
    }

    #[test]
    fn port_errors() {
        assert_entry_error(
            "{port: {number: 70000, protocol: HTTP}}",
            "port.number",
            "expected a port number 1-65535, found 70000",
        );
        assert_entry_error("{port: {protocol: HTTP}}", "port", "missing field `number`");
        assert_entry_error(
            "{port: 80}",
            "port",
            "invalid type: integer `80`, expected a mapping",
        );
        assert_entry_error(
            "{port: {number: 80, protocol: FTP}}",
            "port.protocol",
            "expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, MYSQL or REDIS, found FTP",
        );
        assert_entry_error(
            "{port: {number: 80}}",
            "port.protocol",
            "expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, MYSQL or REDIS, found nothing",
        );
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP, targetPort: 8080}}",
            "port.targetPort",
            "not supported; the app's port is given by defaultEndpoint",
        );
    }

    #[test]
    fn bind_and_capture_mode_errors() {
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, bind: pod.local}",
            "bind",
            r#"expected an IP address, found "pod.local""#,
        );
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, captureMode: NONE}",
            "captureMode",
            "expected DEFAULT or IPTABLES, found NONE (postern intercepts every port it serves)",
        );
    }

    #[test]
    fn unknown_entry_fields_are_refused() {
        assert_entry_error(
            "{port: {number: 80, protocol: HTTP}, defaultEndPoint: '127.0.0.1:80'}",
            "defaultEndPoint",
            "unknown field `defaultEndPoint`, expected one of `port`, `bind`, `captureMode`, \
             `defaultEndpoint`, `tls`, `connectionPool`",
        );
    }

    #[test]
    fn tls_mode_errors() {
        let entry = |mode: &str| {
            format!("{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: {mode}, {TLS}}}}}")
        };
        assert_error(
            &sidecar(&[&entry("ISTIO_MUTUAL")]),
            "test.yaml: document 1 (Sidecar test/s): spec.ingress[0].tls.mode: expected SIMPLE or MUTUAL, \
             found ISTIO_MUTUAL (Istio rejects ISTIO_MUTUAL on sidecar ingress as well)",
        );
        for mode in ["PASSTHROUGH", "AUTO_PASSTHROUGH", "OPTIONAL_MUTUAL"] {
            let err = crate::config::testing::errors(&sidecar(&[&entry(mode)]));
            assert!(
                err.starts_with(&format!("{LOCATION}: spec.ingress[0].tls.mode: expected SIMPLE or MUTUAL, found {mode} (not supported")),
                "{err}"
            );
        }
        assert_entry_error(
            &format!("{{port: {{number: 9080, protocol: HTTPS}}, tls: {{{TLS}}}}}"),
            "tls.mode",
            "expected SIMPLE or MUTUAL, found nothing",
        );
    }

    #[test]
    fn tls_files_are_required_absolute_paths() {
        assert_error(
            &sidecar(&["{port: {number: 9080, protocol: HTTPS}, tls: {mode: MUTUAL, serverCertificate: c.crt}}"]),
            &[
                format!("{LOCATION}: spec.ingress[0].tls.serverCertificate: expected an absolute path, found \"c.crt\""),
                format!("{LOCATION}: spec.ingress[0].tls.privateKey: expected an absolute path, found nothing"),
                format!(
                    "{LOCATION}: spec.ingress[0].tls.caCertificates: required with mode MUTUAL, to verify \
                     client certificates: expected an absolute path, found nothing"
                ),
            ]
            .join("\n"),
        );
    }

    #[test]
    fn simple_tls_ignores_ca_certificates_with_a_warning() {
        let entry = format!("{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: SIMPLE, {TLS}, caCertificates: /ca.crt}}}}");
        // Alone, without the Workload it selects.
        assert_eq!(
            warnings(&sidecar(&[&entry])),
            [
                format!("{LOCATION}: spec.ingress[0].tls.caCertificates: unused with mode SIMPLE, as in Istio: clients are not asked for a certificate"),
                format!("{LOCATION}: spec.workloadSelector.labels: selects no Workload in namespace test, so it has no effect"),
            ]
        );
        let ports = ports(&[&entry]);
        let crate::policy::PortAction::Tls(tls) = &ports[0].action else {
            panic!("{ports:?}")
        };
        assert_eq!(tls.ca_certificates, None);
    }

    #[test]
    fn unsupported_tls_fields_are_refused_by_name() {
        for field in UNSUPPORTED_TLS_FIELDS {
            let entry = format!("{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: SIMPLE, {TLS}, {field}: x}}}}");
            assert_entry_error(
                &entry,
                &format!("tls.{field}"),
                &format!(
                    "postern does not support {field} yet, and accepting it would silently ignore a security \
                     setting; remove it or use Envoy"
                ),
            );
        }
        assert_entry_error(
            &format!("{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: SIMPLE, {TLS}, sni: x}}}}"),
            "tls.sni",
            "unknown field `sni`, expected one of `mode`, `serverCertificate`, `privateKey`, `caCertificates`",
        );
    }

    #[test]
    fn duplicate_ports_are_refused() {
        assert_error(
            &sidecar(&["{port: {number: 80, protocol: HTTP}}", "{port: {number: 81, protocol: HTTP}}", "{port: {number: 80, protocol: TCP}}"]),
            &format!("{LOCATION}: spec.ingress[2].port.number: port 80 is already listed at spec.ingress[0]"),
        );
    }

    #[test]
    fn a_workload_selector_needs_labels() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {workloadSelector: {}}";
        assert_error(
            yaml,
            &format!(
                "{LOCATION}: spec.workloadSelector.labels: expected at least one label, found none \
                 (omit the selector entirely to apply to the whole namespace)"
            ),
        );
    }

    #[test]
    fn outbound_settings_are_ignored_and_connection_pools_warned() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  \
                    egress: [{hosts: ['./*']}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  \
                    inboundConnectionPool: {tcp: {maxConnections: 10}}\n  ingress:\n  \
                    - {port: {number: 80, protocol: HTTP}, connectionPool: {tcp: {maxConnections: 1}}}";
        let limits = "connection limits are not enforced yet; accepted and ignored";
        assert_eq!(
            warnings(yaml),
            [
                format!("{LOCATION}: spec.inboundConnectionPool: {limits}"),
                format!("{LOCATION}: spec.ingress[0].connectionPool: {limits}"),
            ]
        );
    }
}
