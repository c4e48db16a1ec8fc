//! Kubernetes `Service` documents (core `v1`), for mesh clients that connect to a Service's
//! virtual IP. Only a Service with a `clusterIP` is used: postern captures connects to that
//! address and port and sends them, over mesh mTLS, to the target port of a selected mesh
//! workload. Every other Service is ignored, as before: it changes nothing postern does.

use std::net::IpAddr;

use serde::Deserialize;

use super::document::Kind;
use super::error::{expected, FieldPath, Report};
use super::values::{ip_address, port_number, Labels};

/// A Service, validated as far as postern uses it.
#[derive(Debug)]
pub(super) struct Service {
    /// `None` when the Service has no virtual IP postern can capture (absent, `None`).
    pub cluster_ip: Option<IpAddr>,
    pub selector: Labels,
    /// TCP ports: (port, targetPort).
    pub ports: Vec<(u16, u16)>,
}

/// A Service's spec. Fields postern does not use (type, sessionAffinity, ...) are allowed and
/// ignored: they are the cluster's business.
#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping", rename_all = "camelCase")]
pub(super) struct RawServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    selector: Labels,
    #[serde(default)]
    ports: Vec<RawServicePort>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", rename_all = "camelCase")]
struct RawServicePort {
    port: u64,
    target_port: Option<serde_yaml::Value>,
    protocol: Option<String>,
}

impl Kind for Service {
    const NAME: &'static str = "Service";
    const GROUP: &'static str = "";
    const VERSIONS: &'static [&'static str] = &["v1"];
    type Raw = RawServiceSpec;

    fn validate(raw: RawServiceSpec, spec: &FieldPath, report: &mut Report) -> Option<Service> {
        let cluster_ip = match raw.cluster_ip.as_deref() {
            None | Some("" | "None") => None,
            Some(ip) => Some(report.check(&spec.key("clusterIP"), ip_address(ip))?),
        };
        if cluster_ip.is_none() {
            // Not captured, so nothing else in it matters to postern.
            return Some(Service {
                cluster_ip,
                selector: raw.selector,
                ports: Vec::new(),
            });
        }
        let path = spec.key("ports");
        let ports: Vec<Option<(u16, u16)>> = raw
            .ports
            .into_iter()
            .enumerate()
            .filter(|(_, port)| port.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .map(|(index, port)| service_port(port, &path.index(index), report))
            .collect();
        Some(Service {
            cluster_ip,
            selector: raw.selector,
            ports: ports.into_iter().collect::<Option<_>>()?,
        })
    }
}

fn service_port(raw: RawServicePort, path: &FieldPath, report: &mut Report) -> Option<(u16, u16)> {
    let port = report.check(&path.key("port"), port_number(raw.port));
    let target = match raw.target_port {
        None => port,
        Some(serde_yaml::Value::Number(number)) => report.check(
            &path.key("targetPort"),
            number
                .as_u64()
                .ok_or_else(|| expected(&["a port number 1-65535"], &number))
                .and_then(port_number),
        ),
        Some(other) => {
            let found = serde_yaml::to_string(&other).unwrap_or_default();
            report.error(
                &path.key("targetPort"),
                expected(
                    &["a port number (a named port needs the pod's spec, which postern does not read)"],
                    format!("{:?}", found.trim()),
                ),
            );
            None
        }
    };
    Some((port?, target?))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error, load, stream, SEED_DEPLOYMENT};

    fn with_cluster_ip(ip: &str) -> String {
        SEED_DEPLOYMENT.replacen(
            "spec:\n  ports:",
            &format!("spec:\n  clusterIP: {ip}\n  ports:"),
            1,
        )
    }

    #[test]
    fn a_service_with_a_cluster_ip_maps_its_ports_to_target_ports() {
        let workload = "apiVersion: postern.dev/v1alpha1\nkind: Workload\n\
                        metadata: {name: httpbin, namespace: default, labels: {app: httpbin}}\n\
                        spec: {networkNamespace: /run/netns/httpbin}";
        let table = load(&stream(&[&with_cluster_ip("10.96.78.113"), workload])).unwrap();
        let [service] = &table.services[..] else {
            panic!("{table:?}")
        };
        assert_eq!(service.id(), "test/httpbin");
        assert_eq!(
            service.cluster_ip,
            "10.96.78.113".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(service.ports, [(8443, 9080), (8080, 9081)]);
        // The Workload is in another namespace: a Service selects only in its own.
        assert!(service.workloads.is_empty());
    }

    #[test]
    fn a_service_without_a_cluster_ip_is_ignored_whatever_its_ports() {
        let named = SEED_DEPLOYMENT.replace("targetPort: 9080", "targetPort: https");
        assert!(load(&named).unwrap().services.is_empty());
        assert!(load(&with_cluster_ip("None")).unwrap().services.is_empty());
    }

    #[test]
    fn a_captured_service_needs_an_ip_and_numeric_target_ports() {
        let location = "test.yaml: document 2 (Service test/httpbin): spec";
        assert_error(
            &with_cluster_ip("httpbin"),
            &format!("{location}.clusterIP: expected an IP address, found \"httpbin\""),
        );
        assert_error(
            &with_cluster_ip("10.96.78.113").replace("targetPort: 9080", "targetPort: https"),
            &format!("{location}.ports[0].targetPort: expected a port number (a named port needs the pod's spec, which postern does not read), found \"https\""),
        );
    }
}
