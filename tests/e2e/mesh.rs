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

use crate::reload::wait_for_nth;
use crate::upgrade::requests_around;
use crate::{httpbin_requests, pins, postern_bin, sk_lookup_links, write_config};

/// curl's exit code when the connection is refused.
const CURL_CONNECT_REFUSED: i32 = 7;

/// The seed's "PeerAuthentication for httpbin", with 9081 in `mode` as well.
fn port_9081(mode: &str) -> String {
    format!("{SEED_PEER_AUTHENTICATION_HTTPBIN}    9081:\n      mode: {mode}\n")
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

    /// Renews the certificate of `service_account` (same identity, subject CN `common_name`)
    /// and waits until postern serves it.
    fn renew(&self, service_account: &str, common_name: &str) {
        self.certs
            .issue_named(
                service_account,
                &spiffe_id(TRUST_DOMAIN, service_account),
                common_name,
            )
            .unwrap();
        let certificate = self
            .topology
            .work_dir()
            .join("mesh")
            .join(service_account)
            .join("tls.crt");
        let reloaded = self
            .postern
            .wait_for_log(
                &format!("certificate={}", certificate.display()),
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(reloaded.contains("TLS material reloaded"), "{reloaded}");
    }

    /// The access-log line postern wrote for the connection to `dst` in `direction`
    /// (`outbound`) or inbound (no direction field), waiting for it.
    fn access_line(&self, dst: &str, outbound: bool) -> String {
        self.access_lines(dst, outbound, 1).swap_remove(0)
    }

    /// The access-log lines postern wrote for connections to `dst`, outbound or inbound,
    /// waiting until there are at least `count`.
    fn access_lines(&self, dst: &str, outbound: bool, count: usize) -> Vec<String> {
        let needle = format!("original_dst={dst} ");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self
                .postern
                .access_log()
                .into_iter()
                .filter(|line| {
                    line.contains(&needle) && line.contains("direction=outbound") == outbound
                })
                .collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not {count} access-log lines to {dst}:\n{}",
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

/// httpbin's Workload with the identity in `httpbin_certificates`, the client's Workload with
/// the identity in its certificate directory (if given), and the seed's Service (if `service`).
fn workloads(
    topology: &SeedTopology,
    httpbin_certificates: &std::path::Path,
    client: Option<(&MeshClient, &std::path::Path)>,
    service: bool,
) -> String {
    let mut documents = vec![httpbin_mesh_workload(topology, httpbin_certificates)];
    documents.extend(client.map(|(client, certificates)| client.workload(certificates)));
    documents.extend(service.then(seed_service));
    documents.join("---\n")
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
    let workloads = workloads(topology, httpbin_certificates, Some((client, &sleep)), true);
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
    let mesh = Mesh::with_peer_authentication(&port_9081("PERMISSIVE"));
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
    mesh.renew("httpbin", "httpbin");
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
    let verified = mesh.outbound_lines_with(&httpbin, 2);
    assert_eq!(verified, 2, "verified connections:\n{}", mesh.postern.log());
}

/// The programs attached to the cgroup at `path`, as bpftool sees them.
fn cgroup_programs(path: &std::path::Path) -> usize {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "bpftool: {output:?}");
    // bpftool prints nothing at all for a cgroup without programs.
    if output.stdout.trim_ascii().is_empty() {
        return 0;
    }
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    programs.len()
}

/// The capture programs: `sock_ops`, `connect4`, `connect6`.
const CAPTURE_PROGRAMS: usize = 3;

/// A takeover with outbound capture: the new postern takes the outbound listeners over with
/// the inbound ones and adopts the pinned capture, so the in-mesh client's requests all succeed
/// across it. Once the old postern has exited, the new one serves alone, and a clean stop
/// leaves no pin, no link and no cgroup program.
#[test]
fn a_takeover_with_outbound_capture_fails_no_mesh_request() {
    let mut mesh = Mesh::seed();
    assert_eq!(cgroup_programs(mesh.client.cgroup()), CAPTURE_PROGRAMS);
    let options = PosternOptions {
        bpffs_dir: Some(mesh.postern.bpffs_dir().to_path_buf()),
        admin_socket: Some(mesh.postern.admin_socket().to_path_buf()),
        ..PosternOptions::default()
    };
    let (new, load) = requests_around(
        || mesh.get_from_mesh_client(9081),
        || {
            Postern::start_with(
                &postern_bin(),
                &mesh.topology,
                &mesh.config,
                &["--takeover"],
                &options,
            )
            .unwrap()
        },
    );
    let log = new.log();
    assert!(log.contains("adopted the pinned outbound capture"), "{log}");
    assert!(log.contains("took over"), "{log}");
    let mut old = std::mem::replace(&mut mesh.postern, new);
    let exit = old.wait_exit_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        exit.success() && old.log().contains("handed over; exiting without detaching"),
        "{exit}\n{}",
        old.log()
    );
    old.leave_pins();
    println!(
        "takeover with outbound capture: {} in-mesh requests, {} failed",
        load.requests,
        load.failures.len()
    );
    assert!(load.failures.is_empty(), "{:#?}", load.failures);
    assert_eq!(
        cgroup_programs(mesh.client.cgroup()),
        CAPTURE_PROGRAMS,
        "the old programs, adopted, and no second set"
    );

    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());

    mesh.postern.kill(Signal::Term).unwrap();
    let exit = mesh.postern.wait_exit().unwrap();
    assert!(exit.success(), "{exit}\n{}", mesh.postern.log());
    assert_eq!(pins(mesh.postern.bpffs_dir()), 0, "pins left");
    assert_eq!(sk_lookup_links(mesh.topology.pod_netns_path()), 0);
    assert_eq!(cgroup_programs(mesh.client.cgroup()), 0);
}

impl Mesh {
    /// Replaces the configuration file `index` of [`mesh_config`] (atomically, as a
    /// ConfigMap update does) and waits for the `reloads`th reload.
    fn reload(&self, index: usize, text: &str, reloads: usize) {
        let path = &self.config[index];
        let staged = path.with_extension("staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, path).unwrap();
        wait_for_nth(&self.postern, "configuration reloaded", reloads);
    }

    /// The workloads file with httpbin, sleep (if `sleep`) and the seed's Service (if
    /// `service`).
    fn workloads(&self, sleep: bool, service: bool) -> String {
        let certificates = self.topology.work_dir().join("mesh");
        let sleep_certificates = certificates.join("sleep");
        workloads(
            &self.topology,
            &certificates.join("httpbin"),
            sleep.then_some((&self.client, sleep_certificates.as_path())),
            service,
        )
    }

    /// The outbound access-log lines so far.
    /// The outbound access-log lines, once there are at least `expected` (each is written when
    /// its connection ends, which may be just after the client has its answer) or 10 s passed.
    fn outbound_lines(&self, expected: usize) -> usize {
        self.outbound_lines_with("", expected)
    }

    /// [`Mesh::outbound_lines`] that contain `needle`.
    fn outbound_lines_with(&self, needle: &str, expected: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let count = self
                .postern
                .access_log()
                .iter()
                .filter(|line| line.contains("direction=outbound") && line.contains(needle))
                .count();
            if count >= expected || std::time::Instant::now() > deadline {
                return count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Index of the workloads file, and of httpbin's PeerAuthentication, in [`mesh_config`].
const WORKLOADS_FILE: usize = 3;
const HTTPBIN_PEER_AUTHENTICATION_FILE: usize = 1;

/// A reload changes what is captured, as it changes what is served: the seed's Service
/// removed passes untouched, and added back goes over mesh mTLS again; 9081 made DISABLE is no
/// mesh destination any more (the client's plain HTTP reaches the pod's plaintext port as it
/// is); the client's workload removed has its cgroup let go, and added back is captured again.
#[test]
fn a_reload_changes_the_mesh_destinations_and_the_captured_cgroups() {
    let mesh = Mesh::seed();
    let to_service = |mesh: &Mesh| {
        let resolve = format!("httpbin:8080:{SERVICE_IP}");
        let url = "http://httpbin:8080/status/200";
        mesh.client
            .curl(["-v", "--resolve", &resolve, url])
            .unwrap()
    };
    let result = to_service(&mesh);
    assert_over_mesh(
        &mesh,
        &result,
        &format!("{SERVICE_IP}:8080"),
        "198.18.0.2:9081",
    );

    // Without the Service, its virtual IP is nobody's: the connect leaves uncaptured, and the
    // client has no route to it.
    mesh.reload(WORKLOADS_FILE, &mesh.workloads(true, false), 1);
    let result = to_service(&mesh);
    assert!(
        result.http_status().is_none() && result.stderr.contains("unreachable"),
        "{}",
        result.summary()
    );
    assert_eq!(mesh.outbound_lines(1), 1, "{}", mesh.postern.log());

    // 9081 DISABLE: plaintext for everyone, so the client's request is not captured.
    mesh.reload(HTTPBIN_PEER_AUTHENTICATION_FILE, &port_9081("DISABLE"), 2);
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    assert_eq!(mesh.outbound_lines(1), 1, "{}", mesh.postern.log());
    // The pod's postern saw the client itself, in plaintext, with no identity.
    // The first was the Service's connection, over mesh mTLS.
    let plain = mesh
        .access_lines("198.18.0.2:9081", false, 2)
        .swap_remove(1);
    assert!(
        plain.contains("peer_identity=- ") && plain.contains("tls_version=- "),
        "{plain}"
    );
    mesh.reload(
        HTTPBIN_PEER_AUTHENTICATION_FILE,
        SEED_PEER_AUTHENTICATION_HTTPBIN,
        3,
    );

    // The client's workload removed: its cgroup is no longer captured, and its plain request
    // to the STRICT port is reset there.
    mesh.reload(WORKLOADS_FILE, &mesh.workloads(false, true), 4);
    assert_eq!(cgroup_programs(mesh.client.cgroup()), 0);
    let result = mesh.get_from_mesh_client(9081);
    assert!(result.http_status().is_none(), "{}", result.summary());
    assert_eq!(mesh.outbound_lines(1), 1, "{}", mesh.postern.log());

    // Added back, with the Service: captured again, and the Service is reached.
    mesh.reload(WORKLOADS_FILE, &mesh.workloads(true, true), 5);
    assert_eq!(cgroup_programs(mesh.client.cgroup()), CAPTURE_PROGRAMS);
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    let result = to_service(&mesh);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    assert_eq!(mesh.outbound_lines(3), 3, "{}", mesh.postern.log());
}

/// After a reload, the outbound side still follows the client identity's files: a renewed
/// certificate of sleep is the one httpbin's postern sees.
#[test]
fn a_renewed_client_certificate_is_presented_after_a_reload() {
    let mesh = Mesh::seed();
    mesh.reload(WORKLOADS_FILE, &mesh.workloads(true, false), 1);
    mesh.renew("sleep", "sleep-renewed");
    let result = mesh.get_from_mesh_client(9081);
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
    let inbound = mesh.access_line("198.18.0.2:9081", false);
    assert!(
        inbound.contains("CN=sleep-renewed") && inbound.contains(&spiffe_id(TRUST_DOMAIN, "sleep")),
        "{inbound}"
    );
}
