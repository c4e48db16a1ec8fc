//! TLS material that follows its files (certificate, key, CA and CRL).
//!
//! Kubernetes updates a mounted secret by writing a new directory and swapping the `..data`
//! symlink to it, so a file's inode, and often its mtime, say nothing reliable. What postern
//! compares is the content read through the configured path: when it changes, the whole
//! configuration is built again, and only a configuration that builds (the key matches the
//! certificate, the CA parses, the certificate is inside its validity window) replaces the one
//! serving. A bad update is reported (log, `postern certs`) and the previous material keeps
//! serving.
//!
//! Each rebuild is a new `rustls::ServerConfig` with a new session cache, so no TLS session
//! established under the old material resumes under the new one: a client resuming after a CA
//! change goes through a full handshake, verified against the new CA.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{load, mesh, server_config, TlsError};
use crate::policy::{MeshIdentity, TlsSettings};

/// One row of `postern certs`, in the shape of `istioctl proxy-config secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// `file-cert:CERT~KEY` or `file-root:CA`, as Istio names file-based secrets.
    pub resource_name: String,
    /// `Cert Chain` or `CA`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ACTIVE`, or `ERROR` when the files changed into something unusable (the previous
    /// material keeps serving; `error` says why).
    pub status: String,
    pub error: Option<String>,
    /// Whether the serving certificate is inside its validity window now.
    pub valid_cert: bool,
    /// Decimal, as Istio prints it.
    pub serial_number: String,
    /// RFC 3339, UTC.
    pub not_after: String,
    pub not_before: String,
    /// Seconds since the Unix epoch, for machines.
    pub not_after_unix: i64,
    /// `namespace/name:port` of every port that uses it.
    pub used_by: Vec<String>,
}

/// What a served certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CertificateFacts {
    serial: String,
    not_before: i64,
    not_after: i64,
}

/// The material serving right now, described.
#[derive(Debug, Clone)]
struct Served {
    leaf: CertificateFacts,
    root: Option<CertificateFacts>,
}

#[derive(Debug, Default)]
struct Problems {
    /// Why the certificate or key files could not replace the serving material.
    cert: Option<String>,
    /// Why the CA file could not.
    root: Option<String>,
}

#[derive(Debug)]
struct State {
    /// Hash of the files' contents when last looked at, loadable or not.
    fingerprint: u64,
    served: Served,
    problems: Problems,
    /// Serial numbers already warned about as expiring, so the log says it once.
    warned: Vec<String>,
}

/// What the material is for, and so how it is built from its files.
enum Recipe {
    /// A Sidecar ingress port's `tls`, offering these ALPN protocols.
    Sidecar {
        settings: TlsSettings,
        alpn: Vec<Vec<u8>>,
    },
    /// A workload's mesh identity: a server and a client configuration. `files` are its
    /// certificate chain, key and roots.
    Mesh {
        identity: MeshIdentity,
        files: [PathBuf; 3],
    },
}

/// The files a recipe reads, for fingerprints, descriptions and messages.
struct Files<'a> {
    certificate: &'a Path,
    key: &'a Path,
    ca: Option<&'a Path>,
    crl: Option<&'a Path>,
}

/// The configurations serving now.
struct Built {
    server: Arc<ServerConfig>,
    /// Only for mesh identities: outbound origination.
    client: Option<Arc<ClientConfig>>,
}

impl Recipe {
    fn build(&self) -> Result<Built, TlsError> {
        match self {
            Recipe::Sidecar { settings, alpn } => {
                let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
                Ok(Built {
                    server: server_config(settings, &alpn)?,
                    client: None,
                })
            }
            Recipe::Mesh { identity, .. } => Ok(Built {
                server: mesh::server_config(identity)?,
                client: Some(mesh::client_config(identity)?),
            }),
        }
    }

    fn files(&self) -> Files<'_> {
        match self {
            Recipe::Sidecar { settings, .. } => Files {
                certificate: &settings.server_certificate,
                key: &settings.private_key,
                ca: settings.ca_certificates.as_deref(),
                crl: settings.ca_crl.as_deref(),
            },
            Recipe::Mesh {
                files: [certificate, key, ca],
                ..
            } => Files {
                certificate,
                key,
                ca: Some(ca),
                crl: None,
            },
        }
    }
}

/// A port's TLS configuration, or a workload's mesh identity, rebuilt when its files change.
pub struct TlsSource {
    recipe: Recipe,
    used_by: Vec<String>,
    current: RwLock<Built>,
    state: Mutex<State>,
}

impl TlsSource {
    /// Builds a Sidecar port's configuration from the files now; an error here means the port
    /// cannot be served at all.
    pub fn load(
        settings: &TlsSettings,
        alpn: &[&[u8]],
        used_by: Vec<String>,
    ) -> Result<TlsSource, TlsError> {
        let recipe = Recipe::Sidecar {
            settings: settings.clone(),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        };
        TlsSource::build(recipe, used_by)
    }

    /// Builds a workload's mesh identity from its files now; an error here (unreadable files,
    /// a key that does not match, a certificate naming another SPIFFE ID) means the workload
    /// cannot take part in the mesh at all.
    pub fn mesh(identity: &MeshIdentity, used_by: Vec<String>) -> Result<TlsSource, TlsError> {
        let recipe = Recipe::Mesh {
            identity: identity.clone(),
            files: [
                identity.certificate_chain(),
                identity.private_key(),
                identity.roots(),
            ],
        };
        TlsSource::build(recipe, used_by)
    }

    fn build(recipe: Recipe, used_by: Vec<String>) -> Result<TlsSource, TlsError> {
        let fingerprint = fingerprint(&recipe.files());
        let built = recipe.build()?;
        let served = describe(&recipe.files())?;
        Ok(TlsSource {
            recipe,
            used_by,
            current: RwLock::new(built),
            state: Mutex::new(State {
                fingerprint,
                served,
                problems: Problems::default(),
                warned: Vec::new(),
            }),
        })
    }

    /// The server configuration for a new handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .server,
        )
    }

    /// The client configuration for a new outbound handshake; only mesh identities have one.
    pub fn client(&self) -> Option<Arc<ClientConfig>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .client
            .clone()
    }

    /// Looks at the files; if their content changed, builds and swaps in the new material, or
    /// records (and logs) why it cannot. Cheap when nothing changed.
    pub fn refresh(&self) {
        let fingerprint = fingerprint(&self.recipe.files());
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if fingerprint == state.fingerprint {
            return;
        }
        state.fingerprint = fingerprint;
        match self.rebuild() {
            Ok((config, served)) => {
                tracing::info!(
                    certificate = %self.recipe.files().certificate.display(),
                    serial = %served.leaf.serial,
                    used_by = ?self.used_by,
                    "TLS material reloaded; new handshakes use it"
                );
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                state.served = served;
                state.problems = Problems::default();
            }
            Err(problems) => {
                for reason in problems.cert.iter().chain(&problems.root) {
                    tracing::error!(used_by = ?self.used_by, "TLS material not reloaded, the previous material keeps serving: {reason}");
                }
                state.problems = problems;
            }
        }
    }

    fn rebuild(&self) -> Result<(Built, Served), Problems> {
        let files = self.recipe.files();
        let described = describe(&files);
        let built = self.recipe.build();
        let (config, served) = match (built, described) {
            (Ok(config), Ok(served)) => (config, served),
            (Err(e), _) | (_, Err(e)) => return Err(attribute(&files, e)),
        };
        let now = unix_now();
        if let Some(reason) = outside_validity(files.certificate, &served.leaf, now) {
            return Err(Problems {
                cert: Some(reason),
                root: None,
            });
        }
        Ok((config, served))
    }

    /// Warns once per certificate that expires within `window`.
    pub fn warn_expiring(&self, window: Duration) {
        let now = unix_now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let served = state.served.clone();
        let paths = self.recipe.files();
        let files = [
            Some((paths.certificate, &served.leaf)),
            paths.ca.zip(served.root.as_ref()),
        ];
        for (path, facts) in files.into_iter().flatten() {
            let left = facts.not_after - now;
            let key = format!("{}#{}", path.display(), facts.serial);
            if left < window.as_secs() as i64 && !state.warned.contains(&key) {
                tracing::warn!(
                    file = %path.display(),
                    serial = %facts.serial,
                    not_after = %rfc3339(facts.not_after),
                    "certificate expires in {}",
                    human_duration(left)
                );
                state.warned.push(key);
            }
        }
    }

    /// This source's rows for `postern certs`.
    pub fn secrets(&self) -> Vec<Secret> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = unix_now();
        let row =
            |name: String, kind: &str, facts: &CertificateFacts, problem: &Option<String>| Secret {
                resource_name: name,
                kind: kind.to_string(),
                status: if problem.is_some() { "ERROR" } else { "ACTIVE" }.to_string(),
                error: problem.clone(),
                valid_cert: (facts.not_before..=facts.not_after).contains(&now),
                serial_number: facts.serial.clone(),
                not_after: rfc3339(facts.not_after),
                not_before: rfc3339(facts.not_before),
                not_after_unix: facts.not_after,
                used_by: self.used_by.clone(),
            };
        let files = self.recipe.files();
        let mut rows = vec![row(
            format!(
                "file-cert:{}~{}",
                files.certificate.display(),
                files.key.display()
            ),
            "Cert Chain",
            &state.served.leaf,
            &state.problems.cert,
        )];
        if let (Some(ca), Some(root)) = (files.ca, &state.served.root) {
            rows.push(row(
                format!("file-root:{}", ca.display()),
                "CA",
                root,
                &state.problems.root,
            ));
        }
        rows
    }
}

/// Which file a failed rebuild is about: the CA (or its CRL) if only they do not load, else
/// the certificate and key.
fn attribute(files: &Files<'_>, error: TlsError) -> Problems {
    let ca_fails = files
        .ca
        .is_some_and(|ca| load::ca_certificates(ca).is_err())
        || files.crl.is_some_and(|crl| load::crls(crl).is_err());
    let pair_loads =
        load::certificate_chain(files.certificate).is_ok() && load::private_key(files.key).is_ok();
    if ca_fails && pair_loads {
        Problems {
            cert: None,
            root: Some(error.to_string()),
        }
    } else {
        Problems {
            cert: Some(error.to_string()),
            root: None,
        }
    }
}

/// Hash of every configured file's content (or of the error reading it).
fn fingerprint(files: &Files<'_>) -> u64 {
    let mut hasher = DefaultHasher::new();
    let files = [
        Some(files.certificate),
        Some(files.key),
        files.ca,
        files.crl,
    ];
    for path in files.into_iter().flatten() {
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

fn describe(files: &Files<'_>) -> Result<Served, TlsError> {
    let chain = load::certificate_chain(files.certificate)?;
    let leaf = facts(files.certificate, &chain[0])?;
    let root = match files.ca {
        Some(ca) => {
            let roots = load::ca_certificates(ca)?;
            Some(facts(ca, &roots[0])?)
        }
        None => None,
    };
    Ok(Served { leaf, root })
}

fn facts(path: &Path, der: &CertificateDer<'_>) -> Result<CertificateFacts, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TlsError::CertificateUnparsable {
            path: path.to_path_buf(),
            index: 1,
            reason: e.to_string(),
        })?;
    let validity = cert.validity();
    Ok(CertificateFacts {
        serial: cert.serial.to_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

fn outside_validity(path: &Path, leaf: &CertificateFacts, now: i64) -> Option<String> {
    if now > leaf.not_after {
        Some(format!(
            "{}: the certificate expired at {}",
            path.display(),
            rfc3339(leaf.not_after)
        ))
    } else if now < leaf.not_before {
        Some(format!(
            "{}: the certificate is not valid before {}",
            path.display(),
            rfc3339(leaf.not_before)
        ))
    } else {
        None
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2023-02-14T09:51:56Z`, as `istioctl proxy-config secret` prints times.
fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn human_duration(seconds: i64) -> String {
    match seconds {
        s if s < 0 => format!("the past ({} ago)", human_duration(-s)),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_istio_prints_them() {
        assert_eq!(rfc3339(1_644_832_316), "2022-02-14T09:51:56Z");
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(human_duration(90), "1m");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(3 * 86_400 + 3600), "3d 1h");
        assert_eq!(human_duration(-7200), "the past (2h ago)");
    }

    #[test]
    fn a_certificate_outside_its_window_is_named_with_the_reason() {
        let facts = CertificateFacts {
            serial: "1".into(),
            not_before: 100,
            not_after: 200,
        };
        let path = Path::new("/etc/istio/tls-certs/tls.crt");
        assert_eq!(outside_validity(path, &facts, 150), None);
        let expired = outside_validity(path, &facts, 201).unwrap();
        assert!(
            expired.contains("tls.crt") && expired.contains("expired"),
            "{expired}"
        );
        let early = outside_validity(path, &facts, 99).unwrap();
        assert!(early.contains("not valid before"), "{early}");
    }
}
