//! Logs: the level changes at run time over the admin socket, and `--log-format json` writes
//! one JSON object per line, the access log under its own target.

use std::time::Duration;

use postern_testbed::{curl, seed_curl_args, Postern, SeedRequest, SeedTopology, TopologyOptions};

use crate::{postern_bin, Running};

const DEBUG_ACCEPT: &str = "accepted workload=test/httpbin";

#[test]
fn log_level_changes_at_run_time() {
    let run = Running::seed();
    let mtls = || {
        curl(
            run.topology.client(),
            seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
        )
        .unwrap()
    };
    assert_eq!(mtls().http_status(), Some(200));
    run.postern
        .wait_for_log("outcome=ok", Duration::from_secs(10))
        .unwrap();
    assert!(
        !run.postern.log().contains(DEBUG_ACCEPT),
        "debug lines at the default level"
    );

    let changed = run
        .postern
        .command(&postern_bin(), "log-level", &["debug"])
        .unwrap();
    assert_eq!(changed.exit_code, 0, "{}{}", changed.stdout, changed.stderr);
    assert_eq!(mtls().http_status(), Some(200));
    assert!(
        run.postern
            .wait_for_log(DEBUG_ACCEPT, Duration::from_secs(10))
            .is_ok(),
        "{}",
        run.postern.log()
    );

    let bad = run
        .postern
        .command(&postern_bin(), "log-level", &["postern=loud"])
        .unwrap();
    assert_eq!(bad.exit_code, 1, "{}", bad.stdout);
    assert!(bad.stderr.contains("postern=loud"), "{}", bad.stderr);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let topology = SeedTopology::build(TopologyOptions::default()).unwrap();
    let config = topology.seed_config().unwrap();
    let postern = Postern::start(
        &postern_bin(),
        &topology,
        &config,
        &["--log-format", "json"],
    )
    .unwrap();
    let result = curl(
        topology.client(),
        seed_curl_args(&topology, SeedRequest::ExternalMtls),
    )
    .unwrap();
    assert_eq!(result.http_status(), Some(200));
    postern
        .wait_for_log("postern::access", Duration::from_secs(10))
        .unwrap();

    let lines: Vec<serde_json::Value> = postern
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let access = lines
        .iter()
        .find(|line| line["target"] == "postern::access")
        .expect("an access-log line");
    assert_eq!(access["fields"]["original_dst"], "198.18.0.2:9080");
    assert_eq!(access["fields"]["outcome"], "ok");
    assert_eq!(access["fields"]["tls_version"], "TLSv1.3");
}
