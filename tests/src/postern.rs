//! A postern under test: started the way Kubernetes would see it (certificates mounted at the
//! Sidecar's paths), with its own bpffs dir, logging to a file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{display_command, tail};
use crate::process::{bpffs_mounted, Signal, BPFFS_ROOT};
use crate::seed::NAMESPACE;
use crate::topology::{detach, SeedTopology};

/// Every test postern pins under `/sys/fs/bpf/postern-test-<pid>-<n>`;
/// [`crate::sweep_leftovers`] removes whatever is left of them.
pub const TEST_BPFFS_PREFIX: &str = "postern-test-";

/// The line postern prints once every port is serving.
const READY_LINE: &str = "postern is ready";

/// The Sidecar's certificate directories: the topology's are bind-mounted here.
const TLS_CERTS_MOUNT: &str = "/etc/istio/tls-certs";
const TLS_CA_CERTS_MOUNT: &str = "/etc/istio/tls-ca-certs";

/// Binds the two certificate dirs in a private mount namespace, then execs postern (so the
/// pid we hold is postern's).
const MOUNT_AND_EXEC: &str = r#"mount --bind "$1" /etc/istio/tls-certs && mount --bind "$2" /etc/istio/tls-ca-certs && shift 2 && exec "$@""#;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// How to start a [`Postern`].
#[derive(Clone, Debug)]
pub struct PosternOptions {
    /// `--namespace` (default `test`, like the seed's `kubectl -n test`); `None` leaves it out.
    pub namespace: Option<String>,
    /// `--bpffs` (default: a fresh `/sys/fs/bpf/postern-test-<pid>-<n>`).
    pub bpffs_dir: Option<PathBuf>,
    /// Where stdout and stderr go (default: `WORK/postern-<n>.log`).
    pub log_path: Option<PathBuf>,
    /// Wait for `postern is ready` (default: yes). Without it, `start` returns at once: for
    /// tests of a postern that is meant to fail.
    pub wait_ready: bool,
    /// How long to wait for readiness (default 20 s).
    pub ready_timeout: Duration,
    /// Run postern in a session of its own so it can outlive the caller (see [`Postern::keep`]).
    pub detach: bool,
    /// `--admin-socket` (default: next to the log, `WORK/postern-<n>.sock`). A postern started
    /// with `--takeover` takes over from the one answering there.
    pub admin_socket: Option<PathBuf>,
}

impl Default for PosternOptions {
    fn default() -> Self {
        PosternOptions {
            namespace: Some(NAMESPACE.to_string()),
            bpffs_dir: None,
            log_path: None,
            wait_ready: true,
            ready_timeout: Duration::from_secs(20),
            detach: false,
            admin_socket: None,
        }
    }
}

/// A running `postern run`. Dropping it SIGKILLs postern if it still runs and removes its bpffs
/// dir (which detaches its programs).
pub struct Postern {
    child: Option<Child>,
    pid: u32,
    status: Option<ExitStatus>,
    bpffs_dir: PathBuf,
    log_path: PathBuf,
    admin_socket: PathBuf,
    command_line: String,
}

/// What [`Postern::keep`] leaves running.
#[derive(Clone, Debug)]
pub struct KeptPostern {
    pub pid: u32,
    pub bpffs_dir: PathBuf,
    pub log_path: PathBuf,
}

impl Postern {
    /// Starts `BIN run --config P... --namespace test --bpffs DIR EXTRA_ARGS...` with the
    /// topology's certificates at `/etc/istio/tls-certs` and `/etc/istio/tls-ca-certs`, and
    /// waits until it says `postern is ready`.
    pub fn start(
        bin: &Path,
        topology: &SeedTopology,
        config_paths: &[PathBuf],
        extra_args: &[&str],
    ) -> Result<Postern> {
        Postern::start_with(
            bin,
            topology,
            config_paths,
            extra_args,
            &PosternOptions::default(),
        )
    }

    pub fn start_with(
        bin: &Path,
        topology: &SeedTopology,
        config_paths: &[PathBuf],
        extra_args: &[&str],
        options: &PosternOptions,
    ) -> Result<Postern> {
        if !bpffs_mounted(Path::new(BPFFS_ROOT))? {
            bail!("bpffs is not mounted at {BPFFS_ROOT}: run `cargo xtask setup`");
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let bpffs_dir = options.bpffs_dir.clone().unwrap_or_else(|| {
            Path::new(BPFFS_ROOT).join(format!("{TEST_BPFFS_PREFIX}{}-{n}", std::process::id()))
        });
        let log_path = options
            .log_path
            .clone()
            .unwrap_or_else(|| topology.work_dir().join(format!("postern-{n}.log")));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;

        let mut cmd = with_certificates_mounted(topology, bin)?;
        cmd.arg("run");
        for path in config_paths {
            cmd.arg("--config").arg(path);
        }
        if let Some(namespace) = &options.namespace {
            cmd.args(["--namespace", namespace]);
        }
        // Each postern answers `postern certs` on a socket of its own, next to its log.
        let admin_socket = options
            .admin_socket
            .clone()
            .unwrap_or_else(|| log_path.with_extension("sock"));
        // ... and its HTTP admin endpoint on a free loopback port (see `admin_address`).
        cmd.arg("--bpffs")
            .arg(&bpffs_dir)
            .arg("--admin-socket")
            .arg(&admin_socket)
            .args(["--admin-address", "127.0.0.1:0"])
            .args(extra_args);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if options.detach {
            detach(&mut cmd);
        }
        let command_line = display_command(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{command_line}`"))?;
        let mut postern = Postern {
            pid: child.id(),
            child: Some(child),
            status: None,
            bpffs_dir,
            log_path,
            admin_socket,
            command_line,
        };
        if options.wait_ready {
            postern.wait_ready(options.ready_timeout)?;
        }
        Ok(postern)
    }

    /// Runs `BIN check --config P... [--namespace NS]` with the topology's certificates at the
    /// Sidecar's paths, as `run` sees them. A non-zero exit is a result, not an error.
    pub fn check(
        bin: &Path,
        topology: &SeedTopology,
        config_paths: &[PathBuf],
        namespace: Option<&str>,
    ) -> Result<CheckResult> {
        let mut cmd = with_certificates_mounted(topology, bin)?;
        cmd.arg("check");
        for path in config_paths {
            cmd.arg("--config").arg(path);
        }
        if let Some(namespace) = namespace {
            cmd.args(["--namespace", namespace]);
        }
        let output = crate::cmd::run_output(&mut cmd)?;
        Ok(CheckResult::from(output))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(READY_LINE) {
                return Ok(());
            }
            if let Some(status) = self.try_status()? {
                bail!(
                    "postern exited ({status}) before it was ready\ncommand: {}\nlog tail:\n{}",
                    self.command_line,
                    tail(&self.log(), 40)
                );
            }
            if Instant::now() > deadline {
                let _ = self.kill(Signal::Kill);
                bail!(
                    "postern did not print {READY_LINE:?} within {timeout:?}\ncommand: {}\nlog tail:\n{}",
                    self.command_line,
                    tail(&self.log(), 40)
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The command line postern was started with.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Everything postern has written to stdout and stderr so far.
    /// The `IP:PORT` of this postern's HTTP admin endpoint, from its log.
    pub fn admin_address(&self) -> Result<String> {
        const NEEDLE: &str = "admin endpoint listening address=";
        let log = self.log();
        let start = log
            .find(NEEDLE)
            .with_context(|| format!("no {NEEDLE:?} in the log:\n{}", tail(&log, 20)))?
            + NEEDLE.len();
        Ok(log[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    }

    /// The admin socket `postern certs --admin-socket` reaches this postern on.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// Runs `BIN SUBCOMMAND --admin-socket SOCKET ARGS...` (`certs`, `ready`) against this
    /// postern. A non-zero exit is a result, not an error.
    pub fn command(&self, bin: &Path, subcommand: &str, args: &[&str]) -> Result<CheckResult> {
        let mut cmd = Command::new(bin);
        cmd.arg(subcommand)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .args(args);
        let output = crate::cmd::run_output(&mut cmd)?;
        Ok(CheckResult::from(output))
    }

    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }

    /// The access-log lines so far (those with `original_dst=`), one per connection.
    pub fn access_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("original_dst="))
            .map(str::to_string)
            .collect()
    }

    /// Waits until a log line contains `needle`, and returns that line. Log lines can trail
    /// the client's view (an access-log line is written when the connection is done).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|line| line.contains(needle)) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                bail!(
                    "no postern log line with {needle:?} within {timeout:?}; log tail:\n{}",
                    tail(&self.log(), 40)
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Sends `signal` to postern.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        signal.send(self.pid)
    }

    /// Whether postern is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.try_status()?.is_none())
    }

    /// Waits (at most 20 s) for postern to exit and returns its exit status.
    pub fn wait_exit(&mut self) -> Result<ExitStatus> {
        self.wait_exit_timeout(Duration::from_secs(20))
    }

    pub fn wait_exit_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "postern (pid {}) still runs after {timeout:?}; log tail:\n{}",
                    self.pid,
                    tail(&self.log(), 40)
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().context("cannot wait for postern")?;
            }
        }
        Ok(self.status)
    }

    /// Leaves the pins in place when this value drops: for a postern that handed them over to
    /// another, or that was killed and another adopted them.
    pub fn leave_pins(&mut self) {
        self.bpffs_dir = PathBuf::new();
    }

    /// Leaves postern running and its pins in place; returns what to tear down later
    /// (with [`crate::stop_process`] and `remove_dir_all`).
    pub fn keep(mut self) -> KeptPostern {
        self.child = None;
        KeptPostern {
            pid: self.pid,
            bpffs_dir: std::mem::take(&mut self.bpffs_dir),
            log_path: self.log_path.clone(),
        }
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if !self.bpffs_dir.as_os_str().is_empty() {
            if let Err(e) = remove_bpffs_dir(&self.bpffs_dir) {
                eprintln!("postern-testbed: {e:#}");
            }
        }
    }
}

/// What a one-shot `postern` command (`check`, `certs`) said.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CheckResult {
    fn from(output: std::process::Output) -> CheckResult {
        CheckResult {
            exit_code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// `unshare --mount ... sh -c 'mount --bind ...; exec "$@"' sh CERTDIR CADIR BIN`: add
/// postern's arguments. The bind mounts are private to postern's mount namespace.
fn with_certificates_mounted(topology: &SeedTopology, bin: &Path) -> Result<Command> {
    crate::process::require_root()?;
    if !bin.is_file() {
        bail!(
            "no postern binary at {} (build it: `cargo build -p postern`)",
            bin.display()
        );
    }
    for dir in [TLS_CERTS_MOUNT, TLS_CA_CERTS_MOUNT] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir}"))?;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(MOUNT_AND_EXEC)
        .arg("sh")
        .arg(topology.tls_certs_dir())
        .arg(topology.tls_ca_certs_dir())
        .arg(bin);
    Ok(cmd)
}

/// Removes a bpffs dir and the pins in it; a dir that is not there is fine.
pub(crate) fn remove_bpffs_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The postern binary to test: `$POSTERN_BIN`, else `postern` next to the running test binary's
/// directory (`target/<profile>/postern` for `target/<profile>/deps/<test>`).
pub fn find_postern_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("POSTERN_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("postern"))
        .collect();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no postern binary at {:?}: build it (`cargo build -p postern`) or set POSTERN_BIN",
                candidates
            )
        })
}
