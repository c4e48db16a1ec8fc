//! Mesh mutual TLS: a workload's SPIFFE identity, as a server (inbound STRICT and PERMISSIVE)
//! and as a client (outbound origination).
//!
//! A workload's material is one directory in the layout of cert-manager's csi-driver-spiffe:
//! `tls.crt` (the chain, leaf first), `tls.key` and `ca.crt` (the mesh roots). The leaf must
//! carry exactly the workload's SPIFFE ID as its URI subjectAltName; anything else is refused
//! when loading, so a workload never presents someone else's identity.
//!
//! A peer is accepted when its chain leads to the mesh roots and its certificate names a SPIFFE
//! ID of the trust domain. Which identity a client must reach is checked by the caller after
//! the handshake ([`peer_spiffe_id`]), before any application byte is sent.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::client_verifier::rejected;
use super::{certified_key, load, protocol, TlsError};
use crate::policy::{MeshIdentity, ProtocolSettings};

/// The SPIFFE IDs (URI subjectAltNames with the `spiffe://` scheme) of a DER certificate.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The SPIFFE ID of a peer's leaf certificate, if it has exactly one.
pub fn peer_spiffe_id(chain: Option<&[CertificateDer<'_>]>) -> Option<String> {
    match spiffe_ids(chain?.first()?).as_slice() {
        [id] => Some(id.clone()),
        _ => None,
    }
}

/// `spiffe://DOMAIN/...` → `DOMAIN`.
fn trust_domain_of(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")?.split('/').next()
}

/// Refuses a leaf whose SPIFFE ID is not exactly `expected`.
fn check_identity(path: &Path, leaf: &CertificateDer<'_>, expected: &str) -> Result<(), TlsError> {
    let found = spiffe_ids(leaf);
    if found.len() == 1 && found[0] == expected {
        return Ok(());
    }
    Err(TlsError::WrongSpiffeId {
        path: path.to_path_buf(),
        expected: expected.to_owned(),
        found: if found.is_empty() {
            "none".to_owned()
        } else {
            found.join(", ")
        },
    })
}

/// The server side: the workload's certificate, and client certificates required and checked
/// against the mesh roots and trust domain. No ALPN: the bytes go to the app unchanged.
pub fn server_config(identity: &MeshIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(protocol::provider(&ProtocolSettings::default()));
    let key = identity_key(&provider, identity)?;
    let roots = roots(identity)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls {
            path: identity.roots(),
            reason: e.to_string(),
        })?;
    let verifier = MeshClientVerifier {
        webpki,
        trust_domain: identity.trust_domain.clone(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| rustls_error(identity, e))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The client side: the workload's certificate offered to servers, whose chains must lead to
/// the mesh roots and name a SPIFFE ID of the trust domain.
pub fn client_config(identity: &MeshIdentity) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(protocol::provider(&ProtocolSettings::default()));
    let key = identity_key(&provider, identity)?;
    let anchors = roots(identity)?.roots;
    let verifier = MeshServerVerifier {
        anchors,
        trust_domain: identity.trust_domain.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| rustls_error(identity, e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    Ok(Arc::new(config))
}

fn rustls_error(identity: &MeshIdentity, error: Error) -> TlsError {
    TlsError::Rustls {
        path: identity.certificate_chain(),
        reason: error.to_string(),
    }
}

/// The workload's chain and key, checked to belong together and to name its SPIFFE ID.
fn identity_key(
    provider: &CryptoProvider,
    identity: &MeshIdentity,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let chain_path = identity.certificate_chain();
    let key = certified_key(provider, &chain_path, &identity.private_key())?;
    check_identity(&chain_path, &key.cert[0], &identity.spiffe_id)?;
    Ok(key)
}

fn roots(identity: &MeshIdentity) -> Result<RootCertStore, TlsError> {
    let path = identity.roots();
    let mut roots = RootCertStore::empty();
    for (i, root) in load::ca_certificates(&path)?.into_iter().enumerate() {
        roots.add(root).map_err(|e| TlsError::CaUnparsable {
            path: path.clone(),
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Refuses a verified peer certificate that names no SPIFFE ID of `trust_domain`.
fn check_trust_domain(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<(), Error> {
    let ids = spiffe_ids(cert);
    match ids.as_slice() {
        [id] if trust_domain_of(id) == Some(trust_domain) => Ok(()),
        [id] => Err(rejected(format!(
            "peer SPIFFE ID {id} is not of trust domain {trust_domain}"
        ))),
        [] => Err(rejected(format!(
            "peer certificate has no SPIFFE ID; expected one of trust domain {trust_domain}"
        ))),
        _ => Err(rejected(format!(
            "peer certificate has several SPIFFE IDs ({}); expected exactly one",
            ids.join(", ")
        ))),
    }
}

/// Client certificates: rustls' webpki verifier against the mesh roots, then the trust domain.
#[derive(Debug)]
struct MeshClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        check_trust_domain(end_entity, &self.trust_domain)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Server certificates: the chain to the mesh roots for server authentication, then the trust
/// domain. There is no DNS name to check: a mesh server is known by its SPIFFE ID, which the
/// caller compares with the one it expects.
#[derive(Debug)]
struct MeshServerVerifier {
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rejected(format!("peer certificate does not parse: {e}")))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rejected(format!(
                "peer certificate is not trusted by the mesh roots: {e}"
            ))
        })?;
        check_trust_domain(end_entity, &self.trust_domain)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domains_are_read_from_spiffe_ids() {
        assert_eq!(
            trust_domain_of("spiffe://cluster.local/ns/test/sa/httpbin"),
            Some("cluster.local")
        );
        assert_eq!(trust_domain_of("https://cluster.local/"), None);
    }
}
