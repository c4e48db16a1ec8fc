//! Small TCP apps for tests that need more than httpbin: byte-exact transfers and half-close.
//! Each runs on a thread, its listening socket created inside the pod's network namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern::netns::Netns;
use postern::policy::NetnsRef;
use sha2::{Digest, Sha256};

/// How long an app waits for its one connection.
const ACCEPT_DEADLINE: Duration = Duration::from_secs(60);

/// What an app received from its one client.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub bytes: u64,
    pub sha256: Vec<u8>,
}

pub enum Behaviour {
    /// Sends back what it reads; once the client's end of stream arrives, half-closes too.
    Echo,
    /// Sends this, then half-closes, while reading until the client's end of stream.
    SendThenReceive(Arc<Vec<u8>>),
}

/// An app serving one connection; `received()` waits for its report.
pub struct App {
    report: mpsc::Receiver<std::io::Result<Received>>,
}

impl App {
    pub fn spawn(netns: &Path, addr: SocketAddr, behaviour: Behaviour) -> App {
        let netns = Netns::open(&NetnsRef::Path(netns.to_path_buf())).unwrap();
        let listener = netns.run(|| TcpListener::bind(addr)).unwrap();
        let (tx, report) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(serve_one(&listener, behaviour));
        });
        App { report }
    }

    pub fn received(&self, timeout: Duration) -> Received {
        self.report
            .recv_timeout(timeout)
            .expect("the app finished in time")
            .expect("the app's connection worked")
    }
}

fn serve_one(listener: &TcpListener, behaviour: Behaviour) -> std::io::Result<Received> {
    let stream = accept_within(listener, ACCEPT_DEADLINE)?;
    match behaviour {
        Behaviour::Echo => {
            let mut writer = stream.try_clone()?;
            let received = read_to_end(&stream, |chunk| writer.write_all(chunk))?;
            writer.shutdown(Shutdown::Write)?;
            Ok(received)
        }
        Behaviour::SendThenReceive(data) => {
            let mut writer = stream.try_clone()?;
            let sender = std::thread::spawn(move || -> std::io::Result<()> {
                writer.write_all(&data)?;
                writer.shutdown(Shutdown::Write)
            });
            let received = read_to_end(&stream, |_| Ok(()))?;
            sender.join().expect("sender thread")?;
            Ok(received)
        }
    }
}

fn accept_within(listener: &TcpListener, deadline: Duration) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let until = Instant::now() + deadline;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_to_end(
    mut stream: &TcpStream,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<Received> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Ok(Received {
                bytes,
                sha256: hasher.finalize().to_vec(),
            });
        }
        hasher.update(&buffer[..n]);
        each(&buffer[..n])?;
        bytes += n as u64;
    }
}

/// `len` bytes that depend only on `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic, not compressible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}
