//! Thousands of mTLS connections open at once, each sending data through postern to an echo
//! app and reading it back: every byte must come back exactly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use postern_testbed::{Figures, PeakUsage, APP_PORT};

use crate::apps::{AppMode, TestApp};
use crate::client::SeedClient;
use crate::{record, runtime, sized, wait_until, Running};

/// Handshakes in progress at once: the CPU does them one by one anyway, and a bound keeps each
/// one well inside postern's handshake timeout. Finished connections stay open.
const HANDSHAKES_AT_ONCE: usize = 64;

/// How long one connection's transfer may take, in CI and in the soak.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);
const SOAK_TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// Connection `id`'s data: a pattern that differs per connection and per position.
fn pattern(id: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + id * 7 + i / 251) as u8)
        .collect()
}

/// Counts of connections whose handshake is over, and of those among them established.
#[derive(Default)]
struct Progress {
    settled: AtomicUsize,
    established: AtomicUsize,
}

/// Opens one mTLS connection, reports it established, waits for `go`, then sends `bytes` and
/// reads them back. Whether they all came back exactly.
async fn transfer(
    client: SeedClient,
    id: usize,
    bytes: usize,
    handshakes: Arc<Semaphore>,
    progress: Arc<Progress>,
    mut go: watch::Receiver<bool>,
) -> Result<(), String> {
    let tls = {
        let _permit = handshakes.acquire().await.expect("semaphore");
        let tls = client.mtls().await;
        progress.settled.fetch_add(1, Ordering::AcqRel);
        tls.map_err(|e| format!("handshake: {e}"))?
    };
    progress.established.fetch_add(1, Ordering::AcqRel);
    go.wait_for(|go| *go).await.map_err(|e| e.to_string())?;
    let sent = pattern(id, bytes);
    let (mut read, mut write) = tokio::io::split(tls);
    let sending = async {
        write.write_all(&sent).await?;
        write.shutdown().await
    };
    let receiving = async {
        let mut back = Vec::with_capacity(bytes);
        read.read_to_end(&mut back).await.map(|_| back)
    };
    let exchange = async { tokio::try_join!(sending, receiving) };
    // Every connection moves its data at the same time, so each takes about as long as all.
    let (_, back) = tokio::time::timeout(sized(TRANSFER_TIMEOUT, SOAK_TRANSFER_TIMEOUT), exchange)
        .await
        .map_err(|_| "transfer timed out".to_string())?
        .map_err(|e| format!("transfer: {e}"))?;
    if back == sent {
        Ok(())
    } else {
        Err(format!(
            "got {} bytes back, not the {bytes} sent",
            back.len()
        ))
    }
}

#[test]
fn thousands_of_concurrent_mtls_connections_are_byte_exact() {
    let (connections, bytes) = (sized(2_000, 4_000), sized(32 * 1024, 256 * 1024));
    let run = Running::seed(false, &[]);
    let runtime = runtime();
    let app_addr = SocketAddr::from(([127, 0, 0, 1], APP_PORT));
    let echo = TestApp::start(&runtime, &run.namespaces.pod, app_addr, AppMode::Echo);
    let client = SeedClient::new(&run.topology, Arc::clone(&run.namespaces.client));
    let pid = run.postern.pid();
    let peak = PeakUsage::start(pid);

    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let progress = Arc::new(Progress::default());
    let (go, going) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|id| {
            runtime.spawn(transfer(
                client.clone(),
                id,
                bytes,
                Arc::clone(&handshakes),
                Arc::clone(&progress),
                going.clone(),
            ))
        })
        .collect();
    // Every connection is open before any data moves: they are all concurrent.
    let settled = wait_until(Duration::from_secs(300), || {
        progress.settled.load(Ordering::Acquire) == connections
    });
    let open_at_once = progress.established.load(Ordering::Acquire);
    let opened_in = started.elapsed();
    let active = r#"postern_connections_active{namespace="test",workload="httpbin",port="9080"}"#;
    let held_by_postern = run.metric(active);
    let _ = go.send(true);
    let results: Vec<Result<(), String>> = runtime.block_on(async {
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        results
    });
    let transferred_in = started.elapsed() - opened_in;
    let peak = peak.stop();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();

    let mut figures = Figures::new(
        "concurrency",
        &format!("{connections} mTLS connections (TLS 1.3, the seed's client certificate) opened and held at once, then each sends {bytes} bytes through postern to an echo app, half-closes, and reads everything back."),
    );
    figures
        .add(
            "connections open at once, as the client counted them",
            open_at_once,
        )
        .add(
            "connections open at once, as postern's gauge counted them",
            held_by_postern,
        )
        .add(
            "connections byte-exact",
            format!("{} of {connections}", connections - failures.len()),
        )
        .add("failed connections", failures.len())
        .add("bytes through postern, each way", connections * bytes)
        .add("bytes the echo app received", echo.bytes())
        .add("time to open all connections", crate::millis(opened_in))
        .add("time to transfer", crate::millis(transferred_in))
        .add("postern at peak", peak.describe());
    assert!(settled, "not every handshake was over in time");
    assert_eq!(open_at_once, connections, "connections open at once");
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        held_by_postern as usize, connections,
        "postern's active connections"
    );
    record(&figures);
}
