//! Configuration reload, on SIGHUP and on a change of the files: ports added, removed and
//! changed while a download in flight carries on; a bad configuration is refused whole and the
//! old one keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use postern_testbed::{
    curl, seed_curl_args, CurlResult, Postern, PosternOptions, SeedRequest, SeedTopology, Signal,
    TopologyOptions,
};

use crate::{
    admin_get, pins, postern_bin, sk_lookup_links, start_drip, stop_cleanly, successor,
    workload_and, write_config, Running,
};

/// curl's exit code when the connection is refused.
const CURL_CONNECT_REFUSED: i32 = 7;

/// Every port of the workload DISABLE, with the ports and TLS modes given, each port's app
/// being httpbin on :80. `ports` is `(number, Some(tls mode) | None for plaintext)`.
fn config(topology: &SeedTopology, ports: &[(u16, Option<&str>)]) -> String {
    let mut ingress = String::new();
    for (number, tls) in ports {
        ingress += &format!(
            "  - port: {{number: {number}, protocol: HTTPS, name: p{number}}}\n    defaultEndpoint: 0.0.0.0:80\n"
        );
        if let Some(mode) = tls {
            ingress += &format!(
                "    tls:\n      mode: {mode}\n      privateKey: /etc/istio/tls-certs/tls.key\n      serverCertificate: /etc/istio/tls-certs/tls.crt\n      caCertificates: /etc/istio/tls-ca-certs/ca.crt\n"
            );
        } else {
            ingress = ingress.replace(
                &format!("protocol: HTTPS, name: p{number}"),
                &format!("protocol: HTTP, name: p{number}"),
            );
        }
    }
    workload_and(
        topology,
        &format!(
            "{}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: httpbin, namespace: test}}
spec:
  workloadSelector: {{labels: {{app: httpbin}}}}
  ingress:
{ingress}",
            peer_authentication("httpbin", "DISABLE")
        ),
    )
}

/// A PeerAuthentication selecting `app: APP`, in `mode` for every port.
fn peer_authentication(app: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {app}, namespace: test}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  mtls: {{mode: {mode}}}
"
    )
}

/// Before: 9080 SIMPLE TLS, 9082 plaintext.
const BEFORE: &[(u16, Option<&str>)] = &[(9080, Some("SIMPLE")), (9082, None)];
/// After: 9080 MUTUAL, 9082 removed, 9083 plaintext added.
const AFTER: &[(u16, Option<&str>)] = &[(9080, Some("MUTUAL")), (9083, None)];

fn tls_request(run: &Running, request: SeedRequest) -> CurlResult {
    curl(
        run.topology.client(),
        seed_curl_args(&run.topology, request),
    )
    .unwrap()
}

fn plaintext(run: &Running, port: u16) -> CurlResult {
    let url = format!("http://{}:{port}/status/200", run.topology.pod_ipv4());
    curl(
        run.topology.client(),
        ["-v", "--max-time", "10", url.as_str()],
    )
    .unwrap()
}

fn start(extra_args: &[&str], ports: &[(u16, Option<&str>)]) -> (Running, PathBuf) {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let path = write_config(&topology, "ports.yaml", &config(&topology, ports));
    let postern = Postern::start(
        &postern_bin(),
        &topology,
        std::slice::from_ref(&path),
        extra_args,
    )
    .unwrap();
    (Running { postern, topology }, path)
}

/// A value of `/metrics` (the first sample line starting with `series`).
fn metric(run: &Running, series: &str) -> Option<f64> {
    let (_, body) = admin_get(run, "/metrics");
    body.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Waits for the `n`th log line containing `needle`.
pub(crate) fn wait_for_nth(postern: &Postern, needle: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while postern.log().matches(needle).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n} lines with {needle:?}:\n{}",
            postern.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn assert_before(run: &Running) {
    let simple = tls_request(run, SeedRequest::ExternalNoClientCert);
    assert_eq!(
        simple.http_status(),
        Some(200),
        "9080 SIMPLE: {}",
        simple.summary()
    );
    let open = plaintext(run, 9082);
    assert_eq!(open.http_status(), Some(200), "9082: {}", open.summary());
    let absent = plaintext(run, 9083);
    assert_eq!(
        absent.exit_code,
        CURL_CONNECT_REFUSED,
        "9083: {}",
        absent.summary()
    );
}

fn assert_after(run: &Running) {
    let no_cert = tls_request(run, SeedRequest::ExternalNoClientCert);
    assert!(
        no_cert.http_status().is_none() && !no_cert.success(),
        "9080 is MUTUAL now: {}",
        no_cert.summary()
    );
    let mtls = tls_request(run, SeedRequest::ExternalMtls);
    assert_eq!(
        mtls.http_status(),
        Some(200),
        "9080 MUTUAL: {}",
        mtls.summary()
    );
    let removed = plaintext(run, 9082);
    assert_eq!(
        removed.exit_code,
        CURL_CONNECT_REFUSED,
        "9082 is no longer intercepted, and nothing else listens there: {}",
        removed.summary()
    );
    let added = plaintext(run, 9083);
    assert_eq!(added.http_status(), Some(200), "9083: {}", added.summary());
}

/// Changes the configuration from BEFORE to AFTER while a download runs on 9080; `trigger`
/// makes postern notice.
fn reload_applies_the_differences(extra_args: &[&str], trigger: impl FnOnce(&Running)) {
    let (run, path) = start(extra_args, BEFORE);
    assert_before(&run);
    let output = run.topology.work_dir().join("drip.out");
    let mut download = start_drip(&run, 3000, 5, &output);
    crate::drain::wait_until_flowing(&output);

    std::fs::write(&path, config(&run.topology, AFTER)).unwrap();
    trigger(&run);
    let line = run
        .postern
        .wait_for_log("configuration reloaded", Duration::from_secs(20))
        .unwrap();
    // 9083 added, 9082 removed, 9080 kept with its new policy.
    assert!(
        line.contains("listeners_added=1 listeners_removed=1 listeners_kept=1"),
        "{line}"
    );
    assert_after(&run);

    let status = download.wait().unwrap();
    assert!(status.success(), "the download across the reload: {status}");
    let body = std::fs::read(&output).unwrap();
    assert_eq!(body.len(), 3000, "byte-exact across the reload");
    assert!(body.iter().all(|&b| b == b'*'));
    assert_eq!(
        metric(&run, "postern_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&run, "postern_config_generation"), Some(2.0));
    println!("reload: a 3000-byte download across the reload arrived byte-exact");
}

#[test]
fn sighup_adds_changes_and_removes_ports() {
    // Files are not watched here, so only the signal can cause the reload.
    reload_applies_the_differences(&["--no-watch-config"], |run| {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !run.postern.log().contains("configuration reloaded"),
            "nothing reloads before SIGHUP with --no-watch-config"
        );
        run.postern.kill(Signal::Hup).unwrap();
    });
}

#[test]
fn changed_files_add_change_and_remove_ports() {
    reload_applies_the_differences(&[], |_| {});
}

/// A Kubernetes ConfigMap volume: files are symlinks into `..data`, itself a symlink to a
/// timestamped directory, swapped atomically on update.
fn configmap(dir: &Path, generation: &str, text: &str) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("ports.yaml"), text).unwrap();
    let next = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{generation}"), &next).unwrap();
    std::fs::rename(&next, dir.join("..data")).unwrap();
    let file = dir.join("ports.yaml");
    if std::fs::symlink_metadata(&file).is_err() {
        std::os::unix::fs::symlink("..data/ports.yaml", &file).unwrap();
    }
}

#[test]
fn a_configmap_update_is_seen() {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let dir = topology.work_dir().join("configmap");
    configmap(&dir, "2026_11_24_first", &config(&topology, BEFORE));
    let postern =
        Postern::start(&postern_bin(), &topology, std::slice::from_ref(&dir), &[]).unwrap();
    let run = Running { postern, topology };
    assert_before(&run);
    configmap(&dir, "2026_11_24_second", &config(&run.topology, AFTER));
    run.postern
        .wait_for_log("configuration reloaded", Duration::from_secs(20))
        .unwrap();
    assert_after(&run);
}

/// A SIGHUP sent while postern starts (a config agent that signals on every write, or a
/// test that signals as soon as it reads "ready") must never end it: SIGHUP's default action
/// is to terminate.
#[test]
fn sighups_while_starting_do_not_stop_postern() {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let path = write_config(&topology, "ports.yaml", &config(&topology, BEFORE));
    let options = PosternOptions {
        wait_ready: false,
        ..PosternOptions::default()
    };
    let mut postern = Postern::start_with(
        &postern_bin(),
        &topology,
        std::slice::from_ref(&path),
        &[],
        &options,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // From its first log line on (before that it runs under `unshare` and `sh`, and then the
    // dynamic loader, which no program can make catch a signal).
    while postern.log().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no log line");
        std::thread::yield_now();
    }
    let mut sent = 0;
    while !postern.log().contains("postern is ready") {
        if !postern.is_running().unwrap() {
            panic!(
                "postern ended ({}) after {sent} SIGHUPs while starting:\n{}",
                postern.wait_exit().unwrap(),
                postern.log()
            );
        }
        assert!(std::time::Instant::now() < deadline, "{}", postern.log());
        postern.kill(Signal::Hup).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    // The last ones may still be on their way: one more after "ready", then it serves.
    postern.kill(Signal::Hup).unwrap();
    let mut run = Running { postern, topology };
    assert_before(&run);
    assert!(run.postern.is_running().unwrap(), "{}", run.postern.log());
    assert!(sent > 0);
}

#[test]
fn a_bad_configuration_is_refused_and_the_old_one_serves() {
    let (run, path) = start(&["--no-watch-config"], BEFORE);
    let good = config(&run.topology, AFTER);
    let bad = [
        // A field with a value Istio does not have: named with file, document and field.
        (good.replace("mode: MUTUAL", "mode: MUTAL"), "tls.mode"),
        // Valid YAML whose TLS material is missing: refused like `postern check` refuses it.
        (
            good.replace(
                "/etc/istio/tls-ca-certs/ca.crt",
                "/etc/istio/tls-ca-certs/none.crt",
            ),
            "none.crt",
        ),
    ];
    for (n, (text, named)) in bad.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        run.postern.kill(Signal::Hup).unwrap();
        wait_for_nth(&run.postern, "configuration reload failed", n + 1);
        let line = run
            .postern
            .log()
            .lines()
            .filter(|l| l.contains("configuration reload failed"))
            .nth(n)
            .unwrap()
            .to_string();
        assert!(
            line.contains("ports.yaml") || *named == "none.crt",
            "the error names the file: {line}"
        );
        assert!(line.contains(named), "the error names {named}: {line}");
        assert_before(&run);
        assert_eq!(
            metric(&run, "postern_config_reloads_total{result=\"failure\"}"),
            Some((n + 1) as f64)
        );
    }
    assert_eq!(
        metric(&run, "postern_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(metric(&run, "postern_config_generation"), Some(1.0));
    // Still ready (the old configuration serves), with the reason shown.
    let (code, body) = admin_get(&run, "/readyz");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("reload failed"), "{body}");
    let ready = run.postern.command(&postern_bin(), "ready", &[]).unwrap();
    assert_eq!(ready.exit_code, 0, "{}{}", ready.stdout, ready.stderr);
    assert!(ready.stdout.contains("none.crt"), "{}", ready.stdout);
    let (_, dump) = admin_get(&run, "/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert!(
        dump["reload"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("none.crt")),
        "{dump}"
    );

    // Fixed: it applies, and the warning goes.
    std::fs::write(&path, good).unwrap();
    run.postern.kill(Signal::Hup).unwrap();
    run.postern
        .wait_for_log("configuration reloaded", Duration::from_secs(20))
        .unwrap();
    assert_after(&run);
    assert_eq!(
        metric(&run, "postern_config_last_reload_successful"),
        Some(1.0)
    );
    let (_, body) = admin_get(&run, "/readyz");
    assert_eq!(body.trim(), "ready");
}

/// A second workload, in its own network namespace, STRICT: its every-other-port rule needs
/// the namespace attached.
fn other_workload(netns: &Path) -> String {
    format!(
        "apiVersion: postern.dev/v1alpha1
kind: Workload
metadata: {{name: other, namespace: test, labels: {{app: other}}}}
spec: {{networkNamespace: {}}}
---
{}",
        netns.display(),
        peer_authentication("other", "STRICT")
    )
}

#[test]
fn workloads_added_and_removed_are_attached_and_detached() {
    // Made before postern starts: postern runs in a private mount namespace (for the
    // certificates' bind mounts), which does not see netns mounts made after it.
    let other = postern_testbed::Netns::new("other").unwrap();
    let (mut run, path) = start(&["--no-watch-config"], BEFORE);
    let one = config(&run.topology, BEFORE);
    let two = format!("{one}---\n{}", other_workload(other.path()));
    let mut reloads = 0;
    let mut reload = |run: &Running, text: &str| {
        std::fs::write(&path, text).unwrap();
        run.postern.kill(Signal::Hup).unwrap();
        reloads += 1;
        wait_for_nth(&run.postern, "configuration reloaded", reloads);
    };
    reload(&run, &two);
    assert_eq!(
        sk_lookup_links(other.path()),
        1,
        "the new workload's namespace"
    );
    assert_eq!(pins(run.postern.bpffs_dir()), 2);
    reload(&run, &one);
    assert_eq!(
        sk_lookup_links(other.path()),
        0,
        "the removed workload's namespace"
    );
    assert_eq!(pins(run.postern.bpffs_dir()), 1);
    assert_eq!(sk_lookup_links(run.topology.pod_netns_path()), 1);
    assert_before(&run);
    reload(&run, &two);
    assert_eq!(sk_lookup_links(other.path()), 1);

    // Killed, then restarted on a configuration without the other workload: that postern
    // adopts httpbin's pinned state and removes the other namespace's.
    run.postern.kill(Signal::Kill).unwrap();
    run.postern.wait_exit().unwrap();
    assert_eq!(sk_lookup_links(other.path()), 1, "fail closed while down");
    std::fs::write(&path, &one).unwrap();
    let restarted = successor(&run, std::slice::from_ref(&path), &[]);
    let mut killed = std::mem::replace(&mut run.postern, restarted);
    killed.leave_pins();
    let log = run.postern.log();
    assert!(
        log.contains("removed the kernel state of a namespace no longer configured"),
        "{log}"
    );
    assert!(
        log.contains("adopted the pinned sk_lookup program"),
        "{log}"
    );
    assert_eq!(sk_lookup_links(other.path()), 0);
    assert_eq!(pins(run.postern.bpffs_dir()), 1);
    assert_before(&run);
    stop_cleanly(&mut run);
}
