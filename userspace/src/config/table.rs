//! The effective policy as `postern check` prints it: aligned plain-text columns, then
//! warnings.

use crate::policy::{MtlsMode, PolicyTable, WorkloadPolicy};

const HEADER: [&str; 8] = [
    "WORKLOAD", "NETNS", "PORT", "PROTOCOL", "MTLS", "POLICY", "ENDPOINT", "SOURCE",
];

/// Renders the table: one row per intercepted port, then a `*` row per workload for every
/// other port, then one `warning: ...` line per warning.
pub fn render_table(table: &PolicyTable) -> String {
    let rows: Vec<[String; 8]> = table.workloads.iter().flat_map(workload_rows).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = line(&HEADER.map(String::from), &widths);
    for row in &rows {
        out.push_str(&line(row, &widths));
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
            port.action.to_string(),
            port.endpoint.to_string(),
            port.source.clone(),
        ]
    });
    // What happens on every port the Sidecar and portLevelMtls do not list.
    let others = match workload.other_ports {
        MtlsMode::Strict => "reset",
        MtlsMode::Disable | MtlsMode::Permissive => "not intercepted",
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

fn line(cells: &[String; 8], widths: &[usize; 8]) -> String {
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
WORKLOAD      NETNS               PORT  PROTOCOL  MTLS     POLICY              ENDPOINT      SOURCE
test/httpbin  /run/netns/httpbin  9080  HTTPS     DISABLE  MUTUAL TLS          127.0.0.1:80  Sidecar test/ingress-sidecar, PeerAuthentication test/disable-peer-auth-for-external-mtls-port
test/httpbin  /run/netns/httpbin  9081  HTTP      STRICT   MESH MTLS (STRICT)  127.0.0.1:80  Sidecar test/ingress-sidecar, PeerAuthentication test/disable-peer-auth-for-external-mtls-port
test/httpbin  /run/netns/httpbin  *     -         STRICT   reset               -             PeerAuthentication test/disable-peer-auth-for-external-mtls-port
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
";
        assert_eq!(render_table(&load(workload).unwrap()), expected);
    }
}
