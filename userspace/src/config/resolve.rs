//! Istio's selection and precedence rules, applied to each Workload: which Sidecar and which
//! PeerAuthentications apply, which mode each port gets, and what postern does about it.

use std::collections::BTreeSet;

use super::document::{Documents, Kind, Resource};
use super::error::{Diagnostics, FieldPath, Problem};
use super::peer_authentication::PeerAuthentication;
use super::sidecar::{loopback, IngressPort, Sidecar};
use super::values::{selects, Labels};
use super::workload::{check_shared_netns, Workload};
use super::LoadOptions;
use crate::policy::{
    spiffe_id, ConnectionLimits, MeshIdentity, MtlsMode, PortAction, PortPolicy, Protocol,
    ServicePolicy, WorkloadPolicy,
};

/// Where the mode comes from when no PeerAuthentication sets one.
const ISTIO_DEFAULT: &str = "Istio default (no PeerAuthentication sets a mode)";

/// A kind that applies to workloads by label selector, or namespace-wide without one
/// (mesh-wide in the root namespace).
trait Selecting: Kind {
    /// Where the selector is written, for messages.
    const SELECTOR_FIELD: [&'static str; 2];
    fn selector(&self) -> Option<&Labels>;
}

impl Selecting for Sidecar {
    const SELECTOR_FIELD: [&'static str; 2] = ["workloadSelector", "labels"];
    fn selector(&self) -> Option<&Labels> {
        self.selector.as_ref()
    }
}

impl Selecting for PeerAuthentication {
    const SELECTOR_FIELD: [&'static str; 2] = ["selector", "matchLabels"];
    fn selector(&self) -> Option<&Labels> {
        self.selector.as_ref()
    }
}

/// The effective policy of every Workload, sorted by namespace/name.
pub(super) fn resolve(
    documents: &Documents,
    options: &LoadOptions,
    diagnostics: &mut Diagnostics,
) -> Vec<WorkloadPolicy> {
    check_namespace_wide(&documents.sidecars, diagnostics);
    check_namespace_wide(&documents.peer_authentications, diagnostics);
    warn_unused_selectors(&documents.sidecars, &documents.workloads, diagnostics);
    warn_unused_selectors(
        &documents.peer_authentications,
        &documents.workloads,
        diagnostics,
    );
    check_shared_netns(&documents.workloads, diagnostics);
    let mut workloads: Vec<&Resource<Workload>> = documents.workloads.iter().collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    workloads
        .into_iter()
        .filter_map(|workload| resolve_workload(workload, documents, options, diagnostics))
        .collect()
}

/// Every Service with a virtual IP, with the Workloads its selector picks in its namespace. A
/// Service without a selector picks none (its endpoints are managed by hand, which postern
/// does not read).
pub(super) fn services(documents: &Documents) -> Vec<ServicePolicy> {
    documents
        .services
        .iter()
        .filter_map(|service| {
            let cluster_ip = service.spec.cluster_ip?;
            let mut workloads: Vec<String> = documents
                .workloads
                .iter()
                .filter(|workload| {
                    workload.namespace == service.namespace
                        && !service.spec.selector.is_empty()
                        && selects(&service.spec.selector, &workload.labels)
                })
                .map(|workload| format!("{}/{}", workload.namespace, workload.name))
                .collect();
            workloads.sort();
            Some(ServicePolicy {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                cluster_ip,
                ports: service.spec.ports.clone(),
                workloads,
            })
        })
        .collect()
}

/// Refuses two selector-less documents of one kind in one namespace: Istio's behaviour is
/// undefined there.
fn check_namespace_wide<T: Selecting>(resources: &[Resource<T>], diagnostics: &mut Diagnostics) {
    let namespace_wide: Vec<&Resource<T>> = resources
        .iter()
        .filter(|r| r.spec.selector().is_none())
        .collect();
    for (position, resource) in namespace_wide.iter().enumerate() {
        if let Some(earlier) = namespace_wide[..position]
            .iter()
            .find(|earlier| earlier.namespace == resource.namespace)
        {
            let message = format!(
                "{} and {} both have no {} in namespace {}; Istio's behaviour is undefined \
                 with two, so merge them",
                earlier.describe(),
                resource.id(),
                T::SELECTOR_FIELD[0],
                resource.namespace
            );
            diagnostics.error(Problem::at(&resource.origin, None, message));
        }
    }
}

fn warn_unused_selectors<T: Selecting>(
    resources: &[Resource<T>],
    workloads: &[Resource<Workload>],
    diagnostics: &mut Diagnostics,
) {
    for resource in resources {
        let Some(selector) = resource.spec.selector() else {
            continue;
        };
        let used = workloads.iter().any(|workload| {
            workload.namespace == resource.namespace && selects(selector, &workload.labels)
        });
        if !used {
            let [outer, inner] = T::SELECTOR_FIELD;
            let field = FieldPath::default().key("spec").key(outer).key(inner);
            let message = format!(
                "selects no Workload in namespace {}, so it has no effect",
                resource.namespace
            );
            diagnostics.warn(Problem::at(&resource.origin, Some(&field), message));
        }
    }
}

/// The documents of one kind that apply to `workload`, most specific first: the one whose
/// selector matches it, its namespace's selector-less one, the root namespace's
/// selector-less one. `None` if two selectors match (recorded as an error).
fn candidates<'a, T: Selecting>(
    resources: &'a [Resource<T>],
    workload: &Resource<Workload>,
    root_namespace: &str,
    diagnostics: &mut Diagnostics,
) -> Option<[Option<&'a Resource<T>>; 3]> {
    let mut selecting = resources.iter().filter(|r| {
        r.namespace == workload.namespace
            && r.spec
                .selector()
                .is_some_and(|selector| selects(selector, &workload.labels))
    });
    let selected = selecting.next();
    if let (Some(first), Some(second)) = (selected, selecting.next()) {
        let message = format!(
            "selected by both {} and {}; Istio's behaviour is undefined then, so narrow the \
             selectors or merge them",
            first.describe(),
            second.describe()
        );
        diagnostics.error(Problem::at(&workload.origin, None, message));
        return None;
    }
    Some([
        selected,
        namespace_wide(resources, &workload.namespace),
        namespace_wide(resources, root_namespace),
    ])
}

/// The selector-less document of a namespace; duplicates are refused by
/// [`check_namespace_wide`].
fn namespace_wide<'a, T: Selecting>(
    resources: &'a [Resource<T>],
    namespace: &str,
) -> Option<&'a Resource<T>> {
    resources
        .iter()
        .find(|r| r.namespace == namespace && r.spec.selector().is_none())
}

/// A PeerAuthentication mode and the document it came from.
#[derive(Clone)]
struct Decision {
    mode: MtlsMode,
    source: String,
}

fn resolve_workload(
    workload: &Resource<Workload>,
    documents: &Documents,
    options: &LoadOptions,
    diagnostics: &mut Diagnostics,
) -> Option<WorkloadPolicy> {
    let root_namespace = options.root_namespace.as_str();
    let sidecars = candidates(&documents.sidecars, workload, root_namespace, diagnostics);
    let peer_authentications = candidates(
        &documents.peer_authentications,
        workload,
        root_namespace,
        diagnostics,
    );
    // Istio uses the most specific Sidecar whole; it does not merge levels.
    let sidecar = sidecars?.into_iter().flatten().next();
    let peer_authentications = peer_authentications?;
    let workload_mode = workload_mode(&peer_authentications);
    // Only a selector PeerAuthentication may have portLevelMtls.
    let selected = peer_authentications[0];
    let mut ports: BTreeSet<u16> = selected
        .map(|pa| pa.spec.port_level.keys().copied().collect())
        .unwrap_or_default();
    ports.extend(
        sidecar
            .iter()
            .flat_map(|sidecar| sidecar.spec.ingress.iter().map(|ingress| ingress.port)),
    );
    // Every port is checked, so that all their problems are reported at once.
    let ports: Vec<Option<PortPolicy>> = ports
        .into_iter()
        .map(|port| {
            let ingress = sidecar.and_then(|sidecar| {
                let ingress = sidecar
                    .spec
                    .ingress
                    .iter()
                    .find(|ingress| ingress.port == port)?;
                Some((sidecar, ingress))
            });
            let decision = port_mode(selected, port, &workload_mode);
            port_policy(workload, port, ingress, decision, diagnostics)
        })
        .collect();
    Some(WorkloadPolicy {
        namespace: workload.namespace.clone(),
        name: workload.name.clone(),
        netns: workload.spec.netns.clone(),
        addresses: workload.spec.addresses.clone(),
        ports: ports.into_iter().collect::<Option<_>>()?,
        other_ports: workload_mode.mode,
        other_ports_source: workload_mode.source,
        mesh: workload.spec.mesh.as_ref().map(|mesh| MeshIdentity {
            spiffe_id: spiffe_id(
                &options.trust_domain,
                &workload.namespace,
                &mesh.service_account,
            ),
            trust_domain: options.trust_domain.clone(),
            certificates: mesh.certificates.clone(),
            cgroup: mesh.cgroup.clone(),
        }),
    })
}

/// The first mode that is not UNSET, most specific level first; PERMISSIVE if none.
fn workload_mode(levels: &[Option<&Resource<PeerAuthentication>>; 3]) -> Decision {
    levels
        .iter()
        .flatten()
        .find_map(|pa| {
            pa.spec.mode.map(|mode| Decision {
                mode,
                source: pa.id(),
            })
        })
        .unwrap_or_else(|| Decision {
            mode: MtlsMode::Permissive,
            source: ISTIO_DEFAULT.to_owned(),
        })
}

/// The selector PeerAuthentication's `portLevelMtls` for the port unless absent or UNSET,
/// else the workload's mode.
fn port_mode(
    selected: Option<&Resource<PeerAuthentication>>,
    port: u16,
    workload_mode: &Decision,
) -> Decision {
    selected
        .and_then(|pa| {
            let mode = (*pa.spec.port_level.get(&port)?)?;
            Some(Decision {
                mode,
                source: pa.id(),
            })
        })
        .unwrap_or_else(|| workload_mode.clone())
}

fn port_policy(
    workload: &Resource<Workload>,
    port: u16,
    ingress: Option<(&Resource<Sidecar>, &IngressPort)>,
    decision: Decision,
    diagnostics: &mut Diagnostics,
) -> Option<PortPolicy> {
    let action = action(workload, port, ingress, &decision, diagnostics)?;
    let policy = match ingress {
        Some((sidecar, ingress)) => PortPolicy {
            port,
            name: ingress.name.clone(),
            protocol: ingress.protocol,
            bind: ingress.bind,
            endpoint: ingress.endpoint.clone(),
            mtls: decision.mode,
            limits: ingress.limits,
            action,
            source: format!("{}, {}", sidecar.id(), decision.source),
        },
        // Known only from portLevelMtls: nothing says more than the port number.
        None => PortPolicy {
            port,
            name: None,
            protocol: Protocol::Tcp,
            bind: None,
            endpoint: loopback(port),
            mtls: decision.mode,
            limits: ConnectionLimits::default(),
            action,
            source: decision.source,
        },
    };
    Some(policy)
}

/// What postern does on the port, per the table in DESIGN.md.
fn action(
    workload: &Resource<Workload>,
    port: u16,
    ingress: Option<(&Resource<Sidecar>, &IngressPort)>,
    decision: &Decision,
    diagnostics: &mut Diagnostics,
) -> Option<PortAction> {
    let tls =
        ingress.and_then(|(sidecar, ingress)| Some((sidecar, ingress, ingress.tls.as_ref()?)));
    let Some((sidecar, ingress, tls)) = tls else {
        return Some(match decision.mode {
            MtlsMode::Disable => PortAction::Plaintext,
            MtlsMode::Strict => PortAction::MeshStrict,
            MtlsMode::Permissive => PortAction::Permissive,
        });
    };
    let field = ingress.path.key("tls");
    let context = format!("{}, port {port}", workload.id());
    match decision.mode {
        MtlsMode::Disable => Some(PortAction::Tls(tls.clone())),
        MtlsMode::Strict => {
            let message = format!(
                "{context}: PeerAuthentication mode STRICT (from {}) overrides this tls, as in \
                 Istio; the port requires mesh mTLS. Set portLevelMtls {port}: DISABLE to \
                 terminate TLS here",
                decision.source
            );
            diagnostics.warn(Problem::at(&sidecar.origin, Some(&field), message));
            Some(PortAction::MeshStrict)
        }
        // postern refuses to weaken security silently: with PERMISSIVE, a client could skip
        // the TLS the Sidecar asks for by speaking plaintext.
        MtlsMode::Permissive => {
            let message = format!(
                "{context}: the Sidecar sets tls {} but PeerAuthentication mode is PERMISSIVE \
                 (from {}); PERMISSIVE would let plaintext bypass that TLS. Set portLevelMtls \
                 {port}: DISABLE, as Istio's sidecar TLS termination requires",
                tls.mode, decision.source
            );
            diagnostics.error(Problem::at(&sidecar.origin, Some(&field), message));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{
        assert_error, errors, load, stream, warnings, HTTPBIN, SEED_DEPLOYMENT, SEED_DISABLE_PORT,
        SEED_GLOBAL_MTLS, SEED_SIDECAR,
    };
    use crate::policy::{Endpoint, NetnsRef, TlsMode, TlsSettings};

    fn seed() -> String {
        stream(&[
            SEED_GLOBAL_MTLS,
            SEED_DISABLE_PORT,
            SEED_DEPLOYMENT,
            SEED_SIDECAR,
            HTTPBIN,
        ])
    }

    #[test]
    fn the_seed_terminates_mutual_tls_on_9080_and_requires_mesh_mtls_elsewhere() {
        let table = load(&seed()).unwrap();
        assert!(table.warnings.is_empty(), "{:?}", table.warnings);
        let app = Endpoint::Tcp("127.0.0.1:80".parse().unwrap());
        let source = "Sidecar test/ingress-sidecar, PeerAuthentication test/disable-peer-auth-for-external-mtls-port";
        let expected = WorkloadPolicy {
            namespace: "test".into(),
            name: "httpbin".into(),
            netns: NetnsRef::Path("/run/netns/httpbin".into()),
            addresses: Vec::new(),
            ports: vec![
                PortPolicy {
                    port: 9080,
                    name: Some("external".into()),
                    protocol: Protocol::Https,
                    bind: None,
                    endpoint: app.clone(),
                    mtls: MtlsMode::Disable,
                    limits: Default::default(),
                    action: PortAction::Tls(TlsSettings {
                        mode: TlsMode::Mutual,
                        server_certificate: "/etc/istio/tls-certs/tls.crt".into(),
                        private_key: "/etc/istio/tls-certs/tls.key".into(),
                        ca_certificates: Some("/etc/istio/tls-ca-certs/ca.crt".into()),
                        ca_crl: None,
                        client_match: Default::default(),
                        protocol: Default::default(),
                    }),
                    source: source.into(),
                },
                PortPolicy {
                    port: 9081,
                    name: Some("internal".into()),
                    protocol: Protocol::Http,
                    bind: None,
                    endpoint: app,
                    mtls: MtlsMode::Strict,
                    limits: Default::default(),
                    action: PortAction::MeshStrict,
                    source: source.into(),
                },
            ],
            other_ports: MtlsMode::Strict,
            other_ports_source: "PeerAuthentication test/disable-peer-auth-for-external-mtls-port"
                .into(),
            mesh: None,
        };
        assert_eq!(table.workloads, [expected]);
    }

    /// A PeerAuthentication `namespace/name`, with `selector` labels (`app: X`) if given, an
    /// `mtls.mode` if given, and `portLevelMtls` entries.
    fn pa(id: &str, selector: Option<&str>, mode: Option<&str>, ports: &[(u16, &str)]) -> String {
        let (namespace, name) = id.split_once('/').unwrap();
        let mut spec = Vec::new();
        if let Some(app) = selector {
            spec.push(format!("selector: {{matchLabels: {{app: {app}}}}}"));
        }
        if let Some(mode) = mode {
            spec.push(format!("mtls: {{mode: {mode}}}"));
        }
        if !ports.is_empty() {
            let ports: Vec<String> = ports
                .iter()
                .map(|(port, mode)| format!("{port}: {{mode: {mode}}}"))
                .collect();
            spec.push(format!("portLevelMtls: {{{}}}", ports.join(", ")));
        }
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{}}}",
            spec.join(", ")
        )
    }

    /// httpbin's modes under these PeerAuthentications: (port, mode, source) per port, then
    /// `*` for the other ports.
    fn modes(peer_authentications: &[String]) -> Vec<(String, MtlsMode, String)> {
        let mut documents: Vec<&str> = peer_authentications.iter().map(String::as_str).collect();
        documents.push(HTTPBIN);
        let table = load(&stream(&documents)).unwrap();
        let workload = &table.workloads[0];
        let ports = workload
            .ports
            .iter()
            .map(|p| (p.port.to_string(), p.mtls, p.source.clone()));
        ports
            .chain([(
                "*".into(),
                workload.other_ports,
                workload.other_ports_source.clone(),
            )])
            .collect()
    }

    fn other(mode: MtlsMode, source: &str) -> (String, MtlsMode, String) {
        ("*".into(), mode, source.into())
    }

    #[test]
    fn without_peer_authentication_the_mode_is_permissive() {
        assert_eq!(modes(&[]), [other(MtlsMode::Permissive, ISTIO_DEFAULT)]);
    }

    #[test]
    fn the_mesh_wide_policy_applies_alone() {
        let mesh = pa("istio-system/mesh", None, Some("STRICT"), &[]);
        assert_eq!(
            modes(&[mesh]),
            [other(
                MtlsMode::Strict,
                "PeerAuthentication istio-system/mesh"
            )]
        );
    }

    #[test]
    fn the_namespace_overrides_the_mesh() {
        let mesh = pa("istio-system/mesh", None, Some("STRICT"), &[]);
        let namespace = pa("test/ns", None, Some("DISABLE"), &[]);
        assert_eq!(
            modes(&[mesh, namespace]),
            [other(MtlsMode::Disable, "PeerAuthentication test/ns")]
        );
    }

    #[test]
    fn the_workload_overrides_the_namespace() {
        let mesh = pa("istio-system/mesh", None, Some("STRICT"), &[]);
        let namespace = pa("test/ns", None, Some("DISABLE"), &[]);
        let workload = pa("test/wl", Some("httpbin"), Some("PERMISSIVE"), &[]);
        assert_eq!(
            modes(&[workload, namespace, mesh]),
            [other(MtlsMode::Permissive, "PeerAuthentication test/wl")]
        );
    }

    #[test]
    fn unset_inherits_at_every_level() {
        let mesh = || pa("istio-system/mesh", None, Some("DISABLE"), &[]);
        let namespace = |mode| pa("test/ns", None, mode, &[]);
        let workload = || pa("test/wl", Some("httpbin"), Some("UNSET"), &[]);
        assert_eq!(
            modes(&[workload(), namespace(Some("STRICT")), mesh()]),
            [other(MtlsMode::Strict, "PeerAuthentication test/ns")]
        );
        // A missing mode is UNSET too.
        assert_eq!(
            modes(&[workload(), namespace(None), mesh()]),
            [other(
                MtlsMode::Disable,
                "PeerAuthentication istio-system/mesh"
            )]
        );
        assert_eq!(
            modes(&[workload(), namespace(None)]),
            [other(MtlsMode::Permissive, ISTIO_DEFAULT)]
        );
    }

    #[test]
    fn policies_of_other_namespaces_and_other_workloads_do_not_apply() {
        let elsewhere = pa("prod/ns", None, Some("DISABLE"), &[]);
        let root_selector = pa("istio-system/wl", Some("httpbin"), Some("DISABLE"), &[]);
        let other_app = pa("test/other", Some("other"), Some("DISABLE"), &[]);
        assert_eq!(
            modes(&[elsewhere, root_selector, other_app]),
            [other(MtlsMode::Permissive, ISTIO_DEFAULT)]
        );
    }

    #[test]
    fn port_level_mtls_overrides_the_port_and_unset_inherits() {
        let namespace = pa("test/ns", None, Some("DISABLE"), &[]);
        let workload = pa(
            "test/wl",
            Some("httpbin"),
            Some("STRICT"),
            &[(9080, "DISABLE"), (9090, "UNSET")],
        );
        assert_eq!(
            modes(&[namespace.clone(), workload]),
            [
                (
                    "9080".into(),
                    MtlsMode::Disable,
                    "PeerAuthentication test/wl".into()
                ),
                (
                    "9090".into(),
                    MtlsMode::Strict,
                    "PeerAuthentication test/wl".into()
                ),
                other(MtlsMode::Strict, "PeerAuthentication test/wl"),
            ]
        );
        // UNSET at both the port and the workload: the namespace decides.
        let workload = pa(
            "test/wl",
            Some("httpbin"),
            None,
            &[(9080, "STRICT"), (9090, "UNSET")],
        );
        assert_eq!(
            modes(&[namespace, workload]),
            [
                (
                    "9080".into(),
                    MtlsMode::Strict,
                    "PeerAuthentication test/wl".into()
                ),
                (
                    "9090".into(),
                    MtlsMode::Disable,
                    "PeerAuthentication test/ns".into()
                ),
                other(MtlsMode::Disable, "PeerAuthentication test/ns"),
            ]
        );
    }

    #[test]
    fn a_port_known_only_from_port_level_mtls_is_plain_tcp_on_loopback() {
        let workload = pa("test/wl", Some("httpbin"), None, &[(5432, "DISABLE")]);
        let table = load(&stream(&[&workload, HTTPBIN])).unwrap();
        let port = &table.workloads[0].ports[0];
        assert_eq!(
            (
                port.name.as_ref(),
                port.protocol,
                &port.endpoint,
                &port.action
            ),
            (None, Protocol::Tcp, &loopback(5432), &PortAction::Plaintext)
        );
    }

    #[test]
    fn two_policies_at_one_level_are_refused() {
        let err = errors(&stream(&[
            &pa("test/a", Some("httpbin"), Some("STRICT"), &[]),
            &pa("test/b", Some("httpbin"), Some("DISABLE"), &[]),
            HTTPBIN,
        ]));
        assert_eq!(
            err,
            "test.yaml: document 3 (Workload test/httpbin): selected by both PeerAuthentication test/a \
             (test.yaml document 1) and PeerAuthentication test/b (test.yaml document 2); Istio's behaviour \
             is undefined then, so narrow the selectors or merge them"
        );
        assert_error(
            &stream(&[&pa("test/a", None, Some("STRICT"), &[]), &pa("test/b", None, None, &[])]),
            "test.yaml: document 2 (PeerAuthentication test/b): PeerAuthentication test/a (test.yaml document 1) \
             and PeerAuthentication test/b both have no selector in namespace test; Istio's behaviour is \
             undefined with two, so merge them",
        );
    }

    /// A Sidecar `namespace/name` selecting `app: X` if given, serving `port` over HTTP.
    fn sidecar(id: &str, selector: Option<&str>, port: u16) -> String {
        let (namespace, name) = id.split_once('/').unwrap();
        let selector = selector
            .map(|app| format!("workloadSelector: {{labels: {{app: {app}}}}}, "))
            .unwrap_or_default();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec: {{{selector}ingress: [{{port: {{number: {port}, protocol: HTTP}}}}]}}"
        )
    }

    /// httpbin's ports (and the Sidecar that set them) under these Sidecars.
    fn sidecar_ports(sidecars: &[String]) -> Vec<(u16, String)> {
        let mut documents: Vec<&str> = sidecars.iter().map(String::as_str).collect();
        documents.push(HTTPBIN);
        let table = load(&stream(&documents)).unwrap();
        table.workloads[0]
            .ports
            .iter()
            .map(|p| (p.port, p.source.clone()))
            .collect()
    }

    #[test]
    fn the_most_specific_sidecar_applies_whole() {
        let mesh = sidecar("istio-system/mesh", None, 1);
        let namespace = sidecar("test/ns", None, 2);
        let workload = sidecar("test/wl", Some("httpbin"), 3);
        let from = |sidecar: &str| format!("Sidecar {sidecar}, {ISTIO_DEFAULT}");
        assert_eq!(
            sidecar_ports(std::slice::from_ref(&mesh)),
            [(1, from("istio-system/mesh"))]
        );
        assert_eq!(
            sidecar_ports(&[mesh.clone(), namespace.clone()]),
            [(2, from("test/ns"))]
        );
        assert_eq!(
            sidecar_ports(&[mesh, namespace, workload]),
            [(3, from("test/wl"))]
        );
        // A Sidecar for other workloads or another namespace does not apply.
        assert_eq!(
            sidecar_ports(&[
                sidecar("test/other", Some("other"), 4),
                sidecar("prod/ns", None, 5)
            ]),
            []
        );
    }

    #[test]
    fn two_sidecars_at_one_level_are_refused() {
        let err = errors(&stream(&[
            &sidecar("test/a", Some("httpbin"), 1),
            &sidecar("test/b", Some("httpbin"), 2),
            HTTPBIN,
        ]));
        assert!(
            err.starts_with("test.yaml: document 3 (Workload test/httpbin): selected by both Sidecar test/a (test.yaml document 1) and Sidecar test/b (test.yaml document 2)"),
            "{err}"
        );
        let err = errors(&stream(&[
            &sidecar("istio-system/a", None, 1),
            &sidecar("istio-system/b", None, 2),
        ]));
        assert!(
            err.starts_with("test.yaml: document 2 (Sidecar istio-system/b): Sidecar istio-system/a (test.yaml document 1) and Sidecar istio-system/b both have no workloadSelector in namespace istio-system"),
            "{err}"
        );
    }

    #[test]
    fn selectors_that_select_no_workload_are_warned() {
        let yaml = stream(&[
            &sidecar("test/s", Some("nobody"), 1),
            &pa("test/p", Some("nobody"), Some("STRICT"), &[]),
            &pa("test/ns", None, Some("STRICT"), &[]),
            HTTPBIN,
        ]);
        assert_eq!(
            warnings(&yaml),
            [
                "test.yaml: document 1 (Sidecar test/s): spec.workloadSelector.labels: selects no Workload in namespace test, so it has no effect",
                "test.yaml: document 2 (PeerAuthentication test/p): spec.selector.matchLabels: selects no Workload in namespace test, so it has no effect",
            ]
        );
    }

    /// The seed's Sidecar under one workload-level PeerAuthentication mode, without its
    /// portLevelMtls.
    fn seed_with_mode(mode: &str) -> String {
        stream(&[
            SEED_SIDECAR,
            &pa("test/wl", Some("httpbin"), Some(mode), &[]),
            HTTPBIN,
        ])
    }

    #[test]
    fn permissive_with_sidecar_tls_is_refused() {
        assert_error(
            &seed_with_mode("PERMISSIVE"),
            "test.yaml: document 1 (Sidecar test/ingress-sidecar): spec.ingress[0].tls: Workload test/httpbin, \
             port 9080: the Sidecar sets tls MUTUAL but PeerAuthentication mode is PERMISSIVE (from \
             PeerAuthentication test/wl); PERMISSIVE would let plaintext bypass that TLS. Set portLevelMtls \
             9080: DISABLE, as Istio's sidecar TLS termination requires",
        );
        // Istio's default is PERMISSIVE too.
        let err = errors(&stream(&[SEED_SIDECAR, HTTPBIN]));
        assert!(
            err.contains(&format!("is PERMISSIVE (from {ISTIO_DEFAULT})")),
            "{err}"
        );
    }

    #[test]
    fn strict_overrides_sidecar_tls_with_a_warning() {
        let table = load(&seed_with_mode("STRICT")).unwrap();
        let actions: Vec<&PortAction> =
            table.workloads[0].ports.iter().map(|p| &p.action).collect();
        assert_eq!(actions, [&PortAction::MeshStrict, &PortAction::MeshStrict]);
        assert_eq!(
            table.warnings,
            ["test.yaml: document 1 (Sidecar test/ingress-sidecar): spec.ingress[0].tls: Workload test/httpbin, \
              port 9080: PeerAuthentication mode STRICT (from PeerAuthentication test/wl) overrides this tls, \
              as in Istio; the port requires mesh mTLS. Set portLevelMtls 9080: DISABLE to terminate TLS here"]
        );
    }

    #[test]
    fn disable_terminates_tls_or_splices_plaintext() {
        let table = load(&seed_with_mode("DISABLE")).unwrap();
        let ports = &table.workloads[0].ports;
        assert!(matches!(ports[0].action, PortAction::Tls(_)));
        assert_eq!(ports[1].action, PortAction::Plaintext);
        assert_eq!(table.workloads[0].other_ports, MtlsMode::Disable);
    }

    #[test]
    fn permissive_without_tls_is_permissive() {
        let sidecar = sidecar("test/s", Some("httpbin"), 8080);
        let table = load(&stream(&[&sidecar, HTTPBIN])).unwrap();
        assert_eq!(table.workloads[0].ports[0].action, PortAction::Permissive);
    }

    #[test]
    fn workloads_are_sorted_by_namespace_and_name() {
        let workload = |id: &str| {
            let (namespace, name) = id.split_once('/').unwrap();
            format!(
                "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 spec: {{networkNamespace: /run/netns/{name}}}"
            )
        };
        let table = load(&stream(&[
            &workload("test/b"),
            &workload("prod/z"),
            &workload("test/a"),
        ]))
        .unwrap();
        let ids: Vec<String> = table.workloads.iter().map(WorkloadPolicy::id).collect();
        assert_eq!(ids, ["prod/z", "test/a", "test/b"]);
    }
}
