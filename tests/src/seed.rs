//! The seed (`ingress-sidecar-tls-termination.md`): its manifests and its verification requests.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::curl::CurlResult;
use crate::topology::{SeedTopology, POD_IPV4};

/// The seed's `kubectl -n test apply` documents, verbatim, and postern's Workload document.
pub const SEED_PEER_AUTHENTICATION_DEFAULT: &str =
    include_str!("../../deploy/examples/seed/peer-authentication-default.yaml");
pub const SEED_PEER_AUTHENTICATION_HTTPBIN: &str =
    include_str!("../../deploy/examples/seed/peer-authentication-httpbin.yaml");
pub const SEED_SIDECAR: &str = include_str!("../../deploy/examples/seed/sidecar.yaml");
pub const SEED_WORKLOAD: &str = include_str!("../../deploy/examples/seed/workload.yaml");
/// The seed's httpbin ServiceAccount, Service and Deployment (`kubectl -n test apply`).
pub const SEED_DEPLOYMENT: &str = include_str!("../../deploy/examples/seed/deployment.yaml");

/// The Kubernetes namespace of the seed (`kubectl -n test`): run postern with `--namespace test`.
pub const NAMESPACE: &str = "test";
/// The name clients use for httpbin; resolved to the pod's address with curl's `--resolve`.
pub const SEED_HOST: &str = "httpbin.test.svc.cluster.local";
/// The Sidecar's external port (TLS MUTUAL; PeerAuthentication DISABLE). The seed's Service
/// maps 8443 to it; without a Service, clients use it directly.
pub const EXTERNAL_PORT: u16 = 9080;
/// The Sidecar's internal port (plain HTTP; PeerAuthentication STRICT). The seed's Service maps
/// 8080 to it.
pub const INTERNAL_PORT: u16 = 9081;
/// httpbin's own port, on the pod's loopback.
pub const APP_PORT: u16 = 80;

const WORKLOAD_NETNS_LINE: &str = "networkNamespace: /run/netns/httpbin";

/// Writes the seed's manifests into `dir` (created if missing), with the Workload's
/// `networkNamespace` set to `netns_path`. Returns the paths in the seed's order:
/// `peer-authentication-default.yaml`, `peer-authentication-httpbin.yaml`, `sidecar.yaml`,
/// `workload.yaml`.
pub fn seed_config(dir: &Path, netns_path: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let workload = SEED_WORKLOAD.replace(
        WORKLOAD_NETNS_LINE,
        &format!("networkNamespace: {}", netns_path.display()),
    );
    let files = [
        (
            "peer-authentication-default.yaml",
            SEED_PEER_AUTHENTICATION_DEFAULT,
        ),
        (
            "peer-authentication-httpbin.yaml",
            SEED_PEER_AUTHENTICATION_HTTPBIN,
        ),
        ("sidecar.yaml", SEED_SIDECAR),
        ("workload.yaml", workload.as_str()),
    ];
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The requests of the seed's Verification section, adapted to the test bed, plus negative ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedRequest {
    /// The seed's mTLS request from the external client, with the seed's client certificate,
    /// to the external port: expects HTTP 200.
    ExternalMtls,
    /// The same without a client certificate: the TLS handshake is refused.
    ExternalNoClientCert,
    /// The same with a client certificate from `other-ca`: the TLS handshake is refused.
    ExternalOtherCa,
    /// The seed's last request: plain `http://` to the internal port from outside the mesh
    /// (with the seed's certificate options, which curl ignores for http): reset, curl exit 56.
    InternalPlaintext,
}

impl SeedRequest {
    pub const ALL: [SeedRequest; 4] = [
        SeedRequest::ExternalMtls,
        SeedRequest::ExternalNoClientCert,
        SeedRequest::ExternalOtherCa,
        SeedRequest::InternalPlaintext,
    ];

    pub fn port(self) -> u16 {
        match self {
            SeedRequest::InternalPlaintext => INTERNAL_PORT,
            _ => EXTERNAL_PORT,
        }
    }

    /// What the seed says happens, in words.
    pub fn expectation(self) -> &'static str {
        match self {
            SeedRequest::ExternalMtls => "HTTP 200 from httpbin over mutual TLS",
            SeedRequest::ExternalNoClientCert => {
                "TLS handshake refused without a client certificate"
            }
            SeedRequest::ExternalOtherCa => {
                "TLS handshake refused for a client certificate from another CA"
            }
            SeedRequest::InternalPlaintext => "connection reset by peer (curl exit 56)",
        }
    }

    /// Whether `result` is what the seed expects for this request.
    pub fn matches_seed(self, result: &CurlResult) -> bool {
        match self {
            SeedRequest::ExternalMtls => result.exit_code == 0 && result.http_status() == Some(200),
            SeedRequest::ExternalNoClientCert | SeedRequest::ExternalOtherCa => {
                result.exit_code != 0 && result.http_status().is_none()
            }
            SeedRequest::InternalPlaintext => {
                result.exit_code == 56 && result.http_status().is_none()
            }
        }
    }
}

/// curl's arguments (without `curl`) for `request` to the pod's IPv4 address.
pub fn seed_curl_args(topology: &SeedTopology, request: SeedRequest) -> Vec<String> {
    seed_curl_args_to(topology, request, POD_IPV4.into(), "/status/200")
}

/// curl's arguments (without `curl`) for `request` to `addr` (the pod's IPv4 or IPv6 address)
/// and `path`, shaped like the seed's command:
///
/// `--resolve httpbin.test.svc.cluster.local:9080:198.18.0.2 --cacert CA --key KEY --cert CERT -v
/// -HHost:httpbin.test.svc.cluster.local https://httpbin.test.svc.cluster.local:9080/status/200`
pub fn seed_curl_args_to(
    topology: &SeedTopology,
    request: SeedRequest,
    addr: IpAddr,
    path: &str,
) -> Vec<String> {
    let certs = topology.certs();
    let port = request.port();
    let resolve_addr = match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let scheme = match request {
        SeedRequest::InternalPlaintext => "http",
        _ => "https",
    };
    let mut args = vec![
        "--resolve".to_string(),
        format!("{SEED_HOST}:{port}:{resolve_addr}"),
        "--cacert".to_string(),
        certs.ca_cert.display().to_string(),
    ];
    let client = match request {
        SeedRequest::ExternalNoClientCert => None,
        SeedRequest::ExternalOtherCa => Some((&certs.other_client_key, &certs.other_client_cert)),
        SeedRequest::ExternalMtls | SeedRequest::InternalPlaintext => {
            Some((&certs.client_key, &certs.client_cert))
        }
    };
    if let Some((key, cert)) = client {
        args.extend([
            "--key".to_string(),
            key.display().to_string(),
            "--cert".to_string(),
            cert.display().to_string(),
        ]);
    }
    args.extend([
        "-v".to_string(),
        format!("-HHost:{SEED_HOST}"),
        format!("{scheme}://{SEED_HOST}:{port}{path}"),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_points_the_workload_at_the_netns() {
        let dir = tempfile::tempdir().unwrap();
        let paths = seed_config(dir.path(), Path::new("/run/netns/pt-1-0-httpbin")).unwrap();
        assert_eq!(paths.len(), 4);
        let workload = std::fs::read_to_string(&paths[3]).unwrap();
        assert!(workload.contains("networkNamespace: /run/netns/pt-1-0-httpbin\n"));
        assert!(!workload.contains("/run/netns/httpbin"));
        assert_eq!(
            std::fs::read_to_string(&paths[2]).unwrap(),
            SEED_SIDECAR,
            "the Sidecar is written verbatim"
        );
    }

    #[test]
    fn seed_manifests_are_the_seeds() {
        assert!(SEED_PEER_AUTHENTICATION_DEFAULT.contains("mode: STRICT"));
        assert!(!SEED_PEER_AUTHENTICATION_DEFAULT.contains("namespace:"));
        assert!(SEED_PEER_AUTHENTICATION_HTTPBIN.contains("9080:\n      mode: DISABLE"));
        assert!(SEED_SIDECAR.contains("caCertificates: \"/etc/istio/tls-ca-certs/ca.crt\""));
        assert!(SEED_WORKLOAD.contains(WORKLOAD_NETNS_LINE));
    }
}
