//! `docs/benchmarks.md` and its charts, from one run's [`Results`].

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::{Results, Sample, FIXED_RATE};
use crate::process::{output, workspace_root};

/// The lever measurements: A/B runs of this harness with different postern builds, kept by
/// hand (a run measures one build).
const LEVERS: &str = include_str!("levers.md");
/// Draws the charts from the JSON summary: `python3 - SUMMARY.json OUT_DIR`, with Debian's
/// python3, where apt installed matplotlib (a python3 earlier on `$PATH` may lack it).
const CHARTS: &str = include_str!("charts.py");

/// The metrics in report order: id, title, unit of the rate, unit of the CPU figure, and
/// the contestant the ratios are taken against.
const METRICS: &[(&str, &str, &str, &str, &str)] = &[
    ("connections-rsa", "New mTLS connections, RSA 2048 (one request each)", "conn/s", "µs/conn", "haproxy"),
    ("connections-ecdsa", "New mTLS connections, ECDSA P-256 (one request each)", "conn/s", "µs/conn", "haproxy"),
    ("connections-rsa-resumed", "New mTLS connections, RSA 2048, TLS session resumed (one request each)", "conn/s", "µs/conn", "haproxy"),
    ("requests-saturation", "Keep-alive requests at saturation (32 connections)", "req/s", "µs/req", "haproxy"),
    ("requests-fixed-rate", "Keep-alive requests at a fixed 2,000 req/s (32 connections)", "req/s", "µs/req", "haproxy"),
    ("bulk-up", "Bulk upload, 64 MiB transfers", "MiB/s", "µs/MiB", "haproxy"),
    ("bulk-down", "Bulk download, 64 MiB transfers", "MiB/s", "µs/MiB", "haproxy"),
    ("plain-requests", "Without TLS: keep-alive requests at saturation", "req/s", "µs/req", "direct"),
    ("plain-connections", "Without TLS: new connections (one request each)", "conn/s", "µs/conn", "direct"),
    ("plain-bulk-up", "Without TLS: bulk upload", "MiB/s", "µs/MiB", "direct"),
    ("plain-bulk-down", "Without TLS: bulk download", "MiB/s", "µs/MiB", "direct"),
    ("steering", "Connection set-up: eBPF sk_lookup vs nftables REDIRECT to the same postern listener (plaintext port)", "conn/s", "µs/conn", "nftables REDIRECT"),
];

/// The median of one contestant's samples for a metric, or why there is none.
#[derive(Clone, Debug, Default)]
struct Median {
    rate: f64,
    cpu_us: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    failed: Option<String>,
}

fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn median(samples: &[Sample]) -> Median {
    let pick = |f: fn(&Sample) -> Option<f64>| median_of(samples.iter().filter_map(f));
    Median {
        rate: pick(|s| Some(s.rate)).unwrap_or(0.0),
        cpu_us: pick(|s| s.cpu_us),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        p999_us: pick(|s| s.p999_us),
        failed: samples.iter().find_map(|s| s.failed.clone()),
    }
}

fn medians(results: &Results, metric: &str) -> Vec<(String, Median)> {
    results
        .samples
        .get(metric)
        .map(|by_contestant| {
            let mut rows: Vec<(String, Median)> = by_contestant
                .iter()
                .map(|(name, samples)| (name.clone(), median(samples)))
                .collect();
            // postern first, the others in their fixed order.
            rows.sort_by_key(|(name, _)| contestant_rank(name));
            rows
        })
        .unwrap_or_default()
}

fn contestant_rank(name: &str) -> usize {
    [
        "postern",
        "postern plaintext",
        "haproxy plaintext",
        "eBPF sk_lookup",
        "haproxy",
        "nginx",
        "stunnel",
    ]
    .iter()
    .position(|n| *n == name)
    .unwrap_or(9)
}

pub fn write(results: &Results, postern_bin: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let summary = summary_json(results);
    let summary_path = out.join("benchmarks.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    draw_charts(&summary_path, out)?;
    let markdown = markdown(results, postern_bin)?;
    let path = out.join("benchmarks.md");
    std::fs::write(&path, markdown).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn summary_json(results: &Results) -> Value {
    let mut metrics = Map::new();
    for (metric, title, unit, cpu_unit, _) in METRICS {
        let mut rows = Map::new();
        for (name, m) in medians(results, metric) {
            rows.insert(
                name,
                json!({"rate": m.rate, "cpu_us": m.cpu_us, "p50_us": m.p50_us, "p99_us": m.p99_us,
                       "p999_us": m.p999_us, "failed": m.failed}),
            );
        }
        metrics.insert(
            metric.to_string(),
            json!({"title": title, "unit": unit, "cpu_unit": cpu_unit, "contestants": rows}),
        );
    }
    let memory: Map<String, Value> = results
        .memory
        .iter()
        .map(|(name, memory)| {
            let per: Map<String, Value> = memory
                .per_connection
                .iter()
                .map(|(count, kib)| (count.to_string(), json!(kib)))
                .collect();
            (
                name.clone(),
                json!({"idle_kib": memory.idle_kib, "per_connection_kib": per}),
            )
        })
        .collect();
    json!({"metrics": metrics, "memory": memory})
}

fn draw_charts(summary: &Path, out: &Path) -> Result<()> {
    let mut child = Command::new("/usr/bin/python3")
        .arg("-")
        .arg(summary)
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run python3 for the charts")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("no stdin for python3")?,
        CHARTS.as_bytes(),
    )?;
    drop(child.stdin.take());
    let status = child.wait()?;
    if !status.success() {
        bail!("drawing the charts failed ({status})");
    }
    Ok(())
}

/// The first line of `cmd`'s output (stdout, then stderr) that contains `needle`: the
/// version line, whatever a tool prints before it.
fn version_line(cmd: &mut Command, needle: &str) -> String {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .find(|line| line.contains(needle))
                .unwrap_or("?")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

fn machine() -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".to_string());
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".to_string());
    let kernel = output(Command::new("uname").args(["-sr"]))?
        .trim()
        .to_string();
    let commit = output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(workspace_root()),
    )
    .map(|c| c.trim().to_string())
    .unwrap_or_else(|_| "?".to_string());
    let mut text = String::new();
    writeln!(
        text,
        "- CPU: {model}, {cores} cores; memory {memory}; kernel {kernel}"
    )?;
    writeln!(text, "- postern: commit {commit}, release build")?;
    let versions = [
        ("rustc", "--version", "rustc"),
        ("haproxy", "-v", "HAProxy version"),
        ("nginx", "-v", "nginx version"),
        ("stunnel4", "-version", "stunnel "),
        ("openssl", "version", "OpenSSL"),
    ];
    for (program, flag, needle) in versions {
        writeln!(
            text,
            "- {}",
            version_line(Command::new(program).arg(flag), needle)
        )?;
    }
    writeln!(
        text,
        "- haproxy, nginx and stunnel use the system's OpenSSL"
    )?;
    Ok(text)
}

fn format_number(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn optional(value: Option<f64>) -> String {
    value.map(format_number).unwrap_or_else(|| "-".to_string())
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "-".to_string(),
    }
}

fn markdown(results: &Results, postern_bin: &Path) -> Result<String> {
    let mut md = String::new();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench{}` on {} ({} round{} of {} s per measurement, bulk {} × 64 MiB; the whole run took {:.0} s). \
         Regenerate it with the same command. `docs/benchmarks.json` holds the same medians for machines.\n",
        if results.quick { " --quick" } else { "" },
        date.trim(),
        results.rounds,
        if results.rounds == 1 { "" } else { "s" },
        results.seconds,
        results.bulk_count,
        results.elapsed.as_secs_f64()
    )?;
    writeln!(md, "![CPU per operation](benchmarks-cpu.png)\n")?;
    writeln!(md, "![Rates](benchmarks-rates.png)\n")?;
    writeln!(md, "![Latency and memory](benchmarks-latency-memory.png)\n")?;
    writeln!(md, "## Machine and versions\n")?;
    md.push_str(&machine()?);
    writeln!(
        md,
        "- postern binary measured: `{}`\n",
        postern_bin.display()
    )?;
    writeln!(md, "## Set-up\n")?;
    writeln!(
        md,
        "One network namespace holds everything. The backend (a minimal HTTP/1.1 server) and the \
         load generator (`loadgen/`: tokio and rustls, one thread, a client certificate on every \
         connection, full handshakes without resumption, every response checked) share core 1. \
         Each proxy runs on core 0 (`taskset`) with one worker, TLS 1.3 only, the client certificate \
         required and verified, no access log: haproxy (`nbthread 1`), nginx's stream module \
         (`worker_processes 1`), stunnel (its log level at errors). postern runs as on a node, \
         from the host's namespace, its ports steered by its sk_lookup program attached to the \
         benchmark's namespace, with `postern::access=off`. The certificates are the seed's \
         shapes made by openssl (a CA signing a server and a client certificate), as v3 with a \
         subjectAltName, in RSA 2048 and ECDSA P-256. The contestants take turns measurement by \
         measurement, round after round; each figure is the median over the rounds. Next to each \
         rate is the proxy's own CPU time per operation (utime + stime over its process tree, \
         from /proc), the fair figure on two cores, where the client saturates first. A run in \
         which the load generator saw any error is marked FAILED.\n"
    )?;
    md.push_str(&targets(results));
    for (metric, title, unit, cpu_unit, base) in METRICS {
        let rows = medians(results, metric);
        if rows.is_empty() {
            continue;
        }
        writeln!(md, "## {title}\n")?;
        let base_row = rows.iter().find(|(name, _)| name == base).map(|(_, m)| m);
        let latency = metric.starts_with("requests") || *metric == "plain-requests";
        write!(
            md,
            "| | {unit} | × {base} | proxy CPU {cpu_unit} | × {base} |"
        )?;
        if latency {
            write!(md, " p50 µs | p99 µs | p99.9 µs |")?;
        }
        writeln!(md)?;
        writeln!(
            md,
            "|---|---:|---:|---:|---:|{}",
            if latency { "---:|---:|---:|" } else { "" }
        )?;
        for (name, m) in &rows {
            if let Some(why) = &m.failed {
                writeln!(
                    md,
                    "| {name} | FAILED: {} | | | |{}",
                    why.replace('|', "/"),
                    if latency { " | | |" } else { "" }
                )?;
                continue;
            }
            let base_ok = base_row.filter(|b| b.failed.is_none());
            write!(
                md,
                "| {name} | {} | {} | {} | {} |",
                format_number(m.rate),
                ratio(Some(m.rate), base_ok.map(|b| b.rate)),
                optional(m.cpu_us),
                ratio(m.cpu_us, base_ok.and_then(|b| b.cpu_us)),
            )?;
            if latency {
                write!(
                    md,
                    " {} | {} | {} |",
                    optional(m.p50_us),
                    optional(m.p99_us),
                    optional(m.p999_us)
                )?;
            }
            writeln!(md)?;
        }
        writeln!(md)?;
    }
    writeln!(md, "## Memory\n")?;
    writeln!(
        md,
        "Resident size of the proxy's process tree when idle (started, one request served), and its \
         growth per established idle mTLS connection while the load generator holds them (each has \
         carried one request, so both legs are open; kernel socket buffers are not in it).\n"
    )?;
    let counts: Vec<usize> = results
        .memory
        .values()
        .next()
        .map(|m| m.per_connection.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    write!(md, "| | idle MiB |")?;
    for count in &counts {
        write!(
            md,
            " KiB per connection, {} held |",
            format_number(*count as f64)
        )?;
    }
    writeln!(md, "\n|---|---:|{}", "---:|".repeat(counts.len()))?;
    let mut memory: Vec<_> = results.memory.iter().collect();
    memory.sort_by_key(|(name, _)| contestant_rank(name));
    for (name, m) in memory {
        write!(md, "| {name} | {:.1} |", m.idle_kib as f64 / 1024.0)?;
        for (_, kib) in &m.per_connection {
            write!(
                md,
                " {} |",
                kib.map(|k| format!("{k:.1}"))
                    .unwrap_or_else(|| "FAILED".to_string())
            )?;
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    md.push_str(LEVERS);
    Ok(md)
}

/// The targets, each with its figures from this run.
fn targets(results: &Results) -> String {
    let get = |metric: &str, name: &str| -> Option<Median> {
        medians(results, metric)
            .into_iter()
            .find(|(n, m)| n == name && m.failed.is_none())
            .map(|(_, m)| m)
    };
    let mut rows = Vec::new();
    let mut row = |target: String, figure: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        rows.push(format!("| {target} | {figure} | {verdict} |"));
    };
    for (metric, label) in [
        ("connections-rsa", "RSA 2048"),
        ("connections-ecdsa", "ECDSA P-256"),
    ] {
        let (p, h) = (get(metric, "postern"), get(metric, "haproxy"));
        let cpu = p
            .as_ref()
            .and_then(|p| p.cpu_us)
            .zip(h.as_ref().and_then(|h| h.cpu_us));
        row(
            format!("mTLS handshakes per core-second ≥ 2.0 × haproxy's, {label}"),
            cpu.map(|(p, h)| format!("postern {:.0} µs/conn, haproxy {:.0} µs/conn: {:.2}×; measured rates {} vs {} conn/s (client-bound)",
                p, h, h / p,
                format_number(get(metric, "postern").map(|m| m.rate).unwrap_or(0.0)),
                format_number(get(metric, "haproxy").map(|m| m.rate).unwrap_or(0.0))))
                .unwrap_or_default(),
            cpu.map(|(p, h)| h / p >= 2.0),
        );
    }
    let (p, h) = (
        get("requests-saturation", "postern"),
        get("requests-saturation", "haproxy"),
    );
    let cpu = p
        .as_ref()
        .and_then(|p| p.cpu_us)
        .zip(h.as_ref().and_then(|h| h.cpu_us));
    row(
        "proxy CPU per keep-alive request ≤ 0.8 × haproxy's".to_string(),
        cpu.map(|(p, h)| format!("{p:.1} vs {h:.1} µs/req: {:.2}×", p / h))
            .unwrap_or_default(),
        cpu.map(|(p, h)| p <= 0.8 * h),
    );
    for metric in ["requests-fixed-rate", "requests-saturation"] {
        let (p, h) = (get(metric, "postern"), get(metric, "haproxy"));
        let p99 = p.and_then(|p| p.p99_us).zip(h.and_then(|h| h.p99_us));
        row(
            format!(
                "p99 latency ≤ haproxy's ({})",
                if metric == "requests-fixed-rate" {
                    format!("{FIXED_RATE} req/s")
                } else {
                    "saturation".to_string()
                }
            ),
            p99.map(|(p, h)| format!("{p:.0} vs {h:.0} µs"))
                .unwrap_or_default(),
            p99.map(|(p, h)| p <= h),
        );
    }
    for (metric, label) in [("bulk-up", "up"), ("bulk-down", "down")] {
        let (p, h) = (get(metric, "postern"), get(metric, "haproxy"));
        let cpu = p.and_then(|p| p.cpu_us).zip(h.and_then(|h| h.cpu_us));
        row(
            format!("proxy CPU per MiB ≤ 0.8 × haproxy's, {label}"),
            cpu.map(|(p, h)| format!("{p:.0} vs {h:.0} µs/MiB: {:.2}×", p / h))
                .unwrap_or_default(),
            cpu.map(|(p, h)| p <= 0.8 * h),
        );
    }
    for (metric, what) in [
        ("plain-bulk-down", "throughput (download)"),
        ("plain-bulk-up", "throughput (upload)"),
        ("plain-requests", "requests/s"),
    ] {
        let (p, d) = (get(metric, "postern plaintext"), get(metric, "direct"));
        let rates = p.map(|p| p.rate).zip(d.as_ref().map(|d| d.rate));
        // A peer on the same path shows what a proxy in the middle costs here.
        let peer = get(metric, "haproxy plaintext")
            .zip(d)
            .map(|(h, d)| format!(" (haproxy plaintext: {:.2}×)", h.rate / d.rate))
            .unwrap_or_default();
        row(
            format!("plaintext port ≥ 0.9 × the direct path's {what}"),
            rates
                .map(|(p, d)| {
                    format!(
                        "{} vs {}: {:.2}×{peer}",
                        format_number(p),
                        format_number(d),
                        p / d
                    )
                })
                .unwrap_or_default(),
            rates.map(|(p, d)| p >= 0.9 * d),
        );
    }
    let memory = results.memory.get("postern");
    for (count, kib) in memory.map(|m| m.per_connection.clone()).unwrap_or_default() {
        row(
            format!(
                "≤ 16 KiB per idle mTLS connection, both legs ({} held)",
                format_number(count as f64)
            ),
            kib.map(|k| format!("{k:.1} KiB"))
                .unwrap_or_else(|| "FAILED".to_string()),
            kib.map(|k| k <= 16.0),
        );
    }
    let idle = memory.map(|m| m.idle_kib as f64 / 1024.0);
    row(
        "resident size idle ≤ 15 MiB".to_string(),
        idle.map(|mib| format!("{mib:.1} MiB")).unwrap_or_default(),
        idle.map(|mib| mib <= 15.0),
    );
    let (e, r) = (
        get("steering", "eBPF sk_lookup"),
        get("steering", "nftables REDIRECT"),
    );
    let rates = e.map(|e| e.rate).zip(r.map(|r| r.rate));
    row(
        "eBPF steering connection set-up at least as fast as REDIRECT".to_string(),
        rates
            .map(|(e, r)| {
                format!(
                    "{} vs {} conn/s: {:.2}×",
                    format_number(e),
                    format_number(r),
                    e / r
                )
            })
            .unwrap_or_default(),
        rates.map(|(e, r)| e >= r),
    );
    format!(
        "## Targets (issue #7)\n\n| target | this run | verdict |\n|---|---|---|\n{}\n\n",
        rows.join("\n")
    )
}
