//! `postern check` and start-up refusals: a bad configuration is named precisely, and
//! `postern run` attaches nothing when any of it is bad.

use std::time::Duration;

use postern_testbed::{Postern, PosternOptions, SeedTopology, TopologyOptions, SEED_SIDECAR};

use crate::{postern_bin, workload_and, write_config};

fn bare_topology() -> SeedTopology {
    SeedTopology::build(TopologyOptions {
        httpbin: false,
        ..TopologyOptions::default()
    })
    .unwrap()
}

#[test]
fn check_prints_the_seed_policy_table() {
    let topology = bare_topology();
    let config = topology.seed_config().unwrap();
    let result = Postern::check(&postern_bin(), &topology, &config, Some("test")).unwrap();
    assert_eq!(result.exit_code, 0, "{}\n{}", result.stdout, result.stderr);
    let row = |port: &str| {
        result
            .stdout
            .lines()
            .find(|line| line.split_whitespace().nth(2) == Some(port))
            .unwrap_or_else(|| panic!("no row for port {port} in\n{}", result.stdout))
            .to_string()
    };
    assert!(row("9080").contains("MUTUAL"), "{}", row("9080"));
    assert!(row("9080").contains("DISABLE"), "{}", row("9080"));
    assert!(row("9081").contains("STRICT"), "{}", row("9081"));
}

#[test]
fn check_names_file_document_and_field_of_an_istio_mutual_sidecar() {
    let topology = bare_topology();
    let sidecar = SEED_SIDECAR.replacen("mode: MUTUAL", "mode: ISTIO_MUTUAL", 1);
    let path = write_config(&topology, "bad.yaml", &workload_and(&topology, &sidecar));
    let result = Postern::check(&postern_bin(), &topology, &[path], Some("test")).unwrap();
    assert_eq!(result.exit_code, 1, "{}", result.stdout);
    for expected in [
        "bad.yaml",
        "document 2",
        "spec.ingress[0].tls.mode",
        "ISTIO_MUTUAL",
    ] {
        assert!(
            result.stderr.contains(expected),
            "{expected} missing in: {}",
            result.stderr
        );
    }
}

/// A certificate that does not exist: `run` exits 1 naming the file, and attaches nothing.
#[test]
fn run_with_a_missing_certificate_attaches_nothing() {
    let topology = bare_topology();
    let sidecar = SEED_SIDECAR.replace(
        "/etc/istio/tls-certs/tls.crt",
        "/etc/istio/tls-certs/missing.crt",
    );
    let pa = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: external\nspec:\n  selector:\n    matchLabels:\n      app: httpbin\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    9080:\n      mode: DISABLE\n";
    let path = write_config(
        &topology,
        "missing-cert.yaml",
        &workload_and(&topology, &format!("{sidecar}---\n{pa}")),
    );
    let options = PosternOptions {
        wait_ready: false,
        ..PosternOptions::default()
    };
    let mut postern =
        Postern::start_with(&postern_bin(), &topology, &[path], &[], &options).unwrap();
    let status = postern.wait_exit_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(1), "{}", postern.log());
    assert!(
        postern.log().contains("/etc/istio/tls-certs/missing.crt"),
        "{}",
        postern.log()
    );
    let attached = std::fs::read_dir(postern.bpffs_dir())
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(attached, 0, "nothing may be attached after a failed start");
}
