//! The guest's disks and initramfs: a cached Debian root file system (debootstrap), a payload
//! disk rebuilt on every run (the binaries under test, the kernel's modules, the suite's
//! arguments), and per kernel an initramfs that loads the virtio modules and mounts both.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::host::Kernel;
use super::{relative, Binaries};
use crate::process::{output, run as run_command};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// What the end-to-end suite runs in the guest, on top of debootstrap's minbase.
const GUEST_PACKAGES: &[&str] = &[
    "curl",
    "openssl",
    "socat",
    "gunicorn",
    "python3-httpbin",
    "iproute2",
    "util-linux",
    "mount",
    "procps",
    "psmisc",
    "kmod",
    // The tests check what is attached to network namespaces and cgroups with it.
    "bpftool",
];

/// Directories the guest needs that no package makes: the Sidecar's certificate mount points,
/// the payload's mount point, and where the kernel's modules are bind-mounted.
const GUEST_DIRS: &[&str] = &[
    "etc/istio/tls-certs",
    "etc/istio/tls-ca-certs",
    "opt/vm-test",
    "usr/lib/modules",
];

/// The file system labels the initramfs looks for.
const ROOT_LABEL: &str = "postern-root";
const PAYLOAD_LABEL: &str = "postern-payload";

/// Modules the initramfs needs to mount the disks (with their dependencies, unless built in).
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

const INITRAMFS_INIT: &str = include_str!("../../../vm-test/guest/initramfs-init");
const GUEST_RUN: &str = include_str!("../../../vm-test/guest/run");

/// The guest's root file system image, debootstrapped once; rebuilt only when the package
/// list or the directory layout above changes.
pub fn rootfs(cache: &Path) -> Result<PathBuf> {
    let image = cache.join("rootfs.ext4");
    let stamp = cache.join("rootfs.ext4.spec");
    let spec = format!(
        "{SUITE} {MIRROR} minbase include={} dirs={}\n",
        GUEST_PACKAGES.join(","),
        GUEST_DIRS.join(",")
    );
    if image.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|old| old == spec) {
        println!(
            "vm-test: guest root file system cached ({})",
            relative(&image).display()
        );
        return Ok(image);
    }
    println!("vm-test: building the guest root file system (debootstrap {SUITE}, a few minutes)");
    let dir = cache.join("rootfs");
    remove_dir(&dir)?;
    let debs = cache.join("debootstrap-debs");
    std::fs::create_dir_all(&debs)?;
    run_command(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", GUEST_PACKAGES.join(",")))
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(SUITE)
            .arg(&dir)
            .arg(MIRROR),
    )?;
    for sub in GUEST_DIRS {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // apt's lists and archives are of no use to the guest.
    for sub in ["var/lib/apt/lists", "var/cache/apt"] {
        remove_dir(&dir.join(sub))?;
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // The guest writes to a throwaway overlay (QEMU's snapshot=on): room for the tests' files.
    make_ext4(&dir, &image, ROOT_LABEL, 512 << 20)?;
    remove_dir(&dir)?;
    std::fs::write(&stamp, spec)?;
    Ok(image)
}

/// The initramfs for `kernel`: static busybox, its init, and the modules to mount the disks.
/// Rebuilt on every run (it takes a moment).
pub fn initramfs(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache.join(format!("initramfs-{}", kernel.release));
    remove_dir(&dir)?;
    for sub in ["bin", "dev", "proc", "sys", "modules"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("cannot copy /bin/busybox (busybox-static)")?;
    write_executable(&dir.join("init"), INITRAMFS_INIT)?;

    let order = module_load_order(&kernel.modules, INITRAMFS_MODULES)?;
    let mut names = String::new();
    for module in &order {
        let source = kernel.modules.join(module);
        let name = Path::new(module)
            .file_name()
            .context("module without a file name")?
            .to_string_lossy();
        let name = name.strip_suffix(".xz").unwrap_or(&name).to_string();
        let bytes = if module.ends_with(".xz") {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&source)
                .output()
                .context("cannot run xz")?;
            if !out.status.success() {
                bail!("xz cannot decompress {}", source.display());
            }
            out.stdout
        } else {
            std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?
        };
        std::fs::write(dir.join("modules").join(&name), bytes)?;
        names.push_str(&name);
        names.push('\n');
    }
    std::fs::write(dir.join("modules/load-order"), names)?;

    let cpio = cache.join(format!("initramfs-{}.cpio", kernel.release));
    run_command(
        Command::new("sh")
            .current_dir(&dir)
            .arg("-c")
            .arg(r#"find . | cpio -o -H newc -R 0:0 --quiet > "$1""#)
            .arg("sh")
            .arg(&cpio),
    )?;
    remove_dir(&dir)?;
    println!(
        "vm-test: initramfs for {} loads: {}",
        kernel.release,
        if order.is_empty() {
            "nothing (all built in)".to_string()
        } else {
            order.join(" ")
        }
    );
    Ok(cpio)
}

/// The module files (relative to `modules`) to load for `wanted`, dependencies first, from
/// depmod's `modules.dep`; modules built into the kernel (`modules.builtin`) are skipped.
fn module_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let read = |name: &str| {
        std::fs::read_to_string(modules.join(name))
            .with_context(|| format!("cannot read {}", modules.join(name).display()))
    };
    let builtin: HashSet<String> = read("modules.builtin")?.lines().map(module_name).collect();
    let dep_file = read("modules.dep")?;
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_file.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let requires = rest.split_whitespace().map(module_name).collect();
        deps.insert(module_name(path), (path.to_string(), requires));
    }

    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        builtin: &HashSet<String>,
        order: &mut Vec<String>,
        seen: &mut HashSet<String>,
    ) -> Result<()> {
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, requires) = deps
            .get(name)
            .with_context(|| format!("the kernel has no module {name}, built in or not"))?;
        for required in requires {
            visit(required, deps, builtin, order, seen)?;
        }
        order.push(path.clone());
        Ok(())
    }

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        visit(name, &deps, &builtin, &mut order, &mut seen)?;
    }
    Ok(order)
}

/// `kernel/drivers/virtio/virtio_pci.ko.xz` → `virtio_pci` (the kernel treats `-` as `_`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The payload disk: the binaries under test, the suite's arguments, the guest's `run`, and
/// the kernel's modules (hard links into the extracted package). Rebuilt on every run.
pub fn payload(
    cache: &Path,
    kernel: &Kernel,
    binaries: &Binaries,
    e2e_args: &[String],
) -> Result<PathBuf> {
    let dir = cache.join("payload");
    remove_dir(&dir)?;
    std::fs::create_dir_all(dir.join("modules"))?;
    for (binary, name) in [(&binaries.postern, "postern"), (&binaries.e2e, "e2e")] {
        std::fs::copy(binary, dir.join(name))
            .with_context(|| format!("cannot copy {}", binary.display()))?;
    }
    write_executable(&dir.join("run"), GUEST_RUN)?;
    let mut args = String::new();
    for arg in e2e_args {
        args.push_str(arg);
        args.push('\n');
    }
    std::fs::write(dir.join("e2e-args"), args)?;
    run_command(
        Command::new("cp")
            .arg("-al")
            .arg(&kernel.modules)
            .arg(dir.join("modules").join(&kernel.release)),
    )?;
    let image = cache.join("payload.ext4");
    make_ext4(&dir, &image, PAYLOAD_LABEL, 64 << 20)?;
    remove_dir(&dir)?;
    Ok(image)
}

/// Packs `dir` into a new ext4 image with `headroom` bytes free beyond its contents.
fn make_ext4(dir: &Path, image: &Path, label: &str, headroom: u64) -> Result<()> {
    let du = output(Command::new("du").arg("-sb").arg(dir))?;
    let used: u64 = du
        .split_whitespace()
        .next()
        .and_then(|bytes| bytes.parse().ok())
        .with_context(|| format!("cannot read du's output: {du}"))?;
    // ext4's metadata (inode tables, journal) on top of the files themselves.
    let size = used + used / 4 + headroom;
    let partial = image.with_extension("ext4.partial");
    std::fs::File::create(&partial)
        .and_then(|file| file.set_len(size))
        .with_context(|| format!("cannot create {}", partial.display()))?;
    run_command(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(dir)
            .arg(&partial),
    )?;
    std::fs::rename(&partial, image)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), image.display()))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}
