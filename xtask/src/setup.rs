//! `cargo xtask setup`: installs what building and testing postern needs, skipping what is there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use postern_testbed::{bpffs_mounted, require_root, BPFFS_ROOT};

use crate::process::{on_path, output, run as run_command};

/// Debian packages: LLVM for bpf-linker, httpbin and its server, the tools tests drive.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "python3-httpbin",
    "gunicorn",
    "bpftool",
    "iproute2",
    "curl",
    "openssl",
    "socat",
    "procps",
    "psmisc",
    "util-linux",
    // The resilience suite's TLS scanners.
    "sslscan",
    "testssl.sh",
];

/// Mount points for the Sidecar's certificate directories (tests bind-mount over them in a
/// private mount namespace).
const ISTIO_MOUNT_POINTS: &[&str] = &["/etc/istio/tls-certs", "/etc/istio/tls-ca-certs"];

pub fn run() -> Result<()> {
    require_root()?;
    apt_packages()?;
    bpf_linker()?;
    nightly_rust_src()?;
    bpffs()?;
    for dir in ISTIO_MOUNT_POINTS {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    println!(
        "setup: mount points {} present",
        ISTIO_MOUNT_POINTS.join(", ")
    );
    Ok(())
}

fn apt_packages() -> Result<()> {
    install_missing("setup", APT_PACKAGES, None)
}

/// Installs those of `packages` that dpkg does not list as installed, from `release` (e.g.
/// `bookworm-backports`) if given. `apt-get update` runs first, and only when something is
/// missing, so a machine that has everything pays one `dpkg-query`.
pub fn install_missing(who: &str, packages: &[&str], release: Option<&str>) -> Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        println!("{who}: apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    println!("{who}: installing apt packages: {}", missing.join(" "));
    run_command(apt_get().arg("update"))?;
    let mut install = apt_get();
    install.args(["install", "-y"]);
    if let Some(release) = release {
        install.args(["-t", release]);
    }
    run_command(install.args(&missing))
}

pub fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// The packages among `packages` that dpkg does not list as installed (one `dpkg-query` for
/// all of them; it exits 1 when some are unknown, and still lists the others).
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(packages)
        .output()
        .context("cannot run dpkg-query")?;
    let installed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(package, _)| package.to_string())
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(*package))
        .collect())
}

fn cargo_bin_dir() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => Path::new(&home).join("bin"),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cargo/bin"),
    }
}

fn bpf_linker() -> Result<()> {
    if on_path("bpf-linker") || cargo_bin_dir().join("bpf-linker").is_file() {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    println!("setup: installing bpf-linker (about a minute)");
    run_command(
        Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn nightly_rust_src() -> Result<()> {
    if !on_path("rustup") && !cargo_bin_dir().join("rustup").is_file() {
        println!(
            "setup: WARNING: no rustup; the eBPF build needs a nightly toolchain with rust-src"
        );
        return Ok(());
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain with rust-src");
        return run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: nightly toolchain with rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpffs() -> Result<()> {
    if bpffs_mounted(Path::new(BPFFS_ROOT))? {
        println!("setup: bpffs mounted at {BPFFS_ROOT}");
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS_ROOT}");
    run_command(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS_ROOT]))
}
