//! `cargo xtask resilience [--soak]`: runs the resilience suite (`tests/resilience/`) one case
//! at a time, so each case has the machine to itself, collects the figures its cases record,
//! and writes them as Markdown with the machine they were measured on: `docs/resilience.md`,
//! or `docs/resilience-soak.md` for the soak.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use postern_testbed::{require_root, Figures, FIGURES_ENV};

use crate::process::{cargo, output, run as run_command, target_dir, workspace_root};

/// Where the report goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// `docs/resilience.md` (`docs/resilience-soak.md` for the soak), the committed figures.
    Docs,
    /// `<target>/resilience.md`, for a run inside `cargo xtask test` that must not touch the
    /// working tree.
    Target,
}

/// Setup, the suite, then the report. Every namespace, process and pin the suite makes
/// belongs to a guard; `cargo xtask test` also sweeps for leftovers around it.
pub fn run(soak: bool) -> Result<()> {
    require_root()?;
    crate::setup::run()?;
    run_suite(soak, Report::Docs)
}

/// Runs the suite and writes its report; prints the report too.
pub fn run_suite(soak: bool, report: Report) -> Result<()> {
    let target = target_dir()?;
    let figures_path = target.join("resilience-figures.tsv");
    match std::fs::remove_file(&figures_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", figures_path.display()))
        }
        _ => {}
    }
    let started = Instant::now();
    run_command(
        cargo()
            .args(["test", "-p", "postern", "--test", "resilience", "--"])
            .arg("--test-threads=1")
            .env(FIGURES_ENV, &figures_path)
            .env("POSTERN_SOAK", if soak { "1" } else { "0" }),
    )?;
    let took = started.elapsed();
    let cases = Figures::read_all(&figures_path)?;
    let markdown = render(&cases, soak, took.as_secs())?;
    let path: PathBuf = match report {
        Report::Docs if soak => workspace_root().join("docs").join("resilience-soak.md"),
        Report::Docs => workspace_root().join("docs").join("resilience.md"),
        Report::Target => target.join("resilience.md"),
    };
    write(&path, &markdown)?;
    println!(
        "{markdown}\nresilience: figures written to {}",
        path.display()
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The report: how and where it was measured, then one section per case.
fn render(cases: &[Figures], soak: bool, seconds: u64) -> Result<String> {
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let kernel = output(Command::new("uname").args(["-srm"]))?;
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|kib| kib.trim_end_matches(" kB").parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / 1_048_576.0),
        );
    let (run, command) = if soak {
        ("soak", "cargo xtask resilience --soak")
    } else {
        ("CI-sized", "cargo xtask resilience")
    };
    let mut out = format!(
        "# postern resilience figures\n\n\
         Written by `{command}` from the run of the resilience suite (`tests/resilience/`) \
         described below; do not edit by hand. Each case asserts what must hold (the test \
         fails otherwise) and records what it measured here. Latencies and times are \
         figures from one run on a shared machine, not guarantees. postern and the suite's \
         clients are the test profile's (unoptimised) builds, as `cargo test` makes them.\n\n\
         | | |\n|---|---|\n\
         | date | {} |\n| run | {run}, one case at a time, {seconds} s with the build |\n\
         | kernel | {} |\n| CPU | {cpu}, {cores} cores |\n| memory | {memory} |\n\n\
         ## Cases\n\n",
        date.trim(),
        kernel.trim(),
    );
    for case in cases {
        out += &case.markdown();
        out.push('\n');
    }
    Ok(out)
}

/// The value of the first `NAME : VALUE` line of a `/proc` file.
fn proc_field(path: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_string())
    })
}
