//! Floods of idle connections against postern's own limits. With `--max-connections`, the
//! connections past the cap are reset at once and counted, and postern's descriptors stay
//! within the cap. With the descriptor limit itself exhausted (lowered on the running process
//! with `prlimit`), accept fails with EMFILE: postern pauses instead of spinning, counts the
//! errors, and serves again once descriptors are free.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use postern_testbed::{Figures, Usage, EXTERNAL_PORT};

use crate::client::SeedClient;
use crate::{record, runtime, sized, wait_until, Running};

/// The handshake timeout in these cases: longer than the case, so idle connections stay.
const HANDSHAKE_TIMEOUT: &str = "60s";

/// Opens `count` TCP connections to the mTLS port that send nothing: those that connected,
/// and how many were reset before the connect call even returned.
fn idle_connections(
    runtime: &tokio::runtime::Runtime,
    client: &SeedClient,
    count: usize,
) -> (Vec<TcpStream>, usize) {
    runtime.block_on(async {
        let (mut streams, mut reset) = (Vec::with_capacity(count), 0);
        for n in 0..count {
            match client.tcp(EXTERNAL_PORT).await {
                Ok(stream) => streams.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
                Err(e) => panic!("idle connection {n}: {e}"),
            }
        }
        (streams, reset)
    })
}

/// A legitimate `GET /status/200`: its status, or the error.
fn legitimate_get(runtime: &tokio::runtime::Runtime, client: &SeedClient) -> Result<u16, String> {
    runtime
        .block_on(client.get("/status/200"))
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
}

/// Whether the other end reset or closed the connection.
fn ended(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn connections_past_max_connections_are_reset_at_once() {
    let (cap, flood) = (sized(100, 1_000), sized(300, 5_000));
    let max = cap.to_string();
    let mut run = Running::seed(
        true,
        &[
            "--max-connections",
            &max,
            "--handshake-timeout",
            HANDSHAKE_TIMEOUT,
        ],
    );
    let runtime = runtime();
    let client = SeedClient::new(&run.topology, Arc::clone(&run.namespaces.client));
    let pid = run.postern.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let before = Usage::of(pid).unwrap();

    let (streams, reset_at_connect) = idle_connections(&runtime, &client, flood);
    let refused = r#"postern_connections_refused_total{reason="max_connections"}"#;
    let all_counted = wait_until(Duration::from_secs(20), || {
        run.metric(refused) as usize == flood - cap
    });
    let during = Usage::of(pid).unwrap();
    let reset_seen = reset_at_connect + streams.iter().filter(|s| ended(s)).count();
    let held = run.metric("postern_connections_held");
    let refused_count = run.metric(refused);
    let legitimate_at_cap = legitimate_get(&runtime, &client);
    drop(streams);
    let drained = wait_until(Duration::from_secs(20), || {
        run.metric("postern_connections_held") == 0.0
    });
    let legitimate_after = legitimate_get(&runtime, &client);

    let mut figures = Figures::new(
        "connection cap",
        &format!("postern runs with --max-connections {cap}; {flood} idle TCP connections arrive at the mTLS port and send nothing."),
    );
    figures
        .add(
            "postern's descriptor limit (/proc/PID/limits)",
            open_files
                .split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" / "),
        )
        .add("connections held by postern", held)
        .add(
            "connections reset at once (postern_connections_refused_total)",
            refused_count,
        )
        .add("connections the client saw ended", reset_seen)
        .add(
            "legitimate request at the cap",
            format!("{legitimate_at_cap:?}"),
        )
        .add(
            "legitimate request after the flood",
            format!("{legitimate_after:?}"),
        )
        .add("postern before", before.describe())
        .add("postern during the flood", during.describe());
    run.assert_alive(pid);
    assert!(all_counted, "refused {refused_count} of {}", flood - cap);
    assert_eq!(held as usize, cap);
    assert_eq!(
        reset_seen,
        flood - cap,
        "connections past the cap are reset at once"
    );
    // The cap bounds postern's descriptors: one per held connection, no more.
    assert!(
        during.fds <= before.fds + cap as u64 + 8,
        "{before:?} then {during:?}"
    );
    assert!(drained, "held connections did not end");
    assert_eq!(legitimate_after, Ok(200));
    let soft_and_hard: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        soft_and_hard[0], soft_and_hard[1],
        "the soft limit was raised to the hard one"
    );
    record(&figures);
}

/// postern's CPU time so far (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((fields[0] + fields[1]) as f64 / ticks_per_second)
}

/// `prlimit --pid PID --nofile=SOFT:HARD`.
fn set_fd_limit(pid: u32, soft: u64, hard: u64) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("prlimit");
    assert!(status.success(), "prlimit failed");
}

#[test]
fn exhausted_descriptors_pause_accepting_without_spinning() {
    // The flood stays below the listener's backlog (1024), so that every connect completes
    // while postern cannot accept.
    let (spare, flood, watch_for) = (
        50,
        sized(200, 800),
        sized(Duration::from_secs(2), Duration::from_secs(30)),
    );
    let mut run = Running::seed(true, &["--handshake-timeout", HANDSHAKE_TIMEOUT]);
    let runtime = runtime();
    let client = SeedClient::new(&run.topology, Arc::clone(&run.namespaces.client));
    let pid = run.postern.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap();
    let before = Usage::of(pid).unwrap();
    let lowered = before.fds + spare;
    set_fd_limit(pid, lowered, hard);

    let (streams, reset_at_connect) = idle_connections(&runtime, &client, flood);
    assert_eq!(reset_at_connect, 0, "no cap here: nothing is reset");
    let exhausted = wait_until(Duration::from_secs(20), || {
        Usage::of(pid).is_ok_and(|u| u.fds >= lowered)
    });
    let cpu_before = cpu_time(pid);
    std::thread::sleep(watch_for);
    let cpu_spent = cpu_time(pid) - cpu_before;
    let during = Usage::of(pid).unwrap();

    drop(streams);
    set_fd_limit(pid, hard, hard);
    let errors = r#"postern_accept_errors_total{reason="fd_limit"}"#;
    let accept_errors = run.metric(errors);
    let drained = wait_until(Duration::from_secs(30), || {
        run.metric("postern_connections_held") == 0.0
    });
    let legitimate_after = legitimate_get(&runtime, &client);

    let mut figures = Figures::new(
        "descriptors exhausted",
        &format!("postern's descriptor limit is lowered to {lowered} (its {} open plus {spare}) with prlimit while it runs; {flood} idle TCP connections arrive at the mTLS port. Then the connections close and the limit is restored.", before.fds),
    );
    figures
        .add(
            "accept errors counted (postern_accept_errors_total{reason=\"fd_limit\"})",
            accept_errors,
        )
        .add(
            &format!("postern's CPU time over {watch_for:?} at the limit"),
            crate::millis(cpu_spent),
        )
        .add("postern at the limit", during.describe())
        .add(
            "legitimate request afterwards",
            format!("{legitimate_after:?}"),
        );
    run.assert_alive(pid);
    assert!(
        exhausted,
        "postern never reached its lowered limit: {:?}",
        Usage::of(pid)
    );
    assert!(accept_errors > 0.0, "no accept error was counted");
    assert!(drained, "held connections did not end");
    assert_eq!(legitimate_after, Ok(200));
    record(&figures);
}
