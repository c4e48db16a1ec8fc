//! The effective policy table: what postern does for each (workload, port).
//!
//! `config` builds it from Istio `Sidecar` and `PeerAuthentication` documents and postern's
//! own `Workload` documents; `redirect` and `terminator` act on it. It holds no Istio
//! vocabulary beyond what the operator needs to recognise in `postern check`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Where a workload's sockets live.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetnsRef {
    /// The network namespace postern itself runs in.
    Host,
    /// A network namespace file, such as `/run/netns/httpbin` or `/proc/PID/ns/net`.
    Path(PathBuf),
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsRef::Host => f.write_str("host"),
            NetnsRef::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Effective PeerAuthentication mode, after Istio's precedence and inheritance.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Disable,
    Permissive,
    Strict,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        })
    }
}

/// The application protocol a Sidecar ingress port declares (`port.protocol`).
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Http2,
    Grpc,
    GrpcWeb,
    Tcp,
    Tls,
    Mongo,
    Mysql,
    Redis,
}

impl Protocol {
    pub const ALL: [Protocol; 10] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Http2,
        Protocol::Grpc,
        Protocol::GrpcWeb,
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::Mongo,
        Protocol::Mysql,
        Protocol::Redis,
    ];

    /// Istio's name for the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Mongo => "MONGO",
            Protocol::Mysql => "MYSQL",
            Protocol::Redis => "REDIS",
        }
    }

    /// Parses Istio's protocol names, case-insensitively as Istio does.
    pub fn parse(name: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|protocol| protocol.name().eq_ignore_ascii_case(name))
    }

    /// ALPN protocols offered to clients. postern is an L4 terminator: the decrypted bytes go
    /// to the app unchanged, so it must never agree on a protocol the app does not speak.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http | Protocol::Https | Protocol::GrpcWeb => &[b"http/1.1"],
            Protocol::Http2 | Protocol::Grpc => &[b"h2"],
            Protocol::Tcp | Protocol::Tls | Protocol::Mongo | Protocol::Mysql | Protocol::Redis => {
                &[]
            }
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where decrypted traffic goes: the app, inside the workload's network namespace.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Always a loopback address; `0.0.0.0:PORT` in a Sidecar means `127.0.0.1:PORT`.
    Tcp(SocketAddr),
    /// `unix://PATH`, a path in postern's own mount namespace.
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Server certificate only.
    Simple,
    /// Server certificate, and a client certificate verified against `ca_certificates`.
    Mutual,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
        })
    }
}

/// A Sidecar ingress `tls` block, validated.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub server_certificate: PathBuf,
    pub private_key: PathBuf,
    /// Required for `Mutual`; `None` for `Simple`.
    pub ca_certificates: Option<PathBuf>,
    /// `caCrl`: PEM CRLs; a client certificate they revoke is refused. `Mutual` only.
    pub ca_crl: Option<PathBuf>,
    /// What a client certificate must match beyond its chain. `Mutual` only.
    pub client_match: ClientMatch,
    /// TLS versions and TLS 1.2 cipher suites.
    pub protocol: ProtocolSettings,
}

impl fmt::Display for TlsSettings {
    /// `MUTUAL TLS`, followed by a short note of the extra checks and limits, if any:
    /// `MUTUAL TLS (SAN, pinned, CRL, TLSv1.2 only, ciphers)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ProtocolSettings {
            min_version,
            max_version,
            cipher_suites,
        } = &self.protocol;
        let only = format!("{min_version} only");
        let notes = [
            (!self.client_match.subject_alt_names.is_empty(), "SAN"),
            (!self.client_match.pins.is_empty(), "pinned"),
            (self.ca_crl.is_some(), "CRL"),
            (min_version == max_version, only.as_str()),
            (!cipher_suites.is_empty(), "ciphers"),
        ];
        let notes: Vec<&str> = notes
            .iter()
            .filter(|(shown, _)| *shown)
            .map(|(_, note)| *note)
            .collect();
        write!(f, "{} TLS", self.mode)?;
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

/// The checks of a MUTUAL port's client certificate beyond its chain to `caCertificates`, as
/// Envoy makes them. Empty lists check nothing.
#[derive(Debug, serde::Serialize, Clone, Default, PartialEq, Eq)]
pub struct ClientMatch {
    /// `subjectAltNames`: the certificate must carry one of these names, as a DNS, URI, email
    /// or IP address subjectAltName.
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateSpki` then `verifyCertificateHash`: if there is any, the certificate
    /// must match one, whichever list it came from.
    pub pins: Vec<Pin>,
}

/// A SHA-256 digest a client certificate may match.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// `verifyCertificateSpki`: of the certificate's SubjectPublicKeyInfo.
    Spki([u8; 32]),
    /// `verifyCertificateHash`: of the whole (DER) certificate.
    Certificate([u8; 32]),
}

/// A TLS version postern serves: rustls implements TLS 1.2 and 1.3 only.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        })
    }
}

/// `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites`.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct ProtocolSettings {
    /// Never above `max_version`.
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in order of preference; empty means rustls' defaults. TLS 1.3 suites
    /// are not configurable, as in Envoy.
    pub cipher_suites: Vec<CipherSuite>,
}

impl Default for ProtocolSettings {
    /// Envoy's defaults for a server: TLS 1.2 and 1.3, the library's cipher suites.
    fn default() -> Self {
        ProtocolSettings {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }
    }
}

/// A TLS 1.2 cipher suite that rustls implements, known by the OpenSSL name Envoy and Istio
/// users write.
#[derive(Debug, serde::Serialize, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305,
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheRsaChacha20Poly1305,
}

impl CipherSuite {
    pub const ALL: [CipherSuite; 6] = [
        CipherSuite::EcdheEcdsaAes128GcmSha256,
        CipherSuite::EcdheEcdsaAes256GcmSha384,
        CipherSuite::EcdheEcdsaChacha20Poly1305,
        CipherSuite::EcdheRsaAes128GcmSha256,
        CipherSuite::EcdheRsaAes256GcmSha384,
        CipherSuite::EcdheRsaChacha20Poly1305,
    ];

    /// The OpenSSL (and Envoy) name.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::EcdheEcdsaAes128GcmSha256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
            CipherSuite::EcdheEcdsaAes256GcmSha384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
            CipherSuite::EcdheEcdsaChacha20Poly1305 => "ECDHE-ECDSA-CHACHA20-POLY1305",
            CipherSuite::EcdheRsaAes128GcmSha256 => "ECDHE-RSA-AES128-GCM-SHA256",
            CipherSuite::EcdheRsaAes256GcmSha384 => "ECDHE-RSA-AES256-GCM-SHA384",
            CipherSuite::EcdheRsaChacha20Poly1305 => "ECDHE-RSA-CHACHA20-POLY1305",
        }
    }

    /// Parses an OpenSSL name, exactly as written (OpenSSL's names are case-sensitive).
    pub fn parse(name: &str) -> Option<CipherSuite> {
        CipherSuite::ALL
            .into_iter()
            .find(|suite| suite.name() == name)
    }
}

/// What postern does with a connection to an intercepted port.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub enum PortAction {
    /// PeerAuthentication DISABLE with Sidecar `tls`: terminate TLS, then splice.
    Tls(TlsSettings),
    /// PeerAuthentication DISABLE without `tls`: splice the bytes as they come.
    Plaintext,
    /// PeerAuthentication STRICT: only mesh mutual TLS may pass. A workload without a mesh
    /// identity cannot satisfy it, so there every connection is reset.
    MeshStrict,
    /// PeerAuthentication PERMISSIVE: mesh mutual TLS or plaintext, told apart by the first
    /// bytes. A workload without a mesh identity resets TLS and splices plaintext.
    Permissive,
}

impl fmt::Display for PortAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortAction::Tls(tls) => write!(f, "{tls}"),
            PortAction::Plaintext => f.write_str("PLAINTEXT"),
            PortAction::MeshStrict => f.write_str("MESH MTLS (STRICT)"),
            PortAction::Permissive => f.write_str("PERMISSIVE"),
        }
    }
}

/// Istio's `connectionPool.tcp` limits for one port; `None` is no limit (or, for timeouts,
/// postern's own default).
#[derive(Debug, serde::Serialize, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections in progress at once; more are reset.
    pub max_connections: Option<u32>,
    /// To connect to the app.
    pub connect_timeout: Option<std::time::Duration>,
    /// With no bytes either way for this long, the connection is closed.
    pub idle_timeout: Option<std::time::Duration>,
    /// A connection is closed after this long, whatever it does.
    pub max_connection_duration: Option<std::time::Duration>,
}

/// One intercepted port of one workload.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    pub port: u16,
    /// `port.name` from the Sidecar, if any.
    pub name: Option<String>,
    /// `port.protocol` from the Sidecar; `Tcp` for a port known only from `portLevelMtls`.
    pub protocol: Protocol,
    /// Sidecar `bind`: intercept only connections to this address.
    pub bind: Option<IpAddr>,
    pub endpoint: Endpoint,
    /// The PeerAuthentication mode in effect for this port.
    pub mtls: MtlsMode,
    /// From the Sidecar's `connectionPool` (or `inboundConnectionPool`).
    pub limits: ConnectionLimits,
    pub action: PortAction,
    /// Which documents decided this row, e.g. `Sidecar test/ingress-sidecar, PeerAuthentication
    /// test/disable-peer-auth-for-external-mtls-port`.
    pub source: String,
}

/// Everything postern does for one workload.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct WorkloadPolicy {
    pub namespace: String,
    pub name: String,
    pub netns: NetnsRef,
    /// Destination addresses that belong to this workload; empty means every address of the
    /// network namespace. Needed when several workloads share one (the host's).
    pub addresses: Vec<IpAddr>,
    /// Sorted by port, no duplicates.
    pub ports: Vec<PortPolicy>,
    /// The workload-level mode, which governs every port not listed in `ports`. STRICT means
    /// they are intercepted too (and reset until mesh identities exist), exactly as Istio
    /// captures every inbound port.
    pub other_ports: MtlsMode,
    /// Where `other_ports` came from (the PeerAuthentication, or Istio's default).
    pub other_ports_source: String,
    /// The workload's mesh identity, if it has one: without it, mesh mTLS cannot be served.
    pub mesh: Option<MeshIdentity>,
}

/// A workload's identity in the mesh, and where its certificates are.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct MeshIdentity {
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    pub spiffe_id: String,
    /// The trust domain whose SPIFFE IDs this workload accepts from peers.
    pub trust_domain: String,
    /// The directory with `tls.crt` (the chain, leaf first), `tls.key` and `ca.crt` (the mesh
    /// roots), as cert-manager's csi-driver-spiffe writes it.
    pub certificates: PathBuf,
    /// The workload's cgroup v2 directory: its outbound connections to mesh workloads are
    /// captured there and sent out over mesh mTLS. `None`: outbound is not captured.
    pub cgroup: Option<PathBuf>,
}

impl MeshIdentity {
    /// The certificate chain, leaf first.
    pub fn certificate_chain(&self) -> PathBuf {
        self.certificates.join("tls.crt")
    }

    pub fn private_key(&self) -> PathBuf {
        self.certificates.join("tls.key")
    }

    /// The mesh's root certificates.
    pub fn roots(&self) -> PathBuf {
        self.certificates.join("ca.crt")
    }
}

/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, as Istio names a workload.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

impl WorkloadPolicy {
    /// `namespace/name`, as the operator wrote it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Service with a virtual IP: mesh clients' connects to it go to a selected workload.
#[derive(Debug, serde::Serialize, Clone, PartialEq, Eq)]
pub struct ServicePolicy {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    /// TCP (port, targetPort) pairs.
    pub ports: Vec<(u16, u16)>,
    /// `namespace/name` of the Workloads its selector picks in its namespace, sorted.
    pub workloads: Vec<String>,
}

impl ServicePolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The whole effective policy: what `postern check` prints and `postern run` enforces.
#[derive(Debug, serde::Serialize, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    pub workloads: Vec<WorkloadPolicy>,
    /// Services with a virtual IP.
    pub services: Vec<ServicePolicy>,
    /// Things that are valid but worth the operator's attention (e.g. Sidecar `tls` that a
    /// STRICT PeerAuthentication overrides). Printed by `check`, logged by `run`.
    pub warnings: Vec<String>,
}
