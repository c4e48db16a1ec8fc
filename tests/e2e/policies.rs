//! The policies of the seed's table beyond MUTUAL and STRICT: plaintext (DISABLE without
//! `tls`), PERMISSIVE, a `unix://` app endpoint, and the handshake timeout.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use postern::netns::Netns;
use postern::policy::NetnsRef;
use postern_testbed::{curl, Postern, SeedTopology, TopologyOptions};

use crate::{httpbin_requests, postern_bin, workload_and, write_config, Running};

/// 9081 PERMISSIVE, 9082 DISABLE (plaintext), 9083 DISABLE to httpbin on a unix socket.
const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: policies
  namespace: test
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: PERMISSIVE
  portLevelMtls:
    9082:
      mode: DISABLE
    9083:
      mode: DISABLE
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: policies
  namespace: test
spec:
  workloadSelector:
    labels:
      app: httpbin
  ingress:
  - port: {number: 9081, protocol: HTTP, name: permissive}
    defaultEndpoint: 0.0.0.0:80
  - port: {number: 9082, protocol: HTTP, name: plaintext}
    defaultEndpoint: 127.0.0.1:80
  - port: {number: 9083, protocol: HTTP, name: unix}
    defaultEndpoint: unix://SOCKET
";

/// The policies above; httpbin also listens on a unix socket (in the returned dir) for 9083.
fn running() -> (Running, tempfile::TempDir) {
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("httpbin.sock").display().to_string();
    let topology = SeedTopology::build(TopologyOptions {
        httpbin_extra_args: vec!["-b".into(), format!("unix:{socket}")],
        ..TopologyOptions::default()
    })
    .unwrap();
    let config = workload_and(&topology, &POLICIES.replace("SOCKET", &socket));
    let path = write_config(&topology, "policies.yaml", &config);
    (Running::start(topology, &[path]), sockets)
}

#[test]
fn disable_without_tls_splices_plaintext() {
    let (run, _sockets) = running();
    let result = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:9082/status/200"],
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    assert_eq!(httpbin_requests(&run.topology), 1);
}

#[test]
fn unix_socket_endpoint_reaches_the_app() {
    let (run, _sockets) = running();
    let result = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:9083/status/200"],
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    assert_eq!(httpbin_requests(&run.topology), 1);
}

/// PERMISSIVE: plaintext is spliced; a TLS ClientHello would be mesh mTLS, which needs a mesh
/// identity postern does not have yet, so it is reset and never reaches the app.
#[test]
fn permissive_splices_plaintext_and_resets_tls() {
    let (run, _sockets) = running();
    let plain = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:9081/status/200"],
    )
    .unwrap();
    assert_eq!(plain.http_status(), Some(200), "{}", plain.summary());
    let tls = curl(
        run.topology.client(),
        ["-v", "-k", "https://198.18.0.2:9081/status/200"],
    )
    .unwrap();
    assert!(
        !tls.success() && tls.http_status().is_none(),
        "{}",
        tls.summary()
    );
    assert_eq!(httpbin_requests(&run.topology), 1);
    let lines = run.access_lines_to("198.18.0.2:9081");
    assert!(
        lines.iter().any(|l| l.contains("outcome=reset")),
        "{lines:?}"
    );
}

/// A client that connects to the mTLS port and never sends a ClientHello is cut off at the
/// handshake timeout, and logged as such.
#[test]
fn silent_client_is_cut_off_at_the_handshake_timeout() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let config = topology.seed_config().unwrap();
    let postern = Postern::start(
        &postern_bin(),
        &topology,
        &config,
        &["--handshake-timeout", "1s"],
    )
    .unwrap();
    let client = Netns::open(&NetnsRef::Path(topology.client().path().to_path_buf())).unwrap();
    let mut stream = client
        .run(|| TcpStream::connect("198.18.0.2:9080"))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buffer = [0u8; 1];
    let read = stream.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the connection stayed open: {read:?}"
    );
    let line = postern.wait_for_log("outcome=handshake_timeout", Duration::from_secs(10));
    assert!(line.is_ok(), "{}", postern.log());
}
