//! The measurements. Each prints one JSON [`Report`] line on stdout.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::Target;
use crate::http::{self, Buffered, ClientConn};
use crate::{Direction, RunArgs};

/// Connections opened at once while filling up for `hold`.
const HOLD_CONCURRENCY: usize = 64;

/// Size of the body asked for on each held connection.
const HOLD_BODY: u64 = 128;

#[derive(Serialize, Default)]
struct Report {
    /// Operations that completed and were checked: connections, requests or transfers.
    ok: u64,
    errors: u64,
    /// The first error, in words, if any.
    first_error: Option<String>,
    seconds: f64,
    /// Bytes moved in bulk transfers.
    bytes: u64,
    /// Latency percentiles in microseconds (requests only).
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    p999_us: Option<u64>,
}

/// What one task counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, result: Result<()>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn report(mut self, seconds: f64) -> Report {
        self.latencies_us.sort_unstable();
        let percentile = |p: f64| {
            let n = self.latencies_us.len();
            (n > 0).then(|| {
                let at = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
                u64::from(self.latencies_us[at])
            })
        };
        Report {
            ok: self.ok,
            errors: self.errors,
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            first_error: self.first_error,
            seconds,
            bytes: 0,
        }
    }
}

fn print(report: &Report) -> Result<()> {
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// Runs `tasks` copies of `task` and merges what they counted.
async fn run_tasks<F, Fut>(tasks: usize, task: F) -> Result<(Tally, f64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Tally> + 'static,
{
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut set = JoinSet::new();
            for index in 0..tasks {
                set.spawn_local(task(index));
            }
            let mut total = Tally::default();
            while let Some(tally) = set.join_next().await {
                total.merge(tally.context("a load task panicked")?);
            }
            Ok((total, started.elapsed().as_secs_f64()))
        })
        .await
}

pub async fn connections(target: Target, concurrency: usize, run: RunArgs) -> Result<()> {
    let target = Arc::new(target);
    let deadline = Instant::now() + run.duration();
    let (tally, seconds) = run_tasks(concurrency, |_| {
        let target = Arc::clone(&target);
        async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                tally.record(one_connection(&target, run.body).await);
            }
            tally
        }
    })
    .await?;
    print(&tally.report(seconds))
}

async fn one_connection(target: &Target, body: u64) -> Result<()> {
    let mut conn = Buffered::new(target.connect().await?);
    http::get(&mut conn, body, true).await
}

pub async fn requests(
    target: Target,
    connections: usize,
    rate: Option<u32>,
    run: RunArgs,
) -> Result<()> {
    let target = Arc::new(target);
    let started = Instant::now();
    let deadline = started + run.duration();
    // At a fixed rate, each connection sends every `interval`, the connections staggered.
    let interval = rate.map(|rate| Duration::from_secs_f64(connections as f64 / f64::from(rate)));
    let (tally, seconds) = run_tasks(connections, |index| {
        let target = Arc::clone(&target);
        async move {
            let mut tally = Tally::default();
            let mut conn: Option<ClientConn> = None;
            let offset = interval.map(|i| i.mul_f64(index as f64 / connections as f64));
            let mut n: u32 = 0;
            while Instant::now() < deadline {
                if let (Some(interval), Some(offset)) = (interval, offset) {
                    tokio::time::sleep_until((started + offset + interval * n).into()).await;
                    n += 1;
                }
                // From the moment the request goes out: tokio's timer wakes up to a
                // millisecond late, which is not the proxy's doing. A proxy that falls
                // behind still shows, as the rate it sustains.
                let sent = Instant::now();
                let result = keep_alive_request(&target, &mut conn, run.body).await;
                if result.is_ok() {
                    let micros = sent.elapsed().as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    conn = None;
                }
                tally.record(result);
            }
            tally
        }
    })
    .await?;
    print(&tally.report(seconds))
}

async fn keep_alive_request(
    target: &Target,
    conn: &mut Option<ClientConn>,
    body: u64,
) -> Result<()> {
    if conn.is_none() {
        *conn = Some(Buffered::new(target.connect().await?));
    }
    let conn = conn.as_mut().expect("connected above");
    http::get(conn, body, false).await
}

/// `count` transfers of `bytes` each, one after the other on one connection (so the
/// handshake is not part of the figure).
pub async fn bulk(target: &Target, bytes: u64, count: u32, direction: Direction) -> Result<()> {
    let mut conn = Buffered::new(target.connect().await?);
    let started = Instant::now();
    let mut tally = Tally::default();
    for _ in 0..count {
        let result = match direction {
            Direction::Up => http::upload(&mut conn, bytes).await,
            Direction::Down => http::get(&mut conn, bytes, false).await,
        };
        let failed = result.is_err();
        tally.record(result);
        if failed {
            break;
        }
    }
    let mut report = tally.report(started.elapsed().as_secs_f64());
    report.bytes = bytes * report.ok;
    print(&report)
}

pub async fn hold(target: Target, connections: usize) -> Result<()> {
    let target = Arc::new(target);
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let (held, tally) = local
        .run_until(async {
            let mut held = Vec::with_capacity(connections);
            let mut tally = Tally::default();
            let mut set = JoinSet::new();
            let mut next = 0;
            loop {
                while next < connections && set.len() < HOLD_CONCURRENCY {
                    let target = Arc::clone(&target);
                    set.spawn_local(async move {
                        let mut conn = Buffered::new(target.connect().await?);
                        http::get(&mut conn, HOLD_BODY, false).await?;
                        anyhow::Ok(conn)
                    });
                    next += 1;
                }
                let Some(done) = set.join_next().await else {
                    break;
                };
                match done.context("a connection task panicked")? {
                    Ok(conn) => {
                        held.push(conn);
                        tally.ok += 1;
                    }
                    Err(e) => tally.record(Err(e)),
                }
            }
            anyhow::Ok((held, tally))
        })
        .await?;
    print(&tally.report(started.elapsed().as_secs_f64()))?;
    // Hold every connection, idle, until the harness has measured and closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        std::io::stdin().read_to_end(&mut rest)
    })
    .await??;
    drop(held);
    Ok(())
}
