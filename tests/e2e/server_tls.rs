//! Istio's `ServerTLSSettings` beyond the seed's: `subjectAltNames`, `verifyCertificateHash`,
//! `caCrl` and `maxProtocolVersion`, against real curl and openssl clients.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use postern_testbed::{curl, CurlResult, SeedTopology, TopologyOptions, SEED_HOST};

use crate::{workload_and, write_config, Running};

/// DISABLE for httpbin, and a Sidecar with the seed's MUTUAL files on each listed port, plus
/// that port's extra `tls` fields (YAML lines at the `tls` block's indentation).
fn config(ports: &[(u16, &str)]) -> String {
    let ingress: String = ports
        .iter()
        .map(|(port, extra)| {
            format!(
                "  - port: {{number: {port}, protocol: HTTPS, name: tls-{port}}}\n    \
                 defaultEndpoint: 0.0.0.0:80\n    tls:\n      mode: MUTUAL\n      \
                 serverCertificate: /etc/istio/tls-certs/tls.crt\n      \
                 privateKey: /etc/istio/tls-certs/tls.key\n      \
                 caCertificates: /etc/istio/tls-ca-certs/ca.crt\n{extra}"
            )
        })
        .collect();
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: disable, \
         namespace: test}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  mtls: {{mode: \
         DISABLE}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: \
         server-tls, namespace: test}}\nspec:\n  workloadSelector: {{labels: {{app: httpbin}}}}\n  \
         ingress:\n{ingress}"
    )
}

/// postern serving `ports` on `topology`.
fn start(topology: SeedTopology, ports: &[(u16, &str)]) -> Running {
    let yaml = workload_and(&topology, &config(ports));
    let path = write_config(&topology, "server-tls.yaml", &yaml);
    Running::start(topology, &[path])
}

/// Runs `script` with `sh` in the topology's certificate directory, where the seed's CA
/// (`example.com.crt`, `.key`) and client key are.
fn in_certs_dir(topology: &SeedTopology, script: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&topology.certs().dir)
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A v3 client certificate `NAME.crt` from the seed CA, for the seed client's key, with
/// `extensions` (openssl `-extfile` lines) and serial number `serial`.
fn issue_client(topology: &SeedTopology, name: &str, serial: u32, extensions: &str) -> PathBuf {
    in_certs_dir(
        topology,
        &format!(
            "printf 'extendedKeyUsage=clientAuth\\n{extensions}\\n' > {name}.ext && \
             openssl req -new -key client.test.svc.cluster.local.key -subj /CN={name} \
             -out {name}.csr && openssl x509 -req -days 1 -CA example.com.crt \
             -CAkey example.com.key -set_serial {serial} -extfile {name}.ext -in {name}.csr \
             -out {name}.crt"
        ),
    );
    topology.certs().dir.join(format!("{name}.crt"))
}

/// curl, from the client namespace, to `/status/200` on `port` with client certificate
/// `cert` (and the seed client's key).
fn curl_with(topology: &SeedTopology, port: u16, cert: &Path) -> CurlResult {
    let certs = topology.certs();
    curl(
        topology.client(),
        [
            "-v".to_owned(),
            "--resolve".to_owned(),
            format!("{SEED_HOST}:{port}:{}", topology.pod_ipv4()),
            "--cacert".to_owned(),
            certs.ca_cert.display().to_string(),
            "--cert".to_owned(),
            cert.display().to_string(),
            "--key".to_owned(),
            certs.client_key.display().to_string(),
            format!("https://{SEED_HOST}:{port}/status/200"),
        ],
    )
    .expect("run curl")
}

#[track_caller]
fn assert_served(result: &CurlResult) {
    assert_eq!(result.http_status(), Some(200), "{}", result.summary());
}

#[track_caller]
fn assert_refused(result: &CurlResult) {
    assert!(
        !result.success() && result.http_status().is_none(),
        "{}",
        result.summary()
    );
}

#[test]
fn subject_alt_names_admit_only_listed_clients() {
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    let listed = issue_client(&topology, "listed", 21, "subjectAltName=DNS:listed.test");
    let unlisted = issue_client(
        &topology,
        "unlisted",
        22,
        "subjectAltName=DNS:unlisted.test",
    );
    let run = start(
        topology,
        &[(9080, "      subjectAltNames: [other.test, listed.test]\n")],
    );
    assert_served(&curl_with(&run.topology, 9080, &listed));
    assert_refused(&curl_with(&run.topology, 9080, &unlisted));
    // The seed's v1 client certificate carries no subjectAltName at all.
    let seed_client = run.topology.certs().client_cert.clone();
    assert_refused(&curl_with(&run.topology, 9080, &seed_client));
    let refusals = run.access_lines_to(&format!("{}:9080", run.topology.pod_ipv4()));
    assert!(
        refusals
            .iter()
            .any(|line| line.contains("include none of subjectAltNames")),
        "{refusals:#?}"
    );
}

#[test]
fn verify_certificate_hash_pins_the_client_certificate() {
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    let client = topology.certs().client_cert.clone();
    let fingerprint = in_certs_dir(
        &topology,
        &format!(
            "openssl x509 -noout -fingerprint -sha256 -in {}",
            client.display()
        ),
    );
    let (_, hash) = fingerprint.trim().split_once('=').expect("fingerprint");
    let run = start(
        topology,
        &[
            (9080, &format!("      verifyCertificateHash: ['{hash}']\n")),
            (
                9082,
                &format!("      verifyCertificateHash: ['{}']\n", "ab".repeat(32)),
            ),
        ],
    );
    assert_served(&curl_with(&run.topology, 9080, &client));
    assert_refused(&curl_with(&run.topology, 9082, &client));
}

/// Sets up `openssl ca`'s minimal database for the seed CA in the certificate directory;
/// `crlnumber` makes version 2 CRLs, which webpki requires.
fn crl_database(topology: &SeedTopology) {
    in_certs_dir(
        topology,
        "printf '[ca]\\ndefault_ca=crl\\n[crl]\\ndatabase=index.txt\\ncrlnumber=crlnumber\\n\
         unique_subject=no\\ndefault_md=sha256\\ndefault_crl_days=1\\n' > crl.cnf && \
         touch index.txt && echo 01 > crlnumber",
    );
}

/// Revokes `certs` (file names in the certificate directory) and writes the seed CA's CRL to
/// `ca.crl` in one rename, so a reader never sees half a file. Returns its path.
fn publish_crl(topology: &SeedTopology, certs: &[&str]) -> PathBuf {
    let revoke: String = certs
        .iter()
        .map(|cert| {
            format!(
                "openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt \
                 -revoke {cert} && "
            )
        })
        .collect();
    in_certs_dir(
        topology,
        &format!(
            "{revoke}openssl ca -config crl.cnf -keyfile example.com.key -cert example.com.crt \
             -gencrl -out ca.crl.new && mv ca.crl.new ca.crl"
        ),
    );
    topology.certs().dir.join("ca.crl")
}

#[test]
fn a_crl_refuses_revoked_clients() {
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    let revoked = issue_client(&topology, "revoked", 31, "");
    let valid = issue_client(&topology, "valid", 32, "");
    crl_database(&topology);
    // The seed's v1 client certificate is revoked too, for postern's v1 path.
    let crl = publish_crl(
        &topology,
        &["revoked.crt", "client.test.svc.cluster.local.crt"],
    );
    let run = start(
        topology,
        &[(9080, &format!("      caCrl: {}\n", crl.display()))],
    );
    assert_served(&curl_with(&run.topology, 9080, &valid));
    assert_refused(&curl_with(&run.topology, 9080, &revoked));
    let seed_client = run.topology.certs().client_cert.clone();
    assert_refused(&curl_with(&run.topology, 9080, &seed_client));
}

/// Revoking a client in the CRL while postern runs: once the file changes, the client is
/// refused, without a restart.
#[test]
fn revoking_a_client_takes_effect_on_reload() {
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    crl_database(&topology);
    let crl = publish_crl(&topology, &[]);
    let run = start(
        topology,
        &[(9080, &format!("      caCrl: {}\n", crl.display()))],
    );
    let seed_client = run.topology.certs().client_cert.clone();
    assert_served(&curl_with(&run.topology, 9080, &seed_client));

    publish_crl(&run.topology, &["client.test.svc.cluster.local.crt"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let result = curl_with(&run.topology, 9080, &seed_client);
        if result.http_status().is_none() {
            assert_refused(&result);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked client is still served: {}",
            run.postern.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        run.postern.log().contains("TLS material reloaded"),
        "{}",
        run.postern.log()
    );
}

/// `openssl s_client -brief` to `port` from the client namespace with the seed's client
/// certificate; stdin is closed, so it ends once the handshake is done. Returns whether it
/// succeeded, and its output.
fn s_client(topology: &SeedTopology, port: u16, version: &str) -> (bool, String) {
    let certs = topology.certs();
    let output = topology
        .client()
        .command("timeout")
        .args(["20", "openssl", "s_client", "-brief", version])
        .arg("-connect")
        .arg(format!("{}:{port}", topology.pod_ipv4()))
        .arg("-cert")
        .arg(&certs.client_cert)
        .arg("-key")
        .arg(&certs.client_key)
        .arg("-CAfile")
        .arg(&certs.ca_cert)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn max_protocol_version_tls12_refuses_tls13() {
    // With httpbin behind the port, postern keeps the connection open after the handshake
    // (without an app it would close at once, racing s_client's own verdict).
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    let run = start(topology, &[(9080, "      maxProtocolVersion: TLSV1_2\n")]);
    let (ok, output) = s_client(&run.topology, 9080, "-tls1_3");
    assert!(!ok, "TLS 1.3 handshake succeeded:\n{output}");
    assert!(output.contains("protocol version"), "{output}");
    let (ok, output) = s_client(&run.topology, 9080, "-tls1_2");
    assert!(ok, "TLS 1.2 handshake failed:\n{output}");
    assert!(output.contains("Protocol version: TLSv1.2"), "{output}");
}

/// OpenSSL clients list AES-256-GCM first. postern chooses by its own order, as Envoy does:
/// AES-128-GCM by default, and the order `cipherSuites` gives for TLS 1.2.
#[test]
fn the_server_chooses_the_cipher_suite() {
    let topology = SeedTopology::build(TopologyOptions::default()).expect("topology");
    let run = start(
        topology,
        &[
            (9080, ""),
            (
                9443,
                "      cipherSuites: [ECDHE-RSA-CHACHA20-POLY1305, ECDHE-RSA-AES256-GCM-SHA384]\n",
            ),
        ],
    );
    for (port, version, suite) in [
        (9080, "-tls1_3", "Ciphersuite: TLS_AES_128_GCM_SHA256"),
        (9080, "-tls1_2", "Ciphersuite: ECDHE-RSA-AES128-GCM-SHA256"),
        (9443, "-tls1_3", "Ciphersuite: TLS_AES_128_GCM_SHA256"),
        (9443, "-tls1_2", "Ciphersuite: ECDHE-RSA-CHACHA20-POLY1305"),
    ] {
        let (ok, output) = s_client(&run.topology, port, version);
        assert!(ok, "port {port} {version}: handshake failed:\n{output}");
        assert!(output.contains(suite), "port {port} {version}: {output}");
    }
}
