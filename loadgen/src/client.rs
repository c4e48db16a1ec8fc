//! Connecting to the target: TCP, then (for TLS targets) a rustls client handshake that
//! presents the client certificate and verifies the server's against the CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A connection, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<TlsClient>,
}

pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsClient {
    pub fn new(
        ca: &Path,
        cert: &Path,
        key: &Path,
        server_name: &str,
        resume: bool,
    ) -> Result<TlsClient> {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("cannot read {}", ca.display()))?
        {
            roots
                .add(der.with_context(|| format!("bad PEM in {}", ca.display()))?)
                .context("the CA certificate is not usable")?;
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("bad PEM in {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("no private key in {}", key.display()))?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .context("TLS 1.3 is not available")?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not go together")?;
        config.resumption = if resume {
            Resumption::default()
        } else {
            Resumption::disabled()
        };
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(server_name.to_string())
                .with_context(|| format!("{server_name:?} is not a server name"))?,
        })
    }
}

impl Target {
    /// Connects, and completes the TLS handshake for TLS targets.
    pub async fn connect(&self) -> Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .context("TLS handshake failed")?;
                Ok(Box::new(stream))
            }
        }
    }
}
