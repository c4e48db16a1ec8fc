//! The admin HTTP endpoint: health, readiness and Prometheus metrics, counted per listener and
//! handshake-failure reason, under postern's names and Istio's, plus the kernel's steering
//! counters.

use postern_testbed::{curl, seed_curl_args, SeedRequest};

use crate::{admin_get as get, Running};

fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn health_readiness_and_metrics_count_what_happened() {
    let run = Running::seed();
    assert_eq!(get(&run, "/healthz"), ("200".into(), "ok\n".into()));
    assert_eq!(get(&run, "/readyz"), ("200".into(), "ready\n".into()));
    assert_eq!(get(&run, "/nowhere").0, "404");

    for request in [
        SeedRequest::ExternalMtls,
        SeedRequest::ExternalMtls,
        SeedRequest::ExternalNoClientCert,
        SeedRequest::ExternalOtherCa,
    ] {
        curl(
            run.topology.client(),
            seed_curl_args(&run.topology, request),
        )
        .unwrap();
    }
    curl(run.topology.client(), ["http://198.18.0.2:9080/status/200"]).unwrap();
    // Every connection is logged once it ends: wait for all five before reading counters.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while run.access_lines_to("198.18.0.2:9080").len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            run.postern.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let (code, metrics) = get(&run, "/metrics");
    assert_eq!(code, "200");
    let port = r#"namespace="test",workload="httpbin",port="9080""#;
    let istio = r#"reporter="destination",destination_workload="httpbin",destination_workload_namespace="test",destination_port="9080""#;
    let expect = [
        (format!("postern_connections_opened_total{{{port}}}"), 5),
        (format!("istio_tcp_connections_opened_total{{{istio}}}"), 5),
        (format!("postern_connections_active{{{port}}}"), 0),
        (
            format!(r#"postern_tls_handshake_failures_total{{{port},reason="no_client_cert"}}"#),
            1,
        ),
        (
            format!(r#"postern_tls_handshake_failures_total{{{port},reason="unknown_ca"}}"#),
            1,
        ),
        (
            format!(r#"postern_tls_handshake_failures_total{{{port},reason="not_tls"}}"#),
            1,
        ),
        (
            format!("postern_tls_handshake_duration_seconds_count{{{port}}}"),
            2,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(
            sample(&metrics, &series),
            Some(value),
            "{series} in\n{metrics}"
        );
    }
    let received = sample(&metrics, &format!("postern_received_bytes_total{{{port}}}"));
    assert!(received.is_some_and(|bytes| bytes > 0), "{metrics}");
    assert!(
        metrics.contains(r#"postern_certificate_expiry_timestamp_seconds{resource_name="file-cert:/etc/istio/tls-certs/tls.crt~/etc/istio/tls-certs/tls.key",type="Cert Chain",serial_number="1"}"#),
        "{metrics}"
    );
}

#[test]
fn config_dump_shows_policy_attachments_and_certificates() {
    let run = Running::seed();
    let (code, body) = get(&run, "/config_dump");
    assert_eq!(code, "200", "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let workload = &dump["policy"]["workloads"][0];
    assert_eq!(workload["name"], "httpbin");
    assert_eq!(workload["ports"][0]["port"], 9080);
    assert_eq!(workload["ports"][0]["action"]["Tls"]["mode"], "Mutual");
    assert_eq!(workload["ports"][1]["action"], "MeshStrict");
    let netns = run.topology.pod_netns_path().display().to_string();
    assert_eq!(dump["attachments"][0]["netns"], netns.as_str());
    let pin = dump["attachments"][0]["pin"].as_str().unwrap_or_default();
    assert!(std::path::Path::new(pin).exists(), "{pin}");
    assert_eq!(dump["certificates"][0]["status"], "ACTIVE");
    assert_eq!(dump["ready"], "ready");
}
