//! f: fail closed. With postern killed, intercepted ports reset, even when the app itself
//! listens on the intercepted port: clear text never reaches it.

use postern_testbed::{curl, seed_curl_args, SeedRequest, SeedTopology, Signal, TopologyOptions};

use crate::{httpbin_requests, Running};

/// curl's exit code when the connection is refused (the SYN was answered with a reset).
const CURL_CONNECT_REFUSED: i32 = 7;

#[test]
fn killed_postern_leaves_intercepted_ports_resetting() {
    let mut run = Running::seed();
    run.postern.kill(Signal::Kill).unwrap();
    run.postern.wait_exit().unwrap();

    // The kernel side outlived the process: its attachment is still pinned.
    let pinned: Vec<_> = std::fs::read_dir(run.postern.bpffs_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path().join("link"))
        .filter(|link| link.exists())
        .collect();
    assert_eq!(
        pinned.len(),
        1,
        "pins under {}",
        run.postern.bpffs_dir().display()
    );

    for request in [SeedRequest::ExternalMtls, SeedRequest::InternalPlaintext] {
        let result = curl(
            run.topology.client(),
            seed_curl_args(&run.topology, request),
        )
        .unwrap();
        assert_eq!(
            result.exit_code,
            CURL_CONNECT_REFUSED,
            "{request:?}: {}",
            result.summary()
        );
    }
    let direct = curl(
        run.topology.client(),
        ["-v", "http://198.18.0.2:80/status/200"],
    )
    .unwrap();
    assert_eq!(
        direct.exit_code,
        CURL_CONNECT_REFUSED,
        "{}",
        direct.summary()
    );
    assert_eq!(httpbin_requests(&run.topology), 0);
}

/// The app listens on 0.0.0.0:9080 itself, the port postern intercepts. postern reaches it
/// from 127.0.0.6, which the kernel program lets through; nobody else does, before or after
/// postern dies.
#[test]
fn app_on_the_intercepted_port_never_sees_clear_text() {
    let topology = SeedTopology::build(TopologyOptions {
        httpbin_extra_args: vec!["-b".into(), "0.0.0.0:9080".into()],
        ..TopologyOptions::default()
    })
    .unwrap();
    let plaintext = ["-v", "http://198.18.0.2:9080/status/200"];

    // Without postern, the app answers in clear on 9080: this must never happen again.
    let before = curl(topology.client(), plaintext).unwrap();
    assert_eq!(before.http_status(), Some(200), "{}", before.summary());
    assert_eq!(httpbin_requests(&topology), 1);

    // The seed's manifests, but 9080's endpoint is the app on 9080 itself.
    let config = topology.seed_config_app_on_external_port().unwrap();
    let mut run = Running::start(topology, &config);
    let mtls = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(mtls.http_status(), Some(200), "{}", mtls.summary());
    assert_eq!(httpbin_requests(&run.topology), 2);
    let refused = curl(run.topology.client(), plaintext).unwrap();
    assert!(refused.http_status().is_none(), "{}", refused.summary());

    run.postern.kill(Signal::Kill).unwrap();
    run.postern.wait_exit().unwrap();
    let after = curl(run.topology.client(), plaintext).unwrap();
    assert_eq!(after.exit_code, CURL_CONNECT_REFUSED, "{}", after.summary());
    let tls = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(tls.exit_code, CURL_CONNECT_REFUSED, "{}", tls.summary());
    assert_eq!(httpbin_requests(&run.topology), 2);
}
