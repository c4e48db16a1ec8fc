//! The seed's Verification section (tests a, b, c, d, e and g of the foundation issue).

use postern_testbed::{curl, seed_curl_args, seed_curl_args_to, CurlResult, SeedRequest};

use crate::{httpbin_requests, Running};

/// What a user checks after a refused request: curl got no HTTP answer, httpbin saw nothing,
/// and postern logged the connection to `dst` with every one of `logged`.
fn assert_refused_before_httpbin(run: &Running, result: &CurlResult, dst: &str, logged: &[&str]) {
    assert!(
        !result.success() && result.http_status().is_none(),
        "{}",
        result.summary()
    );
    assert_eq!(httpbin_requests(&run.topology), 0);
    let lines = run.access_lines_to(dst);
    assert!(
        lines
            .iter()
            .any(|line| logged.iter().all(|want| line.contains(want))),
        "no access-log line to {dst} with {logged:?}: {lines:?}"
    );
}

/// a: the seed's external client, with its client certificate, gets 200 over TLS 1.3, and
/// sees the seed's server certificate. ALPN gives HTTP/1.1: httpbin does not speak h2.
#[test]
fn mtls_with_the_seed_client_certificate_gets_200_over_tls13() {
    let run = Running::seed();
    let result = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.stderr);
    assert_eq!(result.tls_version(), Some("TLSv1.3"), "{}", result.stderr);
    assert_eq!(result.http_version(), Some("HTTP/1.1"), "{}", result.stderr);
    let subject = result.server_subject().unwrap_or_default();
    assert!(
        subject.contains("CN=httpbin.test.svc.cluster.local")
            && subject.contains("O=httpbin organization"),
        "server subject: {subject}"
    );
    let issuer = result.server_issuer().unwrap_or_default();
    assert!(
        issuer.contains("O=example Inc.") && issuer.contains("CN=example.com"),
        "server issuer: {issuer}"
    );
    assert_eq!(httpbin_requests(&run.topology), 1);
}

/// The same over IPv6: one listener serves both families.
#[test]
fn mtls_over_ipv6_gets_200() {
    let run = Running::seed();
    let args = seed_curl_args_to(
        &run.topology,
        SeedRequest::ExternalMtls,
        run.topology.pod_ipv6().into(),
        "/status/200",
    );
    let result = curl(run.topology.client(), args).unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.stderr);
    let dst = format!("[{}]:9080", run.topology.pod_ipv6());
    let lines = run.access_lines_to(&dst);
    assert!(lines.iter().any(|l| l.contains("outcome=ok")), "{lines:?}");
}

/// Sends the seed's `request` from the external client to 9080: it fails as the seed says,
/// before httpbin, and its access-log line carries every one of `logged`.
fn assert_seed_request_refused(request: SeedRequest, logged: &[&str]) {
    let run = Running::seed();
    let result = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, request),
    )
    .unwrap();
    assert!(request.matches_seed(&result), "{}", result.summary());
    assert_refused_before_httpbin(&run, &result, "198.18.0.2:9080", logged);
}

/// b: no client certificate: the handshake fails and httpbin never sees a request.
#[test]
fn no_client_certificate_is_refused_before_the_app() {
    assert_seed_request_refused(
        SeedRequest::ExternalNoClientCert,
        &["outcome=handshake_failed"],
    );
}

/// c: a client certificate from another CA fails the same way.
#[test]
fn client_certificate_from_another_ca_is_refused() {
    assert_seed_request_refused(
        SeedRequest::ExternalOtherCa,
        &["outcome=handshake_failed", "UnknownIssuer"],
    );
}

/// d: plaintext to the STRICT port 9081 from outside the mesh is reset (curl exit 56), over
/// IPv4 and IPv6, and httpbin never sees it.
#[test]
fn plaintext_to_the_strict_port_is_reset() {
    let run = Running::seed();
    for addr in run.topology.pod_ips() {
        let args = seed_curl_args_to(
            &run.topology,
            SeedRequest::InternalPlaintext,
            addr,
            "/status/200",
        );
        let result = curl(run.topology.client(), args).unwrap();
        assert!(
            SeedRequest::InternalPlaintext.matches_seed(&result),
            "{addr}: {}",
            result.summary()
        );
    }
    assert_eq!(httpbin_requests(&run.topology), 0);
    let lines = run.access_lines_to("198.18.0.2:9081");
    assert!(
        lines.iter().any(|l| l.contains("outcome=reset")),
        "{lines:?}"
    );
}

/// STRICT covers ports nobody configured too: httpbin's own port 80 is not reachable from
/// outside in clear, as with Istio's capture of every inbound port.
#[test]
fn strict_covers_unconfigured_ports() {
    let run = Running::seed();
    let result = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:80/status/200"],
    )
    .unwrap();
    assert_eq!(result.exit_code, 56, "{}", result.summary());
    assert_eq!(httpbin_requests(&run.topology), 0);
}

/// e: plaintext HTTP sent to the TLS port is refused and reaches nothing.
#[test]
fn plaintext_to_the_tls_port_reaches_nothing() {
    let run = Running::seed();
    let result = curl(
        run.topology.client(),
        [
            "-v",
            "http://httpbin.test.svc.cluster.local:9080/status/200",
            "--resolve",
            "httpbin.test.svc.cluster.local:9080:198.18.0.2",
        ],
    )
    .unwrap();
    assert_refused_before_httpbin(
        &run,
        &result,
        "198.18.0.2:9080",
        &["outcome=handshake_failed"],
    );
}

/// g: the access log records the original destination, the peer, the TLS version, the client
/// certificate's subject and the bytes each way.
#[test]
fn access_log_records_the_original_destination() {
    let run = Running::seed();
    let result = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.stderr);
    let lines = run.access_lines_to("198.18.0.2:9080");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    for field in [
        "workload=test/httpbin",
        "port=9080",
        "peer=198.18.0.1:",
        "tls_version=TLSv1.3",
        "client.test.svc.cluster.local",
        "outcome=ok",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.contains("bytes_from_client=0 "), "{line}");
    assert!(!line.contains("bytes_to_client=0 "), "{line}");
}
