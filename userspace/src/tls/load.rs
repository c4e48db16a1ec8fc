//! Reading the PEM files a Sidecar `tls` block names, with errors that say which file and why.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate, X509Version};

use super::TlsError;

/// The certificate chain of a server certificate file: leaf first, as in the file.
///
/// Every certificate must parse as X.509, so a damaged file is reported here rather than as a
/// handshake failure on the client's side.
pub(super) fn certificate_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certificates(read_pem(path)?);
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        parse_x509(cert).map_err(|reason| TlsError::CertificateUnparsable {
            path: path.to_owned(),
            index: i + 1,
            reason,
        })?;
    }
    Ok(certs)
}

/// The one private key in a key file, in whichever of PKCS#8, PKCS#1 and SEC1 it comes.
pub(super) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    for (kind, der) in &pem.sections {
        let der = der.clone();
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            _ => continue,
        };
        keys.push(key);
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
            // The PEM reader skips sections it has no type for, so an encrypted key would
            // otherwise look like no key at all.
            hint: if pem.text_contains("ENCRYPTED PRIVATE KEY")
                || pem.text_contains("Proc-Type: 4,ENCRYPTED")
            {
                "; it holds an encrypted key, which postern cannot use: decrypt it with \
                 `openssl pkey -in KEY -out KEY.plain`"
            } else {
                ""
            },
        }),
        count => Err(TlsError::MultiplePrivateKeys {
            path: path.to_owned(),
            count,
        }),
    }
}

/// The certificates of a CA file, each checked to parse as X.509.
pub(super) fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = certificates(read_pem(path)?);
    if certs.is_empty() {
        return Err(TlsError::NoCaCertificate {
            path: path.to_owned(),
        });
    }
    for (i, cert) in certs.iter().enumerate() {
        // x509-parser reads it for the v1 client path; `ClientVerifier::new` has webpki read
        // it as a trust anchor for everything else.
        parse_x509(cert).map_err(|reason| TlsError::CaUnparsable {
            path: path.to_owned(),
            index: i + 1,
            reason,
        })?;
    }
    Ok(certs)
}

/// The CRLs of a `caCrl` file.
#[derive(Debug)]
pub(super) struct Crls {
    pub(super) path: PathBuf,
    /// Each parses both for webpki (certificates it verifies) and for x509-parser (the X.509 v1
    /// client path).
    pub(super) ders: Vec<CertificateRevocationListDer<'static>>,
}

pub(super) fn crls(path: &Path) -> Result<Crls, TlsError> {
    let ders: Vec<CertificateRevocationListDer<'static>> = read_pem(path)?
        .sections
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Crl)
        .map(|(_, der)| CertificateRevocationListDer::from(der))
        .collect();
    if ders.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_owned(),
        });
    }
    for (i, der) in ders.iter().enumerate() {
        parse_crl(der).map_err(|reason| TlsError::CrlUnparsable {
            path: path.to_owned(),
            index: i + 1,
            reason,
        })?;
    }
    Ok(Crls {
        path: path.to_owned(),
        ders,
    })
}

/// Parses a whole CRL, with x509-parser and with webpki. webpki supports only version 2
/// CRLs, which OpenSSL makes only when asked to.
fn parse_crl(der: &CertificateRevocationListDer<'_>) -> Result<(), String> {
    let crl = match CertificateRevocationList::from_der(der.as_ref()) {
        Ok(([], crl)) => crl,
        Ok((rest, _)) => return Err(format!("{} bytes after the CRL", rest.len())),
        Err(err) => return Err(err.to_string()),
    };
    if crl.version() != Some(X509Version::V2) {
        return Err(
            "it is a version 1 CRL, and only version 2 CRLs are supported; \
                    `openssl ca -gencrl` makes one when its configuration sets `crlnumber`"
                .to_owned(),
        );
    }
    webpki::OwnedCertRevocationList::from_der(der.as_ref())
        .map(drop)
        .map_err(|err| err.to_string())
}

/// A file read into memory and split into PEM sections.
struct Pem {
    text: Vec<u8>,
    sections: Vec<(SectionKind, Vec<u8>)>,
}

impl Pem {
    fn text_contains(&self, needle: &str) -> bool {
        self.text
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    }
}

fn read_pem(path: &Path) -> Result<Pem, TlsError> {
    let text = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pem = Pem {
        sections: Vec::new(),
        text,
    };
    // Without this check, a DER file would be reported as "contains no certificate", which
    // sends the operator looking for the wrong problem. An empty file does contain nothing.
    let blank = pem.text.iter().all(u8::is_ascii_whitespace);
    if !blank && !pem.text_contains("-----BEGIN") {
        return Err(TlsError::NotPem {
            path: path.to_owned(),
        });
    }
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&pem.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::PemUnparsable {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    Ok(Pem { sections, ..pem })
}

fn certificates(pem: Pem) -> Vec<CertificateDer<'static>> {
    pem.sections
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect()
}

/// Parses a whole certificate; trailing bytes after it are an error too.
fn parse_x509(cert: &CertificateDer<'_>) -> Result<(), String> {
    match X509Certificate::from_der(cert.as_ref()) {
        Ok(([], _)) => Ok(()),
        Ok((rest, _)) => Err(format!("{} bytes after the certificate", rest.len())),
        Err(err) => Err(err.to_string()),
    }
}
