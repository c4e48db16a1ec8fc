//! `minProtocolVersion`, `maxProtocolVersion` and `cipherSuites` as rustls applies them.

use std::path::Path;

use rustls::crypto::ring::cipher_suite as ring_suites;
use rustls::crypto::CryptoProvider;
use rustls::{SignatureAlgorithm, SupportedCipherSuite, SupportedProtocolVersion};

use super::TlsError;
use crate::policy::{CipherSuite, ProtocolSettings, TlsVersion};

/// TLS 1.3 suites in the order BoringSSL, and so Envoy, prefers them. AES-128-GCM first: every
/// TLS 1.3 client implements it (RFC 8446, 9.1), and it costs less than AES-256-GCM, whose
/// SHA-384 key schedule has no SHA instructions on x86 to run on.
const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    ring_suites::TLS13_AES_128_GCM_SHA256,
    ring_suites::TLS13_AES_256_GCM_SHA384,
    ring_suites::TLS13_CHACHA20_POLY1305_SHA256,
];

/// The TLS 1.2 suites when `cipherSuites` names none: Envoy's default order of those rustls
/// has (AES-128-GCM and ChaCha20-Poly1305 before AES-256-GCM).
const DEFAULT_TLS12_SUITES: [CipherSuite; 6] = [
    CipherSuite::EcdheEcdsaAes128GcmSha256,
    CipherSuite::EcdheEcdsaChacha20Poly1305,
    CipherSuite::EcdheRsaAes128GcmSha256,
    CipherSuite::EcdheRsaChacha20Poly1305,
    CipherSuite::EcdheEcdsaAes256GcmSha384,
    CipherSuite::EcdheRsaAes256GcmSha384,
];

/// ring's provider with the TLS 1.3 suites and the TLS 1.2 suites `cipherSuites` names (or
/// Envoy's default ones), in the server's order of preference: servers built on it choose
/// by that order, not the client's, as Envoy does. TLS 1.3 suites are always all there:
/// Envoy does not let them be configured.
pub(super) fn provider(settings: &ProtocolSettings) -> CryptoProvider {
    let tls12: &[CipherSuite] = if settings.cipher_suites.is_empty() {
        &DEFAULT_TLS12_SUITES
    } else {
        &settings.cipher_suites
    };
    CryptoProvider {
        cipher_suites: TLS13_SUITES
            .into_iter()
            .chain(tls12.iter().map(|suite| rustls_suite(*suite)))
            .collect(),
        ..rustls::crypto::ring::default_provider()
    }
}

/// The rustls versions from `min_version` to `max_version`.
pub(super) fn versions(settings: &ProtocolSettings) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
    .map(|(_, supported)| supported)
    .collect()
}

/// Refuses a configuration that allows TLS 1.2 but whose TLS 1.2 suites cannot be used with
/// the server's key (say, only `ECDHE-ECDSA-*` suites with an RSA key): every TLS 1.2
/// handshake would fail.
pub(super) fn check_tls12_suites(
    provider: &CryptoProvider,
    settings: &ProtocolSettings,
    key: SignatureAlgorithm,
    certificate: &Path,
) -> Result<(), TlsError> {
    let usable = |suite: &SupportedCipherSuite| {
        suite.tls13().is_none() && suite.usable_for_signature_algorithm(key)
    };
    if settings.min_version > TlsVersion::Tls12 || provider.cipher_suites.iter().any(usable) {
        return Ok(());
    }
    let names: Vec<&str> = CipherSuite::ALL
        .into_iter()
        .filter(|suite| usable(&rustls_suite(*suite)))
        .map(CipherSuite::name)
        .collect();
    Err(TlsError::NoUsableCipherSuite {
        certificate: certificate.to_owned(),
        key: format!("{key:?}"),
        usable: names.join(", "),
    })
}

fn rustls_suite(suite: CipherSuite) -> SupportedCipherSuite {
    match suite {
        CipherSuite::EcdheEcdsaAes128GcmSha256 => {
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        CipherSuite::EcdheEcdsaAes256GcmSha384 => {
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        CipherSuite::EcdheEcdsaChacha20Poly1305 => {
            ring_suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheRsaAes128GcmSha256 => ring_suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes256GcmSha384 => ring_suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaChacha20Poly1305 => {
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name maps to the rustls suite of the same IANA name (OpenSSL drops `WITH` and
    /// the hash of CHACHA20 suites).
    #[test]
    fn every_suite_maps_to_its_rustls_namesake() {
        for suite in CipherSuite::ALL {
            let iana = format!("{:?}", rustls_suite(suite).suite());
            let openssl = format!("TLS_{}", suite.name().replace('-', "_"))
                .replace("ECDSA_", "ECDSA_WITH_")
                .replace("RSA_", "RSA_WITH_")
                .replace("AES128", "AES_128")
                .replace("AES256", "AES_256")
                .replace("POLY1305", "POLY1305_SHA256");
            assert_eq!(iana, openssl);
            assert!(rustls_suite(suite).tls13().is_none(), "{iana} is TLS 1.2");
        }
    }

    #[test]
    fn versions_span_min_to_max() {
        let settings = |min_version, max_version| ProtocolSettings {
            min_version,
            max_version,
            cipher_suites: Vec::new(),
        };
        let names = |settings: &ProtocolSettings| -> Vec<String> {
            versions(settings)
                .iter()
                .map(|version| format!("{:?}", version.version))
                .collect()
        };
        assert_eq!(names(&ProtocolSettings::default()), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(
            names(&settings(TlsVersion::Tls12, TlsVersion::Tls12)),
            ["TLSv1_2"]
        );
        assert_eq!(
            names(&settings(TlsVersion::Tls13, TlsVersion::Tls13)),
            ["TLSv1_3"]
        );
    }

    /// The provider's suites by their IANA names, in its order.
    fn suite_names(settings: &ProtocolSettings) -> Vec<String> {
        provider(settings)
            .cipher_suites
            .iter()
            .map(|suite| format!("{:?}", suite.suite()))
            .collect()
    }

    #[test]
    fn cipher_suites_replace_tls12_suites_in_order_and_keep_tls13() {
        let settings = ProtocolSettings {
            cipher_suites: vec![
                CipherSuite::EcdheRsaChacha20Poly1305,
                CipherSuite::EcdheRsaAes128GcmSha256,
            ],
            ..ProtocolSettings::default()
        };
        assert_eq!(
            suite_names(&settings),
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ]
        );
    }

    /// Without `cipherSuites`, every suite ring has, AES-128-GCM first in both versions.
    #[test]
    fn default_suites_prefer_aes128() {
        let suites = suite_names(&ProtocolSettings::default());
        assert_eq!(
            suites,
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            ]
        );
        let ring_default = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(suites.len(), ring_default.len(), "{ring_default:?}");
    }

    #[test]
    fn tls12_needs_a_suite_for_the_key() {
        let ecdsa_only = ProtocolSettings {
            cipher_suites: vec![CipherSuite::EcdheEcdsaAes128GcmSha256],
            ..ProtocolSettings::default()
        };
        let provider = provider(&ecdsa_only);
        let err = check_tls12_suites(
            &provider,
            &ecdsa_only,
            SignatureAlgorithm::RSA,
            Path::new("/c.crt"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/c.crt: no TLS 1.2 cipher suite in cipherSuites works with its RSA key; add one of \
             ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384, \
             ECDHE-RSA-CHACHA20-POLY1305, or set minProtocolVersion: TLSV1_3"
        );
        check_tls12_suites(
            &provider,
            &ecdsa_only,
            SignatureAlgorithm::ECDSA,
            Path::new("/c.crt"),
        )
        .expect("an ECDSA key can use it");
        let tls13_only = ProtocolSettings {
            min_version: TlsVersion::Tls13,
            ..ecdsa_only
        };
        check_tls12_suites(
            &provider,
            &tls13_only,
            SignatureAlgorithm::RSA,
            Path::new("/c.crt"),
        )
        .expect("TLS 1.2 is not served");
    }
}
