//! Tests of the public API: real handshakes against `server_config`, load errors, and the
//! access-log helpers. The verifier's finer rules are tested in `client_verifier`.

use rustls::{CertificateError, ProtocolVersion};
use rustls_pki_types::CertificateDer;

use super::test_pki::{
    handshake, pki, Client, Files, CA, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY,
};
use super::{certificate_subject, server_config, version_name, TlsError};
use crate::policy::{CipherSuite, TlsMode, TlsVersion};

const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn mutual_seed_config(files: &Files) -> std::sync::Arc<rustls::ServerConfig> {
    server_config(&files.seed_settings(TlsMode::Mutual), &[]).expect("seed MUTUAL config")
}

#[tokio::test]
async fn seed_v1_client_is_accepted_over_tls13() {
    let files = Files::new();
    let session = handshake(
        mutual_seed_config(&files),
        Client::seed().versions(TLS13_ONLY),
    )
    .await
    .accepted();
    assert_eq!(session.version, ProtocolVersion::TLSv1_3);
    assert_eq!(
        session.peer_subject.as_deref(),
        Some("CN=client.test.svc.cluster.local,O=client organization")
    );
}

#[tokio::test]
async fn seed_v1_client_is_accepted_over_tls12() {
    let files = Files::new();
    let session = handshake(
        mutual_seed_config(&files),
        Client::seed().versions(TLS12_ONLY),
    )
    .await
    .accepted();
    assert_eq!(session.version, ProtocolVersion::TLSv1_2);
    assert_eq!(
        session.peer_subject.as_deref(),
        Some("CN=client.test.svc.cluster.local,O=client organization")
    );
}

/// ECDSA keys take other handshake-signature paths than RSA, TLS 1.2's in particular.
#[tokio::test]
async fn v1_client_with_ecdsa_key_is_accepted_over_both_versions() {
    let files = Files::new();
    let config = mutual_seed_config(&files);
    for (versions, expected) in [
        (TLS12_ONLY, ProtocolVersion::TLSv1_2),
        (TLS13_ONLY, ProtocolVersion::TLSv1_3),
    ] {
        let client = Client::with_identity(&["v1-ec.crt"], "v1-ec.key").versions(versions);
        let session = handshake(config.clone(), client).await.accepted();
        assert_eq!(session.version, expected);
    }
}

#[tokio::test]
async fn v1_client_from_another_ca_is_refused() {
    let files = Files::new();
    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let client = Client::with_identity(&["v1-other-ca.crt"], CLIENT_KEY).versions(versions);
        let err = handshake(mutual_seed_config(&files), client)
            .await
            .refused();
        assert_eq!(err, CertificateError::UnknownIssuer.into());
    }
}

/// Same issuer name as the configured CA, but signed with another key.
#[tokio::test]
async fn v1_client_from_an_impostor_ca_is_refused() {
    let files = Files::new();
    let client = Client::with_identity(&["v1-impostor-ca.crt"], CLIENT_KEY);
    let err = handshake(mutual_seed_config(&files), client)
        .await
        .refused();
    assert_eq!(err, CertificateError::BadSignature.into());
}

#[tokio::test]
async fn v1_client_with_a_tampered_signature_is_refused() {
    let mut der = pki().cert(CLIENT_CERT).to_vec();
    // The certificate ends with its signature's BIT STRING.
    *der.last_mut().expect("non-empty certificate") ^= 0x01;
    let client = Client {
        identity: Some((vec![CertificateDer::from(der)], pki().key(CLIENT_KEY))),
        ..Client::anonymous()
    };
    let files = Files::new();
    let err = handshake(mutual_seed_config(&files), client)
        .await
        .refused();
    assert_eq!(err, CertificateError::BadSignature.into());
}

#[tokio::test]
async fn v3_client_from_the_ca_is_accepted_by_webpki() {
    let files = Files::new();
    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let client = Client::with_identity(&["v3.crt"], CLIENT_KEY).versions(versions);
        let session = handshake(mutual_seed_config(&files), client)
            .await
            .accepted();
        assert_eq!(
            session.peer_subject.as_deref(),
            Some("CN=client.test.svc.cluster.local,O=client organization")
        );
    }
}

#[tokio::test]
async fn v3_client_through_an_intermediate_is_accepted_by_webpki() {
    let files = Files::new();
    let client = Client::with_identity(&["v3-intermediate.crt", "intermediate.crt"], CLIENT_KEY);
    handshake(mutual_seed_config(&files), client)
        .await
        .accepted();
}

#[tokio::test]
async fn v3_client_from_another_ca_is_refused() {
    let files = Files::new();
    let client = Client::with_identity(&["v3-other-ca.crt"], CLIENT_KEY);
    let err = handshake(mutual_seed_config(&files), client)
        .await
        .refused();
    assert_eq!(err, CertificateError::UnknownIssuer.into());
}

#[tokio::test]
async fn mutual_refuses_a_client_without_certificate() {
    let files = Files::new();
    let err = handshake(mutual_seed_config(&files), Client::anonymous())
        .await
        .refused();
    assert_eq!(err, rustls::Error::NoCertificatesPresented);
}

#[tokio::test]
async fn simple_serves_a_client_without_certificate() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Simple);
    // Istio ignores caCertificates in SIMPLE mode; a missing CA file must not matter.
    settings.ca_certificates = Some(files.path("absent-ca.crt"));
    let config = server_config(&settings, &[]).expect("SIMPLE config");
    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let session = handshake(config.clone(), Client::anonymous().versions(versions))
            .await
            .accepted();
        assert_eq!(session.peer_subject, None);
    }
}

#[tokio::test]
async fn simple_does_not_ask_for_a_client_certificate() {
    let files = Files::new();
    let config = server_config(&files.seed_settings(TlsMode::Simple), &[]).expect("config");
    let session = handshake(config, Client::seed()).await.accepted();
    assert_eq!(session.peer_subject, None);
}

#[tokio::test]
async fn alpn_negotiates_the_configured_protocol() {
    let files = Files::new();
    let config = server_config(&files.seed_settings(TlsMode::Mutual), &[b"http/1.1"])
        .expect("config with ALPN");
    let client = Client::seed().alpn(&[b"h2", b"http/1.1"]);
    let session = handshake(config, client).await.accepted();
    assert_eq!(session.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn empty_alpn_negotiates_none() {
    let files = Files::new();
    let client = Client::seed().alpn(&[b"h2", b"http/1.1"]);
    let session = handshake(mutual_seed_config(&files), client)
        .await
        .accepted();
    assert_eq!(session.alpn, None);
}

/// Builds a MUTUAL configuration from the seed's files after `change` has edited them,
/// returning the error and its message.
fn load_error(change: impl FnOnce(&Files, &mut crate::policy::TlsSettings)) -> (TlsError, String) {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    change(&files, &mut settings);
    let err = server_config(&settings, &[]).expect_err("configuration must be refused");
    let message = err.to_string();
    (err, message)
}

fn contains_path(message: &str, path: &std::path::Path) -> bool {
    message.contains(&path.display().to_string())
}

#[test]
fn missing_server_certificate_is_a_read_error_naming_the_file() {
    let files = Files::new();
    let missing = files.path("missing.crt");
    let (err, message) = load_error(|_, settings| settings.server_certificate = missing.clone());
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(contains_path(&message, &missing), "{message}");
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn der_file_is_reported_as_not_pem() {
    let files = Files::new();
    let der = files.write("server.der", pki().cert(SERVER_CERT).as_ref());
    let (err, message) = load_error(|_, settings| settings.server_certificate = der.clone());
    assert!(matches!(err, TlsError::NotPem { .. }), "{err:?}");
    assert!(contains_path(&message, &der), "{message}");
}

#[test]
fn pem_without_end_line_is_unparsable() {
    let files = Files::new();
    let text = String::from_utf8(pki().file(SERVER_CERT).to_vec()).expect("PEM text");
    let cut = text.replace("-----END CERTIFICATE-----", "");
    let path = files.write("cut.crt", cut.as_bytes());
    let (err, message) = load_error(|_, settings| settings.server_certificate = path.clone());
    assert!(matches!(err, TlsError::PemUnparsable { .. }), "{err:?}");
    assert!(contains_path(&message, &path), "{message}");
}

#[test]
fn key_file_as_certificate_has_no_certificate() {
    let (err, message) = load_error(|files, settings| {
        settings.server_certificate = files.path(SERVER_KEY);
    });
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(message.contains(SERVER_KEY), "{message}");
}

#[test]
fn damaged_certificate_is_unparsable() {
    let files = Files::new();
    let garbage = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n";
    let path = files.write("garbage.crt", garbage.as_bytes());
    let (err, message) = load_error(|_, settings| settings.server_certificate = path.clone());
    assert!(
        matches!(err, TlsError::CertificateUnparsable { index: 1, .. }),
        "{err:?}"
    );
    assert!(contains_path(&message, &path), "{message}");
}

#[test]
fn key_of_another_certificate_is_refused_at_load_time() {
    let (err, message) = load_error(|files, settings| {
        settings.private_key = files.install(CLIENT_KEY);
    });
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(message.contains(CLIENT_KEY), "{message}");
    assert!(message.contains(SERVER_CERT), "{message}");
}

#[test]
fn certificate_as_key_has_no_private_key() {
    let (err, message) = load_error(|files, settings| {
        settings.private_key = files.path(SERVER_CERT);
    });
    assert!(
        matches!(err, TlsError::NoPrivateKey { hint: "", .. }),
        "{err:?}"
    );
    assert!(message.contains(SERVER_CERT), "{message}");
}

#[test]
fn encrypted_key_says_so() {
    let (err, message) = load_error(|files, settings| {
        settings.private_key = files.install("encrypted.key");
    });
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(message.contains("encrypted.key"), "{message}");
    assert!(message.contains("encrypted key"), "{message}");
}

#[test]
fn two_keys_are_refused() {
    let mut both = pki().file(SERVER_KEY).to_vec();
    both.extend_from_slice(pki().file(CLIENT_KEY));
    let (err, message) = load_error(|files, settings| {
        settings.private_key = files.write("two.key", &both);
    });
    assert!(
        matches!(err, TlsError::MultiplePrivateKeys { count: 2, .. }),
        "{err:?}"
    );
    assert!(message.contains("two.key"), "{message}");
}

#[test]
fn ed448_key_is_unsupported() {
    let (err, message) = load_error(|files, settings| {
        settings.private_key = files.install("ed448.key");
    });
    assert!(matches!(err, TlsError::KeyUnsupported { .. }), "{err:?}");
    assert!(message.contains("ed448.key"), "{message}");
}

#[test]
fn empty_ca_file_is_refused() {
    let (err, message) = load_error(|files, settings| {
        settings.ca_certificates = Some(files.write("empty-ca.crt", b""));
    });
    assert!(matches!(err, TlsError::NoCaCertificate { .. }), "{err:?}");
    assert!(message.contains("empty-ca.crt"), "{message}");
}

#[test]
fn ca_file_with_only_a_key_has_no_certificate() {
    let (err, message) = load_error(|files, settings| {
        settings.ca_certificates = Some(files.install(CLIENT_KEY));
    });
    assert!(matches!(err, TlsError::NoCaCertificate { .. }), "{err:?}");
    assert!(message.contains(CLIENT_KEY), "{message}");
}

#[test]
fn damaged_ca_certificate_is_unparsable() {
    let mut text = pki().file(CA).to_vec();
    text.extend_from_slice(b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n");
    let (err, message) = load_error(|files, settings| {
        settings.ca_certificates = Some(files.write("damaged-ca.crt", &text));
    });
    assert!(
        matches!(err, TlsError::CaUnparsable { index: 2, .. }),
        "{err:?}"
    );
    assert!(message.contains("damaged-ca.crt"), "{message}");
}

#[test]
fn missing_ca_file_is_a_read_error() {
    let (err, message) = load_error(|files, settings| {
        settings.ca_certificates = Some(files.path("absent-ca.crt"));
    });
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(message.contains("absent-ca.crt"), "{message}");
}

#[test]
fn mutual_without_ca_is_refused() {
    let (err, message) = load_error(|_, settings| settings.ca_certificates = None);
    assert!(matches!(err, TlsError::MutualWithoutCa { .. }), "{err:?}");
    assert!(message.contains(SERVER_CERT), "{message}");
}

#[test]
fn subject_is_in_certificate_order() {
    assert_eq!(
        certificate_subject(&pki().cert(CLIENT_CERT)).as_deref(),
        Some("CN=client.test.svc.cluster.local,O=client organization")
    );
    assert_eq!(
        certificate_subject(&pki().cert(CA)).as_deref(),
        Some("O=example Inc.,CN=example.com")
    );
}

#[test]
fn subject_joins_multi_valued_rdns_and_escapes() {
    assert_eq!(
        certificate_subject(&pki().cert("v1-multi.crt")).as_deref(),
        // DER sorts a multi-valued RDN's SET: the shorter OU encoding comes first.
        Some("OU=team+CN=multi,O=Acme\\, Inc.")
    );
}

#[test]
fn subject_of_garbage_is_none() {
    assert_eq!(
        certificate_subject(&CertificateDer::from(vec![0x30, 0x03, 0x02])),
        None
    );
}

#[test]
fn subject_values_are_escaped() {
    assert_eq!(super::escape_rfc4514("a,b+c"), "a\\,b\\+c");
    assert_eq!(super::escape_rfc4514(" #x "), "\\ #x\\ ");
    assert_eq!(super::escape_rfc4514("#"), "\\#");
    assert_eq!(
        super::escape_rfc4514("say \"hi\"; <ok>\\"),
        "say \\\"hi\\\"\\; \\<ok\\>\\\\"
    );
    assert_eq!(super::escape_rfc4514("plain value"), "plain value");
}

#[test]
fn version_names_are_openssls() {
    assert_eq!(version_name(ProtocolVersion::TLSv1_3), "TLSv1.3");
    assert_eq!(version_name(ProtocolVersion::TLSv1_2), "TLSv1.2");
    assert_eq!(version_name(ProtocolVersion::TLSv1_0), "TLSv1");
    assert_eq!(version_name(ProtocolVersion::Unknown(0x7f00)), "unknown");
}

#[tokio::test]
async fn max_tls12_refuses_tls13_clients() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    settings.protocol.max_version = TlsVersion::Tls12;
    let config = server_config(&settings, &[]).expect("TLS 1.2 only");
    let session = handshake(config.clone(), Client::seed()).await.accepted();
    assert_eq!(session.version, ProtocolVersion::TLSv1_2);
    let err = handshake(config, Client::seed().versions(TLS13_ONLY))
        .await
        .refused();
    assert_eq!(
        err,
        rustls::PeerIncompatible::Tls12NotOfferedOrEnabled.into()
    );
}

#[tokio::test]
async fn min_tls13_refuses_tls12_clients() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    settings.protocol.min_version = TlsVersion::Tls13;
    let config = server_config(&settings, &[]).expect("TLS 1.3 only");
    let outcome = handshake(config, Client::seed().versions(TLS12_ONLY)).await;
    assert!(outcome.server.is_err(), "TLS 1.2 accepted");
}

#[tokio::test]
async fn cipher_suites_still_serve_tls12_with_a_usable_suite() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    settings.protocol.cipher_suites = vec![CipherSuite::EcdheRsaChacha20Poly1305];
    let config = server_config(&settings, &[]).expect("config");
    let session = handshake(config, Client::seed().versions(TLS12_ONLY))
        .await
        .accepted();
    assert_eq!(session.version, ProtocolVersion::TLSv1_2);
}

#[test]
fn cipher_suites_unusable_with_the_key_are_refused() {
    let (err, message) = load_error(|_, settings| {
        settings.protocol.cipher_suites = vec![CipherSuite::EcdheEcdsaAes128GcmSha256];
    });
    assert!(
        matches!(err, TlsError::NoUsableCipherSuite { .. }),
        "{err:?}"
    );
    assert!(message.contains(SERVER_CERT), "{message}");
}

#[tokio::test]
async fn subject_alt_names_admit_only_listed_clients() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    settings.client_match.subject_alt_names = vec!["client.test.svc.cluster.local".into()];
    let config = server_config(&settings, &[]).expect("config");
    handshake(
        config.clone(),
        Client::with_identity(&["v3-san.crt"], CLIENT_KEY),
    )
    .await
    .accepted();
    // The seed's v1 client certificate has no subjectAltName.
    let err = handshake(config, Client::seed()).await.refused();
    assert!(
        err.to_string().contains("include none of subjectAltNames"),
        "{err}"
    );
}

#[tokio::test]
async fn a_crl_file_refuses_revoked_clients() {
    let files = Files::new();
    let mut settings = files.seed_settings(TlsMode::Mutual);
    settings.ca_crl = Some(files.install("revoked.crl"));
    let config = server_config(&settings, &[]).expect("config");
    let err = handshake(config.clone(), Client::seed()).await.refused();
    assert_eq!(err, CertificateError::Revoked.into());
    handshake(config, Client::with_identity(&["v3-san.crt"], CLIENT_KEY))
        .await
        .accepted();
}

#[test]
fn crl_load_errors_name_the_file() {
    let (err, message) = load_error(|files, settings| {
        settings.ca_crl = Some(files.install(CA));
    });
    assert!(matches!(err, TlsError::NoCrl { .. }), "{err:?}");
    assert!(message.contains(CA), "{message}");

    let (err, message) = load_error(|files, settings| {
        settings.ca_crl = Some(files.install("revoked-v1.crl"));
    });
    assert!(
        matches!(err, TlsError::CrlUnparsable { index: 1, .. }),
        "{err:?}"
    );
    assert!(message.contains("revoked-v1.crl"), "{message}");
    assert!(message.contains("only version 2 CRLs"), "{message}");

    let (err, message) = load_error(|files, settings| {
        settings.ca_crl = Some(files.path("absent.crl"));
    });
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(message.contains("absent.crl"), "{message}");
}
