//! Booting a guest in QEMU and reading the end-to-end suite's outcome off its serial console.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_testbed::display_command;

use super::host::Kernel;
use super::{relative, Series};

const QEMU: &str = "qemu-system-x86_64";

/// The guest gets two vCPUs and 3 GiB (its /tmp is a tmpfs and the transfer tests move
/// 64 MiB each way).
const VCPUS: &str = "2";
const MEMORY: &str = "3G";

/// How long a guest may run before it is killed (software emulation is slow).
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// How long the KVM probe must survive to count as working.
const KVM_PROBE_TIME: Duration = Duration::from_secs(3);

/// Lines the guest's scripts print (vm-test/guest/).
const USERSPACE_MARKER: &str = "vm-test: initramfs: userspace up";
const EXIT_MARKER: &str = "vm-test: exit=";

#[derive(Clone, Copy, Debug)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "software emulation (TCG)",
        })
    }
}

/// KVM if a QEMU with `-accel kvm -cpu host` actually starts and keeps running, else TCG.
/// (`/dev/kvm` may exist and still be unusable, e.g. nested without the needed MSRs.)
pub fn probe_accel() -> Accel {
    let accel = match try_kvm() {
        Ok(()) => Accel::Kvm,
        Err(e) => {
            println!("vm-test: KVM unusable ({e:#}); using software emulation");
            Accel::Tcg
        }
    };
    println!("vm-test: accelerator: {accel}");
    accel
}

fn try_kvm() -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("cannot open /dev/kvm")?;
    // No disk, no kernel: the firmware runs and finds nothing to boot, which is enough.
    let mut child = Command::new(QEMU)
        .args(["-accel", "kvm", "-cpu", "host", "-m", "64", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {QEMU}"))?;
    let deadline = Instant::now() + KVM_PROBE_TIME;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "{QEMU} -accel kvm exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

pub struct Boot<'a> {
    pub series: &'a Series,
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub rootfs: &'a Path,
    pub payload: &'a Path,
    pub accel: Accel,
    pub log: &'a Path,
}

/// What one guest reported.
pub struct Outcome {
    pub label: &'static str,
    pub release: String,
    /// From QEMU's start to the initramfs's first line.
    pub boot_time: Option<Duration>,
    pub tests_passed: Option<u32>,
    pub tests_failed: Option<u32>,
    /// The suite's exit code, as the guest printed it.
    pub exit_code: Option<i32>,
    pub wall_time: Duration,
    pub log: PathBuf,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
            && self.tests_failed == Some(0)
            && self.tests_passed.is_some_and(|n| n > 0)
    }
}

/// Boots the guest, echoes its console from userspace on (all of it goes to the log), and
/// waits for it to power off.
pub fn boot(boot: &Boot) -> Result<Outcome> {
    let label = boot.series.label;
    if let Some(dir) = boot.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log = std::fs::File::create(boot.log)
        .with_context(|| format!("cannot create {}", boot.log.display()))?;

    let mut cmd = Command::new(QEMU);
    match boot.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args(["-smp", VCPUS, "-m", MEMORY, "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        // No network device at all: the tests use loopback and their own namespaces.
        .args(["-nic", "none"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-kernel")
        .arg(&boot.kernel.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .arg("-drive")
        .arg(drive(boot.rootfs, "snapshot=on"))
        .arg("-drive")
        .arg(drive(boot.payload, "readonly=on"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = display_command(&cmd);
    println!(
        "vm-test: {label}: booting {} (log: {})",
        boot.kernel.release,
        relative(boot.log).display()
    );
    writeln!(log, "$ {line}")?;

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{line}`"))?;
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let stderr_sender = sender.clone();
    std::thread::spawn(move || forward_lines(stdout, "", &sender));
    std::thread::spawn(move || forward_lines(stderr, "qemu: ", &stderr_sender));

    let mut outcome = Outcome {
        label,
        release: boot.kernel.release.clone(),
        boot_time: None,
        tests_passed: None,
        tests_failed: None,
        exit_code: None,
        wall_time: Duration::ZERO,
        log: boot.log.to_path_buf(),
    };
    let deadline = started + GUEST_TIMEOUT;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                let at = started.elapsed();
                writeln!(log, "[{:8.3}] {line}", at.as_secs_f64())?;
                if outcome.boot_time.is_none() && line.contains(USERSPACE_MARKER) {
                    outcome.boot_time = Some(at);
                }
                if outcome.boot_time.is_some() || line.starts_with("qemu: ") {
                    println!("[{label} {:6.1}] {line}", at.as_secs_f64());
                }
                read_line(&line, &mut outcome);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        let message = format!(
            "vm-test: {label}: no result after {} min: killing the guest",
            GUEST_TIMEOUT.as_secs() / 60
        );
        println!("{message}");
        writeln!(log, "{message}")?;
        child.kill()?;
    }
    let status = child.wait()?;
    outcome.wall_time = started.elapsed();
    writeln!(log, "qemu exited: {status}")?;
    Ok(outcome)
}

fn drive(image: &Path, option: &str) -> String {
    format!("file={},format=raw,if=virtio,{option}", image.display())
}

/// Sends each line of `stream` (serial console bytes may not be UTF-8; `\r` dropped).
fn forward_lines(stream: impl std::io::Read, prefix: &str, sender: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if sender.send(format!("{prefix}{line}")).is_err() {
            return;
        }
        buf.clear();
    }
}

/// Picks the harness's summary (`test result: ok. 19 passed; 0 failed; ...`) and the guest's
/// exit line out of the console.
fn read_line(line: &str, outcome: &mut Outcome) {
    if let Some(code) = line.split(EXIT_MARKER).nth(1) {
        outcome.exit_code = code.trim().parse().ok();
    }
    if let Some(summary) = line.split("test result: ").nth(1) {
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(word), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let count = count.parse().ok();
            match word {
                "passed" => outcome.tests_passed = count,
                "failed" => outcome.tests_failed = count,
                _ => {}
            }
        }
    }
}
