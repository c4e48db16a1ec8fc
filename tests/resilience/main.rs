//! The resilience suite: postern against hostile input, slow and many clients, a crash under
//! load, and a real TLS scanner, on the seed's topology. Each case asserts what must hold and
//! records what it measured (inputs, outcomes, latency, postern's memory and descriptors) in
//! the figures file, from which `cargo xtask resilience` writes `docs/resilience.md`.
//!
//! Every loop is bounded and stops by itself. Sizes are small enough for CI; `POSTERN_SOAK=1`
//! (`cargo xtask resilience --soak`) runs the longer soak. Needs root and what
//! `cargo xtask setup` installs; every namespace, process and pin belongs to a guard.

mod apps;
mod client;
mod concurrency;
mod crash;
mod flood;
mod hostile;
mod load;
mod scanner;
mod slowloris;
mod upgrade;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern::netns::Netns;
use postern::policy::NetnsRef;
use postern_testbed::{
    Figures, Postern, PosternOptions, SeedTopology, TopologyOptions, FIGURES_ENV,
};

/// The binary under test: `$POSTERN_BIN` where the suite runs away from its build tree, else
/// the one cargo built for this test run.
fn postern_bin() -> PathBuf {
    std::env::var_os("POSTERN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_postern")))
}

/// Whether this is the long soak (`POSTERN_SOAK=1`) rather than the CI-sized run.
fn soak() -> bool {
    std::env::var("POSTERN_SOAK").is_ok_and(|value| value == "1")
}

/// CI-sized or soak-sized: `ci` or `soak`.
fn sized<T>(ci: T, soak_size: T) -> T {
    if soak() {
        soak_size
    } else {
        ci
    }
}

/// Appends a case's figures to `$POSTERN_FIGURES`, else to `resilience-figures.tsv` in cargo's
/// temp dir for integration tests.
fn record(figures: &Figures) {
    let path = std::env::var_os(FIGURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("resilience-figures.tsv")
        });
    figures.append_to(&path).expect("figures file");
}

/// A runtime for the suite's clients and apps. Their sockets are created inside the
/// namespaces (see [`Namespaces`]); the runtime's threads stay in the test's own.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The topology's two namespaces, open for creating sockets in them.
#[derive(Clone)]
struct Namespaces {
    pod: Arc<Netns>,
    client: Arc<Netns>,
}

impl Namespaces {
    fn of(topology: &SeedTopology) -> Namespaces {
        let open = |path: &std::path::Path| {
            Arc::new(Netns::open(&NetnsRef::Path(path.to_path_buf())).expect("open netns"))
        };
        Namespaces {
            pod: open(topology.pod().path()),
            client: open(topology.client().path()),
        }
    }
}

/// A topology with postern serving the seed's manifests. Fields drop in order: postern first,
/// then the namespaces.
struct Running {
    postern: Postern,
    topology: SeedTopology,
    namespaces: Namespaces,
}

impl Running {
    /// The seed's topology (with httpbin when `httpbin`), and postern started with `args`.
    fn seed(httpbin: bool, args: &[&str]) -> Running {
        let topology = SeedTopology::build(TopologyOptions {
            httpbin,
            ..TopologyOptions::default()
        })
        .expect("seed topology");
        let config = topology.seed_config().expect("seed manifests");
        Running::start(topology, &config, args)
    }

    /// postern started with `args` on `config` in `topology`.
    fn start(topology: SeedTopology, config: &[PathBuf], args: &[&str]) -> Running {
        let postern =
            Postern::start(&postern_bin(), &topology, config, args).expect("postern starts");
        let namespaces = Namespaces::of(&topology);
        Running {
            postern,
            topology,
            namespaces,
        }
    }

    /// Starts a new postern like the current one, on the same bpffs dir, as a restart after a
    /// crash would: it adopts the kernel state the dead one left pinned. The dead one's guard
    /// is disarmed, so the new one owns the pins.
    fn restart(&mut self, config: &[PathBuf]) {
        assert!(
            !self.postern.is_running().unwrap(),
            "restart after the old one is gone"
        );
        let options = PosternOptions {
            bpffs_dir: Some(self.postern.bpffs_dir().to_path_buf()),
            ..PosternOptions::default()
        };
        let new = Postern::start_with(&postern_bin(), &self.topology, config, &[], &options)
            .expect("postern restarts");
        std::mem::replace(&mut self.postern, new).keep();
    }

    /// `GET /PATH` on postern's admin endpoint: (status, body).
    fn admin_get(&self, path: &str) -> (u16, String) {
        let address = self.postern.admin_address().expect("admin address");
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://{address}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or_default();
        (code.parse().unwrap_or(0), body.to_string())
    }

    /// The value of the first `/metrics` sample whose line starts with `series` (name and
    /// labels, e.g. `postern_connections_held`), or 0.
    fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Asserts postern is the same process, alive, and answers `/healthz` with 200.
    fn assert_alive(&mut self, pid: u32) {
        assert_eq!(self.postern.pid(), pid);
        assert!(
            self.postern.is_running().unwrap(),
            "postern died; log tail:\n{}",
            self.postern.log()
        );
        assert_eq!(self.admin_get("/healthz").0, 200, "/healthz");
    }
}

/// Waits (at most `timeout`) until `done` holds; returns whether it did.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `12.3 ms`, for figures.
fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
