//! A TLS client's check of a server known by its exact certificate.
//!
//! The seed's server certificate is X.509 v1 with no subjectAltName, so webpki cannot check it
//! as a server certificate. Pinning it checks what a test needs: the server presents exactly
//! that certificate and signs the handshake with its key, verified against the raw public key.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Verifies a TLS 1.2 handshake signature with a raw public key. rustls has no such function
/// (it has one for TLS 1.3), so a caller that needs TLS 1.2 brings its own.
pub type Tls12RawKeyCheck = fn(
    &[u8],
    &SubjectPublicKeyInfoDer<'_>,
    &DigitallySignedStruct,
    &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error>;

/// Accepts exactly one server certificate. TLS 1.3 only, unless given a TLS 1.2 check.
#[derive(Debug)]
pub struct PinnedServer {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
    tls12: Option<Tls12RawKeyCheck>,
}

impl PinnedServer {
    pub fn new(cert: CertificateDer<'static>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        PinnedServer {
            cert,
            algorithms,
            tls12: None,
        }
    }

    /// Also checks TLS 1.2 handshakes, with `check`.
    pub fn with_tls12(self, check: Tls12RawKeyCheck) -> Self {
        PinnedServer {
            tls12: Some(check),
            ..self
        }
    }

    fn spki<'a>(cert: &'a CertificateDer<'_>) -> SubjectPublicKeyInfoDer<'a> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).expect("server certificate");
        SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw)
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::CertificateError::UnknownIssuer.into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let check = self.tls12.ok_or(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))?;
        check(message, &Self::spki(cert), dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &Self::spki(cert),
            dss,
            &self.algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
