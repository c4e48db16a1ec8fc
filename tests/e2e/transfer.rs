//! h: 64 MiB up and 64 MiB down through the mutual-TLS port and through a plaintext port
//! arrive byte-exact, and a half-close from either side is passed
//! on while the other direction keeps flowing. The client is socat (with OpenSSL for TLS), a
//! real client that half-closes on end of input.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use postern_testbed::{SeedTopology, TopologyOptions};

use crate::apps::{pattern, sha256, App, Behaviour, Received};
use crate::{workload_and, write_config, Running};

const MIB: usize = 1024 * 1024;
const SIZE: usize = 64 * MIB;

/// 9080 → the app on 127.0.0.1:9090, 9082 → the app on 127.0.0.1:9091, both MUTUAL TLS as
/// in the seed, raw TCP (no ALPN); 9084 and 9085 → the same apps in plaintext.
const TRANSFER_CONFIG: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: transfer
  namespace: test
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    9080:
      mode: DISABLE
    9082:
      mode: DISABLE
    9084:
      mode: DISABLE
    9085:
      mode: DISABLE
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata:
  name: transfer
  namespace: test
spec:
  workloadSelector:
    labels:
      app: httpbin
  ingress:
  - port:
      number: 9080
      protocol: TCP
      name: echo
    defaultEndpoint: 127.0.0.1:9090
    tls:
      mode: MUTUAL
      privateKey: /etc/istio/tls-certs/tls.key
      serverCertificate: /etc/istio/tls-certs/tls.crt
      caCertificates: /etc/istio/tls-ca-certs/ca.crt
  - port:
      number: 9082
      protocol: TCP
      name: talker
    defaultEndpoint: 127.0.0.1:9091
    tls:
      mode: MUTUAL
      privateKey: /etc/istio/tls-certs/tls.key
      serverCertificate: /etc/istio/tls-certs/tls.crt
      caCertificates: /etc/istio/tls-ca-certs/ca.crt
  - port:
      number: 9084
      protocol: TCP
      name: plain-echo
    defaultEndpoint: 127.0.0.1:9090
  - port:
      number: 9085
      protocol: TCP
      name: plain-talker
    defaultEndpoint: 127.0.0.1:9091
";

fn running() -> Running {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let config = write_config(
        &topology,
        "transfer.yaml",
        &workload_and(&topology, TRANSFER_CONFIG),
    );
    Running::start(topology, &[config])
}

/// Sends `upload` to the pod's `port` with socat, over mutual TLS or in plaintext; returns
/// what came back.
fn socat(run: &Running, port: u16, tls: bool, upload: &[u8]) -> Vec<u8> {
    let dir = run.topology.work_dir();
    let input = dir.join(format!("upload-{port}"));
    let output = dir.join(format!("download-{port}"));
    std::fs::write(&input, upload).unwrap();
    let certs = run.topology.certs();
    let address = if tls {
        format!(
            "OPENSSL:198.18.0.2:{port},cert={},key={},cafile={},commonname=httpbin.test.svc.cluster.local",
            certs.client_cert.display(),
            certs.client_key.display(),
            certs.ca_cert.display(),
        )
    } else {
        format!("TCP:198.18.0.2:{port}")
    };
    // -t: after one side's end of stream, keep the other direction flowing this long.
    let status = run
        .topology
        .client()
        .command("timeout")
        .args(["120", "socat", "-t", "60", "STDIO"])
        .arg(address)
        .stdin(File::open(&input).unwrap())
        .stdout(File::create(&output).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(status.success(), "socat: {status}");
    std::fs::read(&output).unwrap()
}

fn expect(data: &[u8]) -> Received {
    Received {
        bytes: data.len() as u64,
        sha256: sha256(data),
    }
}

/// The access log of the one connection to `port` counts 64 MiB each way.
fn assert_logged_64_mib_each_way(run: &Running, port: u16) {
    let lines = run.access_lines_to(&format!("198.18.0.2:{port}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    for field in [
        format!("bytes_from_client={SIZE} "),
        format!("bytes_to_client={SIZE} "),
        "outcome=ok".to_string(),
    ] {
        assert!(lines[0].contains(&field), "{field} missing in {}", lines[0]);
    }
}

/// The client half-closes first: the app sees the end of stream only if postern passes it on,
/// and the client gets the rest of the echo after it stopped sending.
fn client_half_close(port: u16, tls: bool) {
    let run = running();
    let app = App::spawn(
        run.topology.pod_netns_path(),
        SocketAddr::from(([127, 0, 0, 1], 9090)),
        Behaviour::Echo,
    );
    let upload = pattern(SIZE, 1);
    let download = socat(&run, port, tls, &upload);
    assert_eq!(app.received(Duration::from_secs(60)), expect(&upload));
    assert_eq!(download.len(), SIZE);
    assert!(sha256(&download) == sha256(&upload), "echo differs");
    assert_logged_64_mib_each_way(&run, port);
}

/// The app half-closes first, after sending 64 MiB: the client gets all of it and its end of
/// stream, and the client's 64 MiB still reach the app afterwards.
fn app_half_close(port: u16, tls: bool) {
    let run = running();
    let down = Arc::new(pattern(SIZE, 2));
    let app = App::spawn(
        run.topology.pod_netns_path(),
        SocketAddr::from(([127, 0, 0, 1], 9091)),
        Behaviour::SendThenReceive(Arc::clone(&down)),
    );
    let upload = pattern(SIZE, 3);
    let download = socat(&run, port, tls, &upload);
    assert_eq!(app.received(Duration::from_secs(60)), expect(&upload));
    assert_eq!(download.len(), SIZE);
    assert!(sha256(&download) == sha256(&down), "download differs");
    assert_logged_64_mib_each_way(&run, port);
}

#[test]
fn client_half_close_64_mib_each_way_byte_exact() {
    client_half_close(9080, true);
}

#[test]
fn app_half_close_64_mib_each_way_byte_exact() {
    app_half_close(9082, true);
}

#[test]
fn plaintext_client_half_close_64_mib_each_way_byte_exact() {
    client_half_close(9084, false);
}

#[test]
fn plaintext_app_half_close_64_mib_each_way_byte_exact() {
    app_half_close(9085, false);
}
