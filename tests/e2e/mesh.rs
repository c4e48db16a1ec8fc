//! Mesh mode: workloads with SPIFFE identities. The in-mesh client (`sleep`, its own network
//! namespace and cgroup) sends plain HTTP; postern captures its connect in the kernel,
//! originates mesh mTLS with the client's identity, and the pod's postern terminates it as
//! STRICT. The seed's "Verify internal mesh connectivity" answers 200, while the same request
//! from outside the mesh is reset.

use std::path::PathBuf;
use std::time::Duration;

use postern_testbed::{
    curl, httpbin_mesh_workload, seed_curl_args, seed_service, spiffe_id, MeshCerts, MeshClient,
    Postern, PosternOptions, SeedRequest, SeedTopology, Signal, TopologyOptions,
    OTHER_TRUST_DOMAIN, SEED_PEER_AUTHENTICATION_DEFAULT, SEED_PEER_AUTHENTICATION_HTTPBIN,
    SEED_SIDECAR, SERVICE_IP, TRUST_DOMAIN,
};

use crate::{httpbin_requests, postern_bin, write_config};

/// curl's exit code when the connection is refused.
const CURL_CONNECT_REFUSED: i32 = 7;

/// The seed's "PeerAuthentication for httpbin", with 9081 PERMISSIVE as well.
fn permissive_9081() -> String {
    format!("{SEED_PEER_AUTHENTICATION_HTTPBIN}    9081:\n      mode: PERMISSIVE\n")
}

/// The seed's topology plus the in-mesh client, mesh certificates for both workloads, and
/// postern serving them. Fields drop in order: postern first, then the client, then the pod.
struct Mesh {
    postern: Postern,
    config: Vec<PathBuf>,
    client: MeshClient,
    certs: MeshCerts,
    topology: SeedTopology,
}

impl Mesh {
    /// The seed's manifests, verbatim, with mesh identities for httpbin and sleep.
    fn seed() -> Mesh {
        Mesh::with_peer_authentication(SEED_PEER_AUTHENTICATION_HTTPBIN)
    }

    fn with_peer_authentication(httpbin_peer_authentication: &str) -> Mesh {
        let (topology, client, certs) = mesh_topology();
        let httpbin = certs
            .issue("httpbin", &spiffe_id(TRUST_DOMAIN, "httpbin"))
            .unwrap();
        let config = mesh_config(
            &topology,
            &client,
            &httpbin,
            httpbin_peer_authentication,
            &certs,
        );
        let postern = Postern::start(&postern_bin(), &topology, &config, &[]).unwrap();
        Mesh {
            postern,
            config,
            client,
            certs,
            topology,
        }
    }

    /// Plain `GET http://198.18.0.2:PORT/status/200` from the in-mesh client.
    fn get_from_mesh_client(&self, port: u16) -> postern_testbed::CurlResult {
        self.client
            .curl(["-v", &format!("http://198.18.0.2:{port}/status/200")])
            .unwrap()
    }

    /// The access-log line postern wrote for the connection to `dst` in `direction`
    /// (`outbound`) or inbound (no direction field), waiting for it.
    fn access_line(&self, dst: &str, outbound: bool) -> String {
        let needle = format!("original_dst={dst} ");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = self.postern.access_log().into_iter().find(|line| {
                line.contains(&needle) && line.contains("direction=outbound") == outbound
            });
            if let Some(line) = line {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access-log line to {dst}:\n{}",
                self.postern.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Checks that `result` is httpbin's 200, carried over mesh mTLS: the client's postern sent
/// the connection to `original_dst` on to `upstream` and verified httpbin's identity; the
/// pod's postern saw sleep's. Returns the outbound access-log line.
fn assert_over_mesh(
    mesh: &Mesh,
    result: &postern_testbed::CurlResult,
    original_dst: &str,
    upstream: &str,
) -> String {
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    let outbound = mesh.access_line(original_dst, true);
    let httpbin = format!("peer_identity={}", spiffe_id(TRUST_DOMAIN, "httpbin"));
    assert!(
        outbound.contains(&format!("upstream={upstream} "))
            && outbound.contains(&httpbin)
            && outbound.contains("outcome=ok"),
        "{outbound}"
    );
    let inbound = mesh.access_line(upstream, false);
    let sleep = format!("peer_identity={}", spiffe_id(TRUST_DOMAIN, "sleep"));
    assert!(
        inbound.contains(&sleep) && inbound.contains("outcome=ok"),
        "{inbound}"
    );
    assert_eq!(httpbin_requests(&mesh.topology), 1);
    outbound
}

fn mesh_topology() -> (SeedTopology, MeshClient, MeshCerts) {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let client = MeshClient::attach(&topology).unwrap();
    let certs = MeshCerts::generate(&topology.work_dir().join("mesh")).unwrap();
    (topology, client, certs)
}

/// The seed's manifests with `httpbin_peer_authentication` for the second one, httpbin's
/// Workload with the identity in `httpbin_certificates`, and the client's Workload.
fn mesh_config(
    topology: &SeedTopology,
    client: &MeshClient,
    httpbin_certificates: &std::path::Path,
    httpbin_peer_authentication: &str,
    certs: &MeshCerts,
) -> Vec<PathBuf> {
    let sleep = certs
        .issue("sleep", &spiffe_id(TRUST_DOMAIN, "sleep"))
        .unwrap();
    let workloads = format!(
        "{}---\n{}---\n{}",
        httpbin_mesh_workload(topology, httpbin_certificates),
        client.workload(&sleep),
        seed_service()
    );
    [
        (
            "peer-authentication-default.yaml",
            SEED_PEER_AUTHENTICATION_DEFAULT,
        ),
        (
            "peer-authentication-httpbin.yaml",
            httpbin_peer_authentication,
        ),
        ("sidecar.yaml", SEED_SIDECAR),
        ("workloads.yaml", workloads.as_str()),
    ]
    .into_iter()
    .map(|(name, text)| write_config(topology, name, text))
    .collect()
}

#[test]
fn in_mesh_client_reaches_the_strict_port_in_plain_http_over_mesh_mtls() {
    let mesh = Mesh::seed();
    let result = mesh.get_from_mesh_client(9081);
    assert_over_mesh(&mesh, &result, "198.18.0.2:9081", "198.18.0.2:9081");
}

/// Port 80, where httpbin itself listens, is no Sidecar port: STRICT covers it as every other
/// port, and with a mesh identity it is served over mesh mTLS, to the app's same port.
#[test]
fn in_mesh_client_reaches_another_port_of_the_strict_workload() {
    let mesh = Mesh::seed();
    let result = mesh.get_from_mesh_client(80);
    assert_over_mesh(&mesh, &result, "198.18.0.2:80", "198.18.0.2:80");
}

/// The seed's own request, `curl http://httpbin:8080/status/200`, from sleep to the seed's
/// Service: postern sends it to the pod's port 9081, the Service's target port.
#[test]
fn in_mesh_client_reaches_the_service_port_8080() {
    let mesh = Mesh::seed();
    let resolve = format!("httpbin:8080:{SERVICE_IP}");
    let result = mesh
        .client
        .curl([
            "-v",
            "--resolve",
            &resolve,
            "http://httpbin:8080/status/200",
        ])
        .unwrap();
    assert_over_mesh(
        &mesh,
        &result,
        &format!("{SERVICE_IP}:8080"),
        "198.18.0.2:9081",
    );
}

/// The same over IPv6: `cgroup/connect6` captures, the outbound listener on `[::1]` accepts.
#[test]
fn in_mesh_client_reaches_the_strict_port_over_ipv6() {
    let mesh = Mesh::seed();
    let result = mesh
        .client
        .curl(["-v", "-g", "http://[2001:db8::2]:9081/status/200"])
        .unwrap();
    let outbound = assert_over_mesh(&mesh, &result, "[2001:db8::2]:9081", "[2001:db8::2]:9081");
    assert!(outbound.contains("peer=[::1]:"), "{outbound}");
}

#[test]
fn outside_the_mesh_the_strict_port_resets_and_the_external_port_still_needs_its_certificate() {
    let mesh = Mesh::seed();
    for request in SeedRequest::ALL {
        let result = curl(
            mesh.topology.client(),
            seed_curl_args(&mesh.topology, request),
        )
        .unwrap();
        assert!(
            request.matches_seed(&result),
            "{request:?}: expected {}, got {}",
            request.expectation(),
            result.summary()
        );
    }
    // 9080 is not a mesh port (DISABLE): the in-mesh client's connection to it passes
    // untouched, so it too needs the seed's client certificate, and has it here.
    let result = mesh
        .client
        .curl(seed_curl_args(&mesh.topology, SeedRequest::ExternalMtls))
        .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    assert!(
        !mesh
            .postern
            .access_log()
            .iter()
            .any(|line| line.contains("direction=outbound")),
        "9080 was captured:\n{}",
        mesh.postern.log()
    );
    assert_eq!(httpbin_requests(&mesh.topology), 2);
}

#[test]
fn permissive_serves_the_mesh_over_mtls_and_others_in_plaintext() {
    let mesh = Mesh::with_peer_authentication(&permissive_9081());
    let inside = mesh.get_from_mesh_client(9081);
    assert_eq!(inside.http_status(), Some(200), "{}", inside.summary());
    let line = mesh.access_line("198.18.0.2:9081", false);
    assert!(
        line.contains(&format!(
            "peer_identity={}",
            spiffe_id(TRUST_DOMAIN, "sleep")
        )),
        "{line}"
    );

    let outside = curl(
        mesh.topology.client(),
        ["-v", "http://198.18.0.2:9081/status/200"],
    )
    .unwrap();
    assert_eq!(outside.http_status(), Some(200), "{}", outside.summary());
    assert_eq!(httpbin_requests(&mesh.topology), 2);
}

/// A certificate from the mesh's own root, but naming another trust domain, is refused on a
/// STRICT port; the same request with the client's own certificate is served, so the trust
/// domain alone made the difference.
#[test]
fn a_certificate_of_another_trust_domain_is_reset_on_a_strict_port() {
    let mesh = Mesh::seed();
    let foreign = mesh
        .certs
        .issue("foreign", &spiffe_id(OTHER_TRUST_DOMAIN, "sleep"))
        .unwrap();
    let own = mesh
        .certs
        .issue("own", &spiffe_id(TRUST_DOMAIN, "sleep"))
        .unwrap();
    let with_certificate = |dir: &std::path::Path| {
        // -k: the mesh's server certificate names a SPIFFE ID, not a host name.
        let cert = dir.join("tls.crt").display().to_string();
        let key = dir.join("tls.key").display().to_string();
        curl(
            mesh.topology.client(),
            [
                "-v",
                "-k",
                "--cert",
                &cert,
                "--key",
                &key,
                "https://198.18.0.2:9081/status/200",
            ],
        )
        .unwrap()
    };
    let refused = with_certificate(&foreign);
    assert!(
        !refused.success() && refused.http_status().is_none(),
        "{}",
        refused.summary()
    );
    let line = mesh.access_line("198.18.0.2:9081", false);
    assert!(
        line.contains("outcome=handshake_failed") && line.contains("is not of trust domain"),
        "{line}"
    );
    assert_eq!(httpbin_requests(&mesh.topology), 0);

    let served = with_certificate(&own);
    assert_eq!(served.http_status(), Some(200), "{}", served.summary());
    assert_eq!(httpbin_requests(&mesh.topology), 1);
}

/// TCP segments the pod's network namespace has received, from its kernel counters.
fn pod_tcp_segments_in(topology: &SeedTopology) -> u64 {
    let snmp = topology.pod().run(["cat", "/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&snmp.stdout).into_owned();
    let mut tcp = text.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|name| name == "InSegs")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// With postern killed, the capture stays attached: the in-mesh client's connect is refused
/// on its own loopback, and not one TCP segment reaches the pod.
#[test]
fn killed_postern_leaves_the_mesh_client_refused_not_in_clear() {
    let mut mesh = Mesh::seed();
    mesh.postern.kill(Signal::Kill).unwrap();
    mesh.postern.wait_exit().unwrap();

    let before = pod_tcp_segments_in(&mesh.topology);
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(
        result.exit_code,
        CURL_CONNECT_REFUSED,
        "{}",
        result.summary()
    );
    assert_eq!(pod_tcp_segments_in(&mesh.topology), before);
    assert_eq!(httpbin_requests(&mesh.topology), 0);
}

/// A postern started after one was killed takes over its pinned capture and serves the mesh
/// client; stopped cleanly, it unpins everything, and the client's connects go out uncaptured.
#[test]
fn a_restarted_postern_takes_over_the_capture_and_a_clean_stop_removes_it() {
    let mut mesh = Mesh::seed();
    mesh.postern.kill(Signal::Kill).unwrap();
    mesh.postern.wait_exit().unwrap();
    let options = PosternOptions {
        bpffs_dir: Some(mesh.postern.bpffs_dir().to_path_buf()),
        ..PosternOptions::default()
    };
    let mut second =
        Postern::start_with(&postern_bin(), &mesh.topology, &mesh.config, &[], &options).unwrap();
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());

    second.kill(Signal::Term).unwrap();
    let status = second.wait_exit().unwrap();
    assert!(status.success(), "{status}\n{}", second.log());
    let left: Vec<_> = std::fs::read_dir(second.bpffs_dir())
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left pinned: {left:?}");

    // No longer captured: the SYN now reaches the pod, where nothing listens on 9081.
    let before = pod_tcp_segments_in(&mesh.topology);
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(
        result.exit_code,
        CURL_CONNECT_REFUSED,
        "{}",
        result.summary()
    );
    assert!(pod_tcp_segments_in(&mesh.topology) > before);
    assert_eq!(httpbin_requests(&mesh.topology), 1);
}

/// httpbin's certificate names another service account: postern refuses to start, naming
/// the file and both identities, and attaches nothing.
#[test]
fn a_workload_certificate_with_another_spiffe_id_is_refused_at_start() {
    let (topology, client, certs) = mesh_topology();
    let impostor = spiffe_id(TRUST_DOMAIN, "impostor");
    let wrong = certs.issue("impostor", &impostor).unwrap();
    let config = mesh_config(
        &topology,
        &client,
        &wrong,
        SEED_PEER_AUTHENTICATION_HTTPBIN,
        &certs,
    );
    let options = PosternOptions {
        wait_ready: false,
        ..PosternOptions::default()
    };
    let mut postern =
        Postern::start_with(&postern_bin(), &topology, &config, &[], &options).unwrap();
    let status = postern.wait_exit_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{}", postern.log());
    let log = postern.log();
    for expected in [
        wrong.join("tls.crt").display().to_string(),
        impostor,
        spiffe_id(TRUST_DOMAIN, "httpbin"),
    ] {
        assert!(log.contains(&expected), "{expected} missing in:\n{log}");
    }
    let pins = std::fs::read_dir(postern.bpffs_dir())
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(
        pins,
        0,
        "something was pinned under {}",
        postern.bpffs_dir().display()
    );

    // `postern check` reports the same, and shows each workload's identity.
    let check = Postern::check(&postern_bin(), &topology, &config, Some("test")).unwrap();
    assert_eq!(check.exit_code, 1, "{}", check.stdout);
    assert!(
        check.stdout.contains(&format!(
            "test/sleep    {}",
            spiffe_id(TRUST_DOMAIN, "sleep")
        )),
        "{}",
        check.stdout
    );
    assert!(check.stderr.contains("impostor"), "{}", check.stderr);
}

/// Mesh certificates follow their files like the Sidecar's: a renewed certificate serves new
/// handshakes, and one naming another identity is refused, the old one serving on.
#[test]
fn mesh_certificates_reload_and_a_wrong_identity_is_not_taken() {
    let mesh = Mesh::seed();
    let certificate = mesh.topology.work_dir().join("mesh/httpbin/tls.crt");
    mesh.certs
        .issue("httpbin", &spiffe_id(TRUST_DOMAIN, "httpbin"))
        .unwrap();
    let reloaded = mesh
        .postern
        .wait_for_log(
            &format!("certificate={}", certificate.display()),
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(reloaded.contains("TLS material reloaded"), "{reloaded}");
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());

    mesh.certs
        .issue("httpbin", &spiffe_id(TRUST_DOMAIN, "impostor"))
        .unwrap();
    let refused = mesh
        .postern
        .wait_for_log("sa/impostor", Duration::from_secs(10))
        .unwrap();
    assert!(
        refused.contains("not reloaded") && refused.contains(&spiffe_id(TRUST_DOMAIN, "httpbin")),
        "{refused}"
    );
    let ready = mesh.postern.command(&postern_bin(), "ready", &[]).unwrap();
    assert_eq!(ready.exit_code, 1, "{}", ready.stdout);
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    // Both requests met httpbin's own identity; the second, the previous material.
    let httpbin = format!("peer_identity={}", spiffe_id(TRUST_DOMAIN, "httpbin"));
    // Access-log lines are written as connections end, just after curl's answer: wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let verified = mesh
            .postern
            .access_log()
            .iter()
            .filter(|line| line.contains("direction=outbound") && line.contains(&httpbin))
            .count();
        if verified == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{verified} verified connections:\n{}",
            mesh.postern.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
