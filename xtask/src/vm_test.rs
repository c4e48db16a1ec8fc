//! `cargo xtask vm-test`: the end-to-end suite on Debian's cloud kernels, each booted in QEMU.
//!
//! For each kernel of the matrix: fetch its Debian package (`apt-get download`, never
//! installed), extract it, build a small initramfs that loads its virtio modules, and boot it
//! on a cached Debian root file system plus a payload disk that carries the freshly built
//! `postern` and e2e test binaries and the kernel's modules. The guest runs the suite as PID 1
//! and powers off; the serial console says how it went. Everything is cached under
//! `target/vm-test/` (see `vm-test/README.md`).

mod guest;
mod host;
mod image;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use postern_testbed::require_root;

use crate::process::{cargo, output, run as run_command, target_dir, workspace_root};

/// The kernels `--kernel` chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    /// Debian 12's cloud kernel (bookworm, with its security updates).
    #[value(name = "6.1")]
    Linux6_1,
    /// Debian 12's backported cloud kernel (bookworm-backports).
    #[value(name = "6.12")]
    Linux6_12,
    /// Both.
    All,
}

impl KernelChoice {
    fn includes(self, series: &Series) -> bool {
        match self {
            KernelChoice::Linux6_1 => series.label == "6.1",
            KernelChoice::Linux6_12 => series.label == "6.12",
            KernelChoice::All => true,
        }
    }
}

/// One kernel series of the matrix: the version of Debian's `linux-image-cloud-amd64`
/// metapackage that starts with `metapackage_version` names the image package to boot.
pub struct Series {
    pub label: &'static str,
    pub metapackage_version: &'static str,
    /// Whether the package comes from bookworm-backports.
    pub backports: bool,
}

const MATRIX: &[Series] = &[
    Series {
        label: "6.1",
        metapackage_version: "6.1.",
        backports: false,
    },
    Series {
        label: "6.12",
        metapackage_version: "6.12.",
        backports: true,
    },
];

/// What the guest runs when no arguments are given: the core subset (software emulation makes
/// the whole suite take about a minute a test; see vm-test/README.md). Substring filters: the
/// seed's mTLS request, plaintext reset on the STRICT port, both fail-closed tests, the
/// in-mesh client's plain HTTP to 9081 over mesh mTLS (both SPIFFE IDs in the access log),
/// its refusal while postern is killed, and a takeover with outbound capture under an
/// in-mesh client loop. One test at a time: with two in parallel on emulated CPUs, a curl in
/// one test once got no answer (cause not found; it did not recur alone).
const DEFAULT_E2E_ARGS: &[&str] = &[
    "seed::mtls_with_the_seed_client_certificate_gets_200_over_tls13",
    "seed::plaintext_to_the_strict_port_is_reset",
    "fail_closed::",
    "mesh::in_mesh_client_reaches_the_strict_port_in_plain_http_over_mesh_mtls",
    "mesh::killed_postern_leaves_the_mesh_client_refused_not_in_clear",
    "mesh::a_takeover_with_outbound_capture_fails_no_mesh_request",
    "--test-threads",
    "1",
];

/// The built binaries that travel into the guest.
pub struct Binaries {
    pub postern: PathBuf,
    pub e2e: PathBuf,
}

pub fn run(choice: KernelChoice, e2e_args: &[String]) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    crate::setup::run()?;
    host::install_tools()?;

    let cache = target_dir()?.join("vm-test");
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let binaries = build_binaries()?;
    let accel = guest::probe_accel();
    let rootfs = image::rootfs(&cache)?;
    let e2e_args: Vec<String> = if e2e_args.is_empty() {
        DEFAULT_E2E_ARGS.iter().map(|arg| arg.to_string()).collect()
    } else {
        e2e_args.to_vec()
    };

    let mut results = Vec::new();
    for series in MATRIX.iter().filter(|series| choice.includes(series)) {
        let kernel = host::fetch_kernel(&cache, series)?;
        let initramfs = image::initramfs(&cache, &kernel)?;
        let payload = image::payload(&cache, &kernel, &binaries, &e2e_args)?;
        let log = cache.join("logs").join(format!("{}.log", series.label));
        results.push(guest::boot(&guest::Boot {
            series,
            kernel: &kernel,
            initramfs: &initramfs,
            rootfs: &rootfs,
            payload: &payload,
            accel,
            log: &log,
        })?);
    }

    print_matrix(&results, accel, started.elapsed());
    let failed: Vec<&str> = results
        .iter()
        .filter(|result| !result.passed())
        .map(|result| result.label)
        .collect();
    if !failed.is_empty() {
        bail!("the end-to-end suite failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Builds `postern` and the e2e test binary, and finds the latter (its name has a hash).
fn build_binaries() -> Result<Binaries> {
    run_command(cargo().args(["build", "-p", "postern", "--bins"]))?;
    println!("$ cargo test -p postern --test e2e --no-run --message-format=json");
    let messages = output(cargo().args([
        "test",
        "-p",
        "postern",
        "--test",
        "e2e",
        "--no-run",
        "--message-format=json",
    ]))?;
    let mut e2e = None;
    let mut postern = None;
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        match message["target"]["name"].as_str() {
            Some("e2e") if kinds[0] == "test" => e2e = Some(PathBuf::from(executable)),
            Some("postern") if kinds[0] == "bin" => postern = Some(PathBuf::from(executable)),
            _ => {}
        }
    }
    let binaries = Binaries {
        postern: postern.context("cargo built no `postern` binary for the e2e test")?,
        e2e: e2e.context("cargo built no `e2e` test binary")?,
    };
    println!(
        "vm-test: binaries {} and {}",
        relative(&binaries.postern).display(),
        relative(&binaries.e2e).display()
    );
    Ok(binaries)
}

/// `path` relative to the workspace root when it is inside it (for shorter messages).
pub fn relative(path: &Path) -> &Path {
    path.strip_prefix(workspace_root()).unwrap_or(path)
}

fn print_matrix(results: &[guest::Outcome], accel: guest::Accel, total: Duration) {
    println!();
    println!(
        "vm-test matrix ({accel}, total wall time {:.0} s):",
        total.as_secs_f64()
    );
    println!(
        "{:<6} {:<28} {:>8} {:>7} {:>7} {:>9}  {:<6} log",
        "series", "kernel", "boot", "passed", "failed", "wall", "result"
    );
    for result in results {
        let boot = result
            .boot_time
            .map(|time| format!("{:.1} s", time.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let count = |count: Option<u32>| count.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<6} {:<28} {:>8} {:>7} {:>7} {:>7.0} s  {:<6} {}",
            result.label,
            result.release,
            boot,
            count(result.tests_passed),
            count(result.tests_failed),
            result.wall_time.as_secs_f64(),
            if result.passed() { "PASS" } else { "FAIL" },
            relative(&result.log).display()
        );
    }
}
