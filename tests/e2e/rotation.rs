//! Certificate rotation as Kubernetes does it: a mounted secret's files are symlinks through
//! `..data`, which is swapped atomically to a new directory. New handshakes use the new
//! material; connections in flight finish untouched; a broken update keeps the old material.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use postern_testbed::{curl, seed_curl_args, SeedRequest, SeedTopology, TopologyOptions};

use crate::{postern_bin, start_drip, Running};

/// Lays the directory out as the kubelet does: `..v1/{files}`, `..data -> ..v1`, and each file
/// a symlink `NAME -> ..data/NAME`.
fn kubernetes_layout(dir: &Path) {
    let first = dir.join("..v1");
    std::fs::create_dir(&first).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_owned();
            std::fs::rename(&path, first.join(&name)).unwrap();
            symlink(Path::new("..data").join(&name), dir.join(&name)).unwrap();
        }
    }
    symlink("..v1", dir.join("..data")).unwrap();
}

/// Writes a new version with `files` (the others carried over) and swaps `..data` to it in
/// one rename, as the kubelet does.
fn swap(dir: &Path, version: &str, files: &[(&str, &[u8])]) {
    let next = dir.join(format!("..{version}"));
    std::fs::create_dir(&next).unwrap();
    for entry in std::fs::read_dir(dir.join("..data")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, next.join(path.file_name().unwrap())).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(next.join(name), bytes).unwrap();
    }
    let staged = dir.join("..data_tmp");
    symlink(format!("..{version}"), &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
}

/// The seed's server certificate issued again by the seed's CA, with serial 2.
fn reissued_server_certificate(topology: &SeedTopology) -> Vec<u8> {
    let certs = topology.certs();
    let out = certs.dir.join("httpbin-serial-2.crt");
    let status = std::process::Command::new("openssl")
        .current_dir(&certs.dir)
        .args([
            "x509",
            "-req",
            "-days",
            "365",
            "-CA",
            "example.com.crt",
            "-CAkey",
            "example.com.key",
            "-set_serial",
            "2",
            "-in",
            "httpbin.test.svc.cluster.local.csr",
            "-out",
        ])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// `openssl s_client OPTIONS` to 9080 from the client namespace with the seed's client
/// certificate, stdin closed, its output piped through `then` (a shell tail such as `2>&1`).
fn s_client(topology: &SeedTopology, options: &str, then: &str) -> String {
    let certs = topology.certs();
    let script = format!(
        "openssl s_client -connect 198.18.0.2:9080 {options} -cert {} -key {} -CAfile {} </dev/null {then}",
        certs.client_cert.display(),
        certs.client_key.display(),
        certs.ca_cert.display()
    );
    let output = topology
        .client()
        .command("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The serial number of the certificate a new mutual-TLS handshake on 9080 sees, as openssl
/// prints it (`serial=01`).
fn served_serial(topology: &SeedTopology) -> String {
    s_client(topology, "", "2>/dev/null | openssl x509 -noout -serial")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn running_with_kubernetes_secrets() -> Running {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    kubernetes_layout(topology.tls_certs_dir());
    kubernetes_layout(topology.tls_ca_certs_dir());
    let config = topology.seed_config().unwrap();
    Running::start(topology, &config)
}

#[test]
fn rotation_through_data_symlink_swap_spares_a_download_in_flight() {
    let run = running_with_kubernetes_secrets();
    assert_eq!(served_serial(&run.topology), "serial=01");

    let output = run.topology.work_dir().join("drip.out");
    let mut download = start_drip(&run, 3000, 8, &output);
    let reissued = reissued_server_certificate(&run.topology);
    swap(
        run.topology.tls_certs_dir(),
        "v2",
        &[("tls.crt", &reissued)],
    );
    wait_for("new handshakes to see serial 2", || {
        served_serial(&run.topology) == "serial=02"
    });
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download should still be in flight when the new certificate serves"
    );

    let status = download.wait().unwrap();
    assert!(status.success(), "download: {status}");
    let body = std::fs::read(&output).unwrap();
    assert_eq!(body.len(), 3000);
    assert!(
        body.iter().all(|&b| b == b'*'),
        "the download is not byte-exact"
    );

    let certs = run.postern.command(&postern_bin(), "certs", &[]).unwrap();
    assert_eq!(certs.exit_code, 0, "{}", certs.stderr);
    let row = certs
        .stdout
        .lines()
        .find(|line| {
            line.starts_with("file-cert:/etc/istio/tls-certs/tls.crt~/etc/istio/tls-certs/tls.key")
        })
        .unwrap_or_else(|| panic!("no file-cert row in\n{}", certs.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..6],
        ["Cert", "Chain", "ACTIVE", "true", "2"],
        "{row}"
    );
}

#[test]
fn rotation_to_a_broken_file_keeps_the_previous_certificate() {
    let run = running_with_kubernetes_secrets();
    swap(
        run.topology.tls_certs_dir(),
        "v2",
        &[("tls.crt", b"this is not a certificate\n")],
    );
    wait_for("postern certs to show the error", || {
        let certs = run.postern.command(&postern_bin(), "certs", &[]).unwrap();
        certs.stdout.contains("ERROR")
    });
    let certs = run.postern.command(&postern_bin(), "certs", &[]).unwrap();
    assert!(
        certs.stdout.contains("/etc/istio/tls-certs/tls.crt")
            && certs.stdout.contains("not a PEM file"),
        "{}",
        certs.stdout
    );
    assert!(
        run.postern
            .log()
            .contains("previous material keeps serving"),
        "{}",
        run.postern.log()
    );
    assert_eq!(served_serial(&run.topology), "serial=01");
    let result = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());

    let json = run
        .postern
        .command(&postern_bin(), "certs", &["-o", "json"])
        .unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let cert = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["type"] == "Cert Chain")
        .unwrap();
    assert_eq!(cert["status"], "ERROR");
    assert_eq!(cert["serial_number"], "1");

    // Readiness says so too, so an orchestrator sees the failed rotation.
    let ready = run.postern.command(&postern_bin(), "ready", &[]).unwrap();
    assert_eq!(ready.exit_code, 1, "{}", ready.stdout);
    assert!(
        ready.stdout.contains("not ready") && ready.stdout.contains("tls.crt"),
        "{}",
        ready.stdout
    );
}

/// A TLS 1.2 session resumes while nothing changes; after the CA file changes, the same
/// session is not resumed, and the full handshake is verified against the new CA (which did
/// not issue the client's certificate), so it fails.
#[test]
fn no_session_resumes_across_a_ca_change() {
    let run = running_with_kubernetes_secrets();
    let session = run.topology.work_dir().join("session.pem");
    let handshake = |extra: &str| s_client(&run.topology, &format!("-tls1_2 {extra}"), "2>&1");
    let first = handshake(&format!("-sess_out {}", session.display()));
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let resumed = handshake(&format!("-sess_in {}", session.display()));
    assert!(
        resumed.contains("Reused, TLSv1.2"),
        "resumption should work before the change: {resumed}"
    );

    let other_ca = std::fs::read(&run.topology.certs().other_ca_cert).unwrap();
    swap(
        run.topology.tls_ca_certs_dir(),
        "v2",
        &[("ca.crt", &other_ca)],
    );
    let old_root = run
        .postern
        .command(&postern_bin(), "certs", &["-o", "json"])
        .unwrap()
        .stdout;
    wait_for("the new CA to serve", || {
        let now = run
            .postern
            .command(&postern_bin(), "certs", &["-o", "json"])
            .unwrap()
            .stdout;
        now != old_root && !now.contains("ERROR")
    });

    let after = handshake(&format!("-sess_in {}", session.display()));
    assert!(
        !after.contains("Reused"),
        "a session resumed across the CA change: {after}"
    );
    let lines = run.access_lines_to("198.18.0.2:9080");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("handshake_failed") && l.contains("UnknownIssuer")),
        "{lines:?}"
    );
}

/// A certificate that expires within `--expiry-warning` is named in a warning at start.
#[test]
fn certificates_close_to_expiry_are_warned_about() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap();
    let config = topology.seed_config().unwrap();
    // The seed's certificates are valid for 365 days: inside a 400-day window.
    let postern = postern_testbed::Postern::start(
        &postern_bin(),
        &topology,
        &config,
        &["--expiry-warning", "400d"],
    )
    .unwrap();
    let warning = postern.wait_for_log("certificate expires in", Duration::from_secs(10));
    assert!(warning.is_ok(), "{}", postern.log());
    assert!(
        postern.log().contains("/etc/istio/tls-certs/tls.crt"),
        "{}",
        postern.log()
    );
}
