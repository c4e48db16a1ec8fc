//! rustls server configurations for the ports postern terminates TLS on.
//!
//! [`server_config`] turns a Sidecar ingress `tls` block into a `rustls::ServerConfig`: it
//! loads the PEM files (`load`), checks at load time that the private key belongs to the
//! certificate, and for MUTUAL installs a client-certificate verifier (`client_verifier`)
//! that also accepts the X.509 v1 client certificates the Istio guide's own `openssl`
//! commands produce, which webpki alone rejects but Envoy accepts.

mod client_match;
mod client_verifier;
mod load;
pub mod mesh;
mod protocol;
pub mod reload;
#[cfg(test)]
mod test_pki;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ProtocolVersion;
use rustls_pki_types::CertificateDer;
use x509_parser::asn1_rs::ToDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::policy::{TlsMode, TlsSettings};

/// Why a port's TLS configuration could not be built. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, unreadable, a directory...).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file has content but no PEM block at all, typically a DER file.
    #[error(
        "{} is not a PEM file (no \"-----BEGIN\" line); a DER file can be converted with \
         `openssl x509 -inform der` (certificates) or `openssl pkey -inform der` (keys)",
        path.display()
    )]
    NotPem { path: PathBuf },
    /// A PEM block is damaged, e.g. its END line is missing.
    #[error("{} is not valid PEM: {reason}", path.display())]
    PemUnparsable { path: PathBuf, reason: String },
    /// The server certificate file holds no CERTIFICATE block.
    #[error(
        "{} contains no certificate (expected a \"-----BEGIN CERTIFICATE-----\" block)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    /// A certificate in the server certificate file does not parse as X.509.
    #[error("{}: certificate #{index} is not a valid X.509 certificate: {reason}", path.display())]
    CertificateUnparsable {
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        reason: String,
    },
    /// The key file holds no unencrypted private key.
    #[error(
        "{} contains no private key (expected a \"-----BEGIN PRIVATE KEY-----\", \
         \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block){hint}",
        path.display()
    )]
    NoPrivateKey {
        path: PathBuf,
        /// Extra advice when the file's content explains why, e.g. an encrypted key.
        hint: &'static str,
    },
    /// The key file holds more than one private key, so which one is meant is unclear.
    #[error("{} contains {count} private keys; keep exactly one, the certificate's", path.display())]
    MultiplePrivateKeys { path: PathBuf, count: usize },
    /// The crypto provider cannot sign with this key (type or size).
    #[error(
        "{}: private key is not supported: {reason}; use RSA (2048 to 8192 bits), \
         ECDSA P-256 or P-384, or Ed25519",
        path.display()
    )]
    KeyUnsupported { path: PathBuf, reason: String },
    /// The private key is not the one the server certificate was issued for.
    #[error(
        "private key {} does not match certificate {}; compare \
         `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`",
        key.display(),
        certificate.display()
    )]
    KeyMismatch { key: PathBuf, certificate: PathBuf },
    /// The caCertificates file holds no CERTIFICATE block.
    #[error(
        "CA file {} contains no certificate (expected a \"-----BEGIN CERTIFICATE-----\" block)",
        path.display()
    )]
    NoCaCertificate { path: PathBuf },
    /// A certificate in the caCertificates file cannot be parsed or used as a trust anchor.
    #[error("CA file {}: certificate #{index} cannot be used as a CA: {reason}", path.display())]
    CaUnparsable {
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        reason: String,
    },
    /// The caCrl file holds no X509 CRL block.
    #[error(
        "CRL file {} contains no CRL (expected a \"-----BEGIN X509 CRL-----\" block)",
        path.display()
    )]
    NoCrl { path: PathBuf },
    /// A CRL in the caCrl file cannot be parsed or used.
    #[error("CRL file {}: CRL #{index} cannot be used: {reason}", path.display())]
    CrlUnparsable {
        path: PathBuf,
        /// 1-based position of the CRL in the file.
        index: usize,
        reason: String,
    },
    /// TLS 1.2 is allowed, but no TLS 1.2 cipher suite configured can sign with the key.
    #[error(
        "{}: no TLS 1.2 cipher suite in cipherSuites works with its {key} key; add one of \
         {usable}, or set minProtocolVersion: TLSV1_3",
        certificate.display()
    )]
    NoUsableCipherSuite {
        certificate: PathBuf,
        key: String,
        /// The suites that would work, comma-separated.
        usable: String,
    },
    /// A mesh certificate that does not name the workload's own SPIFFE ID.
    #[error(
        "{}: the certificate's SPIFFE ID (URI subjectAltName) is {found}, but the workload's \
         identity is {expected} (from its namespace, serviceAccount and the trust domain); \
         refusing to present another identity",
        path.display()
    )]
    WrongSpiffeId {
        path: PathBuf,
        expected: String,
        /// The SPIFFE IDs found, comma-separated, or `none`.
        found: String,
    },
    /// MUTUAL mode without caCertificates (the policy layer should have refused it).
    #[error(
        "MUTUAL TLS with certificate {} needs caCertificates to verify clients, and none is set",
        server_certificate.display()
    )]
    MutualWithoutCa { server_certificate: PathBuf },
    /// rustls refused the configuration built from the file; not expected with the ring
    /// provider and files that loaded, but reported rather than assumed away.
    #[error("{}: rustls refused the configuration: {reason}", path.display())]
    Rustls { path: PathBuf, reason: String },
}

/// Loads the files named by `settings` and builds the server configuration for one port.
///
/// rustls' ring provider, with the TLS versions and TLS 1.2 cipher suites `settings.protocol`
/// allows. `alpn` is offered as given; empty means no ALPN at all. MUTUAL requires a client
/// certificate verified against `ca_certificates`, checked against `ca_crl` and matched
/// against `client_match`; SIMPLE asks for none. A private key that does not belong to the
/// certificate is an error here, so a broken port fails when it is configured rather than on
/// every handshake.
pub fn server_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(protocol::provider(&settings.protocol));
    let certified_key = certified_key(
        &provider,
        &settings.server_certificate,
        &settings.private_key,
    )?;
    protocol::check_tls12_suites(
        &provider,
        &settings.protocol,
        certified_key.key.algorithm(),
        &settings.server_certificate,
    )?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol::versions(&settings.protocol))
        // Fails only for a provider lacking cipher suites or key exchange groups for every
        // version; ring's provider always has TLS 1.3 suites and groups.
        .map_err(|err| TlsError::Rustls {
            path: settings.server_certificate.clone(),
            reason: err.to_string(),
        })?;
    let builder =
        match settings.mode {
            // Istio ignores caCertificates in SIMPLE mode, and so does postern. The config
            // module refuses caCrl and client matching with SIMPLE.
            TlsMode::Simple => builder.with_no_client_auth(),
            TlsMode::Mutual => {
                let ca_path = settings.ca_certificates.as_deref().ok_or_else(|| {
                    TlsError::MutualWithoutCa {
                        server_certificate: settings.server_certificate.clone(),
                    }
                })?;
                let trust = client_verifier::Trust {
                    cas: load::ca_certificates(ca_path)?,
                    ca_path,
                    crls: settings.ca_crl.as_deref().map(load::crls).transpose()?,
                };
                let verifier = client_verifier::ClientVerifier::new(
                    trust,
                    settings.client_match.clone(),
                    provider,
                )?;
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };

    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Loads the certificate chain and its private key, and checks that they belong together.
///
/// rustls' own check (`CertifiedKey::from_der`) parses the certificate with webpki, which
/// rejects the Istio guide's v1 server certificate; comparing the key's SubjectPublicKeyInfo
/// with the one x509-parser reads from the certificate is the same check without that limit.
fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = load::certificate_chain(cert_path)?;
    let key = load::private_key(key_path)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|err| TlsError::KeyUnsupported {
                path: key_path.to_owned(),
                reason: err.to_string(),
            })?;

    // `certificate_chain` has already parsed every certificate, so this cannot fail.
    let (_, leaf) =
        X509Certificate::from_der(&chain[0]).map_err(|err| TlsError::CertificateUnparsable {
            path: cert_path.to_owned(),
            index: 1,
            reason: err.to_string(),
        })?;
    let key_spki = signing_key
        .public_key()
        .ok_or_else(|| TlsError::KeyUnsupported {
            path: key_path.to_owned(),
            reason: "its public key cannot be derived to check it against the certificate"
                .to_owned(),
        })?;
    if key_spki.as_ref() != leaf.public_key().raw {
        return Err(TlsError::KeyMismatch {
            key: key_path.to_owned(),
            certificate: cert_path.to_owned(),
        });
    }
    if !leaf.validity().is_valid() {
        // Not fatal: clients decide whether they accept it, and the operator may be about to
        // rotate it. But every handshake with a strict client will fail, so say it now.
        tracing::warn!(
            certificate = %cert_path.display(),
            not_before = %leaf.validity().not_before,
            not_after = %leaf.validity().not_after,
            "server certificate is not currently valid"
        );
    }
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Subject of a DER certificate in OpenSSL's one-line-ish RFC 4514 style, e.g.
/// `"CN=client.test.svc.cluster.local,O=client organization"`; `None` if unparsable.
///
/// Relative distinguished names appear in certificate order, joined by `,`; attributes of a
/// multi-valued RDN are joined by `+`, in their encoded order. Special characters in values are escaped as RFC 4514
/// says, and values that are not strings are written as `#` and their DER in hex.
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let mut attributes = Vec::new();
        for attribute in rdn.iter() {
            let name = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                .map(str::to_owned)
                .unwrap_or_else(|_| attribute.attr_type().to_id_string());
            let value = match attribute.as_str() {
                Ok(text) => escape_rfc4514(text),
                // RFC 4514: a value that is not a string is written as '#' and its encoding.
                Err(_) => format!("#{}", hex(&attribute.attr_value().to_der_vec().ok()?)),
            };
            attributes.push(format!("{name}={value}"));
        }
        rdns.push(attributes.join("+"));
    }
    Some(rdns.join(","))
}

/// Escapes an attribute value as RFC 4514 section 2.4 requires.
fn escape_rfc4514(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `"TLSv1.3"` / `"TLSv1.2"` for a rustls `ProtocolVersion` (for the access log), with
/// OpenSSL's names for the versions rustls never negotiates.
pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1",
        ProtocolVersion::SSLv3 => "SSLv3",
        ProtocolVersion::SSLv2 => "SSLv2",
        _ => "unknown",
    }
}
