//! Hostile input at the mTLS port: corrupted and truncated ClientHellos, plaintext HTTP,
//! oversized TLS records and random bytes, thousands of each. postern must survive every one
//! (same process, `/healthz` OK), answer each with a TLS alert, a close or a reset within the
//! handshake timeout, and let not one byte through to the app: a sink that counts bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use postern_testbed::{Figures, PeakUsage, Usage, EXTERNAL_PORT, SEED_HOST};

use crate::apps::{AppMode, TestApp};
use crate::client::SeedClient;
use crate::{record, runtime, sized, wait_until, Running};

/// A TLS record's largest allowed length: 2^14 bytes of plaintext plus 2048 of expansion.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// How many connections are in flight at once.
const IN_FLIGHT: usize = 32;

/// How long postern may take to end a hostile connection: beyond its 10 s handshake timeout.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A real ClientHello with bytes overwritten after the record header.
    CorruptClientHello,
    /// A real ClientHello cut short, then the client's end of stream.
    TruncatedClientHello,
    /// HTTP/1.1 requests in clear.
    PlaintextHttp,
    /// A record header announcing more than the largest record, and that much data.
    OversizedRecord,
    /// Random bytes of random length.
    RandomBytes,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::CorruptClientHello,
        Kind::TruncatedClientHello,
        Kind::PlaintextHttp,
        Kind::OversizedRecord,
        Kind::RandomBytes,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::CorruptClientHello => "corrupt ClientHello",
            Kind::TruncatedClientHello => "truncated ClientHello",
            Kind::PlaintextHttp => "plaintext HTTP",
            Kind::OversizedRecord => "oversized record",
            Kind::RandomBytes => "random bytes",
        }
    }

    /// The bytes of input number `n` of this kind.
    fn payload(self, rng: &mut XorShift, hello: &[u8]) -> Vec<u8> {
        match self {
            Kind::CorruptClientHello => {
                let mut bytes = hello.to_vec();
                for _ in 0..1 + rng.below(16) {
                    let at = 5 + rng.below(bytes.len() - 5);
                    bytes[at] = rng.next() as u8;
                }
                bytes
            }
            Kind::TruncatedClientHello => hello[..1 + rng.below(hello.len() - 1)].to_vec(),
            Kind::PlaintextHttp => {
                let method = ["GET", "POST", "HEAD", "CONNECT", "PRI"][rng.below(5)];
                format!(
                    "{method} /anything/{} HTTP/1.1\r\nHost: {SEED_HOST}\r\nContent-Length: 5\r\n\r\nhello",
                    rng.next()
                )
                .into_bytes()
            }
            Kind::OversizedRecord => {
                // Handshake, application data, alert or change-cipher-spec, TLS 1.2 framing.
                let content_type = [0x16, 0x17, 0x15, 0x14][rng.below(4)];
                let length = MAX_RECORD + 1 + rng.below(0xffff - MAX_RECORD);
                let mut bytes = vec![content_type, 0x03, 0x03];
                bytes.extend_from_slice(&(length as u16).to_be_bytes());
                bytes.extend((0..length).map(|_| rng.next() as u8));
                bytes
            }
            Kind::RandomBytes => (0..1 + rng.below(4096)).map(|_| rng.next() as u8).collect(),
        }
    }
}

/// How postern ended one hostile connection.
#[derive(Debug, Default)]
struct Outcomes {
    /// Bytes came back (a TLS alert), then the connection closed.
    alert: AtomicU64,
    /// Closed with no answer.
    closed: AtomicU64,
    /// Reset.
    reset: AtomicU64,
    /// Not ended within [`ANSWER_WITHIN`], or not even connected: failures.
    failed: AtomicU64,
}

/// A small deterministic generator (xorshift64*), so a failing input can be made again.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The bytes of a real ClientHello from the seed's client.
fn real_client_hello(client: &SeedClient) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(SEED_HOST).unwrap();
    let mut connection = rustls::ClientConnection::new(client.config(), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// Sends one input, then the client's end of stream, and waits for postern to end it.
async fn attack(client: &SeedClient, payload: Vec<u8>, outcomes: &Outcomes) {
    let exchange = async {
        let mut stream = client.tcp(EXTERNAL_PORT).await?;
        // postern may reset before reading everything: the write may fail, the read decides.
        let _ = stream.write_all(&payload).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer).await;
        Ok::<_, io::Error>((answer.len(), read))
    };
    let counter = match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(Ok((answered, Ok(_)))) if answered > 0 => &outcomes.alert,
        Ok(Ok((_, Ok(_)))) => &outcomes.closed,
        Ok(Ok((_, Err(e)))) if e.kind() == io::ErrorKind::ConnectionReset => &outcomes.reset,
        _ => &outcomes.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn hostile_input_never_crashes_postern_nor_reaches_the_app() {
    let each = sized(2_000, 20_000);
    let mut run = Running::seed(false, &[]);
    let runtime = runtime();
    let app_addr = SocketAddr::from(([127, 0, 0, 1], postern_testbed::APP_PORT));
    let sink = TestApp::start(&runtime, &run.namespaces.pod, app_addr, AppMode::Sink);
    let client = SeedClient::new(&run.topology, Arc::clone(&run.namespaces.client));
    let hello = real_client_hello(&client);
    let pid = run.postern.pid();
    let before = Usage::of(pid).unwrap();
    let peak = PeakUsage::start(pid);

    let mut figures = Figures::new(
        "hostile input",
        &format!("Hostile input at the mTLS port 9080 ({IN_FLIGHT} connections at a time), with a byte-counting sink as the app. Each input is sent, then the client's end of stream; postern must end every connection (TLS alert, close or reset) within {ANSWER_WITHIN:?}, and stay up."),
    );
    for kind in Kind::ALL {
        let outcomes = Arc::new(Outcomes::default());
        runtime.block_on(async {
            let mut workers = tokio::task::JoinSet::new();
            for worker in 0..IN_FLIGHT {
                let (client, hello, outcomes) =
                    (client.clone(), hello.clone(), Arc::clone(&outcomes));
                workers.spawn(async move {
                    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
                    for _ in (worker..each).step_by(IN_FLIGHT) {
                        attack(&client, kind.payload(&mut rng, &hello), &outcomes).await;
                    }
                });
            }
            while workers.join_next().await.is_some() {}
        });
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        figures.add(
            &format!("{}: inputs / alert / closed / reset / failed", kind.name()),
            format!(
                "{each} / {} / {} / {} / {}",
                load(&outcomes.alert),
                load(&outcomes.closed),
                load(&outcomes.reset),
                load(&outcomes.failed)
            ),
        );
        assert_eq!(load(&outcomes.failed), 0, "{}: {outcomes:?}", kind.name());
        run.assert_alive(pid);
    }
    let peak = peak.stop();
    let after = Usage::of(pid).unwrap();
    let app_bytes = sink.bytes();
    figures
        .add("crashes (postern pid changed or /healthz failed)", 0)
        .add("bytes that reached the app", app_bytes)
        .add("connections that reached the app", sink.connections())
        .add("postern before", before.describe())
        .add("postern at peak", peak.describe())
        .add("postern after", after.describe());
    for reason in ["not_tls", "protocol", "timeout"] {
        let series = format!("postern_tls_handshake_failures_total{{namespace=\"test\",workload=\"httpbin\",port=\"9080\",reason=\"{reason}\"}}");
        figures.add(
            &format!("postern's handshake failures, reason {reason}"),
            run.metric(&series),
        );
    }
    assert_eq!(app_bytes, 0, "bytes reached the app");
    assert_eq!(sink.connections(), 0, "connections reached the app");

    // The sink does count: a legitimate client's bytes arrive.
    runtime.block_on(async {
        let mut tls = client.mtls().await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        assert!(wait_until(Duration::from_secs(10), || sink.bytes() == 5));
    });
    record(&figures);
}
