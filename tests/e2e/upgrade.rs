//! Zero-downtime restart (`postern run --takeover`) and crash recovery, under a continuous
//! client loop of real curl requests with the seed's client certificate.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_testbed::{
    curl, seed_curl_args, CurlResult, Postern, PosternOptions, SeedRequest, Signal,
};

use crate::{postern_bin, sk_lookup_links, start_drip, stop_cleanly, successor, Running};

/// curl's exit code when the connection is refused.
const CURL_CONNECT_REFUSED: i32 = 7;

/// What the client loops saw.
pub(crate) struct Load {
    pub(crate) requests: usize,
    pub(crate) failures: Vec<String>,
}

/// Concurrent client loops.
const CLIENTS: usize = 4;

/// How long the loops run before and after the event, at least.
const LOAD_AROUND: Duration = Duration::from_secs(1);

/// Runs `during` while [`CLIENTS`] client loops each send mTLS requests one after the other;
/// they have made requests before `during` starts and make more after it returns.
fn under_load<R>(run: &Running, during: impl FnOnce() -> R) -> (R, Load) {
    let args = seed_curl_args(&run.topology, SeedRequest::ExternalMtls);
    requests_around(|| curl(run.topology.client(), &args).unwrap(), during)
}

/// Runs `during` while [`CLIENTS`] loops each make `request` one after the other, a failure
/// being anything but an HTTP 200; they have made requests before `during` starts and make
/// more after it returns.
pub(crate) fn requests_around<R>(
    request: impl Fn() -> CurlResult + Sync,
    during: impl FnOnce() -> R,
) -> (R, Load) {
    let requests = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let wait_for = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while requests.load(Ordering::SeqCst) < count {
            assert!(Instant::now() < deadline, "the client loop stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let result = std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let result = request();
                    if result.http_status() != Some(200) {
                        failures.lock().unwrap().push(result.summary());
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        wait_for(2 * CLIENTS);
        std::thread::sleep(LOAD_AROUND);
        let result = during();
        wait_for(requests.load(Ordering::SeqCst) + 2 * CLIENTS);
        std::thread::sleep(LOAD_AROUND);
        stop.store(true, Ordering::SeqCst);
        result
    });
    let load = Load {
        requests: requests.into_inner(),
        failures: failures.into_inner().unwrap(),
    };
    (result, load)
}

/// The local addresses of the sockets listening in the pod (`ss -Hltn`): postern's listeners
/// (ephemeral ports on loopback) and the app's.
fn listening(run: &Running) -> BTreeSet<String> {
    let output = run.topology.pod().run(["ss", "-Hltn"]).unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// The seed, with a 4000-byte download over `seconds` flowing through postern.
fn seed_downloading(seconds: u32) -> (Running, PathBuf, Child) {
    let run = Running::seed();
    let output = run.topology.work_dir().join("drip.out");
    let download = start_drip(&run, 4000, seconds, &output);
    crate::drain::wait_until_flowing(&output);
    (run, output, download)
}

#[test]
fn takeover_under_load_refuses_nothing() {
    let (mut run, output, mut download) = seed_downloading(6);

    let before = listening(&run);
    // postern's three (9080, 9081, every other port) and httpbin's.
    assert_eq!(before.len(), 4, "{before:?}");
    let (new, takeover) = under_load(&run, || {
        let new = successor(&run, &run.topology.seed_config().unwrap(), &["--takeover"]);
        // Every listener came over: 9080, 9081, STRICT's every-other-port one, and the admin
        // endpoint's.
        assert!(
            new.log()
                .contains("taking over from the running postern listeners=4"),
            "{}",
            new.log()
        );
        assert!(new.log().contains("took over"), "{}", new.log());
        new
    });
    let mut old = std::mem::replace(&mut run.postern, new);
    // The old postern drains: it exits once the download it carries is done.
    let exit = old.wait_exit_timeout(Duration::from_secs(30)).unwrap();
    assert!(exit.success(), "{exit}\n{}", old.log());
    assert!(
        old.log().contains("handed over; exiting without detaching"),
        "{}",
        old.log()
    );
    old.leave_pins();
    // The very same sockets serve: no listener was closed or opened.
    assert_eq!(listening(&run), before);
    let status = download.wait().unwrap();
    assert!(
        status.success(),
        "the download across the takeover: {status}"
    );
    let body = std::fs::read(&output).unwrap();
    assert_eq!(body.len(), 4000, "byte-exact across the takeover");
    assert!(body.iter().all(|&b| b == b'*'));
    assert_eq!(sk_lookup_links(run.topology.pod_netns_path()), 1);

    let ((), reload) = under_load(&run, || {
        run.postern.kill(Signal::Hup).unwrap();
        run.postern
            .wait_for_log("configuration reloaded", Duration::from_secs(20))
            .unwrap();
    });
    println!(
        "takeover under load: {} requests, {} failed; reload under load: {} requests, {} failed",
        takeover.requests,
        takeover.failures.len(),
        reload.requests,
        reload.failures.len()
    );
    assert!(takeover.failures.is_empty(), "{:#?}", takeover.failures);
    assert!(reload.failures.is_empty(), "{:#?}", reload.failures);
    stop_cleanly(&mut run);
}

#[test]
fn crash_fails_closed_and_a_restart_adopts_the_pins() {
    let (mut run, output, mut download) = seed_downloading(8);

    run.postern.kill(Signal::Kill).unwrap();
    run.postern.wait_exit().unwrap();
    let status = download.wait().unwrap();
    let received = std::fs::read(&output).unwrap().len();
    assert!(!status.success(), "the download cannot complete: {status}");
    assert!(received < 4000);

    // Down: the program is still attached and resets every connection to the ports.
    assert_eq!(sk_lookup_links(run.topology.pod_netns_path()), 1);
    let mut refused = 0;
    for _ in 0..20 {
        let mtls = curl(
            run.topology.client(),
            seed_curl_args(&run.topology, SeedRequest::ExternalMtls),
        )
        .unwrap();
        let clear = curl(
            run.topology.client(),
            ["-v", "http://198.18.0.2:9080/status/200"],
        )
        .unwrap();
        for result in [mtls, clear] {
            assert_eq!(
                result.exit_code,
                CURL_CONNECT_REFUSED,
                "{}",
                result.summary()
            );
            refused += 1;
        }
    }

    let restarted = successor(&run, &run.topology.seed_config().unwrap(), &[]);
    assert!(
        restarted
            .log()
            .contains("adopted the pinned sk_lookup program and maps"),
        "{}",
        restarted.log()
    );
    let mut killed = std::mem::replace(&mut run.postern, restarted);
    killed.leave_pins();
    let ((), after) = under_load(&run, || {});
    println!(
        "crash: download cut at {received} of 4000 bytes; {refused} requests while down, all refused; after the restart {} requests, {} failed",
        after.requests,
        after.failures.len()
    );
    assert!(after.failures.is_empty(), "{:#?}", after.failures);
    assert_eq!(sk_lookup_links(run.topology.pod_netns_path()), 1);
    stop_cleanly(&mut run);
}

#[test]
fn a_takeover_with_another_bpffs_is_refused_and_the_old_postern_serves_on() {
    let run = Running::seed();
    let options = PosternOptions {
        admin_socket: Some(run.postern.admin_socket().to_path_buf()),
        wait_ready: false,
        ..PosternOptions::default()
    };
    let config = run.topology.seed_config().unwrap();
    let mut refused = Postern::start_with(
        &postern_bin(),
        &run.topology,
        &config,
        &["--takeover"],
        &options,
    )
    .unwrap();
    let exit = refused.wait_exit().unwrap();
    assert!(!exit.success());
    assert!(
        refused
            .log()
            .contains("take over with the --bpffs it runs with"),
        "{}",
        refused.log()
    );
    let ((), load) = under_load(&run, || {});
    assert!(load.failures.is_empty(), "{:#?}", load.failures);
    let ready = run.postern.command(&postern_bin(), "ready", &[]).unwrap();
    assert_eq!(ready.stdout.trim(), "ready", "{}", ready.stderr);
}
