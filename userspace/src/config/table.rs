//! The effective policy as `postern check` prints it: aligned plain-text columns, then each
//! workload's mesh identity, then Services with a virtual IP (if any), then warnings.

use crate::policy::{MtlsMode, PolicyTable, PortAction, ServicePolicy, WorkloadPolicy};

const HEADER: [&str; 8] = [
    "WORKLOAD", "NETNS", "PORT", "PROTOCOL", "MTLS", "POLICY", "ENDPOINT", "SOURCE",
];

const IDENTITY_HEADER: [&str; 4] = ["WORKLOAD", "IDENTITY", "CERTIFICATES", "OUTBOUND CGROUP"];

const SERVICE_HEADER: [&str; 4] = ["SERVICE", "CLUSTER-IP", "PORTS", "WORKLOADS"];

/// Renders the table: one row per intercepted port, then a `*` row per workload for every
/// other port; then one row per workload with its mesh identity; then one `warning: ...` line
/// per warning.
pub fn render_table(table: &PolicyTable) -> String {
    let rows: Vec<[String; 8]> = table.workloads.iter().flat_map(workload_rows).collect();
    let mut out = columns(HEADER, &rows);
    let identities: Vec<[String; 4]> = table.workloads.iter().map(identity_row).collect();
    out.push('\n');
    out.push_str(&columns(IDENTITY_HEADER, &identities));
    if !table.services.is_empty() {
        let services: Vec<[String; 4]> = table.services.iter().map(service_row).collect();
        out.push('\n');
        out.push_str(&columns(SERVICE_HEADER, &services));
    }
    for warning in &table.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

fn workload_rows(workload: &WorkloadPolicy) -> Vec<[String; 8]> {
    let id = workload.id();
    let netns = netns(workload);
    let ports = workload.ports.iter().map(|port| {
        [
            id.clone(),
            netns.clone(),
            port.port.to_string(),
            port.protocol.to_string(),
            port.mtls.to_string(),
            policy(workload, &port.action),
            port.endpoint.to_string(),
            port.source.clone(),
        ]
    });
    // What happens on every port the Sidecar and portLevelMtls do not list.
    let others = match (workload.other_ports, &workload.mesh) {
        (MtlsMode::Strict, Some(_)) => "MESH MTLS (STRICT)",
        (MtlsMode::Strict, None) => "reset",
        (MtlsMode::Disable | MtlsMode::Permissive, _) => "not intercepted",
    };
    let other_ports = [
        id.clone(),
        netns.clone(),
        "*".to_owned(),
        "-".to_owned(),
        workload.other_ports.to_string(),
        others.to_owned(),
        "-".to_owned(),
        workload.other_ports_source.clone(),
    ];
    ports.chain([other_ports]).collect()
}

/// The network namespace, with the addresses the workload claims in it if it does not
/// claim them all.
fn netns(workload: &WorkloadPolicy) -> String {
    if workload.addresses.is_empty() {
        return workload.netns.to_string();
    }
    let addresses: Vec<String> = workload.addresses.iter().map(ToString::to_string).collect();
    format!("{} ({})", workload.netns, addresses.join(","))
}

/// What the port does; without a mesh identity, STRICT can only reset and PERMISSIVE can only
/// splice plaintext.
fn policy(workload: &WorkloadPolicy, action: &PortAction) -> String {
    match (action, &workload.mesh) {
        (PortAction::MeshStrict, None) => "reset (no mesh identity)".to_owned(),
        (PortAction::Permissive, None) => "PLAINTEXT (no mesh identity)".to_owned(),
        _ => action.to_string(),
    }
}

/// The workload's SPIFFE ID, certificate directory and captured cgroup; `none` without an
/// identity, where STRICT ports reset every connection.
fn identity_row(workload: &WorkloadPolicy) -> [String; 4] {
    match &workload.mesh {
        Some(mesh) => [
            workload.id(),
            mesh.spiffe_id.clone(),
            mesh.certificates.display().to_string(),
            mesh.cgroup
                .as_ref()
                .map_or_else(|| "-".to_owned(), |path| path.display().to_string()),
        ],
        None => [
            workload.id(),
            "none (no serviceAccount: mesh mTLS cannot be served)".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ],
    }
}

/// A Service with a virtual IP: its ports as `PORT->TARGET`, and the Workloads it selects.
fn service_row(service: &ServicePolicy) -> [String; 4] {
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|(port, target)| format!("{port}->{target}"))
        .collect();
    let workloads = if service.workloads.is_empty() {
        "none".to_owned()
    } else {
        service.workloads.join(",")
    };
    [
        service.id(),
        service.cluster_ip.to_string(),
        ports.join(","),
        workloads,
    ]
}

/// A header and rows, in aligned columns.
fn columns<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = line(&header.map(String::from), &widths);
    for row in rows {
        out.push_str(&line(row, &widths));
    }
    out
}

fn line<const N: usize>(cells: &[String; N], widths: &[usize; N]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(cell, width)| format!("{cell:width$}"))
        .collect();
    format!("{}\n", padded.join("  ").trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{
        load, stream, HTTPBIN, SEED_DISABLE_PORT, SEED_GLOBAL_MTLS, SEED_SIDECAR,
    };

    #[test]
    fn the_seed_renders_one_row_per_port_then_other_ports_then_warnings() {
        let yaml = stream(&[SEED_GLOBAL_MTLS, SEED_DISABLE_PORT, SEED_SIDECAR, HTTPBIN]);
        let mut table = load(&yaml).unwrap();
        table.warnings.push("something to know".into());
        let expected = "\
WORKLOAD      NETNS               PORT  PROTOCOL  MTLS     POLICY                    ENDPOINT      SOURCE
test/httpbin  /run/netns/httpbin  9080  HTTPS     DISABLE  MUTUAL TLS                127.0.0.1:80  Sidecar test/ingress-sidecar, PeerAuthentication test/disable-peer-auth-for-external-mtls-port
test/httpbin  /run/netns/httpbin  9081  HTTP      STRICT   reset (no mesh identity)  127.0.0.1:80  Sidecar test/ingress-sidecar, PeerAuthentication test/disable-peer-auth-for-external-mtls-port
test/httpbin  /run/netns/httpbin  *     -         STRICT   reset                     -             PeerAuthentication test/disable-peer-auth-for-external-mtls-port

WORKLOAD      IDENTITY                                              CERTIFICATES  OUTBOUND CGROUP
test/httpbin  none (no serviceAccount: mesh mTLS cannot be served)  -             -
warning: something to know
";
        assert_eq!(render_table(&table), expected);
    }

    #[test]
    fn addresses_show_with_the_netns_and_other_ports_say_if_they_pass() {
        let workload = "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\n\
                        spec: {networkNamespace: host, addresses: [10.0.0.2, 10.0.0.1]}";
        let expected = "\
WORKLOAD  NETNS                     PORT  PROTOCOL  MTLS        POLICY           ENDPOINT  SOURCE
test/w    host (10.0.0.1,10.0.0.2)  *     -         PERMISSIVE  not intercepted  -         Istio default (no PeerAuthentication sets a mode)

WORKLOAD  IDENTITY                                              CERTIFICATES  OUTBOUND CGROUP
test/w    none (no serviceAccount: mesh mTLS cannot be served)  -             -
";
        assert_eq!(render_table(&load(workload).unwrap()), expected);
    }

    #[test]
    fn services_with_a_virtual_ip_show_their_ports_and_workloads() {
        let service = crate::config::testing::SEED_DEPLOYMENT.replacen(
            "spec:\n  ports:",
            "spec:\n  clusterIP: 10.96.78.113\n  ports:",
            1,
        );
        let rendered = render_table(&load(&stream(&[&service, HTTPBIN])).unwrap());
        let services = rendered.split("\n\n").nth(2).unwrap();
        assert_eq!(
            services,
            "\
SERVICE       CLUSTER-IP    PORTS                  WORKLOADS
test/httpbin  10.96.78.113  8443->9080,8080->9081  test/httpbin
"
        );
    }

    #[test]
    fn identities_show_per_workload_and_strict_ports_use_them() {
        let workload = "apiVersion: postern.dev/v1alpha1\nkind: Workload\n\
                        metadata: {name: sleep, labels: {app: sleep}}\n\
                        spec: {networkNamespace: /run/netns/sleep, serviceAccount: sleep, \
                        meshCertificates: /var/run/secrets/spiffe, cgroup: /sys/fs/cgroup/sleep}";
        let yaml = stream(&[SEED_GLOBAL_MTLS, workload]);
        let expected = "\
WORKLOAD    NETNS             PORT  PROTOCOL  MTLS    POLICY              ENDPOINT  SOURCE
test/sleep  /run/netns/sleep  *     -         STRICT  MESH MTLS (STRICT)  -         PeerAuthentication test/default

WORKLOAD    IDENTITY                                 CERTIFICATES             OUTBOUND CGROUP
test/sleep  spiffe://cluster.local/ns/test/sa/sleep  /var/run/secrets/spiffe  /sys/fs/cgroup/sleep
";
        assert_eq!(render_table(&load(&yaml).unwrap()), expected);
    }
}
