//! Istio `Sidecar` documents: which inbound ports a workload serves, on what endpoint, and
//! with what TLS ("Ingress Sidecar TLS Termination").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::document::Kind;
use super::error::{expected, FieldPath, Report};
use super::limits::{limits, RawConnectionPool};
use super::values::{
    self, absolute_path, choose, ip_address, optional, port_number, Choice, Labels,
};
use crate::policy::{
    CipherSuite, ClientMatch, ConnectionLimits, Endpoint, Pin, Protocol, ProtocolSettings, TlsMode,
    TlsSettings, TlsVersion,
};

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
    pub limits: ConnectionLimits,
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
    inbound_connection_pool: Option<RawConnectionPool>,
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
    connection_pool: Option<RawConnectionPool>,
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
    ca_crl: Option<String>,
    subject_alt_names: Option<Vec<String>>,
    verify_certificate_spki: Option<Vec<String>>,
    verify_certificate_hash: Option<Vec<String>>,
    min_protocol_version: Option<String>,
    max_protocol_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
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

/// Istio's `TLSProtocol` values, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum IstioTlsVersion {
    Auto,
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

const TLS_VERSIONS: &[Choice<IstioTlsVersion>] = &[
    Choice::Accept("TLS_AUTO", IstioTlsVersion::Auto),
    Choice::Accept("TLSV1_0", IstioTlsVersion::V1_0),
    Choice::Accept("TLSV1_1", IstioTlsVersion::V1_1),
    Choice::Accept("TLSV1_2", IstioTlsVersion::V1_2),
    Choice::Accept("TLSV1_3", IstioTlsVersion::V1_3),
];

/// ServerTLSSettings fields postern does not implement. Each restricts who may connect or
/// how; accepting one without enforcing it would quietly weaken what the operator asked for.
const UNSUPPORTED_TLS_FIELDS: &[&str] = &[
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
        let inbound = limits(
            raw.inbound_connection_pool,
            &spec.key("inboundConnectionPool"),
            ConnectionLimits::default(),
            report,
        )?;
        // Every entry is checked, so that all their problems are reported at once.
        let ingress: Vec<Option<IngressPort>> = raw
            .ingress
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                ingress_port(raw, spec.key("ingress").index(index), inbound, report)
            })
            .collect();
        let ingress: Vec<IngressPort> = ingress.into_iter().collect::<Option<_>>()?;
        let ingress = distinct_ports(ingress, report)?;
        Some(Sidecar {
            selector: selector?,
            ingress,
        })
    }
}

fn ingress_port(
    raw: RawIngress,
    path: FieldPath,
    inbound: ConnectionLimits,
    report: &mut Report,
) -> Option<IngressPort> {
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
    let limits = limits(
        raw.connection_pool,
        &path.key("connectionPool"),
        inbound,
        report,
    );
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
        limits: limits?,
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
    let client = ClientFields {
        mode,
        path,
        ca_crl: raw.ca_crl,
        subject_alt_names: raw.subject_alt_names,
        spki: raw.verify_certificate_spki,
        hashes: raw.verify_certificate_hash,
    };
    let client = client.validate(report);
    let protocol = protocol_settings(
        raw.min_protocol_version,
        raw.max_protocol_version,
        raw.cipher_suites,
        path,
        report,
    );
    if !supported {
        return None;
    }
    let (ca_crl, client_match) = client?;
    Some(TlsSettings {
        mode: mode?,
        server_certificate: server_certificate?,
        private_key: private_key?,
        ca_certificates: ca_certificates?,
        ca_crl,
        client_match,
        protocol: protocol?,
    })
}

/// The fields that check a client's certificate, as written, with what they depend on.
struct ClientFields<'a> {
    mode: Option<TlsMode>,
    path: &'a FieldPath,
    ca_crl: Option<String>,
    subject_alt_names: Option<Vec<String>>,
    spki: Option<Vec<String>>,
    hashes: Option<Vec<String>>,
}

impl ClientFields<'_> {
    /// `caCrl` and the [`ClientMatch`]. Each field is refused with SIMPLE, where no client
    /// certificate is asked for: accepting it would promise a check that never happens.
    fn validate(self, report: &mut Report) -> Option<(Option<PathBuf>, ClientMatch)> {
        let mut mutual_only = |field: &str, present: bool| {
            let refused = present && self.mode == Some(TlsMode::Simple);
            if refused {
                report.error(
                    &self.path.key(field),
                    "only applies to MUTUAL: with SIMPLE, clients present no certificate to check",
                );
            }
            !refused
        };
        let usable = [
            mutual_only("caCrl", self.ca_crl.is_some()),
            mutual_only("subjectAltNames", self.subject_alt_names.is_some()),
            mutual_only("verifyCertificateSpki", self.spki.is_some()),
            mutual_only("verifyCertificateHash", self.hashes.is_some()),
        ];
        let crl_path = self.path.key("caCrl");
        let ca_crl = optional(self.ca_crl, |crl| {
            report.check(&crl_path, absolute_path(&crl))
        });
        let spki_pins = pins(
            self.spki.unwrap_or_default(),
            &self.path.key("verifyCertificateSpki"),
            |text| spki_digest(text).map(Pin::Spki),
            report,
        );
        let certificate_pins = pins(
            self.hashes.unwrap_or_default(),
            &self.path.key("verifyCertificateHash"),
            |text| certificate_digest(text).map(Pin::Certificate),
            report,
        );
        if usable.contains(&false) {
            return None;
        }
        let client_match = ClientMatch {
            subject_alt_names: self.subject_alt_names.unwrap_or_default(),
            pins: [spki_pins?, certificate_pins?].concat(),
        };
        Some((ca_crl?, client_match))
    }
}

/// Every entry of a digest list, each checked by `parse`; problems are reported per entry.
fn pins(
    entries: Vec<String>,
    path: &FieldPath,
    parse: fn(&str) -> Result<Pin, String>,
    report: &mut Report,
) -> Option<Vec<Pin>> {
    let pins: Vec<Option<Pin>> = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| report.check(&path.index(index), parse(entry)))
        .collect();
    pins.into_iter().collect()
}

/// `verifyCertificateSpki`: the base64 SHA-256 of a SubjectPublicKeyInfo, as Envoy reads it.
fn spki_digest(text: &str) -> Result<[u8; 32], String> {
    base64_decode(text)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            expected(
                &["the base64 SHA-256 of a SubjectPublicKeyInfo (44 characters)"],
                format!("{text:?}"),
            )
        })
}

/// `verifyCertificateHash`: the hex SHA-256 of a certificate, colons optional, any case, as
/// `openssl x509 -noout -fingerprint -sha256` prints it.
fn certificate_digest(text: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = text.bytes().filter(|byte| *byte != b':').collect();
    let bytes: Option<Vec<u8>> = digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            (pair.len() == 2).then(|| u8::from_str_radix(pair, 16).ok())?
        })
        .collect();
    bytes
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            expected(
                &["the hex SHA-256 of a certificate (64 hex digits, colons optional)"],
                format!("{text:?}"),
            )
        })
}

/// Standard base64 (RFC 4648 section 4) with its padding, as Envoy requires; `None` if `text`
/// is anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = text.iter().rev().take_while(|byte| **byte == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    for byte in &text[..text.len() - padding] {
        let value = ALPHABET.iter().position(|letter| letter == byte)?;
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    // The bits left over are padding, and must be zero for the encoding to be canonical.
    (bits & ((1 << count) - 1) == 0).then_some(bytes)
}

/// `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`, mapped to what rustls can
/// serve: TLS 1.2 and 1.3, and its TLS 1.2 suites.
fn protocol_settings(
    min: Option<String>,
    max: Option<String>,
    cipher_suites: Option<Vec<String>>,
    path: &FieldPath,
    report: &mut Report,
) -> Option<ProtocolSettings> {
    let min_path = path.key("minProtocolVersion");
    let max_path = path.key("maxProtocolVersion");
    let min = optional(min, |min| {
        report.check(&min_path, choose(Some(&min), TLS_VERSIONS))
    });
    let max = optional(max, |max| {
        report.check(&max_path, choose(Some(&max), TLS_VERSIONS))
    });
    let min_version = match min? {
        Some(IstioTlsVersion::V1_0 | IstioTlsVersion::V1_1) => {
            report.warn(
                &min_path,
                "postern serves TLS 1.2 and 1.3 only, so the minimum is effectively TLSV1_2, \
                 stricter than asked",
            );
            TlsVersion::Tls12
        }
        Some(IstioTlsVersion::V1_3) => TlsVersion::Tls13,
        Some(IstioTlsVersion::Auto | IstioTlsVersion::V1_2) | None => TlsVersion::Tls12,
    };
    let max_version = match max? {
        Some(IstioTlsVersion::V1_0 | IstioTlsVersion::V1_1) => {
            report.error(
                &max_path,
                "postern cannot serve TLS below 1.2 (its TLS library, rustls, implements TLS \
                 1.2 and 1.3 only); expected TLSV1_2, TLSV1_3 or TLS_AUTO",
            );
            None
        }
        Some(IstioTlsVersion::V1_2) => Some(TlsVersion::Tls12),
        Some(IstioTlsVersion::Auto | IstioTlsVersion::V1_3) | None => Some(TlsVersion::Tls13),
    };
    let cipher_suites = cipher_suites.unwrap_or_default();
    let suites_path = path.key("cipherSuites");
    let suites: Vec<Option<CipherSuite>> = cipher_suites
        .iter()
        .enumerate()
        .map(|(index, name)| report.check(&suites_path.index(index), cipher_suite(name)))
        .collect();
    let max_version = max_version?;
    if min_version > max_version {
        report.error(
            &max_path,
            format!("{max_version} is below minProtocolVersion {min_version}"),
        );
        return None;
    }
    if !cipher_suites.is_empty() && min_version == TlsVersion::Tls13 {
        report.warn(
            &suites_path,
            "unused: cipherSuites apply to TLS 1.2, which minProtocolVersion TLSV1_3 excludes",
        );
    }
    Some(ProtocolSettings {
        min_version,
        max_version,
        cipher_suites: suites.into_iter().collect::<Option<_>>()?,
    })
}

/// A `cipherSuites` entry: a TLS 1.2 suite rustls implements, by its OpenSSL name.
fn cipher_suite(name: &str) -> Result<CipherSuite, String> {
    CipherSuite::parse(name).ok_or_else(|| {
        let why = if name.starts_with("TLS_") {
            "TLS 1.3 suites are not configurable, as in Envoy"
        } else {
            "postern's TLS library, rustls, does not implement it"
        };
        let names = CipherSuite::ALL.map(CipherSuite::name);
        format!("{} ({why})", expected(&names, name))
    })
}

/// A required file path. The file is not read here: the `tls` module loads it, and again
/// whenever it changes.
fn file(value: Option<String>, path: &FieldPath, report: &mut Report) -> Option<PathBuf> {
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
    use crate::config::testing::{assert_error, errors, load, stream, warnings, HTTPBIN};
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
            ca_crl: None,
            client_match: ClientMatch::default(),
            protocol: ProtocolSettings::default(),
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
            &format!(
                "{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: SIMPLE, {TLS}, sni: x}}}}"
            ),
            "tls.sni",
            "unknown field `sni`, expected one of `mode`, `serverCertificate`, `privateKey`, \
             `caCertificates`, `caCrl`, `subjectAltNames`, `verifyCertificateSpki`, \
             `verifyCertificateHash`, `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites`",
        );
    }

    /// A MUTUAL port with the seed's files and `extra` fields (flow-mapping entries).
    fn mutual(extra: &str) -> String {
        format!(
            "{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: MUTUAL, {TLS}, \
             caCertificates: /ca.crt, {extra}}}}}"
        )
    }

    /// The TLS settings of httpbin's port from `entry`.
    fn tls_of(entry: &str) -> TlsSettings {
        match &ports(&[entry])[0].action {
            crate::policy::PortAction::Tls(tls) => tls.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// `openssl x509 -noout -fingerprint -sha256` of some certificate, and its bytes.
    const FINGERPRINT: &str = "5F:0E:8B:6D:2C:2E:6B:6B:1B:9B:5A:43:6A:A8:3C:25:\
                               0F:2B:D6:8E:54:0F:42:9E:6E:3C:13:3D:6C:38:0C:7A";
    const DIGEST: [u8; 32] = [
        0x5f, 0x0e, 0x8b, 0x6d, 0x2c, 0x2e, 0x6b, 0x6b, 0x1b, 0x9b, 0x5a, 0x43, 0x6a, 0xa8, 0x3c,
        0x25, 0x0f, 0x2b, 0xd6, 0x8e, 0x54, 0x0f, 0x42, 0x9e, 0x6e, 0x3c, 0x13, 0x3d, 0x6c, 0x38,
        0x0c, 0x7a,
    ];
    /// The same 32 bytes in base64.
    const DIGEST_BASE64: &str = "Xw6LbSwua2sbm1pDaqg8JQ8r1o5UD0KebjwTPWw4DHo=";

    #[test]
    fn client_checks_map_to_the_port() {
        let tls = tls_of(&mutual(&format!(
            "caCrl: /ca.crl, subjectAltNames: [client.test, 'spiffe://td/ns/a/sa/b'], \
             verifyCertificateSpki: ['{DIGEST_BASE64}'], verifyCertificateHash: ['{FINGERPRINT}', \
             '{}']",
            FINGERPRINT.replace(':', "").to_lowercase()
        )));
        assert_eq!(tls.ca_crl, Some(PathBuf::from("/ca.crl")));
        assert_eq!(
            tls.client_match,
            ClientMatch {
                subject_alt_names: vec!["client.test".into(), "spiffe://td/ns/a/sa/b".into()],
                pins: vec![
                    Pin::Spki(DIGEST),
                    Pin::Certificate(DIGEST),
                    Pin::Certificate(DIGEST)
                ],
            }
        );
        assert_eq!(tls.to_string(), "MUTUAL TLS (SAN, pinned, CRL)");
    }

    #[test]
    fn digests_are_validated_entry_by_entry() {
        assert_error(
            &sidecar(&[&mutual(&format!(
                "verifyCertificateSpki: ['{DIGEST_BASE64}', 'Xw6LbSwu'], \
                 verifyCertificateHash: ['{}', 'zz']",
                &FINGERPRINT[3..]
            ))]),
            &[
                format!(
                    "{LOCATION}: spec.ingress[0].tls.verifyCertificateSpki[1]: expected the base64 \
                     SHA-256 of a SubjectPublicKeyInfo (44 characters), found \"Xw6LbSwu\""
                ),
                format!(
                    "{LOCATION}: spec.ingress[0].tls.verifyCertificateHash[0]: expected the hex \
                     SHA-256 of a certificate (64 hex digits, colons optional), found \"{}\"",
                    &FINGERPRINT[3..]
                ),
                format!(
                    "{LOCATION}: spec.ingress[0].tls.verifyCertificateHash[1]: expected the hex \
                     SHA-256 of a certificate (64 hex digits, colons optional), found \"zz\""
                ),
            ]
            .join("\n"),
        );
    }

    #[test]
    fn digest_formats() {
        assert_eq!(spki_digest(DIGEST_BASE64), Ok(DIGEST));
        assert!(
            spki_digest(&DIGEST_BASE64.replace('=', "")).is_err(),
            "padding"
        );
        assert!(
            spki_digest("Xw6LbSwua2sbm1pDaqg8JQ8r1o5UD0KebjwTPWw4DHp=").is_err(),
            "stray bits"
        );
        assert!(spki_digest("AAAA").is_err(), "length");
        assert!(
            spki_digest(&DIGEST_BASE64.replace('X', "-")).is_err(),
            "alphabet"
        );
        assert_eq!(certificate_digest(FINGERPRINT), Ok(DIGEST));
        assert_eq!(certificate_digest(&FINGERPRINT.to_lowercase()), Ok(DIGEST));
        assert!(
            certificate_digest(&FINGERPRINT[..FINGERPRINT.len() - 1]).is_err(),
            "odd"
        );
        assert!(
            certificate_digest(&format!("{FINGERPRINT}00")).is_err(),
            "length"
        );
        assert!(
            certificate_digest(&FINGERPRINT.replace('5', "é")).is_err(),
            "not hex"
        );
        assert_eq!(base64_decode("TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode("TQ=="), Some(b"M".to_vec()));
        assert_eq!(base64_decode("TWFu"), Some(b"Man".to_vec()));
        assert_eq!(base64_decode("T==="), None);
    }

    #[test]
    fn client_checks_only_apply_to_mutual() {
        let entry = format!(
            "{{port: {{number: 9080, protocol: HTTPS}}, tls: {{mode: SIMPLE, {TLS}, caCrl: /ca.crl, \
             subjectAltNames: [a], verifyCertificateSpki: [x], verifyCertificateHash: [y]}}}}"
        );
        let message =
            "only applies to MUTUAL: with SIMPLE, clients present no certificate to check";
        let errors = crate::config::testing::errors(&sidecar(&[&entry]));
        for field in [
            "caCrl",
            "subjectAltNames",
            "verifyCertificateSpki",
            "verifyCertificateHash",
        ] {
            let line = format!("{LOCATION}: spec.ingress[0].tls.{field}: {message}");
            assert!(errors.lines().any(|error| error == line), "{errors}");
        }
    }

    #[test]
    fn ca_crl_is_an_absolute_path_and_lists_are_lists() {
        assert_entry_error(
            &mutual("caCrl: ca.crl"),
            "tls.caCrl",
            "expected an absolute path, found \"ca.crl\"",
        );
        assert_entry_error(
            &mutual("subjectAltNames: client.test"),
            "tls.subjectAltNames",
            "invalid type: string \"client.test\", expected a sequence",
        );
    }

    #[test]
    fn protocol_versions_map_to_what_rustls_serves() {
        let versions = |extra: &str| {
            let protocol = tls_of(&mutual(extra)).protocol;
            (protocol.min_version, protocol.max_version)
        };
        use TlsVersion::{Tls12, Tls13};
        assert_eq!(versions(""), (Tls12, Tls13));
        assert_eq!(
            versions("minProtocolVersion: TLS_AUTO, maxProtocolVersion: TLS_AUTO"),
            (Tls12, Tls13)
        );
        assert_eq!(versions("maxProtocolVersion: TLSV1_2"), (Tls12, Tls12));
        assert_eq!(versions("minProtocolVersion: TLSV1_3"), (Tls13, Tls13));
        assert_eq!(
            versions("minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3"),
            (Tls12, Tls13)
        );
        assert_eq!(
            tls_of(&mutual("maxProtocolVersion: TLSV1_2")).to_string(),
            "MUTUAL TLS (TLSv1.2 only)"
        );
    }

    #[test]
    fn a_minimum_below_tls12_is_raised_with_a_warning() {
        for old in ["TLSV1_0", "TLSV1_1"] {
            let entry = mutual(&format!("minProtocolVersion: {old}"));
            assert_eq!(tls_of(&entry).protocol.min_version, TlsVersion::Tls12);
            assert_eq!(
                warnings(&sidecar(&[&entry]))[0],
                format!(
                    "{LOCATION}: spec.ingress[0].tls.minProtocolVersion: postern serves TLS 1.2 \
                     and 1.3 only, so the minimum is effectively TLSV1_2, stricter than asked"
                )
            );
        }
    }

    #[test]
    fn protocol_version_errors() {
        for old in ["TLSV1_0", "TLSV1_1"] {
            assert_entry_error(
                &mutual(&format!("maxProtocolVersion: {old}")),
                "tls.maxProtocolVersion",
                "postern cannot serve TLS below 1.2 (its TLS library, rustls, implements TLS 1.2 \
                 and 1.3 only); expected TLSV1_2, TLSV1_3 or TLS_AUTO",
            );
        }
        assert_entry_error(
            &mutual("minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2"),
            "tls.maxProtocolVersion",
            "TLSv1.2 is below minProtocolVersion TLSv1.3",
        );
        assert_entry_error(
            &mutual("minProtocolVersion: TLSv1_2"),
            "tls.minProtocolVersion",
            "expected TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3, found TLSv1_2",
        );
    }

    #[test]
    fn cipher_suites_map_in_order() {
        let tls = tls_of(&mutual(
            "cipherSuites: [ECDHE-RSA-CHACHA20-POLY1305, ECDHE-ECDSA-AES256-GCM-SHA384]",
        ));
        assert_eq!(
            tls.protocol.cipher_suites,
            [
                CipherSuite::EcdheRsaChacha20Poly1305,
                CipherSuite::EcdheEcdsaAes256GcmSha384
            ]
        );
        assert_eq!(tls.to_string(), "MUTUAL TLS (ciphers)");
        for suite in CipherSuite::ALL {
            assert_eq!(cipher_suite(suite.name()), Ok(suite));
        }
    }

    #[test]
    fn unknown_cipher_suites_are_refused_with_the_supported_names() {
        let supported = "ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384, \
                         ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-AES128-GCM-SHA256, \
                         ECDHE-RSA-AES256-GCM-SHA384 or ECDHE-RSA-CHACHA20-POLY1305";
        assert_error(
            &sidecar(&[&mutual(
                "cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES128-SHA, TLS_AES_128_GCM_SHA256]",
            )]),
            &[
                format!(
                    "{LOCATION}: spec.ingress[0].tls.cipherSuites[1]: expected {supported}, found \
                     AES128-SHA (postern's TLS library, rustls, does not implement it)"
                ),
                format!(
                    "{LOCATION}: spec.ingress[0].tls.cipherSuites[2]: expected {supported}, found \
                     TLS_AES_128_GCM_SHA256 (TLS 1.3 suites are not configurable, as in Envoy)"
                ),
            ]
            .join("\n"),
        );
    }

    #[test]
    fn cipher_suites_without_tls12_are_warned_unused() {
        let entry =
            mutual("minProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]");
        assert_eq!(
            warnings(&sidecar(&[&entry]))[0],
            format!(
                "{LOCATION}: spec.ingress[0].tls.cipherSuites: unused: cipherSuites apply to TLS \
                 1.2, which minProtocolVersion TLSV1_3 excludes"
            )
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
    fn outbound_settings_are_ignored() {
        let yaml =
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  \
                    egress: [{hosts: ['./*']}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n  \
                    ingress:\n  - {port: {number: 80, protocol: HTTP}}";
        assert_eq!(warnings(yaml), Vec::<String>::new());
    }

    /// The Sidecar's `inboundConnectionPool` applies to every port; a port's own
    /// `connectionPool` wins field by field; HTTP settings are warned about, not applied.
    #[test]
    fn connection_pools_become_port_limits() {
        let entries = [
            "{port: {number: 80, protocol: HTTP}, connectionPool: {tcp: {maxConnections: 1, idleTimeout: 1.5s}}}",
            "{port: {number: 81, protocol: HTTP}}",
        ];
        let yaml = sidecar(&entries).replace(
            "spec:\n",
            "spec:\n  inboundConnectionPool: {tcp: {maxConnections: 10, connectTimeout: 30ms}, http: {maxRetries: 1}}\n",
        );
        let table = load(&stream(&[&yaml, HTTPBIN])).unwrap();
        let limits: Vec<_> = table.workloads[0].ports.iter().map(|p| p.limits).collect();
        assert_eq!(limits[0].max_connections, Some(1));
        assert_eq!(
            limits[0].idle_timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            limits[0].connect_timeout,
            Some(std::time::Duration::from_millis(30))
        );
        assert_eq!(limits[1].max_connections, Some(10));
        assert_eq!(limits[1].idle_timeout, None);
        assert!(
            table
                .warnings
                .iter()
                .any(|w| w.contains("spec.inboundConnectionPool.http")),
            "{:?}",
            table.warnings
        );
    }

    #[test]
    fn connection_pool_errors_name_the_field() {
        let entry = "{port: {number: 80, protocol: HTTP}, connectionPool: {tcp: {maxConnections: 0, idleTimeout: soon}}}";
        let errors = errors(&stream(&[&sidecar(&[entry]), HTTPBIN]));
        assert!(
            errors.contains(
                "spec.ingress[0].connectionPool.tcp.maxConnections: expected a positive number"
            ) && errors
                .contains("spec.ingress[0].connectionPool.tcp.idleTimeout: expected a duration"),
            "{errors}"
        );
    }
}
