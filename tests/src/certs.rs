//! The seed's certificates, made by the seed's own openssl commands.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::run_checked;

/// The seed's "Generate CA cert, Server cert/key and Client cert/key" commands, verbatim.
pub const SEED_OPENSSL_COMMANDS: &[&str] = &[
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt",
    r#"openssl req -out httpbin.test.svc.cluster.local.csr -newkey rsa:2048 -nodes -keyout httpbin.test.svc.cluster.local.key -subj "/CN=httpbin.test.svc.cluster.local/O=httpbin organization""#,
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in httpbin.test.svc.cluster.local.csr -out httpbin.test.svc.cluster.local.crt",
    r#"openssl req -out client.test.svc.cluster.local.csr -newkey rsa:2048 -nodes -keyout client.test.svc.cluster.local.key -subj "/CN=client.test.svc.cluster.local/O=client organization""#,
    "openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.test.svc.cluster.local.csr -out client.test.svc.cluster.local.crt",
];

/// Another CA, unknown to the seed's configuration, and a client certificate from it with the
/// seed's client subject: made with the same command shapes as the seed's.
const OTHER_CA_OPENSSL_COMMANDS: &[&str] = &[
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=other Inc./CN=other-ca.example' -keyout other-ca.key -out other-ca.crt",
    r#"openssl req -out other-client.csr -newkey rsa:2048 -nodes -keyout other-client.key -subj "/CN=client.test.svc.cluster.local/O=client organization""#,
    "openssl x509 -req -days 365 -CA other-ca.crt -CAkey other-ca.key -set_serial 1 -in other-client.csr -out other-client.crt",
];

/// Paths of the seed's certificates and keys, plus the `other-ca` ones for negative tests.
#[derive(Clone, Debug)]
pub struct SeedCerts {
    /// Where the openssl commands ran: every file below except the two mount sources.
    pub dir: PathBuf,
    /// `example.com.crt`: the CA (the seed's `ca.crt`).
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// `httpbin.test.svc.cluster.local.crt`, signed by the CA.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `client.test.svc.cluster.local.crt`, signed by the CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// `other-ca.crt`: a CA postern does not trust.
    pub other_ca_cert: PathBuf,
    pub other_ca_key: PathBuf,
    /// `other-client.crt`: the seed's client subject, signed by `other-ca`.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// The secret `httpbin-mtls-termination` as mounted: `tls.crt`, `tls.key`. postern sees it at
    /// `/etc/istio/tls-certs`.
    pub tls_certs_dir: PathBuf,
    /// The secret `httpbin-mtls-termination-cacert` as mounted: `ca.crt`. postern sees it at
    /// `/etc/istio/tls-ca-certs`.
    pub tls_ca_certs_dir: PathBuf,
}

impl SeedCerts {
    /// Runs the seed's openssl commands (and the other-ca ones) in `dir/certs`, and lays out the
    /// two secrets' directories in `dir/tls-certs` and `dir/tls-ca-certs`.
    pub fn generate(dir: &Path) -> Result<SeedCerts> {
        let certs_dir = dir.join("certs");
        std::fs::create_dir_all(&certs_dir)
            .with_context(|| format!("cannot create {}", certs_dir.display()))?;
        for line in SEED_OPENSSL_COMMANDS
            .iter()
            .chain(OTHER_CA_OPENSSL_COMMANDS)
        {
            run_checked(
                Command::new("sh")
                    .arg("-c")
                    .arg(line)
                    .current_dir(&certs_dir),
            )
            .context("cannot generate the seed's certificates")?;
        }
        let at = |name: &str| certs_dir.join(name);
        let certs = SeedCerts {
            ca_cert: at("example.com.crt"),
            ca_key: at("example.com.key"),
            server_cert: at("httpbin.test.svc.cluster.local.crt"),
            server_key: at("httpbin.test.svc.cluster.local.key"),
            client_cert: at("client.test.svc.cluster.local.crt"),
            client_key: at("client.test.svc.cluster.local.key"),
            other_ca_cert: at("other-ca.crt"),
            other_ca_key: at("other-ca.key"),
            other_client_cert: at("other-client.crt"),
            other_client_key: at("other-client.key"),
            tls_certs_dir: dir.join("tls-certs"),
            tls_ca_certs_dir: dir.join("tls-ca-certs"),
            dir: certs_dir,
        };
        // `kubectl create secret tls` names the files tls.crt and tls.key; the generic secret
        // is created with `--from-file=ca.crt=./example.com.crt`.
        copy(&certs.server_cert, &certs.tls_certs_dir.join("tls.crt"))?;
        copy(&certs.server_key, &certs.tls_certs_dir.join("tls.key"))?;
        copy(&certs.ca_cert, &certs.tls_ca_certs_dir.join("ca.crt"))?;
        Ok(certs)
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
