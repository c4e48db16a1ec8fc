//! The contestants, configured alike: L4 mutual-TLS terminators (TLS 1.3 only, client
//! certificate required and verified), one worker, no access log, in front of the same
//! backend on the namespace's loopback. Each serves the RSA set on one port and the ECDSA
//! set on another.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postern_testbed::{CertSet, KeyKind, Netns};

use super::measure::{pinned, run_load, Daemon, CLIENT_CPU, PROXY_CPU};

/// Where the backend listens.
pub const BACKEND_PORT: u16 = 8080;
/// postern's plaintext port (PeerAuthentication DISABLE, no `tls`).
pub const POSTERN_PLAIN_PORT: u16 = 9083;
/// haproxy's plaintext port (`mode tcp`, no TLS): a peer's figure next to postern's on the
/// paths without TLS.
pub const HAPROXY_PLAIN_PORT: u16 = 9183;
/// The port an nftables REDIRECT sends to postern's plaintext listener.
pub const REDIRECT_PORT: u16 = 9483;

/// The most open files a process may have here: the hard limit, which only
/// CAP_SYS_RESOURCE could raise. A proxy holds two per connection.
pub fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or(1024)
}

/// The connections a proxy is allowed at once: as many as their two descriptors each fit in
/// the open files limit, with a few to spare. postern's own default keeps 256 spare, which
/// would refuse the last of the harness's held connections.
fn max_connections() -> u64 {
    open_files_limit() / 2 - 50
}

/// `--nofile=HARD:HARD` for prlimit: the soft limit raised to the hard one.
fn open_files_arg() -> String {
    let limit = open_files_limit();
    format!("--nofile={limit}:{limit}")
}

/// Both certificate sets.
pub struct Certs {
    pub rsa: CertSet,
    pub ecdsa: CertSet,
}

impl Certs {
    pub fn get(&self, kind: KeyKind) -> &CertSet {
        match kind {
            KeyKind::Rsa2048 => &self.rsa,
            KeyKind::EcdsaP256 => &self.ecdsa,
        }
    }
}

/// A running TLS terminator and its two ports.
pub struct Proxy {
    pub name: &'static str,
    pub daemon: Daemon,
    rsa_port: u16,
    ecdsa_port: u16,
}

impl Proxy {
    fn spawn(
        name: &'static str,
        cmd: Command,
        work_dir: &Path,
        (rsa_port, ecdsa_port): (u16, u16),
    ) -> Result<Proxy> {
        Ok(Proxy {
            name,
            daemon: Daemon::spawn(name, cmd, work_dir)?,
            rsa_port,
            ecdsa_port,
        })
    }

    pub fn port(&self, kind: KeyKind) -> u16 {
        match kind {
            KeyKind::Rsa2048 => self.rsa_port,
            KeyKind::EcdsaP256 => self.ecdsa_port,
        }
    }
}

/// The load generator's arguments to reach `port`, over mutual TLS with `certs` or in clear.
pub fn target_args(port: u16, certs: Option<&CertSet>) -> Vec<String> {
    let mut args = vec!["--addr".to_string(), format!("127.0.0.1:{port}")];
    if let Some(set) = certs {
        for (flag, path) in [
            ("--ca", &set.ca_cert),
            ("--cert", &set.client_cert),
            ("--key", &set.client_key),
        ] {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
    }
    args
}

/// Waits until a request through `port` is answered (at most 15 s).
pub fn wait_serving(
    netns: &Netns,
    loadgen: &Path,
    port: u16,
    certs: Option<&CertSet>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut args = vec!["bulk".to_string()];
    args.extend(target_args(port, certs));
    args.extend(["--bytes", "128", "--direction", "down"].map(String::from));
    loop {
        let result = run_load(netns, loadgen, &args);
        match result {
            Ok(report) if report.ok == 1 => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(report) => bail!(
                "port {port} does not answer: {}",
                report.first_error.unwrap_or_default()
            ),
            Err(e) => return Err(e).with_context(|| format!("port {port} does not answer")),
        }
    }
}

/// The backend, on the load generator's core.
pub fn start_backend(netns: &Netns, loadgen: &Path, work_dir: &Path) -> Result<Daemon> {
    let mut cmd = pinned(netns, CLIENT_CPU, Path::new("prlimit"));
    cmd.arg(open_files_arg())
        .arg(loadgen)
        .args(["backend", "--listen"])
        .arg(format!("127.0.0.1:{BACKEND_PORT}"));
    Daemon::spawn("backend", cmd, work_dir)
}

/// `prlimit --nofile=... PROGRAM` inside the namespace, on the proxies' core.
fn proxy_command(netns: &Netns, program: &str) -> Command {
    let mut cmd = pinned(netns, PROXY_CPU, Path::new("prlimit"));
    cmd.arg(open_files_arg()).arg(program);
    cmd
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// postern with its real kernel side: the Sidecar's ports are steered by the sk_lookup
/// program attached to the namespace; nothing listens on them. postern itself runs in the
/// host's namespace, as on a node.
pub fn start_postern(
    netns: &Netns,
    bin: &Path,
    certs: &Certs,
    work_dir: &Path,
    bpffs_dir: &Path,
) -> Result<Proxy> {
    let config = work_dir.join("postern.yaml");
    let tls_port = |port: u16, name: &str, set: &CertSet| {
        format!(
            "  - port: {{number: {port}, protocol: TCP, name: {name}}}\n    \
             defaultEndpoint: 127.0.0.1:{BACKEND_PORT}\n    \
             tls:\n      mode: MUTUAL\n      minProtocolVersion: TLSV1_3\n      \
             serverCertificate: {}\n      privateKey: {}\n      caCertificates: {}\n",
            set.server_cert.display(),
            set.server_key.display(),
            set.ca_cert.display()
        )
    };
    let yaml = format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
         metadata: {{name: bench, namespace: bench}}\n\
         spec:\n  selector: {{matchLabels: {{app: bench}}}}\n  mtls: {{mode: DISABLE}}\n\
         ---\napiVersion: networking.istio.io/v1beta1\nkind: Sidecar\n\
         metadata: {{name: bench, namespace: bench}}\n\
         spec:\n  workloadSelector: {{labels: {{app: bench}}}}\n  ingress:\n{}{}  \
         - port: {{number: {POSTERN_PLAIN_PORT}, protocol: TCP, name: plain}}\n    \
         defaultEndpoint: 127.0.0.1:{BACKEND_PORT}\n\
         ---\napiVersion: postern.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: bench, namespace: bench, labels: {{app: bench}}}}\n\
         spec: {{networkNamespace: {}}}\n",
        tls_port(9080, "mtls-rsa", &certs.rsa),
        tls_port(9082, "mtls-ecdsa", &certs.ecdsa),
        netns.path().display(),
    );
    write(&config, &yaml)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", PROXY_CPU, "prlimit"])
        .arg(open_files_arg())
        .arg(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--namespace", "bench", "--bpffs"])
        .arg(bpffs_dir)
        .arg("--admin-socket")
        .arg(work_dir.join("postern-admin.sock"))
        .args(["--admin-address", "127.0.0.1:0"])
        .args(["--max-connections", &max_connections().to_string()])
        // One access-log line per connection is a cost the other contestants, configured
        // without access logs, do not pay.
        .env("POSTERN_LOG", "info,postern::access=off");
    let mut daemon = Daemon::spawn("postern", cmd, work_dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&daemon.log)
        .unwrap_or_default()
        .contains("postern is ready")
    {
        daemon.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "postern did not get ready within 20 s (see {})",
                daemon.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Proxy {
        name: "postern",
        daemon,
        rsa_port: 9080,
        ecdsa_port: 9082,
    })
}

pub fn start_haproxy(netns: &Netns, certs: &Certs, work_dir: &Path) -> Result<Proxy> {
    let (rsa_port, ecdsa_port) = (9180, 9182);
    let bind = |port: u16, set: &CertSet| {
        format!(
            "frontend tls{port}\n  \
             bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n  \
             default_backend app\n",
            set.server_pem.display(),
            set.ca_cert.display()
        )
    };
    let config = work_dir.join("haproxy.cfg");
    write(
        &config,
        &format!(
            "global\n  nbthread 1\n  maxconn {}\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  \
             timeout server 120s\n\
             {}{}\
             frontend plain\n  bind 127.0.0.1:{HAPROXY_PLAIN_PORT}\n  default_backend app\n\
             backend app\n  server app 127.0.0.1:{BACKEND_PORT}\n",
            // haproxy refuses to start unless every connection's two descriptors fit.
            max_connections(),
            bind(rsa_port, &certs.rsa),
            bind(ecdsa_port, &certs.ecdsa)
        ),
    )?;
    let mut cmd = proxy_command(netns, "haproxy");
    cmd.arg("-db").arg("-f").arg(&config);
    Proxy::spawn("haproxy", cmd, work_dir, (rsa_port, ecdsa_port))
}

pub fn start_nginx(netns: &Netns, certs: &Certs, work_dir: &Path) -> Result<Proxy> {
    let (rsa_port, ecdsa_port) = (9280, 9282);
    let server = |port: u16, set: &CertSet| {
        format!(
            "  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    \
             ssl_certificate_key {};\n    ssl_client_certificate {};\n    \
             ssl_verify_client on;\n    proxy_pass 127.0.0.1:{BACKEND_PORT};\n  }}\n",
            set.server_cert.display(),
            set.server_key.display(),
            set.ca_cert.display()
        )
    };
    let config = work_dir.join("nginx.conf");
    let error_log = work_dir.join("nginx-error.log");
    write(
        &config,
        &format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nworker_processes 1;\nworker_rlimit_nofile {};\n\
             pid {};\nerror_log {} warn;\n\
             events {{\n  worker_connections {};\n}}\n\
             stream {{\n  ssl_protocols TLSv1.3;\n{}{}}}\n",
            open_files_limit(),
            work_dir.join("nginx.pid").display(),
            error_log.display(),
            open_files_limit(),
            server(rsa_port, &certs.rsa),
            server(ecdsa_port, &certs.ecdsa)
        ),
    )?;
    let mut cmd = proxy_command(netns, "nginx");
    cmd.arg("-e")
        .arg(&error_log)
        .arg("-p")
        .arg(work_dir)
        .arg("-c")
        .arg(&config);
    Proxy::spawn("nginx", cmd, work_dir, (rsa_port, ecdsa_port))
}

pub fn start_stunnel(netns: &Netns, certs: &Certs, work_dir: &Path) -> Result<Proxy> {
    let (rsa_port, ecdsa_port) = (9380, 9382);
    let service = |port: u16, set: &CertSet| {
        format!(
            "[tls{port}]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{BACKEND_PORT}\n\
             cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\n\
             sslVersionMin = TLSv1.3\n",
            set.server_cert.display(),
            set.server_key.display(),
            set.ca_cert.display()
        )
    };
    let config = work_dir.join("stunnel.conf");
    write(
        &config,
        // Log level 3 (errors): its default, 5, logs every connection.
        &format!(
            "foreground = yes\npid =\ndebug = 3\n{}{}",
            service(rsa_port, &certs.rsa),
            service(ecdsa_port, &certs.ecdsa)
        ),
    )?;
    let mut cmd = proxy_command(netns, "stunnel4");
    cmd.arg(&config);
    Proxy::spawn("stunnel", cmd, work_dir, (rsa_port, ecdsa_port))
}

/// postern's listening port for its plaintext Sidecar port, in the namespace: the listener
/// (of postern's ones) that answers a plaintext request.
pub fn postern_plain_listener(netns: &Netns, loadgen: &Path, postern_pid: u32) -> Result<u16> {
    let out = netns.run(["ss", "-Htlnp"])?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let ports: Vec<u16> = listing
        .lines()
        .filter(|line| line.contains(&format!("pid={postern_pid},")))
        .filter_map(|line| {
            line.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    for port in &ports {
        let mut args = vec!["bulk".to_string()];
        args.extend(target_args(*port, None));
        args.extend(["--bytes", "128", "--direction", "down"].map(String::from));
        if run_load(netns, loadgen, &args).is_ok_and(|report| report.ok == 1) {
            return Ok(*port);
        }
    }
    bail!("none of postern's listeners in the namespace ({ports:?}) answers in clear")
}

/// Adds (or removes) `tcp dport REDIRECT_PORT redirect to :listener` for locally made
/// connections in the namespace. Only while it is measured: NAT turns connection tracking on
/// for every packet in the namespace, which would tax every other measurement.
pub fn redirect(netns: &Netns, listener: Option<u16>, work_dir: &Path) -> Result<()> {
    match listener {
        Some(port) => {
            let rules = work_dir.join("redirect.nft");
            write(
                &rules,
                &format!(
                    "table ip bench {{\n  chain out {{\n    \
                     type nat hook output priority -100;\n    \
                     tcp dport {REDIRECT_PORT} redirect to :{port}\n  }}\n}}\n"
                ),
            )?;
            netns.run([Path::new("nft"), Path::new("-f"), &rules])?;
        }
        None => {
            netns.run(["nft", "delete", "table", "ip", "bench"])?;
        }
    }
    Ok(())
}
