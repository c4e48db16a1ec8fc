//! Graceful drain on SIGTERM: readiness turns false, new connections are reset (never let
//! through in clear), established ones finish within the deadline, then postern detaches.

use std::path::Path;
use std::time::{Duration, Instant};

use postern_testbed::{curl, seed_curl_args, SeedRequest, SeedTopology, Signal, TopologyOptions};

use crate::{postern_bin, start_drip, Running};

/// Waits until the download has received its first bytes: the connection is established.
pub(crate) fn wait_until_flowing(output: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(output).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running(extra_args: &[&str]) -> Running {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let config = topology.seed_config().unwrap();
    let postern =
        postern_testbed::Postern::start(&postern_bin(), &topology, &config, extra_args).unwrap();
    Running { postern, topology }
}

#[test]
fn sigterm_lets_established_connections_finish() {
    let mut run = running(&[]);
    let output = run.topology.work_dir().join("drip.out");
    let mut download = start_drip(&run, 2000, 4, &output);
    wait_until_flowing(&output);

    run.postern.kill(Signal::Term).unwrap();
    run.postern
        .wait_for_log("draining", Duration::from_secs(10))
        .unwrap();
    let ready = run.postern.command(&postern_bin(), "ready", &[]).unwrap();
    assert_eq!(
        ready.exit_code,
        1,
        "{}\n{}",
        ready.stdout,
        run.postern.log()
    );
    assert!(ready.stdout.contains("draining"), "{}", ready.stdout);
    let refused = curl(
        run.topology.client(),
        seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(
        refused.exit_code,
        7,
        "a new connection during the drain: {}",
        refused.summary()
    );

    let status = download.wait().unwrap();
    assert!(status.success(), "the download in flight: {status}");
    let body = std::fs::read(&output).unwrap();
    assert_eq!(body.len(), 2000);
    assert!(body.iter().all(|&b| b == b'*'));

    let exit = run.postern.wait_exit().unwrap();
    assert!(exit.success(), "{exit}\n{}", run.postern.log());
    assert!(
        run.postern
            .log()
            .contains("drained: every connection finished"),
        "{}",
        run.postern.log()
    );
    let pins = std::fs::read_dir(run.postern.bpffs_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pins, 0, "a clean stop detaches and unpins everything");
}

#[test]
fn drain_deadline_closes_what_is_left() {
    let mut run = running(&["--drain-timeout", "1s"]);
    let output = run.topology.work_dir().join("drip.out");
    let mut download = start_drip(&run, 2000, 20, &output);
    wait_until_flowing(&output);

    run.postern.kill(Signal::Term).unwrap();
    let exit = run.postern.wait_exit().unwrap();
    assert!(exit.success(), "{exit}\n{}", run.postern.log());
    assert!(
        run.postern.log().contains("drain deadline passed"),
        "{}",
        run.postern.log()
    );
    let status = download.wait().unwrap();
    assert!(
        !status.success(),
        "the download cannot have completed: {status}"
    );
    assert!(std::fs::read(&output).unwrap().len() < 2000);
}
