//! A crash under load: postern is SIGKILLed while mTLS transfers and clear-text attempts hit
//! the intercepted port, then started again. The app listens on that very port (postern
//! reaches it from 127.0.0.6, which the kernel never intercepts), so a single clear-text byte
//! slipping past the kernel program would reach it: the app must only ever see postern, and
//! service must resume.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use postern_testbed::{Figures, Signal, Usage, EXTERNAL_PORT};

use crate::client::SeedClient;
use crate::load::{loops_and_phase_time, EchoBehindPostern, Loops};
use crate::{record, Running};

/// Where postern's connections to the app come from.
const POSTERN_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

/// Bytes each mTLS transfer sends and reads back.
const TRANSFER: usize = 64 * 1024;

/// Phases of the run: which postern (if any) serves. While the new one starts, an attempt may
/// meet either state, so that phase is counted but not judged.
const PHASES: [&str; 4] = [
    "before the kill",
    "while postern is dead",
    "while the new postern starts",
    "after the restart",
];
const BEFORE: usize = 0;
const DEAD: usize = 1;
const STARTING: usize = 2;
const AFTER: usize = 3;

/// Per phase (by when an attempt started): mTLS transfers ok and failed; clear-text attempts
/// echoed by the app, and not.
#[derive(Default)]
struct Tally {
    phase: AtomicUsize,
    mtls_ok: [AtomicU64; PHASES.len()],
    mtls_failed: [AtomicU64; PHASES.len()],
    clear_echoed: [AtomicU64; PHASES.len()],
    clear_stopped: [AtomicU64; PHASES.len()],
}

/// A clear-text request straight at the intercepted port: whether it came back, i.e. reached
/// the echo app. (postern answers it with a TLS alert, which is not an echo.)
async fn clear_text_echoed(client: &SeedClient) -> bool {
    const REQUEST: &[u8] = b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n";
    let attempt = async {
        let mut stream = client.tcp(EXTERNAL_PORT).await?;
        stream.write_all(REQUEST).await?;
        stream.shutdown().await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.windows(REQUEST.len()).any(|w| w == REQUEST))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(15), attempt).await,
        Ok(Ok(true))
    )
}

#[test]
fn sigkill_under_load_never_lets_clear_text_through_and_service_resumes() {
    let (workers, phase_time) = loops_and_phase_time();
    let EchoBehindPostern {
        topology,
        config,
        runtime,
        app,
        client,
    } = EchoBehindPostern::build();
    // Without postern, clear text reaches the app and comes back: the check below can fail.
    assert!(runtime.block_on(clear_text_echoed(&client)));
    let from_outside = |peers: &BTreeMap<IpAddr, u64>| -> u64 {
        peers
            .iter()
            .filter(|(peer, _)| **peer != POSTERN_SOURCE)
            .map(|(_, n)| n)
            .sum()
    };
    let outside_before = from_outside(&app.peers());
    let mut run = Running::start(topology, &config, &[]);
    let tally = Arc::new(Tally::default());
    let load = Loops::start(&runtime, workers, {
        let (client, tally) = (client.clone(), Arc::clone(&tally));
        move |worker, n| {
            let (client, tally) = (client.clone(), Arc::clone(&tally));
            async move {
                let phase = tally.phase.load(Ordering::Acquire);
                // One clear-text attempt for every three mTLS transfers.
                if n % 4 == 3 {
                    let counter = match clear_text_echoed(&client).await {
                        true => &tally.clear_echoed[phase],
                        false => &tally.clear_stopped[phase],
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                } else {
                    let id = (worker as u64) << 32 | n;
                    match client.echo_transfer(TRANSFER, id).await {
                        Ok(true) => tally.mtls_ok[phase].fetch_add(1, Ordering::Relaxed),
                        _ => tally.mtls_failed[phase].fetch_add(1, Ordering::Relaxed),
                    };
                }
                // Refusals are instant while postern is dead: do not spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    std::thread::sleep(phase_time);
    let usage_before_kill = Usage::of(run.postern.pid()).unwrap();
    tally.phase.store(DEAD, Ordering::Release);
    run.postern.kill(Signal::Kill).unwrap();
    run.postern.wait_exit().unwrap();
    std::thread::sleep(phase_time);
    tally.phase.store(STARTING, Ordering::Release);
    run.restart(&config);
    tally.phase.store(AFTER, Ordering::Release);
    std::thread::sleep(phase_time);
    load.stop(&runtime);
    let usage_after = Usage::of(run.postern.pid()).unwrap();

    let count = |counters: &[AtomicU64; PHASES.len()], phase: usize| {
        counters[phase].load(Ordering::Relaxed)
    };
    let peers = app.peers();
    let mut figures = Figures::new(
        "crash under load",
        &format!("{workers} clients loop over {TRANSFER}-byte mTLS echo transfers and clear-text requests to port 9080, where the app itself listens (postern's endpoint is 127.0.0.1:9080). postern is SIGKILLed, left dead for {phase_time:?}, then started again on the same bpffs pins. Attempts are counted by the phase in which they started; the transfers failed before the kill are those it cut."),
    );
    let pairs = [
        (
            "mTLS transfers ok / failed",
            &tally.mtls_ok,
            &tally.mtls_failed,
        ),
        (
            "clear-text attempts echoed by the app / stopped",
            &tally.clear_echoed,
            &tally.clear_stopped,
        ),
    ];
    for (phase, name) in PHASES.iter().enumerate() {
        for (what, first, second) in pairs {
            let counts = format!("{} / {}", count(first, phase), count(second, phase));
            figures.add(&format!("{name}: {what}"), counts);
        }
    }
    figures
        .add("connections the app saw, by peer (one from the client is the check before postern started)", format!("{peers:?}"))
        .add("postern before the kill", usage_before_kill.describe())
        .add("restarted postern at the end", usage_after.describe());

    assert_eq!(
        from_outside(&peers),
        outside_before,
        "the app saw connections from outside postern: {peers:?}"
    );
    for (phase, name) in PHASES.iter().enumerate() {
        assert_eq!(
            count(&tally.clear_echoed, phase),
            0,
            "clear text reached the app {name}"
        );
    }
    assert!(
        count(&tally.mtls_ok, BEFORE) > 0,
        "no transfer worked before the kill"
    );
    assert_eq!(
        count(&tally.mtls_ok, DEAD),
        0,
        "a transfer worked with postern dead"
    );
    assert!(count(&tally.mtls_ok, AFTER) > 0, "service did not resume");
    assert_eq!(
        count(&tally.mtls_failed, AFTER),
        0,
        "transfers failed after the restart"
    );
    record(&figures);
}
