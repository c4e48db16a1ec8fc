//! The host's side: the tools vm-test runs, the bookworm-backports apt source, and Debian's
//! kernel packages (downloaded and extracted, never installed).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Series;
use crate::process::{output, run as run_command};
use crate::setup::apt_get;

/// Debian packages vm-test runs on the host: debootstrap for the guest's root file system,
/// busybox for its initramfs, mkfs.ext4 and cpio to pack them, depmod for the kernel
/// packages' module dependencies, xz for their compressed modules. QEMU comes separately,
/// from bookworm-backports (see [`install_tools`]).
const HOST_PACKAGES: &[&str] = &[
    "debootstrap",
    "busybox-static",
    "e2fsprogs",
    "cpio",
    "kmod",
    "xz-utils",
];

/// Debian's metapackage whose versions name the current cloud kernel of each series.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Where vm-test adds bookworm-backports (the 6.12 kernel) when no apt source has it.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/postern-vm-test-backports.sources";
const BACKPORTS_ENTRY: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// A kernel package, extracted.
pub struct Kernel {
    /// `uname -r` in the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` of the package, with depmod's output added.
    pub modules: PathBuf,
}

/// QEMU older than this crashes Debian's 6.12 cloud kernel under software emulation (a
/// `cmpxchg16b` fault in early boot, measured with bookworm's 7.2); bookworm-backports'
/// QEMU 10 boots it.
const QEMU_MIN_MAJOR: u32 = 8;

pub fn install_tools() -> Result<()> {
    crate::setup::install_missing("vm-test", HOST_PACKAGES, None)?;
    match qemu_major() {
        Some(major) if major >= QEMU_MIN_MAJOR => {
            println!("vm-test: QEMU {major}.x present");
            Ok(())
        }
        found => {
            println!(
                "vm-test: installing QEMU from bookworm-backports (found {}; {QEMU_MIN_MAJOR} or newer boots every kernel of the matrix)",
                found.map_or_else(|| "none".to_string(), |major| format!("{major}.x"))
            );
            add_backports_source()?;
            run_command(apt_get().arg("update"))?;
            run_command(apt_get().args([
                "install",
                "-y",
                "-t",
                "bookworm-backports",
                "qemu-system-x86",
            ]))
        }
    }
}

/// The major version `qemu-system-x86_64 --version` reports, if it runs.
fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

/// Downloads (once) and extracts (once) the newest cloud kernel of `series`.
pub fn fetch_kernel(cache: &Path, series: &Series) -> Result<Kernel> {
    let (package, version) = kernel_package(series)?;
    let extracted = cache.join("kernels").join(format!("{package}_{version}"));
    let done = extracted.join(".vm-test-extracted");
    if done.is_file() {
        println!("vm-test: {} {package} {version} cached", series.label);
    } else {
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        let deb = debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if !deb.is_file() {
            run_command(
                apt_get()
                    .current_dir(&debs)
                    // apt's sandbox user may not write to the cache.
                    .args(["-o", "APT::Sandbox::User=root", "download"])
                    .arg(format!("{package}={version}")),
            )?;
        }
        if extracted.exists() {
            std::fs::remove_dir_all(&extracted)?;
        }
        std::fs::create_dir_all(&extracted)?;
        run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
        let release = release_of(&extracted)?;
        run_command(
            Command::new("depmod")
                .arg("-b")
                .arg(&extracted)
                .arg(&release),
        )?;
        std::fs::write(&done, "")?;
    }
    let release = release_of(&extracted)?;
    Ok(Kernel {
        vmlinuz: extracted.join(format!("boot/vmlinuz-{release}")),
        modules: extracted.join(format!("lib/modules/{release}")),
        release,
    })
}

/// The kernel release an extracted package holds (its one `lib/modules/` directory).
fn release_of(extracted: &Path) -> Result<String> {
    let dir = extracted.join("lib/modules");
    let mut releases = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<String>>>()?;
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("{} holds {n} kernel releases, expected one", dir.display()),
    }
}

/// The image package (and its version) that the newest `linux-image-cloud-amd64` of the
/// series depends on, e.g. `linux-image-6.1.0-56-cloud-amd64` `6.1.192-2`. Adds
/// bookworm-backports and refreshes apt's lists when they do not know the series yet.
fn kernel_package(series: &Series) -> Result<(String, String)> {
    let mut updated = false;
    if series.backports && add_backports_source()? {
        run_command(apt_get().arg("update"))?;
        updated = true;
    }
    let metapackage_version = match metapackage_version(series)? {
        Some(version) => version,
        None if !updated => {
            run_command(apt_get().arg("update"))?;
            metapackage_version(series)?.with_context(|| {
                format!("apt knows no {METAPACKAGE} {}*", series.metapackage_version)
            })?
        }
        None => bail!("apt knows no {METAPACKAGE} {}*", series.metapackage_version),
    };
    let show = output(Command::new("apt-cache").args([
        "show",
        "--no-all-versions",
        &format!("{METAPACKAGE}={metapackage_version}"),
    ]))?;
    let depends = show
        .lines()
        .find_map(|line| line.strip_prefix("Depends: "))
        .with_context(|| format!("{METAPACKAGE} {metapackage_version} has no Depends"))?;
    // `linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)`
    let (package, version) = depends
        .split(',')
        .map(str::trim)
        .filter(|dep| dep.starts_with("linux-image-"))
        .find_map(|dep| {
            let (package, rest) = dep.split_once(" (= ")?;
            Some((package.to_string(), rest.strip_suffix(')')?.to_string()))
        })
        .with_context(|| format!("{METAPACKAGE} {metapackage_version}: no image in `{depends}`"))?;
    Ok((package, version))
}

/// The highest version of the metapackage in the series (`apt-cache policy` lists them
/// highest first).
fn metapackage_version(series: &Series) -> Result<Option<String>> {
    let policy = output(Command::new("apt-cache").args(["policy", METAPACKAGE]))?;
    Ok(policy
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("Version table:"))
        .filter_map(|line| {
            line.trim_start()
                .trim_start_matches("*** ")
                .split_whitespace()
                .next()
        })
        .find(|version| version.starts_with(series.metapackage_version))
        .map(str::to_string))
}

/// Adds bookworm-backports to apt's sources unless a source has it. Returns whether it did.
fn add_backports_source() -> Result<bool> {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries {
            let path = entry?.path();
            let name = path.to_string_lossy();
            if name.ends_with(".list") || name.ends_with(".sources") {
                sources.push(path);
            }
        }
    }
    let has_backports = sources.iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .any(|line| line.contains("bookworm-backports"))
        })
    });
    if has_backports {
        return Ok(false);
    }
    println!("vm-test: adding bookworm-backports to apt's sources ({BACKPORTS_SOURCE})");
    std::fs::write(BACKPORTS_SOURCE, BACKPORTS_ENTRY)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCE}"))?;
    Ok(true)
}
