//! `postern-loadgen`: the backend and the load generator that `cargo xtask bench` runs.
//!
//! h2load and wrk cannot present a client certificate, so the benchmark brings its own
//! client: tokio and rustls, one thread (the harness pins it to a core of its own). Every
//! response is checked (status, length, every body byte); a run prints one JSON line with
//! what it counted, errors included, and the harness reports a run with errors as failed.
//!
//! The backend is a minimal HTTP/1.1 server, fast enough that it never is the bottleneck:
//! `GET /bytes/N` answers N bytes of `x`, `POST /upload` answers the number of body bytes
//! it received.

mod backend;
mod client;
mod http;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "postern-loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP/1.1 on ADDR until killed.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// New connections, one request each (`Connection: close`), for DURATION.
    Connections {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Keep-alive requests on CONNECTIONS connections for DURATION, as fast as answered or at
    /// a fixed total RATE; latency percentiles.
    Requests {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Requests per second over all connections (latency counted from each request's
        /// scheduled time, so a stall is not hidden); omitted: as fast as answered.
        #[arg(long)]
        rate: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// One connection moving BYTES in one direction, COUNT times.
    Bulk {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        bytes: u64,
        /// Transfers, one after the other on the same connection.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, value_enum)]
        direction: Direction,
    },
    /// Opens CONNECTIONS connections, one request on each, prints a JSON line, then holds
    /// them idle until standard input closes.
    Hold {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        connections: usize,
    },
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// Where the proxy (or the backend) listens.
    #[arg(long)]
    addr: SocketAddr,
    /// Speak TLS: the CA that signed the server's certificate (and the client's).
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    /// The client certificate (PEM) presented to the server.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The name the server's certificate is checked against.
    #[arg(long, default_value = "httpbin.test.svc.cluster.local")]
    server_name: String,
    /// Resume TLS sessions (tickets or session IDs) instead of a full handshake every time.
    #[arg(long)]
    resume: bool,
}

#[derive(Args, Clone, Copy)]
struct RunArgs {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Size of each response body.
    #[arg(long, default_value_t = 128)]
    body: u64,
}

impl RunArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Direction {
    /// Client to server (`POST /upload`).
    Up,
    /// Server to client (`GET /bytes/N`).
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("postern-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Backend { listen } => backend::serve(listen).await,
            Command::Connections {
                target,
                concurrency,
                run,
            } => scenarios::connections(target.build()?, concurrency, run).await,
            Command::Requests {
                target,
                connections,
                rate,
                run,
            } => scenarios::requests(target.build()?, connections, rate, run).await,
            Command::Bulk {
                target,
                bytes,
                count,
                direction,
            } => scenarios::bulk(&target.build()?, bytes, count, direction).await,
            Command::Hold {
                target,
                connections,
            } => scenarios::hold(target.build()?, connections).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl TargetArgs {
    fn build(&self) -> anyhow::Result<client::Target> {
        let tls = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(client::TlsClient::new(
                ca,
                cert,
                key,
                &self.server_name,
                self.resume,
            )?),
            _ => None,
        };
        Ok(client::Target {
            addr: self.addr,
            tls,
        })
    }
}

/// Ten thousand held connections need more descriptors than the usual soft limit of 1024.
/// As root the hard limit can be raised too; otherwise the soft one goes up to it.
fn raise_open_files_limit() {
    const WANTED: libc::rlim_t = 200_000;
    let wanted = libc::rlimit {
        rlim_cur: WANTED,
        rlim_max: WANTED,
    };
    // SAFETY: setrlimit/getrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return;
        }
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) == 0 {
            current.rlim_cur = current.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &current);
        }
    }
}
