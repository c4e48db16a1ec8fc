//! The mesh around the seed: mesh certificates (a root CA, SPIFFE workload certificates) and
//! an in-mesh client workload (the seed's `sleep` in namespace `test`) with its own network
//! namespace and cgroup v2 directory.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::run_checked;
use crate::curl::{bounded_args, run_curl, CurlResult};
use crate::netns::Netns;
use crate::seed::NAMESPACE;
use crate::topology::{SeedTopology, POD_IPV4, POD_IPV6};

/// The mesh's trust domain (postern's default, Istio's default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Another trust domain, whose certificates the mesh must refuse.
pub const OTHER_TRUST_DOMAIN: &str = "other.example";

/// The in-mesh client's address, on its own link to the pod.
pub const MESH_CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The pod's address on the in-mesh client's link. The client reaches the pod's seed address
/// (`198.18.0.2`) through it.
pub const POD_MESH_LINK_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The same link's IPv6 addresses; the client reaches the pod's `2001:db8::2` through it.
pub const MESH_CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const POD_MESH_LINK_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

/// Every cgroup the test bed makes is `<cgroup2 mount>/postern-test-<pid>-<n>`;
/// [`crate::sweep_leftovers`] removes whatever is left of them.
pub const TEST_CGROUP_PREFIX: &str = "postern-test-";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The virtual IP the test bed gives the seed's Service (the seed's `kubectl get svc` shows
/// `10.100.78.113`; any address works, as connects to it never leave the client).
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 78, 113);

/// The seed's httpbin Service, verbatim but for `clusterIP`, which Kubernetes would assign.
pub fn seed_service() -> String {
    let service = crate::seed::SEED_DEPLOYMENT
        .split("---\n")
        .find(|document| document.contains("kind: Service\n"))
        .expect("the seed's deployment has a Service");
    service.replacen("spec:\n", &format!("spec:\n  clusterIP: {SERVICE_IP}\n"), 1)
}

/// `spiffe://DOMAIN/ns/test/sa/ACCOUNT`.
pub fn spiffe_id(domain: &str, service_account: &str) -> String {
    format!("spiffe://{domain}/ns/{NAMESPACE}/sa/{service_account}")
}

/// A mesh root CA and the workload certificates it issues, each in a directory laid out as
/// cert-manager's csi-driver-spiffe mounts it: `tls.crt`, `tls.key`, `ca.crt`.
#[derive(Clone, Debug)]
pub struct MeshCerts {
    dir: PathBuf,
    /// The root CA (`root.crt`), every workload directory's `ca.crt`.
    pub root_cert: PathBuf,
}

impl MeshCerts {
    /// Makes the root CA in `dir` with openssl.
    pub fn generate(dir: &Path) -> Result<MeshCerts> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-sha256",
                "-nodes",
                "-days",
                "365",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-subj",
                "/O=cluster.local/CN=mesh root",
                "-keyout",
                "root.key",
                "-out",
                "root.crt",
            ],
        )?;
        Ok(MeshCerts {
            root_cert: dir.join("root.crt"),
            dir: dir.to_path_buf(),
        })
    }

    /// Issues a workload certificate whose only subjectAltName is the URI `spiffe_id`, with
    /// subject `O=cluster.local, CN=NAME`, into `DIR/NAME/` (`tls.crt`, `tls.key`, `ca.crt`);
    /// returns that directory.
    pub fn issue(&self, name: &str, spiffe_id: &str) -> Result<PathBuf> {
        self.issue_named(name, spiffe_id, name)
    }

    /// [`MeshCerts::issue`] with `common_name` as the subject's CN, which access logs show: a
    /// renewal that can be told from the certificate it replaces.
    pub fn issue_named(&self, name: &str, spiffe_id: &str, common_name: &str) -> Result<PathBuf> {
        let out = self.dir.join(name);
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let extensions = out.join("extensions.cnf");
        std::fs::write(
            &extensions,
            format!(
                "subjectAltName = URI:{spiffe_id}\n\
                 extendedKeyUsage = serverAuth, clientAuth\n\
                 keyUsage = critical, digitalSignature, keyAgreement\n\
                 basicConstraints = critical, CA:FALSE\n"
            ),
        )?;
        let serial = NEXT_ID.fetch_add(1, Ordering::Relaxed) + 100;
        let at = |file: &str| out.join(file).display().to_string();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-subj",
                &format!("/O=cluster.local/CN={common_name}"),
                "-keyout",
                &at("tls.key"),
                "-out",
                &at("tls.csr"),
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-sha256",
                "-days",
                "365",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-set_serial",
                &serial.to_string(),
                "-extfile",
                &at("extensions.cnf"),
                "-in",
                &at("tls.csr"),
                "-out",
                &at("tls.crt"),
            ],
        )?;
        std::fs::copy(&self.root_cert, out.join("ca.crt"))
            .with_context(|| format!("cannot copy the root CA into {}", out.display()))?;
        Ok(out)
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_checked(Command::new("openssl").args(args).current_dir(dir))
        .context("cannot make the mesh certificates")?;
    Ok(())
}

/// A cgroup v2 directory that removes itself, unless kept: every process in it is killed
/// first.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    remove_on_drop: bool,
}

impl Cgroup {
    /// A new cgroup `<cgroup2 mount>/postern-test-<pid>-<n>`.
    pub fn new() -> Result<Cgroup> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Cgroup::named(&format!("{TEST_CGROUP_PREFIX}{}-{n}", std::process::id()))
    }

    /// A new cgroup `<cgroup2 mount>/NAME`; fails if it exists.
    pub fn named(name: &str) -> Result<Cgroup> {
        let path = cgroup2_mount()?.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create cgroup {}", path.display()))?;
        Ok(Cgroup {
            path,
            remove_on_drop: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the cgroup (and what runs in it) in place; returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.remove_on_drop = false;
        self.path.clone()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = remove_cgroup(&self.path) {
                eprintln!("postern-testbed: {e:#}");
            }
        }
    }
}

/// Kills the processes in the cgroup at `path` and removes it.
pub fn remove_cgroup(path: &Path) -> Result<()> {
    for _ in 0..100 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<u32> = procs.lines().filter_map(|pid| pid.parse().ok()).collect();
        if pids.is_empty() && std::fs::remove_dir(path).is_ok() {
            return Ok(());
        }
        for pid in pids {
            let _ = crate::process::Signal::Kill.send(pid);
        }
        sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir(path).with_context(|| format!("cannot remove cgroup {}", path.display()))
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified system, `/sys/fs/cgroup/unified`
/// on a hybrid one.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("cannot read mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .context("cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}

/// The seed's in-mesh `sleep` client: its own network namespace, linked to the pod
/// (`198.18.1.1` ↔ `198.18.1.2`, `2001:db8:1::1` ↔ `2001:db8:1::2`, with routes to the pod's
/// seed addresses `198.18.0.2` and `2001:db8::2`), and its own cgroup, where every command it
/// runs is placed. Dropping it kills those and removes both.
pub struct MeshClient {
    // Dropped in order: the cgroup (its processes are killed), then the namespace.
    cgroup: Cgroup,
    netns: Netns,
}

impl MeshClient {
    /// A client with a unique namespace (`pt-...-sleep`) and cgroup (`postern-test-...`).
    pub fn attach(topology: &SeedTopology) -> Result<MeshClient> {
        MeshClient::wire(topology, Netns::new("sleep")?, Cgroup::new()?)
    }

    /// A client with namespace `netns` and cgroup `cgroup` (for the demo, whose commands are
    /// copy-pasted).
    pub fn attach_named(topology: &SeedTopology, netns: &str, cgroup: &str) -> Result<MeshClient> {
        MeshClient::wire(topology, Netns::named(netns)?, Cgroup::named(cgroup)?)
    }

    /// Leaves the namespace and cgroup in place; returns their names and path.
    pub fn keep(self) -> (String, PathBuf) {
        let MeshClient { cgroup, netns } = self;
        (netns.keep(), cgroup.keep())
    }

    fn wire(topology: &SeedTopology, netns: Netns, cgroup: Cgroup) -> Result<MeshClient> {
        let pod = topology.pod();
        netns
            .link_veth(
                ("eth0", MESH_CLIENT_IPV4, MESH_CLIENT_IPV6),
                pod,
                ("eth1", POD_MESH_LINK_IPV4, POD_MESH_LINK_IPV6),
            )
            .context("cannot link the mesh client to the pod")?;
        netns.ip([
            "route",
            "add",
            &format!("{POD_IPV4}/32"),
            "via",
            &POD_MESH_LINK_IPV4.to_string(),
        ])?;
        netns.ip([
            "-6",
            "route",
            "add",
            &format!("{POD_IPV6}/128"),
            "via",
            &POD_MESH_LINK_IPV6.to_string(),
        ])?;
        Ok(MeshClient { cgroup, netns })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// `PROGRAM ARGS...` inside the client's cgroup and network namespace, as a container of
    /// the pod runs: a shell joins the cgroup, then execs `nsenter` into the namespace.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec nsenter --net="$@""#)
            .arg("sh")
            .arg(self.cgroup.path())
            .arg(self.netns.path())
            .arg(program)
            .args(args);
        cmd
    }

    /// `curl --max-time 20 ARGS...` as the in-mesh client.
    pub fn curl<I, S>(&self, args: I) -> Result<CurlResult>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_curl(&mut self.command("curl", bounded_args(args)))
    }

    /// The Workload document of the client: namespace `test`, labels `app: sleep`, service
    /// account `sleep`, its certificates in `certificates`, its cgroup captured.
    pub fn workload(&self, certificates: &Path) -> String {
        format!(
            "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: sleep\n  \
             namespace: {NAMESPACE}\n  labels:\n    app: sleep\nspec:\n  networkNamespace: {}\n  \
             serviceAccount: sleep\n  meshCertificates: {}\n  cgroup: {}\n",
            self.netns.path().display(),
            certificates.display(),
            self.cgroup.path().display()
        )
    }
}

/// The seed's httpbin Workload document for `topology`, with the mesh identity of service
/// account `httpbin` from `certificates`.
pub fn httpbin_mesh_workload(topology: &SeedTopology, certificates: &Path) -> String {
    format!(
        "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: httpbin\n  \
         namespace: {NAMESPACE}\n  labels:\n    app: httpbin\n    version: v1\nspec:\n  \
         networkNamespace: {}\n  serviceAccount: httpbin\n  meshCertificates: {}\n",
        topology.pod_netns_path().display(),
        certificates.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_service_gets_a_cluster_ip_and_nothing_else() {
        let service = seed_service();
        assert!(
            service.starts_with("apiVersion: v1\nkind: Service\n"),
            "{service}"
        );
        assert!(
            service.contains("spec:\n  clusterIP: 10.100.78.113\n  ports:\n"),
            "{service}"
        );
        assert_eq!(
            service.replacen("  clusterIP: 10.100.78.113\n", "", 1),
            crate::seed::SEED_DEPLOYMENT.split("---\n").nth(1).unwrap()
        );
    }
}
