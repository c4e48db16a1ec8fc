//! A legitimate client of the seed's mTLS port, in Rust (tokio-rustls), with the seed's client
//! certificate: for thousands of connections at once, and for latency measured without a
//! process start per request. Its sockets are created in the client's namespace.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use postern::netns::Netns;
use postern_testbed::{PinnedServer, SeedTopology, EXTERNAL_PORT, SEED_HOST};

/// How long any one step (connect, handshake, a request, a transfer) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The seed's external client: TCP and mTLS to the pod's address, from the client namespace.
#[derive(Clone)]
pub struct SeedClient {
    netns: Arc<Netns>,
    pod: Ipv4Addr,
    config: Arc<ClientConfig>,
}

impl SeedClient {
    pub fn new(topology: &SeedTopology, netns: Arc<Netns>) -> SeedClient {
        let certs = topology.certs();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = CertificateDer::from_pem_file(&certs.server_cert).expect("server cert");
        let chain = vec![CertificateDer::from_pem_file(&certs.client_cert).expect("client cert")];
        let key = PrivateKeyDer::from_pem_file(&certs.client_key).expect("client key");
        let key = provider
            .key_provider
            .load_private_key(key)
            .expect("client key loads");
        let verifier = PinnedServer::new(server, provider.signature_verification_algorithms);
        // TLS 1.3 only: rustls verifies raw-key signatures for TLS 1.3 handshakes, which is
        // how the pinned v1 server certificate is checked.
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
                chain, key,
            ))));
        SeedClient {
            netns,
            pod: topology.pod_ipv4(),
            config: Arc::new(config),
        }
    }

    /// The client's rustls configuration (for making a real ClientHello).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A TCP connection to `198.18.0.2:port`, made from the client's namespace.
    pub async fn tcp(&self, port: u16) -> io::Result<TcpStream> {
        let socket = self.netns.run(TcpSocket::new_v4)?;
        let addr = SocketAddr::from((self.pod, port));
        tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// A finished mTLS handshake on the external port.
    pub async fn mtls(&self) -> io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp(EXTERNAL_PORT).await?;
        let name = ServerName::try_from(SEED_HOST).expect("server name");
        let connecting = TlsConnector::from(Arc::clone(&self.config)).connect(name, tcp);
        tokio::time::timeout(STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
    }

    /// `GET PATH` over mTLS (HTTP/1.1, one request per connection): the status code and how
    /// long the whole exchange took, connect and handshake included.
    pub async fn get(&self, path: &str) -> io::Result<(u16, Duration)> {
        let started = Instant::now();
        let exchange = async {
            let mut tls = self.mtls().await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {SEED_HOST}\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            match tls.read_to_end(&mut response).await {
                Ok(_) => {}
                // httpbin closes without close_notify once it has answered.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
                Err(e) => return Err(e),
            }
            let status = String::from_utf8_lossy(&response)
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| io::Error::other("no HTTP status line in the response"))?;
            Ok(status)
        };
        let status = tokio::time::timeout(STEP_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))??;
        Ok((status, started.elapsed()))
    }

    /// An mTLS connection that sends `bytes` bytes (a pattern unique to `id`), half-closes, and
    /// reads back what an echo app returns: whether it came back byte-exact.
    pub async fn echo_transfer(&self, bytes: usize, id: u64) -> io::Result<bool> {
        let sent: Vec<u8> = (0..bytes).map(|i| (i as u64 ^ id) as u8).collect();
        let tls = self.mtls().await?;
        let (mut read, mut write) = tokio::io::split(tls);
        let sending = async {
            write.write_all(&sent).await?;
            write.shutdown().await
        };
        let receiving = async {
            let mut back = Vec::new();
            read.read_to_end(&mut back).await.map(|_| back)
        };
        let (_, back) = tokio::try_join!(sending, receiving)?;
        Ok(back == sent)
    }
}
