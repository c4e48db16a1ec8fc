//! `cargo xtask bench [--quick]`: postern side by side with haproxy, nginx and stunnel as L4
//! mutual-TLS terminators, then `docs/benchmarks.md` and its charts.
//!
//! Everything runs in one network namespace of its own: the backend and the load generator
//! on one core, each proxy (one worker) on the other. postern runs as on a node, in the
//! host's namespace with its sk_lookup program attached to the benchmark's. The contestants
//! take turns, measurement by measurement, over several rounds; the report gives medians.
//! On two cores the client saturates before a good proxy does, so next to each rate stands
//! the proxy's own CPU time per operation, read from /proc over its process tree.

mod contestants;
mod measure;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postern_testbed::{require_root, CertSet, KeyKind, Netns, BPFFS_ROOT};

use crate::process::{cargo, run as run_command, target_dir, workspace_root};
use contestants::{
    Certs, Proxy, BACKEND_PORT, HAPROXY_PLAIN_PORT, POSTERN_PLAIN_PORT, REDIRECT_PORT,
};
use measure::{cpu_seconds, rss_kib, run_load, Held, LoadReport};

/// What the benchmark installs from Debian: the other contestants, nftables for the
/// REDIRECT comparison, matplotlib for the charts.
const BENCH_PACKAGES: &[&str] = &[
    "haproxy",
    "nginx-light",
    "libnginx-mod-stream",
    "stunnel4",
    "nftables",
    "python3-matplotlib",
];

/// How the run is shaped.
pub struct Options {
    /// A short smoke run: one round of one second per measurement, a thousand held
    /// connections at most.
    pub quick: bool,
    /// Rounds (default 3, or 1 with `--quick`).
    pub rounds: Option<usize>,
    /// A postern binary to measure instead of building one (for comparing builds).
    pub postern_bin: Option<PathBuf>,
    /// Where the report and charts go (default: the repository's `docs/`).
    pub out: Option<PathBuf>,
    /// Only these proxies (e.g. `postern` alone, to compare builds); default all.
    pub only: Vec<String>,
}

/// The durations and sizes of a run.
struct Plan {
    rounds: usize,
    seconds: f64,
    /// Transfers of [`BULK_BYTES`] per bulk measurement.
    bulk_count: u32,
    held: Vec<usize>,
}

/// Ten thousand, or as many as the open files limit lets a proxy hold (two descriptors
/// each, and some to spare), in hundreds.
fn most_connections() -> usize {
    let limit = contestants::open_files_limit().saturating_sub(100) / 2;
    (limit.min(10_000) / 100 * 100) as usize
}

/// 64 MiB per transfer, as the issue asks.
const BULK_BYTES: u64 = 64 * 1024 * 1024;
/// The fixed, moderate keep-alive rate (requests per second over all connections).
pub const FIXED_RATE: u32 = 2000;
/// Connections in flight for the new-connection and keep-alive measurements.
const CONCURRENCY: &str = "32";

/// One measurement of one contestant in one round.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Operations per second, or MiB per second for bulk transfers.
    pub rate: f64,
    /// The proxy's CPU time per operation in microseconds (per MiB for bulk); `None` where no
    /// proxy runs.
    pub cpu_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// Why the run counts as failed: the load generator saw errors.
    pub failed: Option<String>,
}

/// Memory of one contestant.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub idle_kib: u64,
    /// (connections held, KiB per connection above idle).
    pub per_connection: Vec<(usize, Option<f64>)>,
}

/// Everything a run measured: metric → contestant → one sample per round.
#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<&'static str, BTreeMap<String, Vec<Sample>>>,
    pub memory: BTreeMap<String, Memory>,
    pub rounds: usize,
    pub seconds: f64,
    pub bulk_count: u32,
    pub quick: bool,
    pub elapsed: Duration,
}

pub fn run(options: &Options) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    crate::setup::run()?;
    crate::setup::install_missing("bench", BENCH_PACKAGES, None)?;
    let mut build = cargo();
    build.args(["build", "--release", "-p", "postern-loadgen"]);
    if options.postern_bin.is_none() {
        build.args(["-p", "postern"]);
    }
    run_command(&mut build)?;
    let postern = match &options.postern_bin {
        Some(bin) => bin.clone(),
        None => target_dir()?.join("release/postern"),
    };
    let loadgen = target_dir()?.join("release/postern-loadgen");
    let plan = Plan {
        rounds: options.rounds.unwrap_or(if options.quick { 1 } else { 3 }),
        seconds: if options.quick { 1.0 } else { 2.0 },
        bulk_count: if options.quick { 1 } else { 4 },
        held: if options.quick {
            vec![1000]
        } else {
            vec![1000, most_connections()]
        },
    };
    let work_dir = std::env::temp_dir().join(format!("postern-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let bpffs_dir = Path::new(BPFFS_ROOT).join(format!("postern-bench-{}", std::process::id()));
    let result = bench(
        &plan,
        &options.only,
        &postern,
        &loadgen,
        &work_dir,
        &bpffs_dir,
    );
    // postern removes its pins when it stops; a crash leaves them, and they go here.
    let _ = std::fs::remove_dir_all(&bpffs_dir);
    let mut results = result.with_context(|| {
        format!(
            "the benchmark failed; its configurations and logs are in {}",
            work_dir.display()
        )
    })?;
    let _ = std::fs::remove_dir_all(&work_dir);
    results.quick = options.quick;
    results.elapsed = started.elapsed();
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("docs"));
    report::write(&results, &postern, &out)?;
    println!(
        "bench: done in {:.0} s; report in {}",
        results.elapsed.as_secs_f64(),
        out.join("benchmarks.md").display()
    );
    Ok(())
}

/// Everything that lives for one run; dropped in reverse order (proxies, backend, netns).
struct Bench<'a> {
    netns: Netns,
    loadgen: &'a Path,
    work_dir: &'a Path,
    certs: Certs,
    plan: &'a Plan,
}

fn bench(
    plan: &Plan,
    only: &[String],
    postern_bin: &Path,
    loadgen: &Path,
    work_dir: &Path,
    bpffs_dir: &Path,
) -> Result<Results> {
    // Not a `pt-` name: `cargo xtask test` sweeps those away, even while a benchmark runs.
    let netns = Netns::named(&format!("postern-bench-{}", std::process::id()))?;
    netns.ip(["link", "set", "lo", "up"])?;
    // Ten thousand held connections, and short-lived ones by the thousand a second.
    netns.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
    let certs = Certs {
        rsa: CertSet::generate(work_dir, KeyKind::Rsa2048)?,
        ecdsa: CertSet::generate(work_dir, KeyKind::EcdsaP256)?,
    };
    let bench = Bench {
        netns,
        loadgen,
        work_dir,
        certs,
        plan,
    };
    let _backend = contestants::start_backend(&bench.netns, loadgen, work_dir)?;
    contestants::wait_serving(&bench.netns, loadgen, BACKEND_PORT, None)?;
    let mut proxies = vec![contestants::start_postern(
        &bench.netns,
        postern_bin,
        &bench.certs,
        work_dir,
        bpffs_dir,
    )?];
    type Start = fn(&Netns, &Certs, &Path) -> Result<Proxy>;
    let others: [(&str, Start); 3] = [
        ("haproxy", contestants::start_haproxy),
        ("nginx", contestants::start_nginx),
        ("stunnel", contestants::start_stunnel),
    ];
    for (name, start) in others {
        if only.is_empty() || only.iter().any(|wanted| wanted == name) {
            proxies.push(start(&bench.netns, &bench.certs, work_dir)?);
        }
    }
    for proxy in &proxies {
        for kind in KeyKind::ALL {
            contestants::wait_serving(
                &bench.netns,
                loadgen,
                proxy.port(kind),
                Some(bench.certs.get(kind)),
            )
            .with_context(|| format!("{} ({})", proxy.name, kind.label()))?;
        }
    }
    contestants::wait_serving(&bench.netns, loadgen, POSTERN_PLAIN_PORT, None)
        .context("postern's plaintext port")?;
    let haproxy_pid = proxies
        .iter()
        .find(|proxy| proxy.name == "haproxy")
        .map(|proxy| proxy.daemon.pid());
    if haproxy_pid.is_some() {
        contestants::wait_serving(&bench.netns, loadgen, HAPROXY_PLAIN_PORT, None)
            .context("haproxy's plaintext port")?;
    }
    let postern_pid = proxies[0].daemon.pid();
    let plain_listener = contestants::postern_plain_listener(&bench.netns, loadgen, postern_pid)?;

    let mut results = Results {
        rounds: plan.rounds,
        seconds: plan.seconds,
        bulk_count: plan.bulk_count,
        ..Results::default()
    };
    println!("\n== memory: idle, then holding idle mTLS connections");
    for proxy in &proxies {
        let memory = bench.memory(proxy)?;
        results.memory.insert(proxy.name.to_string(), memory);
    }
    for round in 1..=plan.rounds {
        println!("\n== round {round} of {}", plan.rounds);
        bench.tls_round(&proxies, &mut results)?;
        bench.plain_round(postern_pid, haproxy_pid, &mut results)?;
        bench.steering_round(postern_pid, plain_listener, &mut results)?;
    }
    for mut proxy in proxies {
        proxy.daemon.check_running()?;
    }
    Ok(results)
}

/// What a measurement's operations are.
#[derive(Clone, Copy)]
enum Per {
    Operation,
    MiB,
}

impl Bench<'_> {
    fn seconds_args(&self) -> Vec<String> {
        vec!["--seconds".to_string(), self.plan.seconds.to_string()]
    }

    /// Runs the load generator with `args`, charging the CPU time of `cpu_pid`'s tree.
    fn measure(&self, cpu_pid: Option<u32>, args: &[String], per: Per) -> Result<Sample> {
        let before = cpu_pid.map(cpu_seconds);
        let report = run_load(&self.netns, self.loadgen, args)?;
        let cpu = cpu_pid
            .zip(before)
            .map(|(pid, before)| cpu_seconds(pid) - before);
        Ok(sample(&report, cpu, per))
    }

    fn record(
        &self,
        results: &mut Results,
        metric: &'static str,
        contestant: &str,
        sample: Sample,
    ) {
        let cpu = sample
            .cpu_us
            .map(|us| format!(", proxy CPU {us:.1} µs/op"))
            .unwrap_or_default();
        let failed = sample
            .failed
            .as_deref()
            .map(|why| format!("  FAILED: {why}"))
            .unwrap_or_default();
        println!(
            "{metric:<22} {contestant:<18} {:>12.1}/s{cpu}{failed}",
            sample.rate
        );
        results
            .samples
            .entry(metric)
            .or_default()
            .entry(contestant.to_string())
            .or_default()
            .push(sample);
    }

    fn tls_round(&self, proxies: &[Proxy], results: &mut Results) -> Result<()> {
        for (metric, kind, resume) in [
            ("connections-rsa", KeyKind::Rsa2048, false),
            ("connections-ecdsa", KeyKind::EcdsaP256, false),
            ("connections-rsa-resumed", KeyKind::Rsa2048, true),
        ] {
            for proxy in proxies {
                let mut args = vec!["connections".to_string()];
                args.extend(contestants::target_args(
                    proxy.port(kind),
                    Some(self.certs.get(kind)),
                ));
                args.extend(["--concurrency".to_string(), CONCURRENCY.to_string()]);
                if resume {
                    args.push("--resume".to_string());
                }
                args.extend(self.seconds_args());
                let sample = self.measure(Some(proxy.daemon.pid()), &args, Per::Operation)?;
                self.record(results, metric, proxy.name, sample);
            }
        }
        for (metric, rate) in [
            ("requests-saturation", None),
            ("requests-fixed-rate", Some(FIXED_RATE)),
        ] {
            for proxy in proxies {
                let args = self.requests_args(proxy.port(KeyKind::Rsa2048), true, rate);
                let sample = self.measure(Some(proxy.daemon.pid()), &args, Per::Operation)?;
                self.record(results, metric, proxy.name, sample);
            }
        }
        for (metric, direction) in [("bulk-up", "up"), ("bulk-down", "down")] {
            for proxy in proxies {
                let args = self.bulk_args(proxy.port(KeyKind::Rsa2048), true, direction);
                let sample = self.measure(Some(proxy.daemon.pid()), &args, Per::MiB)?;
                self.record(results, metric, proxy.name, sample);
            }
        }
        Ok(())
    }

    fn requests_args(&self, port: u16, tls: bool, rate: Option<u32>) -> Vec<String> {
        let mut args = vec!["requests".to_string()];
        args.extend(contestants::target_args(
            port,
            tls.then_some(&self.certs.rsa),
        ));
        args.extend(["--connections".to_string(), CONCURRENCY.to_string()]);
        if let Some(rate) = rate {
            args.extend(["--rate".to_string(), rate.to_string()]);
        }
        args.extend(self.seconds_args());
        args
    }

    fn bulk_args(&self, port: u16, tls: bool, direction: &str) -> Vec<String> {
        let mut args = vec!["bulk".to_string()];
        args.extend(contestants::target_args(
            port,
            tls.then_some(&self.certs.rsa),
        ));
        args.extend([
            "--bytes".to_string(),
            BULK_BYTES.to_string(),
            "--count".to_string(),
            self.plan.bulk_count.to_string(),
            "--direction".to_string(),
            direction.to_string(),
        ]);
        args
    }

    /// postern's plaintext port against the backend itself (the floor), and haproxy's
    /// plaintext port when haproxy runs.
    fn plain_round(
        &self,
        postern_pid: u32,
        haproxy_pid: Option<u32>,
        results: &mut Results,
    ) -> Result<()> {
        let mut paths = vec![("postern plaintext", POSTERN_PLAIN_PORT, Some(postern_pid))];
        if let Some(pid) = haproxy_pid {
            paths.push(("haproxy plaintext", HAPROXY_PLAIN_PORT, Some(pid)));
        }
        paths.push(("direct", BACKEND_PORT, None));
        for &(label, port, pid) in &paths {
            let args = self.requests_args(port, false, None);
            let sample = self.measure(pid, &args, Per::Operation)?;
            self.record(results, "plain-requests", label, sample);
        }
        for &(label, port, pid) in &paths {
            let args = self.connections_args(port);
            let sample = self.measure(pid, &args, Per::Operation)?;
            self.record(results, "plain-connections", label, sample);
        }
        for (metric, direction) in [("plain-bulk-up", "up"), ("plain-bulk-down", "down")] {
            for &(label, port, pid) in &paths {
                let args = self.bulk_args(port, false, direction);
                let sample = self.measure(pid, &args, Per::MiB)?;
                self.record(results, metric, label, sample);
            }
        }
        Ok(())
    }

    fn connections_args(&self, port: u16) -> Vec<String> {
        let mut args = vec!["connections".to_string()];
        args.extend(contestants::target_args(port, None));
        args.extend(["--concurrency".to_string(), CONCURRENCY.to_string()]);
        args.extend(self.seconds_args());
        args
    }

    /// New plaintext connections to the same postern listener, steered by sk_lookup or
    /// redirected by nftables.
    fn steering_round(
        &self,
        postern_pid: u32,
        plain_listener: u16,
        results: &mut Results,
    ) -> Result<()> {
        let args = self.connections_args(POSTERN_PLAIN_PORT);
        let sample = self.measure(Some(postern_pid), &args, Per::Operation)?;
        self.record(results, "steering", "eBPF sk_lookup", sample);
        contestants::redirect(&self.netns, Some(plain_listener), self.work_dir)?;
        let args = self.connections_args(REDIRECT_PORT);
        let sample = self.measure(Some(postern_pid), &args, Per::Operation);
        contestants::redirect(&self.netns, None, self.work_dir)?;
        self.record(results, "steering", "nftables REDIRECT", sample?);
        Ok(())
    }

    /// Idle resident size, then the growth per connection while the load generator holds
    /// idle mTLS connections (each has carried one request, so both legs are open).
    fn memory(&self, proxy: &Proxy) -> Result<Memory> {
        let pid = proxy.daemon.pid();
        let idle_kib = rss_kib(pid);
        let mut per_connection = Vec::new();
        for &count in &self.plan.held {
            let mut args = vec!["hold".to_string()];
            args.extend(contestants::target_args(
                proxy.port(KeyKind::Rsa2048),
                Some(&self.certs.rsa),
            ));
            args.extend(["--connections".to_string(), count.to_string()]);
            let held = Held::open(&self.netns, self.loadgen, &args, Duration::from_secs(180))?;
            // Let the last connections' buffers settle.
            std::thread::sleep(Duration::from_millis(500));
            let held_kib = rss_kib(pid);
            let per = (held.report.errors == 0 && held.report.ok == count as u64)
                .then(|| held_kib.saturating_sub(idle_kib) as f64 / count as f64);
            println!(
                "{:<10} idle {idle_kib} KiB; {count} connections: {held_kib} KiB ({}){}",
                proxy.name,
                per.map(|kib| format!("{kib:.1} KiB each"))
                    .unwrap_or_else(|| "-".to_string()),
                held.report
                    .first_error
                    .as_deref()
                    .map(|e| format!("  FAILED ({} errors): {e}", held.report.errors))
                    .unwrap_or_default()
            );
            per_connection.push((count, per));
            drop(held);
            // The closed connections leave the proxy before the next count.
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(Memory {
            idle_kib,
            per_connection,
        })
    }
}

fn sample(report: &LoadReport, cpu_seconds: Option<f64>, per: Per) -> Sample {
    let units = match per {
        Per::Operation => report.ok as f64,
        Per::MiB => report.bytes as f64 / (1024.0 * 1024.0),
    };
    let failed = if report.errors > 0 {
        Some(format!(
            "{} errors; first: {}",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        ))
    } else if report.ok == 0 {
        Some("nothing completed".to_string())
    } else {
        None
    };
    Sample {
        rate: if report.seconds > 0.0 {
            units / report.seconds
        } else {
            0.0
        },
        cpu_us: cpu_seconds.map(|cpu| cpu * 1e6 / units.max(1e-9)),
        p50_us: report.p50_us,
        p99_us: report.p99_us,
        p999_us: report.p999_us,
        failed,
    }
}
