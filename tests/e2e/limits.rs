//! Istio `connectionPool.tcp` limits on Sidecar ingress ports: `maxConnections` resets the
//! connection over the limit, `idleTimeout` closes a quiet one, `maxConnectionDuration` a long
//! one, each with its own outcome in the access log.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use postern::netns::Netns;
use postern::policy::NetnsRef;
use postern_testbed::{curl, SeedTopology, TopologyOptions};

use crate::{admin_get, workload_and, write_config, Running};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plaintext ports in front of httpbin, each with one limit.
const LIMITS: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: limits, namespace: test}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: DISABLE}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: limits, namespace: test}
spec:
  workloadSelector: {labels: {app: httpbin}}
  ingress:
  - port: {number: 9091, protocol: HTTP, name: one-at-a-time}
    defaultEndpoint: 127.0.0.1:80
    connectionPool: {tcp: {maxConnections: 1}}
  - port: {number: 9092, protocol: HTTP, name: impatient}
    defaultEndpoint: 127.0.0.1:80
    connectionPool: {tcp: {idleTimeout: 1s}}
  - port: {number: 9093, protocol: HTTP, name: short-lived}
    defaultEndpoint: 127.0.0.1:80
    connectionPool: {tcp: {maxConnectionDuration: 1s}}
";

fn running() -> Running {
    let topology = SeedTopology::build(TopologyOptions {
        // Two workers, so httpbin itself can serve two connections at once.
        httpbin_extra_args: vec!["--workers".into(), "2".into()],
        ..TopologyOptions::default()
    })
    .unwrap();
    let path = write_config(&topology, "limits.yaml", &workload_and(&topology, LIMITS));
    Running::start(topology, &[path])
}

/// A plaintext drip of `bytes` over `seconds` through `port`, in the background.
fn drip(run: &Running, port: u16, bytes: u32, seconds: u32) -> std::process::Child {
    run.topology
        .client()
        .command("curl")
        .args(["-sS", "-N", "-o", "/dev/null", "--max-time", "30"])
        .arg(format!(
            "http://198.18.0.2:{port}/drip?numbytes={bytes}&duration={seconds}&delay=0"
        ))
        .spawn()
        .unwrap()
}

#[test]
fn max_connections_resets_the_connection_over_the_limit() {
    let run = running();
    let mut first = drip(&run, 9091, 100, 4);
    // The second arrives only once the first is in progress, as the metrics show.
    let active = r#"postern_connections_active{namespace="test",workload="httpbin",port="9091"} 1"#;
    wait_until("the first connection", || {
        admin_get(&run, "/metrics").1.lines().any(|l| l == active)
    });
    let second = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:9091/status/200"],
    )
    .unwrap();
    assert!(second.http_status().is_none(), "{}", second.summary());
    let lines = run.access_lines_to("198.18.0.2:9091");
    assert!(
        lines.iter().any(|l| l.contains("outcome=over_limit")),
        "{lines:?}"
    );

    assert!(
        first.wait().unwrap().success(),
        "the first connection was not disturbed"
    );
    // curl is done once it has the whole answer; postern, once the app has closed too.
    wait_until("the first connection's end", || {
        run.access_lines_to("198.18.0.2:9091")
            .iter()
            .any(|l| l.contains("outcome=ok"))
    });
    let third = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:9091/status/200"],
    )
    .unwrap();
    assert_eq!(
        third.http_status(),
        Some(200),
        "{}\n{:#?}\n{}",
        third.summary(),
        run.access_lines_to("198.18.0.2:9091"),
        admin_get(&run, "/metrics")
            .1
            .lines()
            .filter(|l| l.contains("9091"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn idle_timeout_closes_a_quiet_connection() {
    let run = running();
    let client = Netns::open(&NetnsRef::Path(run.topology.client().path().to_path_buf())).unwrap();
    let mut quiet = client
        .run(|| TcpStream::connect("198.18.0.2:9092"))
        .unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buffer = [0u8; 16];
    let read = quiet.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "still open: {read:?}"
    );
    let lines = run.access_lines_to("198.18.0.2:9092");
    assert!(
        lines.iter().any(|l| l.contains("outcome=idle_timeout")),
        "{lines:?}"
    );
}

#[test]
fn max_connection_duration_ends_a_long_connection() {
    let run = running();
    let status = drip(&run, 9093, 100, 4).wait().unwrap();
    assert!(!status.success(), "a 4 s download outlived a 1 s limit");
    let lines = run.access_lines_to("198.18.0.2:9093");
    assert!(
        lines.iter().any(|l| l.contains("outcome=max_duration")),
        "{lines:?}"
    );
}
