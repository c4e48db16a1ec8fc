//! The test bed's own tests: real namespaces, real httpbin, real curl and openssl (run as root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::Duration;

use crate::*;

fn topology() -> SeedTopology {
    SeedTopology::build(TopologyOptions::default()).expect("seed topology")
}

#[test]
fn seed_topology_serves_httpbin_connects_the_client_and_cleans_up() {
    let topology = topology();
    let (pod, client) = (
        topology.pod().name().to_string(),
        topology.client().name().to_string(),
    );
    assert!(
        pod.starts_with(TEST_NETNS_PREFIX) && pod.ends_with("-httpbin"),
        "{pod}"
    );
    assert!(
        client.starts_with(TEST_NETNS_PREFIX) && client.ends_with("-external"),
        "{client}"
    );
    assert_eq!(
        topology.pod_netns_path(),
        Path::new("/run/netns").join(&pod)
    );
    assert_eq!(
        topology.httpbin_requests().unwrap(),
        0,
        "the readiness probe is not counted"
    );

    let result = curl(topology.pod(), ["-v", "http://127.0.0.1:80/status/200"]).unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.stderr);
    let requests = topology.wait_httpbin_requests(1, Duration::from_secs(2));
    assert_eq!(requests.unwrap(), 1);

    // The client reaches the pod on both families: nothing listens there, so "refused" (exit 7)
    // proves the pod answered (unreachable would be a timeout or "no route").
    for addr in ["198.18.0.2", "[2001:db8::2]"] {
        let url = format!("http://{addr}:80/");
        let result = curl(topology.client(), ["-v", "--connect-timeout", "3", &url]).unwrap();
        assert_eq!(result.exit_code, 7, "{url}: {}", result.stderr);
        assert!(
            result.stderr.contains("Connection refused"),
            "{url}: {}",
            result.stderr
        );
    }
    assert_eq!(
        topology.httpbin_requests().unwrap(),
        1,
        "httpbin listens on loopback only"
    );

    let pids = topology.pod().pids().unwrap();
    assert!(!pids.is_empty(), "gunicorn runs in the pod");
    let work_dir = topology.work_dir().to_path_buf();
    drop(topology);
    assert!(!Netns::exists(&pod) && !Netns::exists(&client));
    assert!(!work_dir.exists());
    for pid in pids {
        let mut tries = 0;
        while crate::process::process_alive(pid) && tries < 100 {
            sleep(Duration::from_millis(20));
            tries += 1;
        }
        assert!(
            !crate::process::process_alive(pid),
            "pid {pid} outlived its netns"
        );
    }
}

#[test]
fn seed_certificates_chain_to_their_cas() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let certs = topology.certs();
    let verify = |ca: &Path, cert: &Path| {
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(&certs.ca_cert, &certs.server_cert));
    assert!(verify(&certs.ca_cert, &certs.client_cert));
    assert!(verify(&certs.other_ca_cert, &certs.other_client_cert));
    assert!(!verify(&certs.ca_cert, &certs.other_client_cert));
    let mounted = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(
        mounted(topology.tls_certs_dir(), "tls.crt"),
        std::fs::read(&certs.server_cert).unwrap()
    );
    assert_eq!(
        mounted(topology.tls_certs_dir(), "tls.key"),
        std::fs::read(&certs.server_key).unwrap()
    );
    assert_eq!(
        mounted(topology.tls_ca_certs_dir(), "ca.crt"),
        std::fs::read(&certs.ca_cert).unwrap()
    );
}

/// `openssl s_server` stands in for postern on the external port: it proves the seed's curl
/// command lines, the certificates and `SeedRequest::matches_seed` fit together.
#[test]
fn seed_curl_requests_work_against_an_mtls_server() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let server = s_server(&topology);
    for addr in topology.pod_ips() {
        for request in [
            SeedRequest::ExternalMtls,
            SeedRequest::ExternalNoClientCert,
            SeedRequest::ExternalOtherCa,
        ] {
            let args = seed_curl_args_to(&topology, request, addr, "/status/200");
            let result = curl(topology.client(), &args).unwrap();
            assert!(
                request.matches_seed(&result),
                "{request:?} to {addr}: {}\n{}",
                result.summary(),
                result.stderr
            );
            if request == SeedRequest::ExternalMtls {
                assert_eq!(result.tls_version(), Some("TLSv1.3"));
                assert_eq!(
                    result.server_subject(),
                    Some("CN=httpbin.test.svc.cluster.local; O=httpbin organization")
                );
            }
        }
    }
    drop(server);
    // Nothing listens on the internal port: refused, which is not the seed's reset.
    let result = curl(
        topology.client(),
        seed_curl_args(&topology, SeedRequest::InternalPlaintext),
    )
    .unwrap();
    assert_eq!(result.exit_code, 7, "{}", result.stderr);
    assert!(!SeedRequest::InternalPlaintext.matches_seed(&result));
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s_server(topology: &SeedTopology) -> KillOnDrop {
    let certs = topology.certs();
    let mut cmd = topology.pod().command("openssl");
    cmd.args([
        "s_server",
        "-accept",
        "9080",
        "-www",
        "-Verify",
        "1",
        "-verify_return_error",
        "-cert",
    ])
    .arg(&certs.server_cert)
    .arg("-key")
    .arg(&certs.server_key)
    .arg("-CAfile")
    .arg(&certs.ca_cert)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let server = KillOnDrop(cmd.spawn().unwrap());
    for _ in 0..100 {
        let probe = topology
            .pod()
            .output(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9080"])
            .unwrap();
        if probe.status.success() {
            return server;
        }
        sleep(Duration::from_millis(50));
    }
    panic!("openssl s_server did not listen");
}

/// A stand-in for the postern binary: checks it sees the certificates at the Sidecar's paths,
/// makes its bpffs dir, says it is ready and runs until signalled.
const FAKE_POSTERN: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --bpffs) bpffs="$2"; shift ;;
    --namespace) echo "namespace=$2" ;;
    --config) echo "config=$2" ;;
  esac
  shift
done
test -f /etc/istio/tls-certs/tls.crt || { echo "no tls.crt"; exit 3; }
test -f /etc/istio/tls-certs/tls.key || { echo "no tls.key"; exit 3; }
test -f /etc/istio/tls-ca-certs/ca.crt || { echo "no ca.crt"; exit 3; }
mkdir "$bpffs" || exit 4
echo "postern is ready"
exec sleep 600
"#;

fn fake_postern(dir: &Path) -> PathBuf {
    let path = dir.join("fake-postern");
    std::fs::write(&path, FAKE_POSTERN).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn postern_starts_with_the_certificates_mounted_and_cleans_up_its_bpffs_dir() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let bin = fake_postern(topology.work_dir());
    let config = topology.seed_config().unwrap();
    let mut postern = Postern::start(&bin, &topology, &config, &[]).unwrap();
    let log = postern.log();
    assert!(log.contains("namespace=test"), "{log}");
    assert_eq!(log.matches("config=").count(), 4, "{log}");
    let bpffs = postern.bpffs_dir().to_path_buf();
    assert!(bpffs.starts_with("/sys/fs/bpf"));
    assert!(bpffs
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(TEST_BPFFS_PREFIX));
    assert!(bpffs.is_dir());
    assert!(
        !Path::new("/etc/istio/tls-certs/tls.crt").exists(),
        "the bind mount stays in postern's private mount namespace"
    );
    assert!(postern.is_running().unwrap());
    postern.kill(Signal::Term).unwrap();
    let status = postern.wait_exit().unwrap();
    assert!(!status.success());
    drop(postern);
    assert!(!bpffs.exists());
}

#[test]
fn postern_that_exits_early_fails_start_with_its_log() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let bin = topology.work_dir().join("failing-postern");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'config error: sidecar.yaml: bad port' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = Postern::start(&bin, &topology, &[], &[]).err().unwrap();
    let message = format!("{error:#}");
    assert!(message.contains("exited"), "{message}");
    assert!(
        message.contains("config error: sidecar.yaml: bad port"),
        "{message}"
    );
}
