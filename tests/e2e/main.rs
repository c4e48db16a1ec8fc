//! End-to-end tests: the seed's scenario in real network namespaces, with the real eBPF
//! program, real curl, socat and httpbin, and postern started as a user starts it.
//!
//! Needs root and what `cargo xtask setup` installs. Every topology, postern and app belongs
//! to a guard that cleans up, on failure too.

mod apps;
mod check;
mod drain;
mod fail_closed;
mod limits;
mod logging;
mod mesh;
mod metrics;
mod policies;
mod reload;
mod rotation;
mod seed;
mod server_tls;
mod transfer;
pub(crate) mod upgrade;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postern_testbed::{Postern, SeedTopology, TopologyOptions};

/// The binary under test: `$POSTERN_BIN` where the suite runs away from its build tree (as in
/// vm-test's guests), else the one cargo built for this test run.
fn postern_bin() -> PathBuf {
    std::env::var_os("POSTERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_postern")))
}

/// A topology with postern serving it. Fields drop in order: postern first (it is killed and
/// its pins removed), then the namespaces.
struct Running {
    postern: Postern,
    topology: SeedTopology,
}

impl Running {
    /// The seed's topology with postern on the seed's manifests, verbatim.
    fn seed() -> Running {
        let topology = SeedTopology::build(TopologyOptions::default()).expect("seed topology");
        let config = topology.seed_config().expect("seed manifests");
        Running::start(topology, &config)
    }

    fn start(topology: SeedTopology, config: &[PathBuf]) -> Running {
        let postern =
            Postern::start(&postern_bin(), &topology, config, &[]).expect("postern starts");
        Running { postern, topology }
    }

    /// The access-log lines whose original destination is `dst` (`IP:PORT`). A line is
    /// written when its connection ends, which may be just after the client gave up, so this
    /// waits (up to 10 s) for at least one.
    fn access_lines_to(&self, dst: &str) -> Vec<String> {
        let needle = format!("original_dst={dst} ");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self
                .postern
                .access_log()
                .into_iter()
                .filter(|line| line.contains(&needle))
                .collect();
            if !lines.is_empty() || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `text` (YAML) into the topology's work dir and returns its path.
fn write_config(topology: &SeedTopology, name: &str, text: &str) -> PathBuf {
    let path = topology.work_dir().join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// The seed's Workload document for this topology, plus `rest` (more YAML documents).
fn workload_and(topology: &SeedTopology, rest: &str) -> String {
    format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: httpbin\n  namespace: test\n  labels:\n    app: httpbin\n    version: v1\nspec:\n  networkNamespace: {}\n---\n{rest}",
        topology.pod_netns_path().display()
    )
}

/// The path of the barrier request, which no test sends otherwise.
const BARRIER_PATH: &str = "/status/204";

/// How many requests httpbin served, counted once they have all been logged. gunicorn logs a
/// request just after answering it, so a count taken right after curl could miss one. So a
/// barrier request goes first, from inside the pod over loopback (never intercepted).
/// httpbin's single sync worker serves and logs requests in order, so once the barrier is
/// logged, everything before it is too. The barrier itself is not counted.
fn httpbin_requests(topology: &SeedTopology) -> usize {
    let barrier = format!("http://127.0.0.1:80{BARRIER_PATH}");
    let result =
        postern_testbed::curl(topology.pod(), ["-sS", "-o", "/dev/null", &barrier]).unwrap();
    assert!(result.success(), "barrier request: {}", result.summary());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = topology.httpbin_access_log().unwrap();
        let barriers = log
            .iter()
            .filter(|line| line.contains(BARRIER_PATH))
            .count();
        if barriers > 0 {
            return log.len() - barriers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "httpbin never logged the barrier request"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A slow download over mTLS, in the background: httpbin's `/drip` sends `bytes` asterisks
/// over `seconds`, written to `output` as they arrive (`-N`: no output buffering).
fn start_drip(
    run: &Running,
    bytes: usize,
    seconds: u32,
    output: &std::path::Path,
) -> std::process::Child {
    let path = format!("/drip?numbytes={bytes}&duration={seconds}&delay=0&code=200");
    let mut args = postern_testbed::seed_curl_args_to(
        &run.topology,
        postern_testbed::SeedRequest::ExternalMtls,
        run.topology.pod_ipv4().into(),
        &path,
    );
    args.retain(|arg| arg != "-v");
    run.topology
        .client()
        .command("curl")
        .args(["-sS", "-N", "--max-time", "60", "-o"])
        .arg(output)
        .args(args)
        .spawn()
        .unwrap()
}

/// `GET http://ADDRESS/PATH` from the host, where the admin endpoint listens on loopback.
fn admin_get(run: &Running, path: &str) -> (String, String) {
    let address = run.postern.admin_address().unwrap();
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{address}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.to_string(), body.to_string())
}

/// The `sk_lookup` links attached to the network namespace at `netns_path`, as bpftool sees them.
pub(crate) fn sk_lookup_links(netns_path: &Path) -> usize {
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(netns_path).unwrap());
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    assert!(output.status.success(), "bpftool: {output:?}");
    let links: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    links
        .iter()
        .filter(|link| link["attach_type"] == "sk_lookup" && link["netns_ino"] == inode)
        .count()
}

/// The pins left under a postern's bpffs dir.
pub(crate) fn pins(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A second postern on the same bpffs dir and admin socket as `run`'s.
pub(crate) fn successor(run: &Running, config: &[PathBuf], extra_args: &[&str]) -> Postern {
    let options = postern_testbed::PosternOptions {
        bpffs_dir: Some(run.postern.bpffs_dir().to_path_buf()),
        admin_socket: Some(run.postern.admin_socket().to_path_buf()),
        ..postern_testbed::PosternOptions::default()
    };
    Postern::start_with(&postern_bin(), &run.topology, config, extra_args, &options).unwrap()
}

/// Stops `run`'s postern with SIGTERM; it must leave no pin and no attached program.
pub(crate) fn stop_cleanly(run: &mut Running) {
    run.postern.kill(postern_testbed::Signal::Term).unwrap();
    let exit = run.postern.wait_exit().unwrap();
    assert!(exit.success(), "{exit}\n{}", run.postern.log());
    assert_eq!(pins(run.postern.bpffs_dir()), 0, "pins left");
    assert_eq!(sk_lookup_links(run.topology.pod_netns_path()), 0);
}
