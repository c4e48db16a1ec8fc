//! Mutual-TLS handshakes against the server configurations the terminator serves, in memory
//! (no sockets), and what building those configurations costs (a reload, per port). Run with
//! `cargo bench -p postern --bench handshake`.
//!
//! The certificates are made by openssl at start: the benchmark's RSA 2048 and ECDSA P-256
//! sets (`cargo xtask bench` uses the same) for the seed's MUTUAL port 9080, and the test
//! bed's mesh certificates (ECDSA P-256, SPIFFE IDs) for mesh mTLS. The configuration is the
//! seed's YAML loaded through `postern::config`, with the certificate paths pointed at them.
//!
//! - `handshake/mutual/KEY`: a rustls client (TLS 1.3, its client certificate, no resumption)
//!   and the port's `ServerConfig`, from the first ClientHello to the last byte either sends.
//! - `handshake/mesh`: postern's own mesh client configuration (a mesh client workload's
//!   identity, as outbound origination uses it) against the workload's mesh server
//!   configuration, whose client verifier checks the SPIFFE trust domain.
//! - `server_config/...`: `TlsSource::load` and `TlsSource::mesh`, what the daemon calls for
//!   each port and mesh identity when it plans a (re)load.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use postern::config::{load_sources, LoadOptions};
use postern::policy::{MeshIdentity, PolicyTable, PortAction, PortPolicy, TlsSettings};
use postern::tls::reload::TlsSource;
use postern_testbed::{
    spiffe_id, CertSet, KeyKind, MeshCerts, BENCH_SERVER_NAME, SEED_PEER_AUTHENTICATION_DEFAULT,
    SEED_PEER_AUTHENTICATION_HTTPBIN, SEED_SIDECAR, SEED_WORKLOAD, TRUST_DOMAIN,
};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use rustls::{ProtocolVersion, ServerConnection};

/// The seed's MUTUAL port.
const MUTUAL_PORT: u16 = 9080;
/// The mesh client connects to the workload's address, as outbound origination does.
const WORKLOAD_ADDRESS: &str = "198.18.0.2";

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn bench_id(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Rsa2048 => "rsa2048",
        KeyKind::EcdsaP256 => "ecdsa_p256",
    }
}

/// The seed's httpbin (its Sidecar serving `certs` on 9080, and a mesh identity from
/// `mesh_dir`) and a mesh client workload `sleep` with its identity from `client_dir`.
fn table(certs: &CertSet, mesh_dir: &Path, client_dir: &Path) -> PolicyTable {
    let sidecar = SEED_SIDECAR
        .replace(
            "/etc/istio/tls-certs/tls.key",
            &certs.server_key.display().to_string(),
        )
        .replace(
            "/etc/istio/tls-certs/tls.crt",
            &certs.server_cert.display().to_string(),
        )
        .replace(
            "/etc/istio/tls-ca-certs/ca.crt",
            &certs.ca_cert.display().to_string(),
        );
    let mesh = |document: &str, account: &str, dir: &Path| {
        format!(
            "{document}  serviceAccount: {account}\n  meshCertificates: {}\n",
            dir.display()
        )
    };
    let httpbin = mesh(SEED_WORKLOAD, "httpbin", mesh_dir);
    let sleep = mesh(
        &SEED_WORKLOAD
            .replace("httpbin", "sleep")
            .replace("    version: v1\n", ""),
        "sleep",
        client_dir,
    );
    let yaml = [
        SEED_PEER_AUTHENTICATION_DEFAULT,
        SEED_PEER_AUTHENTICATION_HTTPBIN,
        &sidecar,
        &httpbin,
        &sleep,
    ]
    .join("---\n");
    let options = LoadOptions {
        default_namespace: "test".to_owned(),
        ..LoadOptions::default()
    };
    load_sources(&[("seed.yaml".to_owned(), yaml)], &options).unwrap_or_else(|err| panic!("{err}"))
}

fn mutual_port(table: &PolicyTable) -> (&PortPolicy, &TlsSettings) {
    let port = table
        .workloads
        .iter()
        .flat_map(|workload| &workload.ports)
        .find(|port| port.port == MUTUAL_PORT)
        .expect("the seed's port 9080");
    match &port.action {
        PortAction::Tls(settings) => (port, settings),
        other => panic!("port 9080 is {other}, not MUTUAL TLS"),
    }
}

fn identity<'a>(table: &'a PolicyTable, name: &str) -> &'a MeshIdentity {
    table
        .workloads
        .iter()
        .find(|workload| workload.name == name)
        .and_then(|workload| workload.mesh.as_ref())
        .unwrap_or_else(|| panic!("workload {name} has a mesh identity"))
}

/// A client such as the load generator: TLS 1.3, trusting `certs`' CA, presenting its client
/// certificate, resuming nothing (every handshake is a full one).
fn mutual_client(certs: &CertSet) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&certs.ca_cert).expect("the CA file") {
        roots
            .add(ca.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let chain = CertificateDer::pem_file_iter(&certs.client_cert)
        .expect("the client certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("client certificates");
    let key = PrivateKeyDer::from_pem_file(&certs.client_key).expect("the client key");
    let mut config = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("the client's certificate and key");
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Moves what `from` has to send into `to`; whether there was anything.
fn transfer(from: &mut Connection, to: &mut Connection, wire: &mut Vec<u8>) -> bool {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("writing to memory");
    }
    let mut unread = wire.as_slice();
    while !unread.is_empty() {
        to.read_tls(&mut unread).expect("reading from memory");
        to.process_new_packets().expect("the handshake goes on");
    }
    !wire.is_empty()
}

/// One full handshake, until neither side has anything left to send.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, name: &ServerName<'static>) {
    let mut server: Connection = ServerConnection::new(Arc::clone(server))
        .expect("a server connection")
        .into();
    let mut client: Connection = ClientConnection::new(Arc::clone(client), name.clone())
        .expect("a client connection")
        .into();
    let mut wire = Vec::with_capacity(16 * 1024);
    while transfer(&mut client, &mut server, &mut wire)
        | transfer(&mut server, &mut client, &mut wire)
    {}
    assert!(!server.is_handshaking() && !client.is_handshaking());
    assert_eq!(server.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert!(
        server.peer_certificates().is_some(),
        "no client certificate"
    );
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mesh = MeshCerts::generate(&dir.path().join("mesh")).expect("mesh certificates");
    let mesh_dir = mesh
        .issue("httpbin", &spiffe_id(TRUST_DOMAIN, "httpbin"))
        .expect("httpbin's mesh certificate");
    let client_dir = mesh
        .issue("sleep", &spiffe_id(TRUST_DOMAIN, "sleep"))
        .expect("sleep's mesh certificate");
    let sets: Vec<(KeyKind, CertSet)> = KeyKind::ALL
        .into_iter()
        .map(|kind| {
            (
                kind,
                CertSet::generate(dir.path(), kind).expect("certificates"),
            )
        })
        .collect();
    let tables: Vec<(KeyKind, &CertSet, PolicyTable)> = sets
        .iter()
        .map(|(kind, certs)| (*kind, certs, table(certs, &mesh_dir, &client_dir)))
        .collect();

    let server_name = ServerName::try_from(BENCH_SERVER_NAME).expect("a DNS name");
    let mut handshakes = group(c, "handshake");
    for (kind, certs, table) in &tables {
        let (port, settings) = mutual_port(table);
        let source = TlsSource::load(settings, port.protocol.alpn(), Vec::new())
            .unwrap_or_else(|err| panic!("{err}"));
        let (server, client) = (source.current(), mutual_client(certs));
        handshakes.bench_function(format!("mutual/{}", bench_id(*kind)), |b| {
            b.iter(|| handshake(&server, &client, &server_name))
        });
    }
    let table = &tables[0].2;
    let server = TlsSource::mesh(identity(table, "httpbin"), Vec::new())
        .unwrap_or_else(|err| panic!("{err}"))
        .current();
    let client = TlsSource::mesh(identity(table, "sleep"), Vec::new())
        .unwrap_or_else(|err| panic!("{err}"))
        .client()
        .expect("a mesh identity's client configuration");
    let mut client = ClientConfig::clone(&client);
    client.resumption = Resumption::disabled();
    let client = Arc::new(client);
    let address = ServerName::IpAddress(
        WORKLOAD_ADDRESS
            .parse::<std::net::IpAddr>()
            .expect("an address")
            .into(),
    );
    handshakes.bench_function("mesh/ecdsa_p256", |b| {
        b.iter(|| handshake(&server, &client, &address))
    });
    handshakes.finish();

    let mut builds = group(c, "server_config");
    for (kind, _, table) in &tables {
        let (port, settings) = mutual_port(table);
        builds.bench_function(format!("mutual/{}", bench_id(*kind)), |b| {
            b.iter(|| TlsSource::load(settings, port.protocol.alpn(), Vec::new()).expect("built"))
        });
    }
    let identity = identity(table, "httpbin");
    builds.bench_function("mesh/ecdsa_p256", |b| {
        b.iter(|| TlsSource::mesh(identity, Vec::new()).expect("built"))
    });
    builds.finish();
}

criterion_group!(handshake_benches, benches);
criterion_main!(handshake_benches);
