//! `cargo xtask demo [--keep | --down]`: the seed, re-enacted with postern on this host.
//!
//! Network namespaces `httpbin` (the pod), `sleep` (the client inside the mesh, with its own
//! cgroup) and `external` (the client outside the mesh), the seed's certificates and
//! manifests, mesh identities for both workloads, postern, and the seed's Verification
//! section, each request printed as a user would type it, with its outcome against the seed's
//! expectation.
//! `POSTERN_BIN=PATH` uses that binary instead of building one (`cargo build -p postern`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postern_testbed::{
    cgroup2_mount, curl, display_command, httpbin_mesh_workload, remove_cgroup, require_root,
    seed_curl_args, seed_service, shell_quote, spiffe_id, stop_process, CurlResult, MeshCerts,
    MeshClient, Netns, Postern, PosternOptions, SeedRequest, SeedTopology, TopologyOptions,
    NAMESPACE, SEED_PEER_AUTHENTICATION_DEFAULT, SEED_PEER_AUTHENTICATION_HTTPBIN, SEED_SIDECAR,
    SERVICE_IP, TRUST_DOMAIN,
};

use crate::process::{cargo, run as run_command, target_dir};

const DEMO_DIR: &str = "/run/postern-demo";
const POD_NETNS: &str = "httpbin";
const CLIENT_NETNS: &str = "external";
const MESH_CLIENT_NETNS: &str = "sleep";
/// The in-mesh client's cgroup, under the cgroup v2 mount.
const MESH_CLIENT_CGROUP: &str = "postern-demo-sleep";
const BPFFS_DIR: &str = "/sys/fs/bpf/postern-demo";

/// The in-mesh step: the seed's "Verify internal mesh connectivity on port 8080", to the
/// seed's Service (given a `clusterIP`), whose 8080 targets the pod's 9081.
const MESH_STEP: (&str, &str) = (
    "a",
    "internal mesh connectivity on port 8080: plain http from sleep, inside the mesh, to the Service",
);
const MESH_URL: &str = "http://httpbin:8080/status/200";
const MESH_EXPECTATION: &str = "HTTP 200 from httpbin, carried over mesh mTLS by postern";

/// The rest of the seed's Verification section: the client outside the mesh.
const STEPS: [(&str, &str, SeedRequest); 3] = [
    (
        "b",
        "mTLS with the seed's client certificate to the external port",
        SeedRequest::ExternalMtls,
    ),
    (
        "c",
        "the same without a client certificate",
        SeedRequest::ExternalNoClientCert,
    ),
    (
        "d",
        "plain http to the internal port, from outside the mesh",
        SeedRequest::InternalPlaintext,
    ),
];

fn state_file() -> PathBuf {
    Path::new(DEMO_DIR).join("state")
}

fn work_dir() -> PathBuf {
    Path::new(DEMO_DIR).join("work")
}

pub fn run(keep: bool) -> Result<()> {
    require_root()?;
    crate::setup::run()?;
    let existing: Vec<&str> = [POD_NETNS, CLIENT_NETNS, MESH_CLIENT_NETNS]
        .into_iter()
        .filter(|name| Netns::exists(name))
        .collect();
    if !existing.is_empty() || state_file().exists() {
        bail!(
            "a demo is already set up here (network namespaces: {}; state file {}): \
             tear it down with `cargo xtask demo --down`",
            if existing.is_empty() {
                "none".to_string()
            } else {
                existing.join(", ")
            },
            if state_file().exists() {
                "present"
            } else {
                "absent"
            },
        );
    }
    let cgroup = cgroup2_mount()?.join(MESH_CLIENT_CGROUP);
    if cgroup.exists() {
        bail!(
            "a demo is already set up here (cgroup {}): tear it down with `cargo xtask demo --down`",
            cgroup.display()
        );
    }
    let result = demo(keep);
    if !state_file().exists() {
        // Not kept (or failed before it could be): the namespaces and postern are gone with
        // their RAII values; the files go too.
        let _ = std::fs::remove_dir_all(work_dir());
        let _ = std::fs::remove_dir(DEMO_DIR);
    }
    result
}

fn demo(keep: bool) -> Result<()> {
    let bin = match std::env::var_os("POSTERN_BIN") {
        Some(bin) => {
            heading("postern from POSTERN_BIN");
            PathBuf::from(bin)
        }
        None => {
            heading("Build postern");
            run_command(cargo().args(["build", "-p", "postern"]))?;
            target_dir()?.join("debug/postern")
        }
    };
    println!("{}", bin.display());
    let _ = std::fs::remove_dir_all(work_dir());

    heading(
        "The seed's world: namespace httpbin (the pod) and external (a client outside the mesh)",
    );
    let topology = SeedTopology::build(TopologyOptions::demo(&work_dir()))?;
    println!(
        "netns {POD_NETNS:<8} eth0 198.18.0.2/24 2001:db8::2/64; httpbin (gunicorn, pid {}) on 127.0.0.1:80",
        topology.httpbin_pid().unwrap_or_default()
    );
    println!("netns {CLIENT_NETNS:<8} eth0 198.18.0.1/24 2001:db8::1/64");
    let client = MeshClient::attach_named(&topology, MESH_CLIENT_NETNS, MESH_CLIENT_CGROUP)?;
    println!(
        "netns {MESH_CLIENT_NETNS:<8} eth0 198.18.1.1/24, route to 198.18.0.2 via the pod; cgroup {}",
        client.cgroup().display()
    );
    println!(
        "certificates, made by the seed's openssl commands: {}",
        topology.certs().dir.display()
    );
    println!(
        "secrets as mounted for postern: {} -> /etc/istio/tls-certs, {} -> /etc/istio/tls-ca-certs",
        topology.tls_certs_dir().display(),
        topology.tls_ca_certs_dir().display()
    );
    let mesh_certs = MeshCerts::generate(&work_dir().join("mesh"))?;
    let httpbin_identity = mesh_certs.issue("httpbin", &spiffe_id(TRUST_DOMAIN, "httpbin"))?;
    let sleep_identity = mesh_certs.issue("sleep", &spiffe_id(TRUST_DOMAIN, "sleep"))?;
    println!(
        "mesh identities (tls.crt, tls.key, ca.crt), issued by a mesh root made with openssl: {}, {}",
        httpbin_identity.display(),
        sleep_identity.display()
    );
    let config = mesh_config(&topology, &client, &httpbin_identity, &sleep_identity)?;

    heading("The seed's manifests and the two Workloads, checked by postern");
    let mut check_line = format!("$ {} check", bin.display());
    for path in &config {
        check_line.push_str(&format!(
            " --config {}",
            shell_quote(&path.to_string_lossy())
        ));
    }
    println!("{check_line} --namespace {NAMESPACE}");
    let check = Postern::check(&bin, &topology, &config, Some(NAMESPACE))?;
    print!("{}{}", check.stdout, check.stderr);
    if check.exit_code != 0 {
        bail!(
            "`postern check` rejected the seed's manifests (exit {})",
            check.exit_code
        );
    }

    heading("postern run");
    let options = PosternOptions {
        bpffs_dir: Some(BPFFS_DIR.into()),
        log_path: Some(work_dir().join("postern.log")),
        detach: keep,
        ..PosternOptions::default()
    };
    let postern = Postern::start_with(&bin, &topology, &config, &[], &options)?;
    println!(
        "postern is ready (pid {}, pins in {BPFFS_DIR}, log {})",
        postern.pid(),
        postern.log_path().display()
    );

    heading("Verification: the seed's requests from inside and outside the mesh");
    let mut commands = Vec::new();
    let mut mismatches = 0;
    let (step, title) = MESH_STEP;
    let resolve = format!("httpbin:8080:{SERVICE_IP}");
    let mesh_args = ["-v", "--resolve", &resolve, MESH_URL];
    let command = display_command(&client.command("curl", mesh_args));
    println!("\n({step}) {title}\n$ {command}");
    let before = topology.httpbin_requests()?;
    let result = client.curl(mesh_args)?;
    let reached_app = httpbin_saw_more(&topology, before, true)?;
    let ok = result.http_status() == Some(200) && reached_app;
    mismatches += usize::from(!report(&result, reached_app, ok, MESH_EXPECTATION));
    commands.push(command);
    for (step, title, request) in STEPS {
        let args = seed_curl_args(&topology, request);
        let command = user_command(&args);
        println!("\n({step}) {title}\n$ {command}");
        let before = topology.httpbin_requests()?;
        let result = curl(topology.client(), &args)?;
        let reached_app =
            httpbin_saw_more(&topology, before, request == SeedRequest::ExternalMtls)?;
        let ok =
            request.matches_seed(&result) && reached_app == (request == SeedRequest::ExternalMtls);
        mismatches += usize::from(!report(&result, reached_app, ok, request.expectation()));
        commands.push(command);
    }

    sleep(Duration::from_millis(300));
    heading("postern's access log");
    for line in postern.access_log() {
        println!("{line}");
    }

    if keep {
        let postern = postern.keep();
        let (mesh_netns, mesh_cgroup) = client.keep();
        let topology = topology.keep();
        let state = format!(
            "postern_pid={}\nbpffs_dir={}\npod_netns={}\nclient_netns={}\nmesh_client_netns={}\nmesh_client_cgroup={}\nhttpbin_pid={}\nwork_dir={}\n",
            postern.pid,
            postern.bpffs_dir.display(),
            topology.pod_netns,
            topology.client_netns,
            mesh_netns,
            mesh_cgroup.display(),
            topology.httpbin_pid.unwrap_or_default(),
            topology.work_dir.display(),
        );
        std::fs::write(state_file(), state)
            .with_context(|| format!("cannot write {}", state_file().display()))?;
        heading("The demo keeps running. Try:");
        for command in &commands {
            println!("{command}");
        }
        println!("tail -f {}", postern.log_path.display());
        println!(
            "tail -f {}",
            work_dir().join("httpbin-access.log").display()
        );
        println!("\nTear it all down with: cargo xtask demo --down");
    } else {
        drop(postern);
        drop(client);
        drop(topology);
        heading("Torn down: postern stopped, pins removed, namespaces and cgroup deleted");
    }
    let steps = STEPS.len() + 1;
    if mismatches > 0 {
        bail!("{mismatches} of {steps} steps did not match the seed");
    }
    println!("\nAll {steps} steps match the seed.");
    Ok(())
}

/// The seed's PeerAuthentications and Sidecar, verbatim, the two Workloads with their mesh
/// identities (httpbin, and sleep with its cgroup captured), and the seed's Service with a
/// `clusterIP`.
fn mesh_config(
    topology: &SeedTopology,
    client: &MeshClient,
    httpbin_identity: &Path,
    sleep_identity: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = work_dir().join("config");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let workloads = format!(
        "{}---\n{}---\n{}",
        httpbin_mesh_workload(topology, httpbin_identity),
        client.workload(sleep_identity),
        seed_service()
    );
    [
        (
            "peer-authentication-default.yaml",
            SEED_PEER_AUTHENTICATION_DEFAULT,
        ),
        (
            "peer-authentication-httpbin.yaml",
            SEED_PEER_AUTHENTICATION_HTTPBIN,
        ),
        ("sidecar.yaml", SEED_SIDECAR),
        ("workloads.yaml", workloads.as_str()),
    ]
    .into_iter()
    .map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    })
    .collect()
}

/// Prints a step's outcome and verdict; returns whether it matched the seed.
fn report(result: &CurlResult, reached_app: bool, ok: bool, expectation: &str) -> bool {
    println!("  {}", outcome(result, reached_app));
    if ok {
        println!("  ✓ as the seed expects: {expectation}");
    } else {
        println!("  ✗ the seed expects: {expectation}");
    }
    ok
}

/// `nsenter --net=/run/netns/external curl ARGS`, shell-quoted.
fn user_command(args: &[String]) -> String {
    let mut words = vec![
        format!("--net=/run/netns/{CLIENT_NETNS}"),
        "curl".to_string(),
    ];
    words.extend(args.iter().map(|arg| shell_quote(arg)));
    format!("nsenter {}", words.join(" "))
}

/// Whether httpbin's access log grew past `before`; when a request is expected, allow the log
/// line a moment to land.
fn httpbin_saw_more(topology: &SeedTopology, before: usize, expected: bool) -> Result<bool> {
    let timeout = Duration::from_secs(if expected { 2 } else { 0 });
    Ok(topology.wait_httpbin_requests(before + 1, timeout)? > before)
}

fn outcome(result: &CurlResult, reached_app: bool) -> String {
    let what = if result.http_status().is_some() {
        result.summary()
    } else if result.stderr.contains("reset by peer") {
        format!("reset by peer (curl exit {})", result.exit_code)
    } else if result.stderr.contains("alert") || result.exit_code == 35 {
        format!("TLS handshake refused ({})", result.summary())
    } else {
        result.summary()
    };
    let app = if reached_app {
        "httpbin answered it"
    } else {
        "httpbin saw nothing"
    };
    format!("{what}; {app}")
}

/// `cargo xtask demo --down`: stops what `--keep` (or an interrupted demo) left.
pub fn down() -> Result<()> {
    require_root()?;
    let state = read_state()?;
    let mut done = Vec::new();
    if let Some(pid) = state
        .get("postern_pid")
        .and_then(|pid| pid.parse::<u32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("postern") {
            stop_process(pid, Duration::from_secs(5))?;
            done.push(format!("stopped postern (pid {pid})"));
        }
    }
    let bpffs_dir = state.get("bpffs_dir").map_or(BPFFS_DIR, String::as_str);
    if Path::new(bpffs_dir).exists() {
        std::fs::remove_dir_all(bpffs_dir).with_context(|| format!("cannot remove {bpffs_dir}"))?;
        done.push(format!("removed pins {bpffs_dir}"));
    }
    for (key, default) in [
        ("pod_netns", POD_NETNS),
        ("client_netns", CLIENT_NETNS),
        ("mesh_client_netns", MESH_CLIENT_NETNS),
    ] {
        let name = state.get(key).map_or(default, String::as_str);
        if Netns::exists(name) {
            Netns::adopt(name)?.delete()?;
            done.push(format!("deleted netns {name} and what ran in it"));
        }
    }
    let cgroup = match state.get("mesh_client_cgroup") {
        Some(path) => PathBuf::from(path),
        None => cgroup2_mount()?.join(MESH_CLIENT_CGROUP),
    };
    if cgroup.exists() {
        remove_cgroup(&cgroup)?;
        done.push(format!("removed cgroup {}", cgroup.display()));
    }
    if Path::new(DEMO_DIR).exists() {
        std::fs::remove_dir_all(DEMO_DIR).with_context(|| format!("cannot remove {DEMO_DIR}"))?;
        done.push(format!("removed {DEMO_DIR}"));
    }
    if done.is_empty() {
        println!("demo --down: nothing to tear down");
    }
    for line in done {
        println!("demo --down: {line}");
    }
    Ok(())
}

fn read_state() -> Result<HashMap<String, String>> {
    let path = state_file();
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

fn heading(title: &str) {
    println!("\n== {title}");
}
