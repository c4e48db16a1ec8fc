//! Test fixtures shared by the `tls` tests: certificates made by the real `openssl`, and an
//! in-process TLS handshake against a server configuration.
//!
//! The certificates are generated once per test binary (RSA key generation is the slow
//! part) and kept in memory; each test writes the files it needs into its own temporary
//! directory, so no test sees another's files and nothing is left behind.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{
    ClientConfig, ProtocolVersion, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::policy::{ClientMatch, ProtocolSettings, TlsMode, TlsSettings};

/// The Istio guide's commands, verbatim ("Generate CA cert, Server cert/key and Client
/// cert/key"): a CA, then v1 server and client certificates it issues.
use postern_testbed::PinnedServer;
use postern_testbed::SEED_OPENSSL_COMMANDS as SEED_COMMANDS;

/// Everything else the tests need, built the same way. Client certificates reuse the seed
/// client's key (`client.test.svc.cluster.local.key`) unless they say otherwise.
const EXTRA_COMMANDS: &[&str] = &[
    // A CA with another name, and an impostor with the seed CA's very name but its own key.
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=other Inc./CN=other.example' -keyout other-ca.key -out other-ca.crt",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout impostor-ca.key -out impostor-ca.crt",
    // A CA that expires long before the certificates it issues.
    "openssl req -x509 -sha256 -nodes -days 1 -newkey rsa:2048 -subj '/O=example Inc./CN=short-lived CA' -keyout short-ca.key -out short-ca.crt",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/CN=constrained CA' -addext 'nameConstraints=critical,permitted;DNS:.example.com' -keyout constrained-ca.key -out constrained-ca.crt",
    // v1 client certificates (no -extfile), as the seed makes them, from the wrong issuers.
    "openssl x509 -req -days 365 -CA other-ca.crt -CAkey other-ca.key -set_serial 1 -in client.test.svc.cluster.local.csr -out v1-other-ca.crt",
    "openssl x509 -req -days 365 -CA impostor-ca.crt -CAkey impostor-ca.key -set_serial 1 -in client.test.svc.cluster.local.csr -out v1-impostor-ca.crt",
    "openssl x509 -req -days 365 -CA short-ca.crt -CAkey short-ca.key -set_serial 1 -in client.test.svc.cluster.local.csr -out v1-short-ca.crt",
    "openssl x509 -req -days 365 -CA constrained-ca.crt -CAkey constrained-ca.key -set_serial 1 -in client.test.svc.cluster.local.csr -out v1-constrained-ca.crt",
    // Signed by the right CA, with an algorithm webpki refuses.
    "openssl x509 -req -sha1 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 5 -in client.test.svc.cluster.local.csr -out v1-sha1.crt",
    // A v1 client with an ECDSA P-256 key, for the ECDSA handshake-signature paths.
    r#"openssl req -out v1-ec.csr -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout v1-ec.key -subj "/CN=ec-client.test.svc.cluster.local/O=client organization""#,
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 6 -in v1-ec.csr -out v1-ec.crt",
    // v3 client certificates, which webpki verifies.
    "printf 'extendedKeyUsage=clientAuth\\n' > client.ext",
    "printf 'extendedKeyUsage=serverAuth\\n' > server-only.ext",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 2 -extfile client.ext -in client.test.svc.cluster.local.csr -out v3.crt",
    "openssl x509 -req -days 365 -CA other-ca.crt -CAkey other-ca.key -set_serial 2 -extfile client.ext -in client.test.svc.cluster.local.csr -out v3-other-ca.crt",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 7 -extfile server-only.ext -in client.test.svc.cluster.local.csr -out v3-server-only.crt",
    // An intermediate CA under the seed CA, issuing one v1 and one v3 client certificate.
    "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign\\n' > intermediate.ext",
    "openssl req -out intermediate.csr -newkey rsa:2048 -nodes -keyout intermediate.key -subj '/O=example Inc./CN=example intermediate'",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 3 -extfile intermediate.ext -in intermediate.csr -out intermediate.crt",
    "openssl x509 -req -days 365 -CA intermediate.crt -CAkey intermediate.key -set_serial 1 -in client.test.svc.cluster.local.csr -out v1-intermediate.crt",
    "openssl x509 -req -days 365 -CA intermediate.crt -CAkey intermediate.key -set_serial 2 -extfile client.ext -in client.test.svc.cluster.local.csr -out v3-intermediate.crt",
    // A subject with a multi-valued RDN and a comma, for the access log's formatting.
    r"openssl req -new -key client.test.svc.cluster.local.key -multivalue-rdn -subj '/CN=multi+OU=team/O=Acme\, Inc.' -out v1-multi.csr",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 8 -in v1-multi.csr -out v1-multi.crt",
    // v3 client certificates with subjectAltNames of every kind Envoy compares.
    "printf 'extendedKeyUsage=clientAuth\\nsubjectAltName=DNS:client.test.svc.cluster.local,URI:spiffe://cluster.local/ns/test/sa/client,email:client@example.com,IP:198.18.0.1\\n' > san.ext",
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 9 -extfile san.ext -in client.test.svc.cluster.local.csr -out v3-san.crt",
    // CRLs (version 2, which needs `crlnumber`) from `openssl ca`'s minimal database: the seed
    // CA's revoking the seed client (serial 1) and v3.crt (serial 2); the seed CA's revoking
    // nothing; one with the seed CA's name signed by the impostor; and one from other-ca.
    "printf '[ca]\\ndefault_ca=crl\\n[crl]\\ndatabase=index.txt\\ncrlnumber=crlnumber\\nunique_subject=no\\ndefault_md=sha256\\ndefault_crl_days=30\\n' > crl.cnf",
    "touch index.txt && echo 01 > crlnumber",
    "openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt -gencrl -out empty.crl",
    "openssl ca -config crl.cnf -keyfile impostor-ca.key -cert impostor-ca.crt -gencrl -out impostor.crl",
    "openssl ca -config crl.cnf -keyfile other-ca.key -cert other-ca.crt -gencrl -out other-ca.crl",
    "openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt -revoke client.test.svc.cluster.local.crt",
    "openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt -revoke v3.crt",
    "openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt -gencrl -out revoked.crl",
    // The same list as a version 1 CRL (no crlnumber), which webpki refuses.
    "printf '[ca]\\ndefault_ca=crl\\n[crl]\\ndatabase=index.txt\\ndefault_md=sha256\\ndefault_crl_days=30\\n' > crl-v1.cnf",
    "openssl ca -config crl-v1.cnf -keyfile example.com.key -cert example.com.crt -gencrl -out revoked-v1.crl",
    // Keys postern must refuse: encrypted, and of a type ring cannot sign with.
    "openssl pkey -in client.test.svc.cluster.local.key -aes256 -passout pass:secret -out encrypted.key",
    "openssl genpkey -algorithm ed448 -out ed448.key",
];

/// The seed's file names.
pub(super) const CA: &str = "example.com.crt";
pub(super) const SERVER_CERT: &str = "httpbin.test.svc.cluster.local.crt";
pub(super) const SERVER_KEY: &str = "httpbin.test.svc.cluster.local.key";
pub(super) const CLIENT_CERT: &str = "client.test.svc.cluster.local.crt";
pub(super) const CLIENT_KEY: &str = "client.test.svc.cluster.local.key";

/// The generated files, by name.
pub(super) struct Pki {
    files: BTreeMap<String, Vec<u8>>,
}

/// The certificates and keys, generated on first use.
pub(super) fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::generate)
}

impl Pki {
    fn generate() -> Pki {
        let dir = TempDir::new().expect("temporary directory");
        for command in SEED_COMMANDS.iter().chain(EXTRA_COMMANDS) {
            let output = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(dir.path())
                .output()
                .expect("run sh (and openssl)");
            assert!(
                output.status.success(),
                "`{command}` failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir.path()).expect("read generated files") {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().into_string().expect("UTF-8 file name");
            files.insert(
                name,
                std::fs::read(entry.path()).expect("read generated file"),
            );
        }
        Pki { files }
    }

    /// A generated file's contents.
    pub(super) fn file(&self, name: &str) -> &[u8] {
        self.files
            .get(name)
            .unwrap_or_else(|| panic!("no generated file {name}"))
    }

    /// The (first) certificate in a generated file.
    pub(super) fn cert(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.file(name))
            .unwrap_or_else(|err| panic!("certificate in {name}: {err}"))
    }

    /// The private key in a generated file.
    pub(super) fn key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.file(name))
            .unwrap_or_else(|err| panic!("private key in {name}: {err}"))
    }
}

/// A test's own directory, where it puts the files a `TlsSettings` names.
pub(super) struct Files {
    dir: TempDir,
}

impl Files {
    pub(super) fn new() -> Files {
        Files {
            dir: TempDir::new().expect("temporary directory"),
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` as file `name`, returning its path.
    pub(super) fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Copies generated file `name` here, returning its path.
    pub(super) fn install(&self, name: &str) -> PathBuf {
        self.write(name, pki().file(name))
    }

    /// Settings with the seed's server certificate, key and CA, as the guide's Sidecar uses.
    pub(super) fn seed_settings(&self, mode: TlsMode) -> TlsSettings {
        TlsSettings {
            mode,
            server_certificate: self.install(SERVER_CERT),
            private_key: self.install(SERVER_KEY),
            ca_certificates: Some(self.install(CA)),
            ca_crl: None,
            client_match: ClientMatch::default(),
            protocol: ProtocolSettings::default(),
        }
    }
}

/// What a TLS client presents and offers.
pub(super) struct Client {
    /// Certificate chain (leaf first) and key, or none.
    pub(super) identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    pub(super) versions: &'static [&'static SupportedProtocolVersion],
    pub(super) alpn: Vec<Vec<u8>>,
}

impl Client {
    /// A client with the seed's v1 client certificate, TLS 1.2 and 1.3, no ALPN.
    pub(super) fn seed() -> Client {
        Client::with_identity(&[CLIENT_CERT], CLIENT_KEY)
    }

    /// A client presenting the certificates in the named files (leaf first) and key.
    pub(super) fn with_identity(chain: &[&str], key: &str) -> Client {
        let chain = chain.iter().map(|name| pki().cert(name)).collect();
        Client {
            identity: Some((chain, pki().key(key))),
            ..Client::anonymous()
        }
    }

    /// A client without a certificate.
    pub(super) fn anonymous() -> Client {
        Client {
            identity: None,
            versions: rustls::DEFAULT_VERSIONS,
            alpn: Vec::new(),
        }
    }

    pub(super) fn versions(self, versions: &'static [&'static SupportedProtocolVersion]) -> Client {
        Client { versions, ..self }
    }

    pub(super) fn alpn(self, alpn: &[&[u8]]) -> Client {
        Client {
            alpn: alpn.iter().map(|protocol| protocol.to_vec()).collect(),
            ..self
        }
    }

    fn config(self) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The seed's v1 server certificate, pinned (see `PinnedServer`), with the same raw-key
        // signature checks as the server side.
        let verifier = PinnedServer::new(
            pki().cert(SERVER_CERT),
            provider.signature_verification_algorithms,
        )
        .with_tls12(super::client_verifier::verify_tls12_signature_with_raw_key);
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(self.versions)
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match self.identity {
            Some((chain, key)) => {
                let key = provider_key(key);
                let identity = Arc::new(CertifiedKey::new(chain, key));
                builder.with_client_cert_resolver(Arc::new(FixedIdentity(identity)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        config
    }
}

fn provider_key(key: PrivateKeyDer<'static>) -> Arc<dyn SigningKey> {
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .expect("client key")
}

/// Presents one certificate chain whatever the server asks for.
///
/// `ClientConfig::with_client_auth_cert` cannot be used: like the server side, its key check
/// parses the certificate with webpki, which refuses the seed's v1 client certificate. It
/// would also refuse the deliberately tampered one, which the server must see.
#[derive(Debug)]
struct FixedIdentity(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side of a finished handshake.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) version: ProtocolVersion,
    pub(super) alpn: Option<Vec<u8>>,
    pub(super) peer_subject: Option<String>,
}

/// How both sides of a handshake ended.
pub(super) struct Outcome {
    pub(super) server: io::Result<Session>,
    pub(super) client: io::Result<()>,
}

impl Outcome {
    /// The server's session; panics, with both sides' errors, if the server refused.
    pub(super) fn accepted(self) -> Session {
        match (self.server, self.client) {
            (Ok(session), Ok(())) => session,
            (server, client) => panic!("handshake failed: server {server:?}, client {client:?}"),
        }
    }

    /// The rustls error the server failed with; panics if it did not fail.
    pub(super) fn refused(self) -> rustls::Error {
        match self.server {
            Ok(session) => panic!("server accepted a handshake it should refuse: {session:?}"),
            Err(err) => err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .unwrap_or_else(|| panic!("server failed without a rustls error: {err:?}"))
                .clone(),
        }
    }
}

/// Runs a handshake between `client` and a server with `server`, in memory, then has the
/// server send a few bytes the client must read, so "accepted" means data flows.
pub(super) async fn handshake(server: Arc<ServerConfig>, client: Client) -> Outcome {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.config()));
    let name = ServerName::try_from("httpbin.test.svc.cluster.local").expect("server name");

    let server_side = async {
        let mut tls = acceptor.accept(server_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let (_, connection) = tls.get_ref();
        let session = Session {
            version: connection.protocol_version().expect("negotiated version"),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer_subject: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(super::certificate_subject),
        };
        // Hand `tls` out too, so the stream stays open until the client has read.
        Ok::<_, io::Error>((session, tls))
    };
    let client_side = async {
        let mut tls = connector.connect(name, client_io).await?;
        // In TLS 1.3 the client finishes before the server has judged its certificate; the
        // refusal only shows when it reads.
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        Ok::<_, io::Error>(())
    };
    let both = async { tokio::join!(server_side, client_side) };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("handshake timed out");
    Outcome {
        server: server.map(|(session, _tls)| session),
        client,
    }
}
