//! Slowloris: hundreds of connections that start a TLS handshake and never finish it. A
//! legitimate mTLS client must still get its 200 from httpbin; its latency with and without
//! the attack is recorded as a figure, not asserted.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use postern_testbed::{median_and_p99, Figures, PeakUsage, Usage, EXTERNAL_PORT};

use crate::client::SeedClient;
use crate::{millis, record, runtime, sized, Running};

/// postern's handshake timeout in this case: longer than the measurement, so that every
/// slow connection is held for all of it.
const HANDSHAKE_TIMEOUT: &str = "60s";

/// Requests before the measurements, not counted.
const WARM_UP: usize = 5;

/// The first bytes of a ClientHello: a handshake record header and the start of its body.
const HELLO_START: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// `requests` sequential GETs of `/status/200`: each one's latency; panics on any non-200.
async fn latencies(client: &SeedClient, requests: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(requests);
    for n in 0..requests {
        let (status, took) = client
            .get("/status/200")
            .await
            .unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(status, 200, "request {n}");
        samples.push(took);
    }
    samples
}

fn describe(samples: &[Duration]) -> String {
    let (median, p99) = median_and_p99(samples).expect("samples");
    format!("median {}, p99 {}", millis(median), millis(p99))
}

#[test]
fn slowloris_does_not_stop_a_legitimate_client() {
    let (slow, requests) = (sized(300, 2_000), sized(50, 500));
    let run = Running::seed(true, &["--handshake-timeout", HANDSHAKE_TIMEOUT]);
    let runtime = runtime();
    let client = SeedClient::new(&run.topology, Arc::clone(&run.namespaces.client));
    let pid = run.postern.pid();

    // A few requests first, so that neither measurement pays for warming up.
    runtime.block_on(latencies(&client, WARM_UP));
    let baseline = runtime.block_on(latencies(&client, requests));
    let before = Usage::of(pid).unwrap();

    let held: Vec<TcpStream> = runtime.block_on(async {
        let mut held = Vec::with_capacity(slow);
        for n in 0..slow {
            let mut stream = client
                .tcp(EXTERNAL_PORT)
                .await
                .unwrap_or_else(|e| panic!("slow connection {n}: {e}"));
            stream.write_all(&HELLO_START).await.unwrap();
            held.push(stream);
        }
        held
    });
    let active = r#"postern_connections_active{namespace="test",workload="httpbin",port="9080"}"#;
    assert!(
        crate::wait_until(Duration::from_secs(20), || run.metric(active)
            >= slow as f64),
        "postern holds {} of the {slow} slow connections",
        run.metric(active)
    );
    let peak = PeakUsage::start(pid);
    let attacked = runtime.block_on(latencies(&client, requests));
    let peak = peak.stop();
    let still_held = held
        .iter()
        .filter(|stream| {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    drop(held);

    let mut figures = Figures::new(
        "slowloris",
        &format!("{slow} connections send the first {} bytes of a ClientHello and nothing more (postern's --handshake-timeout {HANDSHAKE_TIMEOUT}, so all are held throughout). Meanwhile a legitimate mTLS client sends {requests} sequential GET /status/200 to httpbin, a new connection each (TCP connect, TLS 1.3 handshake with the seed's client certificate, request, response).", HELLO_START.len()),
    );
    figures
        .add(
            "slow connections held by postern during the measurement",
            format!("{still_held} of {slow}"),
        )
        .add(
            "legitimate requests answered 200, without attack",
            format!("{requests} of {requests}"),
        )
        .add("latency without attack", describe(&baseline))
        .add(
            "legitimate requests answered 200, under attack",
            format!("{requests} of {requests}"),
        )
        .add("latency under attack", describe(&attacked))
        .add("postern before the attack", before.describe())
        .add("postern at peak under attack", peak.describe());
    assert_eq!(still_held, slow, "slow connections were dropped early");
    record(&figures);
}
