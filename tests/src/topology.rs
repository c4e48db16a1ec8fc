//! The seed's topology: the httpbin pod and an external client, each in its own network
//! namespace, joined by a veth pair.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::certs::SeedCerts;
use crate::cmd::tail;
use crate::netns::Netns;
use crate::seed::{seed_config, EXTERNAL_PORT, SEED_SIDECAR};

/// The pod's addresses.
pub const POD_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const POD_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The external client's addresses.
pub const CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// The user agent of the test bed's own readiness probe; [`SeedTopology::httpbin_requests`]
/// does not count its requests.
const READINESS_USER_AGENT: &str = "postern-testbed-readiness-probe";

/// How to build a [`SeedTopology`].
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// Fixed names `(pod, client)` for the namespaces, instead of unique `pt-...` ones.
    pub names: Option<(String, String)>,
    /// A directory to use (created if missing, never removed) instead of a fresh temp dir.
    pub work_dir: Option<PathBuf>,
    /// Start httpbin in the pod (default: yes).
    pub httpbin: bool,
    /// Extra gunicorn arguments, e.g. `["--threads", "8"]` (default: none).
    pub httpbin_extra_args: Vec<String>,
    /// Start httpbin in a session of its own, so that it outlives the caller if kept.
    pub detach: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            names: None,
            work_dir: None,
            httpbin: true,
            httpbin_extra_args: Vec::new(),
            detach: false,
        }
    }
}

impl TopologyOptions {
    /// Namespaces named `httpbin` and `external`, files in `work_dir`, httpbin detached.
    pub fn demo(work_dir: &Path) -> Self {
        TopologyOptions {
            names: Some(("httpbin".into(), "external".into())),
            work_dir: Some(work_dir.to_path_buf()),
            detach: true,
            ..TopologyOptions::default()
        }
    }
}

/// The seed's world, in network namespaces on this host:
///
/// ```text
///  client netns (external)                  pod netns (httpbin)
///  eth0 198.18.0.1/24 2001:db8::1/64 ──veth── eth0 198.18.0.2/24 2001:db8::2/64
///                                            lo   gunicorn httpbin:app on 127.0.0.1:80
/// ```
///
/// plus a work dir with the seed's certificates. Dropping it stops httpbin, deletes both
/// namespaces and removes the temp dir.
pub struct SeedTopology {
    httpbin: Option<Child>,
    pod: Netns,
    client: Netns,
    certs: SeedCerts,
    work_dir: PathBuf,
    temp_dir: Option<tempfile::TempDir>,
}

/// What [`SeedTopology::keep`] leaves running.
#[derive(Clone, Debug)]
pub struct KeptTopology {
    pub pod_netns: String,
    pub client_netns: String,
    pub httpbin_pid: Option<u32>,
    pub work_dir: PathBuf,
}

impl SeedTopology {
    pub fn build(options: TopologyOptions) -> Result<SeedTopology> {
        crate::process::require_root()?;
        let (pod, client) = match &options.names {
            Some((pod, client)) => (Netns::named(pod)?, Netns::named(client)?),
            None => (Netns::new("httpbin")?, Netns::new("external")?),
        };
        let (work_dir, temp_dir) = match &options.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("postern-testbed-")
                    .tempdir()
                    .context("cannot create a temp dir")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        connect(&pod, &client).context("cannot wire the seed topology")?;
        let certs = SeedCerts::generate(&work_dir)?;
        let mut topology = SeedTopology {
            httpbin: None,
            pod,
            client,
            certs,
            work_dir,
            temp_dir,
        };
        if options.httpbin {
            topology.start_httpbin(&options)?;
        }
        Ok(topology)
    }

    fn start_httpbin(&mut self, options: &TopologyOptions) -> Result<()> {
        let access_log = self.httpbin_access_log_path();
        let output_path = self.work_dir.join("httpbin.log");
        File::create(&access_log)
            .with_context(|| format!("cannot create {}", access_log.display()))?;
        let output = File::create(&output_path)
            .with_context(|| format!("cannot create {}", output_path.display()))?;
        let mut cmd = self.pod.command("gunicorn");
        cmd.args(["-b", "127.0.0.1:80", "--access-logfile"])
            .arg(&access_log)
            .args(&options.httpbin_extra_args)
            .arg("httpbin:app")
            .current_dir(&self.work_dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        if options.detach {
            detach(&mut cmd);
        }
        let child = cmd.spawn().context("cannot start gunicorn (httpbin)")?;
        self.httpbin = Some(child);
        self.wait_httpbin_ready(&output_path)
    }

    fn wait_httpbin_ready(&mut self, output_path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = "http://127.0.0.1:80/status/200";
        loop {
            let probe = self.pod.output([
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "-A",
                READINESS_USER_AGENT,
                url,
            ])?;
            if probe.stdout == b"200" {
                return Ok(());
            }
            let exited = match self.httpbin.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(output_path).unwrap_or_default();
                let what = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => "did not answer within 30 s".to_string(),
                };
                bail!(
                    "httpbin (gunicorn in netns {}) {what}; its output:\n{}",
                    self.pod.name(),
                    tail(&log, 30)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The pod's namespace (role `httpbin`).
    pub fn pod(&self) -> &Netns {
        &self.pod
    }

    /// The external client's namespace (role `external`).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn pod_netns_path(&self) -> &Path {
        self.pod.path()
    }

    pub fn pod_ipv4(&self) -> Ipv4Addr {
        POD_IPV4
    }

    pub fn pod_ipv6(&self) -> Ipv6Addr {
        POD_IPV6
    }

    pub fn client_ipv4(&self) -> Ipv4Addr {
        CLIENT_IPV4
    }

    pub fn client_ipv6(&self) -> Ipv6Addr {
        CLIENT_IPV6
    }

    /// Both pod addresses, IPv4 first.
    pub fn pod_ips(&self) -> [IpAddr; 2] {
        [POD_IPV4.into(), POD_IPV6.into()]
    }

    /// The topology's own directory: certificates, configs, logs.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn certs(&self) -> &SeedCerts {
        &self.certs
    }

    /// `WORK/tls-certs` (`tls.crt`, `tls.key`): bind-mounted at `/etc/istio/tls-certs`.
    pub fn tls_certs_dir(&self) -> &Path {
        &self.certs.tls_certs_dir
    }

    /// `WORK/tls-ca-certs` (`ca.crt`): bind-mounted at `/etc/istio/tls-ca-certs`.
    pub fn tls_ca_certs_dir(&self) -> &Path {
        &self.certs.tls_ca_certs_dir
    }

    /// Writes the seed's manifests to `WORK/config` with the Workload pointing at the pod's
    /// namespace; returns their paths (see [`seed_config`]).
    pub fn seed_config(&self) -> Result<Vec<PathBuf>> {
        seed_config(&self.work_dir.join("config"), self.pod.path())
    }

    /// The seed's manifests (see [`SeedTopology::seed_config`]), but the external port's
    /// endpoint is the app on that very port, `127.0.0.1:9080`: for an app that listens on the
    /// intercepted port itself, which only postern's connections from 127.0.0.6 may reach.
    pub fn seed_config_app_on_external_port(&self) -> Result<Vec<PathBuf>> {
        let same_port = SEED_SIDECAR.replacen(
            "defaultEndpoint: 0.0.0.0:80",
            &format!("defaultEndpoint: 127.0.0.1:{EXTERNAL_PORT}"),
            1,
        );
        let sidecar = self.work_dir.join("sidecar-same-port.yaml");
        std::fs::write(&sidecar, same_port)
            .with_context(|| format!("cannot write {}", sidecar.display()))?;
        Ok(self
            .seed_config()?
            .into_iter()
            .map(|path| {
                if path.ends_with("sidecar.yaml") {
                    sidecar.clone()
                } else {
                    path
                }
            })
            .collect())
    }

    /// httpbin's access log (gunicorn `--access-logfile`).
    pub fn httpbin_access_log_path(&self) -> PathBuf {
        self.work_dir.join("httpbin-access.log")
    }

    /// The requests httpbin has answered, one access-log line each, without the test bed's
    /// readiness probes.
    pub fn httpbin_access_log(&self) -> Result<Vec<String>> {
        let path = self.httpbin_access_log_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.contains(READINESS_USER_AGENT))
            .map(str::to_string)
            .collect())
    }

    /// How many requests httpbin has answered (not counting the readiness probes). gunicorn
    /// writes the line just after the response, so it can trail what the client saw by a few
    /// milliseconds: after a request that should have reached httpbin, use
    /// [`SeedTopology::wait_httpbin_requests`].
    pub fn httpbin_requests(&self) -> Result<usize> {
        Ok(self.httpbin_access_log()?.len())
    }

    /// Waits (at most `timeout`) until httpbin has answered at least `at_least` requests;
    /// returns the count then, which is below `at_least` on timeout.
    pub fn wait_httpbin_requests(&self, at_least: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.httpbin_requests()?;
            if count >= at_least || Instant::now() >= deadline {
                return Ok(count);
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The pid of gunicorn's master process, if httpbin was started.
    pub fn httpbin_pid(&self) -> Option<u32> {
        self.httpbin.as_ref().map(Child::id)
    }

    /// Leaves everything running and in place; returns what to tear down later.
    pub fn keep(mut self) -> KeptTopology {
        let httpbin_pid = self.httpbin.take().map(|child| child.id());
        if let Some(temp) = self.temp_dir.take() {
            let _ = temp.keep();
        }
        self.pod.disarm();
        self.client.disarm();
        KeptTopology {
            pod_netns: self.pod.name().to_string(),
            client_netns: self.client.name().to_string(),
            httpbin_pid,
            work_dir: self.work_dir.clone(),
        }
    }
}

impl Drop for SeedTopology {
    fn drop(&mut self) {
        if let Some(mut child) = self.httpbin.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Then the fields drop: the namespaces (killing gunicorn's workers), the temp dir.
    }
}

/// Puts the spawned process in a session of its own (`setsid`), so that it outlives us and a
/// terminal's signals do not reach it.
pub(crate) fn detach(cmd: &mut std::process::Command) {
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// veth `eth0` in both namespaces, the seed's addresses, `lo` up.
fn connect(pod: &Netns, client: &Netns) -> Result<()> {
    pod.link_veth(
        ("eth0", POD_IPV4, POD_IPV6),
        client,
        ("eth0", CLIENT_IPV4, CLIENT_IPV6),
    )
}
