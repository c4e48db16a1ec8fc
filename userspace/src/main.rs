//! The `postern` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use postern::config::{self, LoadOptions};
use postern::daemon::{self, RunOptions};
use postern::policy::{PolicyTable, PortAction};
use postern::terminator::Timeouts;
use postern::tls::reload::{Secret, TlsSource};

/// Terminates TLS for a workload's inbound ports, steered there by eBPF, configured with the
/// Istio Sidecar and PeerAuthentication YAML you already have.
#[derive(Parser)]
#[command(name = "postern", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Intercept the configured ports and serve them until SIGINT or SIGTERM, then detach.
    /// SIGHUP, or a change of the configuration files, reloads the configuration.
    Run(RunArgs),
    /// Validate the configuration (YAML and TLS files) and print the effective policy table.
    Check(ConfigArgs),
    /// Ask the running daemon which certificates it serves, like `istioctl proxy-config secret`.
    Certs(CertsArgs),
    /// Exit 0 if the running daemon is ready, 1 (with the reasons) if not: an exec readiness
    /// probe. Not ready while any certificate update failed to load. After a failed
    /// configuration reload it stays ready (the previous configuration serves) and prints the
    /// error on a `warning:` line.
    Ready(AdminArgs),
    /// Change the running daemon's log filter, e.g. `debug` or `info,postern::access=off`.
    LogLevel(LogLevelArgs),
}

#[derive(Args)]
struct LogLevelArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A tracing filter: a level, or `target=level` directives separated by commas.
    filter: String,
}

#[derive(Args)]
struct AdminArgs {
    /// The running daemon's admin socket.
    #[arg(long, default_value = postern::admin::DEFAULT_SOCKET)]
    admin_socket: PathBuf,
}

#[derive(Args)]
struct CertsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = CertsFormat::Table)]
    output: CertsFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum CertsFormat {
    Table,
    Json,
}

#[derive(Args)]
struct ConfigArgs {
    /// YAML files (multi-document streams) or directories of them.
    #[arg(long = "config", short = 'c', required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// Namespace of documents that name none, like `kubectl -n`.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Istio's mesh root namespace: its selector-less PeerAuthentication applies mesh-wide.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// The mesh's trust domain: a Workload's SPIFFE ID is
    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, and peers must be of it.
    #[arg(long, default_value = config::DEFAULT_TRUST_DOMAIN, value_parser = parse_trust_domain)]
    trust_domain: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// bpffs directory where postern pins its kernel state.
    #[arg(long, default_value = "/sys/fs/bpf/postern")]
    bpffs: PathBuf,
    /// Unix socket (root only) where `postern certs` reaches the daemon.
    #[arg(long, default_value = postern::admin::DEFAULT_SOCKET)]
    admin_socket: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; port 0 picks a free one (logged).
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin_address: std::net::SocketAddr,
    /// Log a warning this long before a served certificate expires.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    expiry_warning: Duration,
    /// After SIGTERM or SIGINT, how long established connections may take to finish. The
    /// default fits inside Kubernetes' default 30 s termination grace period.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Longest time from accept to a finished TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Longest time to connect to the app.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long a PERMISSIVE port waits for the client's first bytes before treating the
    /// connection as a plaintext protocol where the server speaks first.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    detect_timeout: Duration,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Take over from the postern answering on --admin-socket, if one does: receive its
    /// listening sockets and pinned kernel state, serve, then let it drain and exit. No
    /// connection is refused or reset. Without a running postern, start as usual.
    #[arg(long)]
    takeover: bool,
    /// Reload the configuration on SIGHUP only; by default a change of the configuration
    /// files (looked at every second) reloads it too.
    #[arg(long)]
    no_watch_config: bool,
    /// Most connections held at once, all ports together; more are reset at once. Default:
    /// two descriptors per connection within the file-descriptor limit, less a reserve of 256.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run(args),
        Command::Certs(args) => certs(&args),
        Command::Ready(args) => ready(&args),
        Command::LogLevel(args) => log_level(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ConfigArgs) -> anyhow::Result<PolicyTable> {
    Ok(config::load(&args.config, &load_options(args))?)
}

fn load_options(args: &ConfigArgs) -> LoadOptions {
    LoadOptions {
        default_namespace: args.namespace.clone(),
        root_namespace: args.root_namespace.clone(),
        trust_domain: args.trust_domain.clone(),
    }
}

fn check(args: &ConfigArgs) -> anyhow::Result<()> {
    let table = load(args)?;
    print!("{}", config::render_table(&table));
    let mut problems = Vec::new();
    for workload in &table.workloads {
        if let Some(identity) = &workload.mesh {
            if let Err(e) = TlsSource::mesh(identity, Vec::new()) {
                problems.push(format!("{}: mesh identity: {e}", workload.id()));
            }
        }
        for port in &workload.ports {
            if let PortAction::Tls(settings) = &port.action {
                if let Err(e) = postern::tls::server_config(settings, port.protocol.alpn()) {
                    problems.push(format!("{}:{}: {e}", workload.id(), port.port));
                }
            }
        }
    }
    if problems.is_empty() {
        println!("configuration is valid");
        Ok(())
    } else {
        anyhow::bail!("TLS material is not usable:\n  {}", problems.join("\n  "))
    }
}

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_`.
fn parse_trust_domain(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a SPIFFE trust domain (lower-case letters, digits, '.', '-' and '_', \
             such as cluster.local), found {text:?}"
        ))
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    // SIGHUP's default action ends the process. Until the daemon catches it (before it reads
    // the configuration), one is dropped: the configuration it asks for is the one read next.
    // SAFETY: no other thread runs yet, and SIG_IGN installs no handler code.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .context("cannot ignore SIGHUP while starting")?;
    let set_log_filter = init_logging(args.log_format);
    let fd_limit = postern::resources::raise_fd_limit()
        .context("cannot read or raise the file descriptor limit (RLIMIT_NOFILE)")?;
    let max_connections = args.max_connections.map_or_else(
        || postern::resources::default_max_connections(fd_limit.now),
        |max| max as usize,
    );
    tracing::info!(
        soft_before = fd_limit.before,
        limit = fd_limit.now,
        max_connections,
        "file descriptor limit"
    );
    let options = RunOptions {
        load: load_options(&args.config),
        config: args.config.config,
        takeover: args.takeover,
        watch_config: !args.no_watch_config,
        bpffs: args.bpffs,
        admin_socket: args.admin_socket,
        admin_address: args.admin_address,
        expiry_warning: args.expiry_warning,
        drain_timeout: args.drain_timeout,
        timeouts: Timeouts {
            handshake: args.handshake_timeout,
            detect: args.detect_timeout,
            connect: args.connect_timeout,
        },
        max_connections,
    };
    let runtime = runtime_builder()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let process = daemon::Process {
            set_log_filter: Some(set_log_filter),
        };
        daemon::run(&options, process, shutdown).await
    })
}

/// One worker per core postern may run on. On a single core (pinned with `taskset`, or a
/// pod limited to one CPU) the current-thread scheduler does the same work without the
/// multi-threaded one's cross-thread wake-ups and work stealing, which cannot help there.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::thread::available_parallelism() {
        Ok(cores) if cores.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}

fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    let reply = postern::admin::request(&args.admin.admin_socket, "certs")?;
    match args.output {
        CertsFormat::Json => println!("{reply}"),
        CertsFormat::Table => {
            let secrets: Vec<Secret> = serde_json::from_str(&reply)
                .context("the daemon's answer is not the expected JSON")?;
            print!("{}", render_secrets(&secrets));
        }
    }
    Ok(())
}

fn log_level(args: &LogLevelArgs) -> anyhow::Result<()> {
    let request = format!("log-level {}", args.filter);
    println!(
        "{}",
        postern::admin::request(&args.admin.admin_socket, &request)?
    );
    Ok(())
}

fn ready(args: &AdminArgs) -> anyhow::Result<()> {
    let reply = postern::admin::request(&args.admin_socket, "ready")?;
    println!("{reply}");
    // A warning may follow on the next lines (a failed configuration reload): still ready.
    if reply.lines().next() == Some("ready") {
        Ok(())
    } else {
        anyhow::bail!("the daemon is not ready")
    }
}

/// The table of `istioctl proxy-config secret`, then one line per error.
fn render_secrets(secrets: &[Secret]) -> String {
    let header = [
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ];
    let rows: Vec<[String; 7]> = secrets
        .iter()
        .map(|s| {
            [
                s.resource_name.clone(),
                s.kind.clone(),
                s.status.clone(),
                s.valid_cert.to_string(),
                s.serial_number.clone(),
                s.not_after.clone(),
                s.not_before.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("     ").trim_end())
    };
    let mut out = line(&header);
    for row in &rows {
        out += &line(&row.each_ref().map(String::as_str));
    }
    for secret in secrets {
        if let Some(error) = &secret.error {
            out += &format!(
                "\n{}: ERROR: {error}\n  (the previous material keeps serving)\n",
                secret.resource_name
            );
        }
    }
    out
}

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Logs to stderr, filtered by `POSTERN_LOG` (default `info`); returns how to change the
/// filter later.
fn init_logging(format: LogFormat) -> postern::admin::SetLogFilter {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{fmt, reload, EnvFilter};

    let filter = EnvFilter::try_from_env("POSTERN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only for a person at a terminal: in files, escape codes would break grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    Box::new(move |spec| {
        let filter = EnvFilter::try_new(spec).map_err(|e| format!("{spec:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// `500ms`, `10s`, `2m`, `12h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}`: expected a number with a unit, such as 10s or 500ms"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number with a unit, such as 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        "d" => Ok(Duration::from_secs(number * 86_400)),
        _ => Err(format!("`{text}`: unit must be ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("unit"));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("10w")
            .unwrap_err()
            .contains("ms, s, m, h or d"));
    }
}
