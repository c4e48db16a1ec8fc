//! What the harness reads from /proc (a process tree's CPU time and resident size) and how it
//! runs the load generator.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postern_testbed::{display_command, stop_process, Netns};
use serde_json::Value;

/// The core the proxies run on, and the one the load generator and the backend share.
pub const PROXY_CPU: &str = "0";
pub const CLIENT_CPU: &str = "1";

/// Clock ticks per second in /proc/PID/stat (USER_HZ, 100 on every Linux architecture
/// Debian ships).
const TICKS_PER_SECOND: f64 = 100.0;

/// `pid` and every process below it.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(parent) = stat_fields(child).and_then(|fields| fields.get(1)?.parse().ok()) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        tree.extend(children.get(&tree[next]).into_iter().flatten());
        next += 1;
    }
    tree
}

/// The fields of /proc/PID/stat after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU time of `pid`'s process tree, in seconds (threads that ended
/// included: the kernel keeps their time in the process's).
pub fn cpu_seconds(pid: u32) -> f64 {
    process_tree(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|fields| {
            // utime and stime are fields 14 and 15 of stat, so 11 and 12 after the name.
            let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok());
            ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0)
        })
        .sum::<u64>() as f64
        / TICKS_PER_SECOND
}

/// Resident size of `pid`'s process tree, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .sum()
}

/// A process the harness started: stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with its output in `WORK/NAME.log`.
    pub fn spawn(name: &str, mut cmd: Command, work_dir: &Path) -> Result<Daemon> {
        let log = work_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let line = display_command(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{line}`"))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{} exited ({status}); {}:\n{}",
                self.name,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = stop_process(self.child.id(), Duration::from_secs(5)) {
            eprintln!("bench: {e:#}");
        }
        let _ = self.child.wait();
    }
}

/// `nsenter --net=NETNS taskset -c CPU PROGRAM`: a command in the benchmark's namespace,
/// pinned to one core.
pub fn pinned(netns: &Netns, cpu: &str, program: &Path) -> Command {
    let mut cmd = netns.command("taskset");
    cmd.args(["-c", cpu]).arg(program);
    cmd
}

/// What one run of the load generator printed.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub bytes: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
}

impl LoadReport {
    fn parse(line: &str) -> Result<LoadReport> {
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("the load generator printed {line:?}, not its JSON"))?;
        let number = |key: &str| value.get(key).and_then(Value::as_f64);
        Ok(LoadReport {
            ok: number("ok").unwrap_or(0.0) as u64,
            errors: number("errors").unwrap_or(0.0) as u64,
            first_error: value
                .get("first_error")
                .and_then(Value::as_str)
                .map(str::to_string),
            seconds: number("seconds").unwrap_or(0.0),
            bytes: number("bytes").unwrap_or(0.0) as u64,
            p50_us: number("p50_us"),
            p99_us: number("p99_us"),
            p999_us: number("p999_us"),
        })
    }
}

/// Runs the load generator to completion; its JSON line, or its stderr if it failed.
pub fn run_load(netns: &Netns, loadgen: &Path, args: &[String]) -> Result<LoadReport> {
    let mut cmd = pinned(netns, CLIENT_CPU, loadgen);
    cmd.args(args);
    let out = crate::process::output(&mut cmd)?;
    LoadReport::parse(out.lines().last().unwrap_or_default())
}

/// A load generator holding connections open until it is dropped.
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    pub report: LoadReport,
}

impl Held {
    /// Starts `loadgen hold ...` and waits (at most `timeout`) until every connection is open.
    pub fn open(netns: &Netns, loadgen: &Path, args: &[String], timeout: Duration) -> Result<Held> {
        let mut cmd = pinned(netns, CLIENT_CPU, loadgen);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let line = display_command(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let started = Instant::now();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = sender.send(first);
        });
        let mut held = Held {
            child,
            stdin,
            report: LoadReport::default(),
        };
        let first = receiver
            .recv_timeout(timeout.saturating_sub(started.elapsed()))
            .with_context(|| format!("`{line}` did not report within {timeout:?}"))?;
        held.report = LoadReport::parse(first.trim())?;
        Ok(held)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing its stdin tells the load generator to let go of its connections.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
