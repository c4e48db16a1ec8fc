//! The checks Envoy makes of a client certificate once its chain is verified:
//! `subjectAltNames`, then `verifyCertificateSpki` / `verifyCertificateHash`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls::{CertificateError, Error, SupportedCipherSuite};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::client_verifier::rejected;
use super::hex;
use crate::policy::{ClientMatch, Pin};

/// Refuses `cert` unless it carries one of the wanted subjectAltNames (if any are set), and
/// matches one of the pins of either list (if any is set).
pub(super) fn check(wanted: &ClientMatch, cert: &CertificateDer<'_>) -> Result<(), Error> {
    if wanted.subject_alt_names.is_empty() && wanted.pins.is_empty() {
        return Ok(());
    }
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
    if !wanted.subject_alt_names.is_empty() {
        let names = subject_alt_names(&parsed)?;
        let matched = names.iter().any(|name| {
            wanted
                .subject_alt_names
                .iter()
                .any(|wanted| name.matches(wanted))
        });
        if !matched {
            let names: Vec<String> = names.iter().map(ToString::to_string).collect();
            return Err(rejected(format!(
                "the client certificate's subjectAltNames [{}] include none of subjectAltNames \
                 [{}]",
                names.join(", "),
                wanted.subject_alt_names.join(", ")
            )));
        }
    }
    if !wanted.pins.is_empty() {
        let spki = Pin::Spki(sha256(parsed.public_key().raw));
        let whole = sha256(cert.as_ref());
        let certificate = Pin::Certificate(whole);
        if !wanted.pins.contains(&spki) && !wanted.pins.contains(&certificate) {
            return Err(rejected(format!(
                "the client certificate (SHA-256 {}) matches neither verifyCertificateSpki nor \
                 verifyCertificateHash",
                hex(&whole)
            )));
        }
    }
    Ok(())
}

/// A subjectAltName of the kinds Envoy compares with `subjectAltNames`.
#[derive(Debug, PartialEq)]
enum SubjectAltName<'a> {
    Dns(&'a str),
    Uri(&'a str),
    Email(&'a str),
    Ip(IpAddr),
}

impl SubjectAltName<'_> {
    /// Envoy's comparison with an exact matcher: a DNS name as a DNS name (any case, with the
    /// certificate's wildcards), every other kind as the exact string, an IP address in its
    /// usual text form.
    fn matches(&self, wanted: &str) -> bool {
        match self {
            SubjectAltName::Dns(pattern) => dns_name_match(wanted, pattern),
            SubjectAltName::Uri(name) | SubjectAltName::Email(name) => *name == wanted,
            SubjectAltName::Ip(address) => address.to_string() == wanted,
        }
    }
}

impl fmt::Display for SubjectAltName<'_> {
    /// OpenSSL's notation, as in `-addext subjectAltName=DNS:...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectAltName::Dns(name) => write!(f, "DNS:{name}"),
            SubjectAltName::Uri(name) => write!(f, "URI:{name}"),
            SubjectAltName::Email(name) => write!(f, "email:{name}"),
            SubjectAltName::Ip(address) => write!(f, "IP:{address}"),
        }
    }
}

fn subject_alt_names<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<SubjectAltName<'a>>, Error> {
    let extension = cert
        .subject_alternative_name()
        .map_err(|_| CertificateError::BadEncoding)?;
    let Some(extension) = extension else {
        return Ok(Vec::new());
    };
    Ok(extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(name) => Some(SubjectAltName::Dns(name)),
            GeneralName::URI(name) => Some(SubjectAltName::Uri(name)),
            GeneralName::RFC822Name(name) => Some(SubjectAltName::Email(name)),
            GeneralName::IPAddress(bytes) => ip_address(bytes).map(SubjectAltName::Ip),
            _ => None,
        })
        .collect())
}

/// An IP address subjectAltName; Envoy skips one of any other length.
fn ip_address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(Ipv4Addr::from)
            .map(IpAddr::V4),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(Ipv6Addr::from)
            .map(IpAddr::V6),
        _ => None,
    }
}

/// Envoy's `dnsNameMatch`: `name` equals `pattern` in any case, or `pattern`'s left-most label
/// holds one `*` that covers `name`'s left-most label and the rest is equal. An A-label
/// (`xn--`) is never a wildcard.
fn dns_name_match(name: &str, pattern: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if name == pattern {
        return true;
    }
    let (Some((label, rest)), Some((pattern_label, pattern_rest))) =
        (name.split_once('.'), pattern.split_once('.'))
    else {
        return false;
    };
    pattern_label.contains('*')
        && !pattern_rest.contains('*')
        && !pattern_label.starts_with("xn--")
        && rest == pattern_rest
        && label_wildcard_match(label, pattern_label)
}

/// Envoy's `labelWildcardMatch`: `*` alone matches any label; otherwise the one `*` matches
/// what lies between the pattern's prefix and suffix.
fn label_wildcard_match(label: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('*') {
        Some((prefix, suffix)) if !suffix.contains('*') => {
            pattern.len() <= label.len() + 1 && label.starts_with(prefix) && label.ends_with(suffix)
        }
        _ => false,
    }
}

/// SHA-256 with ring, which rustls does not re-export: the hash of the TLS 1.3 suite every
/// implementation must offer (RFC 8446 section 9.1) is SHA-256.
fn sha256(data: &[u8]) -> [u8; 32] {
    let hash = match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        SupportedCipherSuite::Tls12(suite) => suite.common.hash_provider,
        SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
    };
    let mut digest = [0; 32];
    digest.copy_from_slice(hash.hash(data).as_ref());
    digest
}

#[cfg(test)]
mod tests {
    use super::super::test_pki::{pki, CLIENT_CERT};
    use super::*;

    #[test]
    fn dns_names_match_as_envoy_matches_them() {
        assert!(dns_name_match("client.test", "client.test"));
        assert!(dns_name_match("Client.TEST", "client.test"));
        assert!(dns_name_match("a.test.svc", "*.test.svc"));
        assert!(dns_name_match("api-1.test", "api-*.test"));
        assert!(dns_name_match("api.test", "api*.test"));
        assert!(
            !dns_name_match("a.b.test.svc", "*.test.svc"),
            "one label only"
        );
        assert!(!dns_name_match("test.svc", "*.test.svc"));
        assert!(!dns_name_match("web.test", "api-*.test"));
        assert!(!dns_name_match("xn--a.test", "xn--*.test"), "A-labels");
        assert!(!dns_name_match("a.b.test", "*.*.test"));
        assert!(
            !dns_name_match("a.test", "a.*"),
            "wildcard in the left-most label only"
        );
        // The wildcard is the certificate's, never the configured name's.
        assert!(!dns_name_match("*.test", "a.test"));
        assert!(!dns_name_match("test", "*"));
    }

    #[test]
    fn other_kinds_match_exactly() {
        let uri = SubjectAltName::Uri("spiffe://cluster.local/ns/test/sa/client");
        assert!(uri.matches("spiffe://cluster.local/ns/test/sa/client"));
        assert!(!uri.matches("spiffe://cluster.local/ns/test/sa/Client"));
        assert!(SubjectAltName::Email("a@b.example").matches("a@b.example"));
        let ip = SubjectAltName::Ip("2001:db8::1".parse().unwrap());
        assert!(ip.matches("2001:db8::1"));
        assert!(!ip.matches("2001:db8:0::1"), "Envoy compares the text form");
        assert!(SubjectAltName::Ip("198.18.0.1".parse().unwrap()).matches("198.18.0.1"));
        assert_eq!(ip_address(&[1, 2, 3]), None);
    }

    #[test]
    fn subject_alt_names_are_read_in_order() {
        let cert = pki().cert("v3-san.crt");
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).unwrap();
        let names: Vec<String> = subject_alt_names(&parsed)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "DNS:client.test.svc.cluster.local",
                "URI:spiffe://cluster.local/ns/test/sa/client",
                "email:client@example.com",
                "IP:198.18.0.1",
            ]
        );
    }

    fn wanting(names: &[&str]) -> ClientMatch {
        ClientMatch {
            subject_alt_names: names.iter().map(ToString::to_string).collect(),
            ..ClientMatch::default()
        }
    }

    #[test]
    fn a_listed_subject_alt_name_passes_and_others_are_refused() {
        let cert = pki().cert("v3-san.crt");
        for name in [
            "client.test.svc.cluster.local",
            "spiffe://cluster.local/ns/test/sa/client",
            "client@example.com",
            "198.18.0.1",
        ] {
            check(&wanting(&["other.example", name]), &cert).expect(name);
        }
        let err = check(&wanting(&["other.example"]), &cert).unwrap_err();
        assert!(
            err.to_string()
                .contains("include none of subjectAltNames [other.example]"),
            "{err}"
        );
        // The seed's v1 client certificate has no subjectAltName at all.
        let err = check(
            &wanting(&["client.test.svc.cluster.local"]),
            &pki().cert(CLIENT_CERT),
        )
        .unwrap_err();
        assert!(err.to_string().contains("subjectAltNames []"), "{err}");
    }

    #[test]
    fn either_pin_list_admits_a_certificate() {
        let cert = pki().cert(CLIENT_CERT);
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).unwrap();
        let spki = Pin::Spki(sha256(parsed.public_key().raw));
        let whole = sha256(cert.as_ref());
        let other = [7; 32];
        let pinned = |pins: &[Pin]| ClientMatch {
            pins: pins.to_vec(),
            ..ClientMatch::default()
        };
        check(&pinned(&[Pin::Spki(other), spki]), &cert).expect("SPKI pin");
        check(&pinned(&[Pin::Certificate(whole)]), &cert).expect("certificate pin");
        check(&pinned(&[Pin::Spki(other), Pin::Certificate(whole)]), &cert).expect("either list");
        // A digest counts only as what it pins: the certificate's digest is not its key's.
        assert!(check(&pinned(&[Pin::Spki(whole)]), &cert).is_err());
        let err = check(&pinned(&[Pin::Spki(other), Pin::Certificate(other)]), &cert).unwrap_err();
        assert!(
            err.to_string()
                .contains("matches neither verifyCertificateSpki nor verifyCertificateHash"),
            "{err}"
        );
        assert!(err.to_string().contains(&hex(&whole)), "{err}");
        // Both checks apply: a pinned certificate still needs a listed subjectAltName.
        let both = ClientMatch {
            subject_alt_names: vec!["client.test.svc.cluster.local".into()],
            ..pinned(&[spki])
        };
        assert!(check(&both, &cert).is_err());
    }

    #[test]
    fn sha256_is_sha256() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
