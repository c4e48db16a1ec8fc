//! Restart and reload under load: clients loop over mTLS echo transfers while a new postern
//! takes over from the running one (`postern run --takeover`), and then while the new one
//! reloads its configuration (SIGHUP). Not one transfer may fail, in any phase.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_testbed::{Figures, Postern, PosternOptions, Signal, Usage};

use crate::load::{loops_and_phase_time, EchoBehindPostern, Loops};
use crate::{millis, postern_bin, record, Running};

/// Bytes each transfer sends and reads back.
const TRANSFER: usize = 64 * 1024;

/// Phases of the run, by when a transfer started.
const PHASES: [&str; 4] = [
    "before the takeover",
    "from the takeover's start until the old postern is gone",
    "after the takeover",
    "across the reload: from SIGHUP until one phase after it is applied",
];

#[derive(Default)]
struct Tally {
    phase: AtomicUsize,
    ok: [AtomicU64; PHASES.len()],
    failed: [AtomicU64; PHASES.len()],
}

impl Tally {
    fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::Release);
    }

    fn count(counters: &[AtomicU64; PHASES.len()], phase: usize) -> u64 {
        counters[phase].load(Ordering::Relaxed)
    }
}

#[test]
fn takeover_and_reload_under_load_fail_nothing() {
    let (workers, phase_time) = loops_and_phase_time();
    let echo = EchoBehindPostern::build();
    let (config, runtime, app, client) = (echo.config, echo.runtime, echo.app, echo.client);
    let mut run = Running::start(echo.topology, &config, &[]);
    let old_pid = run.postern.pid();

    let tally = Arc::new(Tally::default());
    let load = Loops::start(&runtime, workers, {
        let tally = Arc::clone(&tally);
        move |worker, n| {
            let (client, tally) = (client.clone(), Arc::clone(&tally));
            async move {
                let phase = tally.phase.load(Ordering::Acquire);
                let id = (worker as u64) << 32 | n;
                match client.echo_transfer(TRANSFER, id).await {
                    Ok(true) => tally.ok[phase].fetch_add(1, Ordering::Relaxed),
                    _ => tally.failed[phase].fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });

    std::thread::sleep(phase_time);
    let usage_old = Usage::of(old_pid).unwrap();
    tally.enter(1);
    let started = Instant::now();
    let options = PosternOptions {
        bpffs_dir: Some(run.postern.bpffs_dir().to_path_buf()),
        admin_socket: Some(run.postern.admin_socket().to_path_buf()),
        ..PosternOptions::default()
    };
    let new = Postern::start_with(
        &postern_bin(),
        &run.topology,
        &config,
        &["--takeover"],
        &options,
    )
    .expect("the new postern takes over");
    let serving_after = started.elapsed();
    let mut old = std::mem::replace(&mut run.postern, new);
    let exit = old.wait_exit_timeout(Duration::from_secs(60)).unwrap();
    let old_gone_after = started.elapsed();
    assert!(exit.success(), "the old postern: {exit}\n{}", old.log());
    old.leave_pins();
    tally.enter(2);
    std::thread::sleep(phase_time);

    tally.enter(3);
    let started = Instant::now();
    run.postern.kill(Signal::Hup).unwrap();
    run.postern
        .wait_for_log("configuration reloaded", Duration::from_secs(30))
        .expect("the reload is applied");
    let reloaded_after = started.elapsed();
    std::thread::sleep(phase_time);
    load.stop(&runtime);
    let usage_new = Usage::of(run.postern.pid()).unwrap();

    let mut figures = Figures::new(
        "restart and reload under load",
        &format!("{workers} clients loop over {TRANSFER}-byte mTLS echo transfers, one after the other, while a new postern takes over from the running one (`postern run --takeover`: its listening sockets over SCM_RIGHTS, the pinned kernel state adopted), and then while the new one reloads its configuration on SIGHUP. Each phase lasts at least {phase_time:?}; transfers are counted by the phase in which they started."),
    );
    for (phase, name) in PHASES.iter().enumerate() {
        let counts = format!(
            "{} / {}",
            Tally::count(&tally.ok, phase),
            Tally::count(&tally.failed, phase)
        );
        figures.add(&format!("{name}: transfers ok / failed"), counts);
    }
    figures
        .add("new postern serving after", millis(serving_after))
        .add("old postern drained and gone after", millis(old_gone_after))
        .add("reload applied after SIGHUP", millis(reloaded_after))
        .add("bytes the echo app received", app.bytes())
        .add("old postern before the takeover", usage_old.describe())
        .add("new postern at the end", usage_new.describe());
    record(&figures);

    for (phase, name) in PHASES.iter().enumerate() {
        assert_eq!(
            Tally::count(&tally.failed, phase),
            0,
            "transfers failed {name}"
        );
        assert!(
            Tally::count(&tally.ok, phase) > 0,
            "no transfer started {name}"
        );
    }
    assert_ne!(run.postern.pid(), old_pid);
}
