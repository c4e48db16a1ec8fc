//! postern's own `Workload` documents: which network namespace (and which of its addresses)
//! a set of labels stands for, and its mesh identity. On Kubernetes the same facts come from
//! pods (and their service accounts).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::document::{Kind, Resource};
use super::error::{expected, Diagnostics, FieldPath, Problem, Report};
use super::values::{absolute_path, ip_address, optional};
use crate::policy::NetnsRef;

/// A valid Workload; its labels are the document's `metadata.labels`.
#[derive(Debug)]
pub(super) struct Workload {
    pub netns: NetnsRef,
    /// Sorted, distinct; empty means every address of the network namespace.
    pub addresses: Vec<IpAddr>,
    /// `serviceAccount` and `meshCertificates`, which come together; `None` when neither is set.
    pub mesh: Option<WorkloadMesh>,
}

/// What the Workload says about its mesh identity; `resolve` derives the SPIFFE ID.
#[derive(Debug)]
pub(super) struct WorkloadMesh {
    pub service_account: String,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt`.
    pub certificates: PathBuf,
    /// cgroup v2 directory whose outbound connections are captured.
    pub cgroup: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWorkloadSpec {
    network_namespace: Option<String>,
    addresses: Option<Vec<String>>,
    service_account: Option<String>,
    mesh_certificates: Option<String>,
    cgroup: Option<String>,
}

impl Kind for Workload {
    const NAME: &'static str = "Workload";
    const GROUP: &'static str = "postern.dev";
    const VERSIONS: &'static [&'static str] = &["v1alpha1"];
    type Raw = RawWorkloadSpec;

    fn validate(raw: RawWorkloadSpec, spec: &FieldPath, report: &mut Report) -> Option<Workload> {
        let netns = report.check(
            &spec.key("networkNamespace"),
            network_namespace(raw.network_namespace.as_deref()),
        );
        let addresses = optional(raw.addresses, |addresses| {
            addresses_of(addresses, &spec.key("addresses"), report)
        });
        let mesh = mesh(
            raw.service_account,
            raw.mesh_certificates,
            raw.cgroup,
            spec,
            report,
        );
        Some(Workload {
            netns: netns?,
            addresses: addresses?.unwrap_or_default(),
            mesh: mesh?,
        })
    }
}

/// `serviceAccount` names the identity and `meshCertificates` holds its proof: one without
/// the other is a mistake. `cgroup` captures outbound traffic, which needs the identity.
fn mesh(
    service_account: Option<String>,
    certificates: Option<String>,
    cgroup: Option<String>,
    spec: &FieldPath,
    report: &mut Report,
) -> Option<Option<WorkloadMesh>> {
    let service_account = optional(service_account, |name| {
        report.check(&spec.key("serviceAccount"), service_account_name(&name))
    });
    let certificates = optional(certificates, |path| {
        report.check(
            &spec.key("meshCertificates"),
            absolute_path(&path).map_err(|_| {
                expected(
                    &["an absolute path to a directory with tls.crt, tls.key and ca.crt"],
                    format!("{path:?}"),
                )
            }),
        )
    });
    let cgroup = optional(cgroup, |path| {
        report.check(&spec.key("cgroup"), absolute_path(&path))
    });
    match (service_account?, certificates?, cgroup?) {
        (Some(service_account), Some(certificates), cgroup) => Some(Some(WorkloadMesh {
            service_account,
            certificates,
            cgroup,
        })),
        (None, None, None) => Some(None),
        (None, None, Some(_)) => {
            report.error(
                &spec.key("cgroup"),
                "capturing outbound connections needs a mesh identity: set serviceAccount and \
                 meshCertificates too"
                    .to_owned(),
            );
            None
        }
        (Some(_), None, _) => {
            report.error(
                &spec.key("meshCertificates"),
                expected(
                    &["the directory of the service account's certificates (tls.crt, tls.key, ca.crt)"],
                    "nothing",
                ),
            );
            None
        }
        (None, Some(_), _) => {
            report.error(
                &spec.key("serviceAccount"),
                expected(
                    &["the service account whose identity meshCertificates holds"],
                    "nothing",
                ),
            );
            None
        }
    }
}

/// A Kubernetes service account name: a DNS subdomain (lower-case letters, digits, `-`, `.`).
fn service_account_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if valid {
        Ok(name.to_owned())
    } else {
        Err(expected(
            &["a service account name (lower-case letters, digits, '-' and '.')"],
            format!("{name:?}"),
        ))
    }
}

fn network_namespace(value: Option<&str>) -> Result<NetnsRef, String> {
    let forms = ["host", "an absolute path such as /run/netns/NAME"];
    match value {
        None => Err(expected(&forms, "nothing")),
        Some("host") => Ok(NetnsRef::Host),
        Some(path) => absolute_path(path)
            .map(NetnsRef::Path)
            .map_err(|_| expected(&forms, format!("{path:?}"))),
    }
}

fn addresses_of(
    addresses: Vec<String>,
    path: &FieldPath,
    report: &mut Report,
) -> Option<Vec<IpAddr>> {
    if addresses.is_empty() {
        // An empty list could be read as "none" or "all"; neither guess is safe.
        report.error(
            path,
            expected(
                &["at least one address (omit addresses to claim every address)"],
                "an empty list",
            ),
        );
        return None;
    }
    // Every entry is checked, so that all their problems are reported at once.
    let parsed: Vec<Option<IpAddr>> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| report.check(&path.index(index), ip_address(address)))
        .collect();
    let mut addresses: Vec<IpAddr> = parsed.into_iter().collect::<Option<_>>()?;
    addresses.sort();
    addresses.dedup();
    Some(addresses)
}

/// Refuses two workloads in one network namespace that could both claim a connection:
/// either claims every address, or they share one.
pub(super) fn check_shared_netns(workloads: &[Resource<Workload>], diagnostics: &mut Diagnostics) {
    for (position, workload) in workloads.iter().enumerate() {
        let same_netns = workloads[..position]
            .iter()
            .filter(|earlier| earlier.spec.netns == workload.spec.netns);
        for earlier in same_netns {
            if let Some(overlap) = overlap(&earlier.spec, &workload.spec) {
                let message = format!(
                    "shares network namespace {} with {}, and {overlap}, so both would claim \
                     the same ports; give each its own addresses",
                    workload.spec.netns,
                    earlier.describe(),
                );
                let field = FieldPath::default().key("spec").key("addresses");
                diagnostics.error(Problem::at(&workload.origin, Some(&field), message));
            }
        }
    }
}

/// How two workloads in one network namespace overlap, if they do.
fn overlap(a: &Workload, b: &Workload) -> Option<String> {
    if a.addresses.is_empty() || b.addresses.is_empty() {
        return Some("one of them has no addresses, which claims every address".to_owned());
    }
    a.addresses
        .iter()
        .find(|address| b.addresses.contains(address))
        .map(|address| format!("both claim {address}"))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error, errors, load, stream};
    use crate::policy::NetnsRef;

    fn workload(name: &str, spec: &str) -> String {
        format!("apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\nspec: {spec}")
    }

    #[test]
    fn a_workload_maps_to_its_netns_and_addresses() {
        let yaml = stream(&[
            &workload(
                "a",
                "{networkNamespace: host, addresses: [198.18.0.3, 198.18.0.2, 198.18.0.3]}",
            ),
            &workload("b", "{networkNamespace: /run/netns/b}"),
        ]);
        let table = load(&yaml).unwrap();
        let [a, b] = &table.workloads[..] else {
            panic!("{table:?}")
        };
        assert_eq!(a.netns, NetnsRef::Host);
        assert_eq!(
            a.addresses,
            [
                "198.18.0.2".parse::<std::net::IpAddr>().unwrap(),
                "198.18.0.3".parse().unwrap()
            ]
        );
        assert_eq!(b.netns, NetnsRef::Path("/run/netns/b".into()));
        assert!(b.addresses.is_empty());
    }

    #[test]
    fn network_namespace_is_host_or_an_absolute_path() {
        let location = "test.yaml: document 1 (Workload test/w): spec.networkNamespace";
        let forms = "expected host or an absolute path such as /run/netns/NAME";
        assert_error(
            &workload("w", "{}"),
            &format!("{location}: {forms}, found nothing"),
        );
        assert_error(
            &workload("w", "{networkNamespace: httpbin}"),
            &format!("{location}: {forms}, found \"httpbin\""),
        );
        assert_error(
            "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}",
            &format!("{location}: {forms}, found nothing"),
        );
    }

    #[test]
    fn addresses_are_a_non_empty_list_of_ips() {
        let location = "test.yaml: document 1 (Workload test/w): spec.addresses";
        assert_error(
            &workload("w", "{networkNamespace: host, addresses: []}"),
            &format!("{location}: expected at least one address (omit addresses to claim every address), found an empty list"),
        );
        assert_error(
            &workload("w", "{networkNamespace: host, addresses: [10.0.0.1, pod, 10.0.0.0/8]}"),
            &format!(
                "{location}[1]: expected an IP address, found \"pod\"\n{location}[2]: expected an IP address, found \"10.0.0.0/8\""
            ),
        );
        assert_error(
            &workload("w", "{networkNamespace: host, address: 10.0.0.1}"),
            "test.yaml: document 1 (Workload test/w): spec.address: unknown field `address`, expected one of `networkNamespace`, `addresses`, `serviceAccount`, `meshCertificates`, `cgroup`",
        );
    }

    #[test]
    fn workloads_sharing_a_netns_must_not_overlap() {
        let host = |name: &str, addresses: &str| {
            workload(name, &format!("{{networkNamespace: host{addresses}}}"))
        };
        let overlap = |documents: &[&str]| errors(&stream(documents));
        let prefix = "test.yaml: document 2 (Workload test/b): spec.addresses: shares network namespace host with \
                      Workload test/a (test.yaml document 1), and";
        let advice = "so both would claim the same ports; give each its own addresses";
        assert_eq!(
            overlap(&[&host("a", ""), &host("b", "")]),
            format!("{prefix} one of them has no addresses, which claims every address, {advice}")
        );
        assert_eq!(
            overlap(&[&host("a", ", addresses: [10.0.0.1]"), &host("b", "")]),
            format!("{prefix} one of them has no addresses, which claims every address, {advice}")
        );
        assert_eq!(
            overlap(&[
                &host("a", ", addresses: [10.0.0.1, 10.0.0.2]"),
                &host("b", ", addresses: [10.0.0.2]")
            ]),
            format!("{prefix} both claim 10.0.0.2, {advice}")
        );
        // Disjoint addresses, or separate network namespaces, do not overlap.
        load(&stream(&[
            &host("a", ", addresses: [10.0.0.1]"),
            &host("b", ", addresses: [10.0.0.2]"),
        ]))
        .unwrap();
        load(&stream(&[
            &workload("a", "{networkNamespace: /run/netns/a}"),
            &workload("b", "{networkNamespace: /run/netns/b}"),
        ]))
        .unwrap();
    }

    #[test]
    fn a_mesh_identity_is_derived_from_namespace_service_account_and_trust_domain() {
        let yaml = workload(
            "w",
            "{networkNamespace: host, serviceAccount: sleep, meshCertificates: /certs/sleep, \
             cgroup: /sys/fs/cgroup/sleep}",
        );
        let table = load(&yaml).unwrap();
        let mesh = table.workloads[0].mesh.as_ref().unwrap();
        assert_eq!(mesh.spiffe_id, "spiffe://cluster.local/ns/test/sa/sleep");
        assert_eq!(mesh.trust_domain, "cluster.local");
        assert_eq!(
            mesh.certificate_chain(),
            std::path::Path::new("/certs/sleep/tls.crt")
        );
        assert_eq!(
            mesh.private_key(),
            std::path::Path::new("/certs/sleep/tls.key")
        );
        assert_eq!(mesh.roots(), std::path::Path::new("/certs/sleep/ca.crt"));
        assert_eq!(
            mesh.cgroup.as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/sleep"))
        );

        let options = crate::config::LoadOptions {
            default_namespace: "prod".into(),
            trust_domain: "example.org".into(),
            ..Default::default()
        };
        let table = crate::config::load_sources(&[("w.yaml".into(), yaml)], &options).unwrap();
        assert_eq!(
            table.workloads[0].mesh.as_ref().unwrap().spiffe_id,
            "spiffe://example.org/ns/prod/sa/sleep"
        );
        assert!(load(&workload("w", "{networkNamespace: host}"))
            .unwrap()
            .workloads[0]
            .mesh
            .is_none());
    }

    #[test]
    fn a_mesh_identity_needs_its_service_account_and_certificates_together() {
        let location = "test.yaml: document 1 (Workload test/w): spec";
        assert_error(
            &workload("w", "{networkNamespace: host, serviceAccount: sleep}"),
            &format!("{location}.meshCertificates: expected the directory of the service account's certificates (tls.crt, tls.key, ca.crt), found nothing"),
        );
        assert_error(
            &workload("w", "{networkNamespace: host, meshCertificates: /certs}"),
            &format!("{location}.serviceAccount: expected the service account whose identity meshCertificates holds, found nothing"),
        );
        assert_error(
            &workload("w", "{networkNamespace: host, cgroup: /sys/fs/cgroup/w}"),
            &format!("{location}.cgroup: capturing outbound connections needs a mesh identity: set serviceAccount and meshCertificates too"),
        );
        assert_error(
            &workload("w", "{networkNamespace: host, serviceAccount: Sleep_1, meshCertificates: certs}"),
            &format!("{location}.serviceAccount: expected a service account name (lower-case letters, digits, '-' and '.'), found \"Sleep_1\"\n\
                      {location}.meshCertificates: expected an absolute path to a directory with tls.crt, tls.key and ca.crt, found \"certs\""),
        );
    }

    #[test]
    fn the_same_workload_twice_is_refused() {
        let yaml = stream(&[
            &workload("w", "{networkNamespace: /run/netns/a}"),
            &workload("w", "{networkNamespace: /run/netns/b}"),
        ]);
        assert_error(
            &yaml,
            "test.yaml: document 2 (Workload test/w): metadata.name: Workload test/w is defined twice; the other is at test.yaml document 1",
        );
    }
}
