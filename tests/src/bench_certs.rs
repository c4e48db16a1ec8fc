//! The benchmarks' certificates (`cargo xtask bench` and postern's Criterion handshake
//! bench): the seed's shapes (RSA 2048, a CA signing a server and a client certificate), made
//! by openssl, and the same again with ECDSA P-256.
//!
//! One difference from the seed: these are X.509 v3 with a subjectAltName and an extended
//! key usage. The load generator is a rustls client, which (like every modern client) checks
//! the server's name in a subjectAltName, and a v1 server certificate has none.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::run_checked;

/// The server certificate's name (its CN and DNS subjectAltName).
pub const SERVER_NAME: &str = "httpbin.test.svc.cluster.local";
const CLIENT_NAME: &str = "client.test.svc.cluster.local";

/// Which kind of key the certificates carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Rsa2048,
    EcdsaP256,
}

impl KeyKind {
    pub const ALL: [KeyKind; 2] = [KeyKind::Rsa2048, KeyKind::EcdsaP256];

    pub fn label(self) -> &'static str {
        match self {
            KeyKind::Rsa2048 => "RSA 2048",
            KeyKind::EcdsaP256 => "ECDSA P-256",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            KeyKind::Rsa2048 => "rsa",
            KeyKind::EcdsaP256 => "ecdsa",
        }
    }

    /// openssl's `-newkey` argument.
    fn newkey(self) -> &'static [&'static str] {
        match self {
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
            KeyKind::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        }
    }
}

/// One CA with its server and client certificates, as PEM files.
#[derive(Clone, Debug)]
pub struct CertSet {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The server certificate followed by its key, as haproxy's `crt` wants it.
    pub server_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl CertSet {
    /// Makes a CA, and the server and client certificates it issues, with `kind` keys, in
    /// `work_dir/rsa` or `work_dir/ecdsa`.
    pub fn generate(work_dir: &Path, kind: KeyKind) -> Result<CertSet> {
        let dir = work_dir.join(kind.dir_name());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let at = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            run_checked(Command::new("openssl").args(args).current_dir(&dir))
                .context("openssl failed while making the benchmark's certificates")
        };
        let mut ca = vec!["req", "-x509", "-sha256", "-nodes", "-days", "365"];
        ca.extend(kind.newkey());
        ca.extend([
            "-subj",
            "/O=example Inc./CN=example.com",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&ca)?;
        for (name, subject, usage) in [
            (
                "server",
                format!("/CN={SERVER_NAME}/O=httpbin organization"),
                "serverAuth",
            ),
            (
                "client",
                format!("/CN={CLIENT_NAME}/O=client organization"),
                "clientAuth",
            ),
        ] {
            let dns = subject
                .trim_start_matches("/CN=")
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let ext = at(&format!("{name}.ext"));
            std::fs::write(
                &ext,
                format!("subjectAltName=DNS:{dns}\nextendedKeyUsage={usage}\n"),
            )
            .with_context(|| format!("cannot write {}", ext.display()))?;
            let (csr, key, crt) = (
                format!("{name}.csr"),
                format!("{name}.key"),
                format!("{name}.crt"),
            );
            let mut req = vec!["req", "-out", &csr, "-nodes", "-keyout", &key];
            req.extend(kind.newkey());
            req.extend(["-subj", &subject]);
            openssl(&req)?;
            openssl(&[
                "x509",
                "-req",
                "-days",
                "365",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "1",
                "-in",
                &csr,
                "-out",
                &crt,
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        let server_pem = at("server.pem");
        let pem = [at("server.crt"), at("server.key")]
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?
            .concat();
        std::fs::write(&server_pem, pem)
            .with_context(|| format!("cannot write {}", server_pem.display()))?;
        Ok(CertSet {
            ca_cert: at("ca.crt"),
            server_cert: at("server.crt"),
            server_key: at("server.key"),
            server_pem,
            client_cert: at("client.crt"),
            client_key: at("client.key"),
        })
    }
}
