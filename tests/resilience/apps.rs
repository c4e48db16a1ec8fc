//! Apps behind postern that record what reaches them: an echo (for byte-exact transfers) and a
//! sink (for proving that nothing reaches the app). Each records every connection's peer and
//! every byte received, as it arrives.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use postern::netns::Netns;

/// What the app does with the bytes it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    /// Sends every byte back, and half-closes when the client does.
    Echo,
    /// Keeps nothing and sends nothing.
    Sink,
}

/// What reached the app.
#[derive(Debug, Default)]
struct Received {
    connections: AtomicU64,
    bytes: AtomicU64,
    /// Connections per peer address.
    peers: Mutex<BTreeMap<IpAddr, u64>>,
}

/// An app listening inside a namespace; stops when dropped.
pub struct TestApp {
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Listens on `addr` inside `netns`, serving on `runtime`.
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        netns: &Netns,
        addr: SocketAddr,
        mode: AppMode,
    ) -> TestApp {
        let listener = netns
            .run(|| {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .expect("the app listens");
        let received = Arc::new(Received::default());
        let task = {
            let _guard = runtime.enter();
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            runtime.spawn(serve(listener, Arc::clone(&received), mode))
        };
        TestApp { received, task }
    }

    pub fn bytes(&self) -> u64 {
        self.received.bytes.load(Ordering::Acquire)
    }

    pub fn connections(&self) -> u64 {
        self.received.connections.load(Ordering::Acquire)
    }

    /// Connections per peer address, so far.
    pub fn peers(&self) -> BTreeMap<IpAddr, u64> {
        self.received.peers.lock().unwrap().clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, received: Arc<Received>, mode: AppMode) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors: pause rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        received.connections.fetch_add(1, Ordering::AcqRel);
        *received
            .peers
            .lock()
            .unwrap()
            .entry(peer.ip().to_canonical())
            .or_default() += 1;
        tokio::spawn(connection(stream, Arc::clone(&received), mode));
    }
}

async fn connection(mut stream: TcpStream, received: Arc<Received>, mode: AppMode) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        received.bytes.fetch_add(n as u64, Ordering::AcqRel);
        if mode == AppMode::Echo && stream.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}
