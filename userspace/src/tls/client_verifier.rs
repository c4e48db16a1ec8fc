//! Client-certificate verification for MUTUAL ports.
//!
//! The Istio guide's `openssl x509 -req` commands produce X.509 v1 client certificates (no
//! extensions). Envoy accepts them; webpki refuses every v1 end-entity certificate. So that
//! users following the guide are not turned away, [`ClientVerifier`] accepts a v1 certificate
//! under a narrow rule, issued *directly* by one of the configured CA certificates, and hands
//! every other certificate to rustls' `WebPkiClientVerifier` unchanged.
//!
//! The v1 rule checks what webpki would check for such a chain, with the same signature
//! algorithms (the crypto provider's, so no SHA-1): the issuer name equals a CA's subject
//! byte for byte, the signature verifies with that CA's key, and both certificates are valid
//! at the handshake's time. Intermediates the client sends are ignored for v1 certificates:
//! a chain through them is refused rather than half-checked.
//!
//! With `caCrl`, both paths check revocation as webpki (and Envoy) do: a CRL from the issuer
//! must be there, correctly signed, not expired, and must not list the certificate. Then
//! both paths apply `client_match`: `subjectAltNames`, `verifyCertificateSpki` and
//! `verifyCertificateHash`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, PeerMisbehaved, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, SubjectPublicKeyInfoDer, UnixTime,
};
use x509_parser::asn1_rs::Any;
use x509_parser::oid_registry::{
    OID_X509_EXT_ISSUER_DISTRIBUTION_POINT, OID_X509_EXT_NAME_CONSTRAINTS,
};
use x509_parser::prelude::{
    ASN1Time, CertificateRevocationList, FromDer, X509Certificate, X509Version,
};

use super::load::Crls;
use super::{client_match, TlsError};
use crate::policy::ClientMatch;

/// What a MUTUAL port trusts: its CA certificates and, with `caCrl`, their CRLs.
pub(super) struct Trust<'a> {
    /// As loaded; `load::ca_certificates` has checked each parses.
    pub(super) cas: Vec<CertificateDer<'static>>,
    pub(super) ca_path: &'a Path,
    pub(super) crls: Option<Crls>,
}

/// Verifies client certificates against the CA certificates of a MUTUAL port: X.509 v1
/// certificates by the direct-issuance rule in the module docs, all others with webpki.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The CA certificates, as loaded; `load::ca_certificates` has checked each parses.
    issuers: Vec<CertificateDer<'static>>,
    /// `caCrl`'s CRLs; empty without `caCrl`. `load::crls` has checked each parses.
    crls: Vec<CertificateRevocationListDer<'static>>,
    client_match: ClientMatch,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// Builds the verifier for the CA certificates (and CRLs) of `trust`.
    pub(super) fn new(
        trust: Trust<'_>,
        client_match: ClientMatch,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for (i, issuer) in trust.cas.iter().enumerate() {
            roots
                .add(issuer.clone())
                .map_err(|err| TlsError::CaUnparsable {
                    path: trust.ca_path.to_owned(),
                    index: i + 1,
                    reason: err.to_string(),
                })?;
        }
        let algorithms = provider.signature_verification_algorithms;
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        // Unknown status is refused (rustls' default) and so is an expired CRL, as OpenSSL
        // does for Envoy.
        let (builder, crls, path) = match trust.crls {
            Some(crls) => (
                builder
                    .with_crls(crls.ders.clone())
                    .enforce_revocation_expiration(),
                crls.ders,
                crls.path,
            ),
            None => (builder, Vec::new(), trust.ca_path.to_owned()),
        };
        let webpki = builder.build().map_err(|err| TlsError::Rustls {
            path,
            reason: err.to_string(),
        })?;
        Ok(Self {
            webpki,
            issuers: trust.cas,
            crls,
            client_match,
            algorithms,
        })
    }

    fn verify_v1(&self, leaf: &V1Certificate<'_>, now: UnixTime) -> Result<(), Error> {
        check_validity(&leaf.cert, now)?;

        // Errors from the CAs whose subject matches, most telling first: a CA that signed
        // the certificate but cannot be used explains more than a signature that failed.
        let mut unusable_issuer = None;
        let mut bad_signature = None;
        let issuer_name = leaf.cert.issuer().as_raw();
        for der in &self.issuers {
            let Ok((_, ca)) = X509Certificate::from_der(der.as_ref()) else {
                continue;
            };
            if ca.subject().as_raw() != issuer_name {
                continue;
            }
            if let Err(err) = self.check_signed_by(&leaf.signed, &ca) {
                bad_signature.get_or_insert(err);
                continue;
            }
            match check_usable_issuer(&ca, now) {
                Ok(()) => return self.check_not_revoked(leaf, &ca, now),
                Err(err) => {
                    unusable_issuer.get_or_insert(err);
                }
            }
        }
        Err(unusable_issuer
            .or(bad_signature)
            .unwrap_or_else(|| CertificateError::UnknownIssuer.into()))
    }

    /// With `caCrl`, refuses `leaf` unless the first CRL that `ca` issued for it is correctly
    /// signed, current and does not list its serial number, as webpki decides for the
    /// certificates it verifies. A CRL with an issuing distribution point covers only the
    /// certificates that name it, so never a v1 certificate, which has no extensions.
    fn check_not_revoked(
        &self,
        leaf: &V1Certificate<'_>,
        ca: &X509Certificate<'_>,
        now: UnixTime,
    ) -> Result<(), Error> {
        if self.crls.is_empty() {
            return Ok(());
        }
        let authoritative = self.crls.iter().find_map(|der| {
            let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).ok()?;
            let covers = crl.issuer().as_raw() == ca.subject().as_raw()
                && crl
                    .tbs_cert_list
                    .find_extension(&OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
                    .is_none();
            covers.then_some((der, crl))
        });
        let Some((der, crl)) = authoritative else {
            return Err(CertificateError::UnknownRevocationStatus.into());
        };
        let crl_error = |err| Error::InvalidCertRevocationList(err);
        let signed =
            Signed::parse(der.as_ref()).ok_or(crl_error(CertRevocationListError::ParseError))?;
        self.check_signed_by(&signed, ca)
            .map_err(|_| crl_error(CertRevocationListError::BadSignature))?;
        let may_sign_crls = match ca.key_usage() {
            Ok(None) => true,
            Ok(Some(usage)) => usage.value.crl_sign(),
            Err(_) => false,
        };
        if !may_sign_crls {
            return Err(crl_error(CertRevocationListError::IssuerInvalidForCrl));
        }
        if let Some(next_update) = crl.next_update().map(|time| unix_time(&time)) {
            if now.as_secs() >= next_update.as_secs() {
                return Err(CertificateError::ExpiredRevocationListContext {
                    time: now,
                    next_update,
                }
                .into());
            }
        }
        let serial = leaf.cert.raw_serial();
        if crl
            .iter_revoked_certificates()
            .any(|revoked| revoked.raw_serial() == serial)
        {
            return Err(CertificateError::Revoked.into());
        }
        Ok(())
    }

    /// Checks the signature of `signed` (a certificate or a CRL) with `ca`'s public key, using
    /// only the provider's algorithms whose identifier is exactly the signed one's, as webpki
    /// does.
    fn check_signed_by(&self, signed: &Signed<'_>, ca: &X509Certificate<'_>) -> Result<(), Error> {
        let spki = SubjectPublicKeyInfoDer::from(ca.public_key().raw);
        let key = webpki::RawPublicKeyEntity::try_from(&spki).map_err(webpki_error)?;
        let mut error = None;
        for alg in self.algorithms.all {
            if alg.signature_alg_id().as_ref() != signed.algorithm {
                continue;
            }
            match key.verify_signature(*alg, signed.tbs, signed.signature) {
                Ok(()) => return Ok(()),
                // Same identifier, other key type (say ECDSA P-256 against a P-384 key):
                // another algorithm may still fit.
                Err(err @ webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {
                    error = Some(err)
                }
                Err(err) => return Err(webpki_error(err)),
            }
        }
        Err(match error {
            Some(err) => webpki_error(err),
            None => CertificateError::UnsupportedSignatureAlgorithmContext {
                signature_algorithm_id: signed.algorithm.to_vec(),
                supported_algorithms: self
                    .algorithms
                    .all
                    .iter()
                    .map(|alg| alg.signature_alg_id())
                    .collect(),
            }
            .into(),
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
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
        match V1Certificate::parse(end_entity) {
            None => {
                self.webpki
                    .verify_client_cert(end_entity, intermediates, now)?;
            }
            Some(leaf) => self.verify_v1(&leaf?, now)?,
        }
        client_match::check(&self.client_match, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match V1Certificate::parse(cert) {
            None => self.webpki.verify_tls12_signature(message, cert, dss),
            Some(leaf) => verify_tls12_signature_with_raw_key(
                message,
                &leaf?.public_key(),
                dss,
                &self.algorithms,
            ),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match V1Certificate::parse(cert) {
            None => self.webpki.verify_tls13_signature(message, cert, dss),
            Some(leaf) => rustls::crypto::verify_tls13_signature_with_raw_key(
                message,
                &leaf?.public_key(),
                dss,
                &self.algorithms,
            ),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// An X.509 v1 certificate, parsed.
struct V1Certificate<'a> {
    cert: X509Certificate<'a>,
    signed: Signed<'a>,
}

impl<'a> V1Certificate<'a> {
    /// `None` when `der` is not a v1 certificate, including when x509-parser cannot read it:
    /// webpki then judges it (and refuses what it cannot parse). `Some(Err)` for a v1
    /// certificate that is malformed.
    fn parse(der: &'a CertificateDer<'_>) -> Option<Result<Self, Error>> {
        let (rest, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        if cert.version() != X509Version::V1 {
            return None;
        }
        let bad_encoding = || Some(Err(CertificateError::BadEncoding.into()));
        // Unique identifiers and extensions need v2 or v3 (RFC 5280 section 4.1); a "v1"
        // certificate with them is malformed, and must not slip past webpki's checks of
        // those very extensions.
        let tbs = &cert.tbs_certificate;
        if !rest.is_empty()
            || tbs.issuer_uid.is_some()
            || tbs.subject_uid.is_some()
            || !tbs.extensions().is_empty()
            // RFC 5280 section 4.1.1.2: the signed and the unsigned algorithm must agree.
            || tbs.signature != cert.signature_algorithm
        {
            return bad_encoding();
        }
        let Some(signed) = Signed::parse(der.as_ref()) else {
            return bad_encoding();
        };
        Some(Ok(Self { cert, signed }))
    }

    fn public_key(&self) -> SubjectPublicKeyInfoDer<'a> {
        SubjectPublicKeyInfoDer::from(self.cert.tbs_certificate.subject_pki.raw)
    }
}

/// The raw parts of a signed X.509 structure, a certificate or a CRL (RFC 5280:
/// `SEQUENCE { tbs, signatureAlgorithm, signatureValue }`). x509-parser decodes them but
/// keeps no raw algorithm identifier, which the comparison with the provider's algorithm
/// identifiers needs.
struct Signed<'a> {
    /// The signed bytes: the whole encoded TBSCertificate or TBSCertList.
    tbs: &'a [u8],
    /// Content of the outer `signatureAlgorithm` AlgorithmIdentifier, the form in which
    /// `SignatureVerificationAlgorithm::signature_alg_id` names algorithms.
    algorithm: &'a [u8],
    /// The signature, from a BIT STRING without unused bits.
    signature: &'a [u8],
}

impl<'a> Signed<'a> {
    fn parse(der: &'a [u8]) -> Option<Signed<'a>> {
        let (_, outer) = Any::from_der(der).ok()?;
        let (after_tbs, _tbs) = Any::from_der(outer.data).ok()?;
        let tbs = &outer.data[..outer.data.len() - after_tbs.len()];
        let (after_algorithm, algorithm) = Any::from_der(after_tbs).ok()?;
        let (_, signature) = Any::from_der(after_algorithm).ok()?;
        match signature.data.split_first()? {
            (0, signature) => Some(Signed {
                tbs,
                algorithm: algorithm.data,
                signature,
            }),
            _ => None,
        }
    }
}

/// Refuses a certificate outside its validity window at `now`, as webpki would.
fn check_validity(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), Error> {
    let validity = cert.validity();
    let time = now.as_secs();
    let not_before = unix_time(&validity.not_before);
    let not_after = unix_time(&validity.not_after);
    if time < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if time > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    Ok(())
}

/// Refuses a CA certificate that signed a v1 client certificate but must not vouch for it.
///
/// webpki treats trust anchors as bare names and keys; the extra checks here are the
/// requirement for v1 certificates that the CA be currently valid, and a refusal for CAs with
/// name constraints, which this path does not evaluate (webpki would).
fn check_usable_issuer(ca: &X509Certificate<'_>, now: UnixTime) -> Result<(), Error> {
    let subject = ca.subject();
    if let Err(err) = check_validity(ca, now) {
        return Err(rejected(format!(
            "the CA certificate \"{subject}\" that issued this X.509 v1 client certificate \
             is not valid now: {err}"
        )));
    }
    if ca
        .iter_extensions()
        .any(|ext| ext.oid == OID_X509_EXT_NAME_CONSTRAINTS)
    {
        return Err(rejected(format!(
            "the CA certificate \"{subject}\" has name constraints, which X.509 v1 client \
             certificates cannot be checked against; issue a v3 client certificate"
        )));
    }
    Ok(())
}

/// An ASN.1 time as rustls' `UnixTime`; times before 1970 become the epoch, which keeps
/// every comparison with a handshake's time the same.
fn unix_time(time: &ASN1Time) -> UnixTime {
    let secs = u64::try_from(time.timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// A refusal that no `CertificateError` variant names.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Rejected(String);

pub(super) fn rejected(message: String) -> Error {
    CertificateError::Other(OtherError(Arc::new(Rejected(message)))).into()
}

/// Verifies a TLS 1.2 handshake signature made with the key in `spki`.
///
/// The TLS 1.2 counterpart of `rustls::crypto::verify_tls13_signature_with_raw_key`, which
/// rustls does not provide: like rustls' `verify_tls12_signature`, it tries each algorithm
/// the provider maps the scheme to, since in TLS 1.2 a scheme does not fix the key's curve.
pub(super) fn verify_tls12_signature_with_raw_key(
    message: &[u8],
    spki: &SubjectPublicKeyInfoDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error> {
    let Some((_, candidates)) = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
    else {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    };
    let key = webpki::RawPublicKeyEntity::try_from(spki).map_err(webpki_error)?;
    let mut error = None;
    for alg in *candidates {
        match key.verify_signature(*alg, message, dss.signature()) {
            Ok(()) => return Ok(HandshakeSignatureValid::assertion()),
            Err(err @ webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => {
                error = Some(err)
            }
            Err(err) => return Err(webpki_error(err)),
        }
    }
    Err(error
        .map(webpki_error)
        .unwrap_or_else(|| PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into()))
}

/// rustls' own mapping of webpki errors is private; this covers the errors that signature
/// checks with a raw public key can produce, and names any other.
fn webpki_error(err: webpki::Error) -> Error {
    match err {
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature.into(),
        webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(cx) => {
            CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: cx.signature_algorithm_id,
                public_key_algorithm_id: cx.public_key_algorithm_id,
            }
            .into()
        }
        webpki::Error::UnsupportedSignatureAlgorithmContext(cx) => {
            CertificateError::UnsupportedSignatureAlgorithmContext {
                signature_algorithm_id: cx.signature_algorithm_id,
                supported_algorithms: cx.supported_algorithms,
            }
            .into()
        }
        webpki::Error::BadDer | webpki::Error::TrailingData(_) => {
            CertificateError::BadEncoding.into()
        }
        other => rejected(format!("{other}")),
    }
}

#[cfg(test)]
mod tests {
    //! Direct calls to the verifier, for what a handshake cannot easily show: other times,
    //! chains the client sends, and the exact refusal.

    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::server::danger::ClientCertVerifier;
    use rustls::{CertificateError, Error};
    use rustls_pki_types::{CertificateDer, UnixTime};

    use rustls::CertRevocationListError;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateRevocationListDer;

    use super::super::load::Crls;
    use super::super::test_pki::{pki, CA, CLIENT_CERT};
    use super::{ClientVerifier, Trust};
    use crate::policy::ClientMatch;

    const DAY: u64 = 24 * 60 * 60;

    fn verifier(cas: &[&str]) -> ClientVerifier {
        verifier_with_crls(cas, &[])
    }

    /// A verifier for these CAs and, unless `crls` is empty, a caCrl file of these CRLs.
    fn verifier_with_crls(cas: &[&str], crls: &[&str]) -> ClientVerifier {
        let cas = cas.iter().map(|name| pki().cert(name)).collect();
        let crls = (!crls.is_empty()).then(|| Crls {
            path: "ca.crl".into(),
            ders: crls
                .iter()
                .map(|name| CertificateRevocationListDer::from_pem_slice(pki().file(name)))
                .collect::<Result<_, _>>()
                .expect("CRLs"),
        });
        let trust = Trust {
            cas,
            ca_path: Path::new("ca.crt"),
            crls,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientVerifier::new(trust, ClientMatch::default(), provider).expect("verifier")
    }

    fn days_from_now(days: i64) -> UnixTime {
        let now = UnixTime::now().as_secs();
        let secs = now.checked_add_signed(days * DAY as i64).expect("time");
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    fn verify(verifier: &ClientVerifier, chain: &[&str], now: UnixTime) -> Result<(), Error> {
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|name| pki().cert(name)).collect();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map(|_| ())
    }

    /// The message of a refusal no `CertificateError` variant names.
    fn other_message(result: Result<(), Error>) -> String {
        match result {
            Err(Error::InvalidCertificate(CertificateError::Other(other))) => other.to_string(),
            other => panic!("expected a refusal with a message, got {other:?}"),
        }
    }

    #[test]
    fn seed_v1_client_is_accepted_now() {
        verify(&verifier(&[CA]), &[CLIENT_CERT], UnixTime::now()).expect("accepted");
    }

    #[test]
    fn v1_client_is_refused_once_expired() {
        let result = verify(&verifier(&[CA]), &[CLIENT_CERT], days_from_now(400));
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn v1_client_is_refused_before_its_validity() {
        let result = verify(&verifier(&[CA]), &[CLIENT_CERT], days_from_now(-2));
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidYetContext { .. }
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn v1_client_is_refused_once_its_ca_expired() {
        let verifier = verifier(&["short-ca.crt"]);
        verify(&verifier, &["v1-short-ca.crt"], UnixTime::now()).expect("valid CA: accepted");
        let message = other_message(verify(&verifier, &["v1-short-ca.crt"], days_from_now(2)));
        assert!(message.contains("short-lived CA"), "{message}");
        assert!(message.contains("not valid now"), "{message}");
    }

    #[test]
    fn v1_client_of_a_name_constrained_ca_is_refused() {
        let message = other_message(verify(
            &verifier(&["constrained-ca.crt"]),
            &["v1-constrained-ca.crt"],
            UnixTime::now(),
        ));
        assert!(message.contains("name constraints"), "{message}");
    }

    #[test]
    fn v1_client_signed_with_sha1_is_refused() {
        let result = verify(&verifier(&[CA]), &["v1-sha1.crt"], UnixTime::now());
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(
                    CertificateError::UnsupportedSignatureAlgorithmContext { .. }
                ))
            ),
            "{result:?}"
        );
    }

    /// A v1 certificate must be issued directly by a configured CA, whatever chain is sent.
    #[test]
    fn v1_client_through_an_intermediate_is_refused() {
        let verifier = verifier(&[CA]);
        for chain in [
            &["v1-intermediate.crt", "intermediate.crt"][..],
            &["v1-intermediate.crt"][..],
        ] {
            assert_eq!(
                verify(&verifier, chain, UnixTime::now()),
                Err(CertificateError::UnknownIssuer.into())
            );
        }
    }

    /// With both the real and the impostor CA configured, the one that signed wins.
    #[test]
    fn v1_client_is_matched_to_the_ca_that_signed_it() {
        let verifier = verifier(&["impostor-ca.crt", CA]);
        verify(&verifier, &[CLIENT_CERT], UnixTime::now()).expect("accepted");
        verify(&verifier, &["v1-impostor-ca.crt"], UnixTime::now()).expect("accepted");
        assert_eq!(
            verify(&verifier, &["v1-other-ca.crt"], UnixTime::now()),
            Err(CertificateError::UnknownIssuer.into())
        );
    }

    /// The v1 path must not change how webpki judges v3 certificates.
    #[test]
    fn v3_certificates_keep_webpki_rules() {
        let verifier = verifier(&[CA]);
        verify(&verifier, &["v3.crt"], UnixTime::now()).expect("accepted");
        let result = verify(&verifier, &["v3-server-only.crt"], UnixTime::now());
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(
                    CertificateError::InvalidPurposeContext { .. }
                        | CertificateError::InvalidPurpose
                ))
            ),
            "{result:?}"
        );
        let result = verify(&verifier, &["v3.crt"], days_from_now(400));
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                ))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_is_refused_by_webpki() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let result = verifier(&[CA]).verify_client_cert(&garbage, &[], UnixTime::now());
        assert!(
            matches!(
                result,
                Err(Error::InvalidCertificate(CertificateError::BadEncoding))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn client_certificates_are_mandatory_and_hinted() {
        let verifier = verifier(&[CA, "other-ca.crt"]);
        assert!(verifier.offer_client_auth());
        assert!(verifier.client_auth_mandatory());
        assert_eq!(verifier.root_hint_subjects().len(), 2);
        assert!(!verifier.supported_verify_schemes().is_empty());
    }

    /// The seed client (v1, serial 1) and v3.crt (serial 2) are revoked; v1-ec.crt (serial 6)
    /// and v3-san.crt (serial 9) are not. Both paths decide alike.
    #[test]
    fn a_crl_refuses_the_certificates_it_revokes_on_both_paths() {
        let verifier = verifier_with_crls(&[CA], &["revoked.crl"]);
        for revoked in [CLIENT_CERT, "v3.crt"] {
            assert_eq!(
                verify(&verifier, &[revoked], UnixTime::now()),
                Err(CertificateError::Revoked.into()),
                "{revoked}"
            );
        }
        for valid in ["v1-ec.crt", "v3-san.crt"] {
            verify(&verifier, &[valid], UnixTime::now()).expect(valid);
        }
        let verifier = verifier_with_crls(&[CA], &["empty.crl"]);
        for valid in [CLIENT_CERT, "v3.crt"] {
            verify(&verifier, &[valid], UnixTime::now()).expect(valid);
        }
    }

    /// Without a CRL from the certificate's issuer, its status is unknown: refused.
    #[test]
    fn a_crl_from_another_ca_leaves_the_status_unknown() {
        let verifier = verifier_with_crls(&[CA], &["other-ca.crl"]);
        for cert in [CLIENT_CERT, "v3.crt"] {
            assert_eq!(
                verify(&verifier, &[cert], UnixTime::now()),
                Err(CertificateError::UnknownRevocationStatus.into()),
                "{cert}"
            );
        }
    }

    /// A CRL with the CA's name but another key's signature is not the CA's word.
    #[test]
    fn a_crl_with_a_bad_signature_is_refused_on_both_paths() {
        let verifier = verifier_with_crls(&[CA], &["impostor.crl"]);
        for cert in [CLIENT_CERT, "v3.crt"] {
            assert_eq!(
                verify(&verifier, &[cert], UnixTime::now()),
                Err(rustls::Error::InvalidCertRevocationList(
                    CertRevocationListError::BadSignature
                )),
                "{cert}"
            );
        }
    }

    /// `openssl ca` sets nextUpdate 30 days ahead; OpenSSL (so Envoy) refuses an expired CRL.
    #[test]
    fn an_expired_crl_is_refused_on_both_paths() {
        let verifier = verifier_with_crls(&[CA], &["empty.crl"]);
        for cert in [CLIENT_CERT, "v3.crt"] {
            let result = verify(&verifier, &[cert], days_from_now(31));
            assert!(
                matches!(
                    result,
                    Err(Error::InvalidCertificate(
                        CertificateError::ExpiredRevocationListContext { .. }
                    ))
                ),
                "{cert}: {result:?}"
            );
        }
    }
}
