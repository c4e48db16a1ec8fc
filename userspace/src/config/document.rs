//! Multi-document YAML streams into validated documents of the kinds postern interprets.
//!
//! Each document is read into a `serde_yaml::Value` first, so that its `apiVersion` and
//! `kind` decide how the rest is read, and so that every later complaint can name the
//! document as `Kind namespace/name` even when its spec is malformed.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::error::{expected, Diagnostics, FieldPath, Origin, Problem, Report};
use super::peer_authentication::PeerAuthentication;
use super::service::Service;
use super::sidecar::Sidecar;
use super::values::Labels;
use super::workload::Workload;
use super::LoadOptions;

/// A document kind postern interprets: where it lives in the Kubernetes API, and how its
/// `spec` is read and validated into `Self`.
pub(super) trait Kind: Sized {
    const NAME: &'static str;
    const GROUP: &'static str;
    const VERSIONS: &'static [&'static str];
    /// The `spec` as written; a missing `spec` reads as `Default`.
    type Raw: DeserializeOwned + Default;

    /// Checks the `spec`, recording every problem; `None` if there was any.
    fn validate(raw: Self::Raw, spec: &FieldPath, report: &mut Report) -> Option<Self>;
}

/// A valid document of kind `T`.
#[derive(Debug)]
pub(super) struct Resource<T> {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub spec: T,
}

impl<T: Kind> Resource<T> {
    /// `Sidecar test/ingress-sidecar`.
    pub fn id(&self) -> String {
        format!("{} {}/{}", T::NAME, self.namespace, self.name)
    }

    /// `Sidecar test/ingress-sidecar (seed.yaml document 3)`, to point at another document
    /// from a problem located in this one.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} document {})",
            self.id(),
            self.origin.file,
            self.origin.index
        )
    }
}

/// Every valid document of the interpreted kinds, in input order.
#[derive(Debug, Default)]
pub(super) struct Documents {
    pub sidecars: Vec<Resource<Sidecar>>,
    pub peer_authentications: Vec<Resource<PeerAuthentication>>,
    pub workloads: Vec<Resource<Workload>>,
    pub services: Vec<Resource<Service>>,
}

/// Parses every document of every source, recording problems and keeping what is valid.
pub(super) fn parse_sources(
    sources: &[(String, String)],
    options: &LoadOptions,
    diagnostics: &mut Diagnostics,
) -> Documents {
    let mut documents = Documents::default();
    for (file, text) in sources {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let origin = Origin {
                file: file.clone(),
                index: index + 1,
                label: None,
            };
            match Value::deserialize(document) {
                Ok(value) => documents.read(value, origin, options, diagnostics),
                Err(err) => {
                    // The parser cannot resynchronise after a syntax error; it would repeat
                    // the same error for every later "document".
                    diagnostics.error(Problem::at(&origin, None, format!("invalid YAML: {err}")));
                    break;
                }
            }
        }
    }
    documents
}

/// What postern does with a document, decided by its `apiVersion` and `kind`.
enum Class {
    Sidecar,
    PeerAuthentication,
    Workload,
    /// A core Service: its virtual IP, if it has one, is a mesh destination.
    Service,
    /// Kinds that cannot change inbound policy (Services, Deployments, outbound routing).
    Ignored,
}

impl Documents {
    /// Reads one document into the list of its kind, or ignores it, or records why not.
    fn read(
        &mut self,
        value: Value,
        mut origin: Origin,
        options: &LoadOptions,
        diagnostics: &mut Diagnostics,
    ) {
        // An empty document, such as the one after a trailing `---`.
        if value.is_null() {
            return;
        }
        let Value::Mapping(mut object) = value else {
            let message = expected(
                &["a Kubernetes object with apiVersion and kind"],
                shape(&value),
            );
            diagnostics.error(Problem::at(&origin, None, message));
            return;
        };
        origin.label = label(&object, options);
        let class = match class_of(&object) {
            Ok(class) => class,
            Err((field, message)) => {
                let field = FieldPath::default().key(field);
                diagnostics.error(Problem::at(&origin, Some(&field), message));
                return;
            }
        };
        // Already checked; what remains is read strictly.
        object.remove("apiVersion");
        object.remove("kind");
        match class {
            Class::Sidecar => read(&mut self.sidecars, object, origin, options, diagnostics),
            Class::PeerAuthentication => read(
                &mut self.peer_authentications,
                object,
                origin,
                options,
                diagnostics,
            ),
            Class::Workload => read(&mut self.workloads, object, origin, options, diagnostics),
            Class::Service => read(&mut self.services, object, origin, options, diagnostics),
            Class::Ignored => {
                tracing::info!(document = %origin, "ignored: it does not change inbound policy")
            }
        }
    }
}

fn class_of(object: &Mapping) -> Result<Class, (&'static str, String)> {
    let api_version = header(object, "apiVersion", "networking.istio.io/v1")?;
    let kind = header(object, "kind", "Sidecar")?;
    classify(&api_version, &kind)
}

/// `apiVersion` or `kind`, which must be strings.
fn header(
    object: &Mapping,
    field: &'static str,
    example: &str,
) -> Result<String, (&'static str, String)> {
    let choice = format!("a string such as {example}");
    match object.get(field) {
        Some(Value::String(value)) => Ok(value.clone()),
        Some(other) => Err((field, expected(&[&choice], shape(other)))),
        None => Err((field, expected(&[&choice], "nothing"))),
    }
}

/// What kind of YAML value was found where another was expected.
fn shape(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `Kind namespace/name` as far as the document says, before it is validated.
fn label(object: &Mapping, options: &LoadOptions) -> Option<String> {
    let kind = object.get("kind")?.as_str()?;
    let metadata = object.get("metadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name)).and_then(Value::as_str);
    Some(match field("name") {
        Some(name) => format!("{kind} {}/{name}", namespace(field("namespace"), options)),
        None => kind.to_owned(),
    })
}

/// `metadata.namespace`, or the one the documents are applied to, as `kubectl -n` does.
fn namespace(namespace: Option<&str>, options: &LoadOptions) -> String {
    match namespace {
        Some(namespace) if !namespace.is_empty() => namespace.to_owned(),
        _ => options.default_namespace.clone(),
    }
}

fn classify(api_version: &str, kind: &str) -> Result<Class, (&'static str, String)> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    match (group, kind) {
        (Sidecar::GROUP, Sidecar::NAME) => supported::<Sidecar>(version).map(|()| Class::Sidecar),
        (PeerAuthentication::GROUP, PeerAuthentication::NAME) => {
            supported::<PeerAuthentication>(version).map(|()| Class::PeerAuthentication)
        }
        (Workload::GROUP, Workload::NAME) => {
            supported::<Workload>(version).map(|()| Class::Workload)
        }
        ("", Service::NAME) if version == "v1" => Ok(Class::Service),
        // Routing and outbound configuration: Envoy's business, not inbound policy.
        (Sidecar::GROUP, _) => Ok(Class::Ignored),
        ("" | "apps", _) if version == "v1" => Ok(Class::Ignored),
        // Every other security kind restricts traffic; skipping it would let through what
        // the operator meant to block.
        (PeerAuthentication::GROUP, _) => Err((
            "kind",
            format!("postern does not enforce {kind}; ignoring it would weaken security"),
        )),
        _ => Err((
            "kind",
            expected(
                &[
                    "Sidecar (networking.istio.io)",
                    "PeerAuthentication (security.istio.io)",
                    "Workload (postern.dev)",
                    "a core, apps/v1 or networking.istio.io kind (ignored)",
                ],
                format!("{kind} ({api_version})"),
            ),
        )),
    }
}

fn supported<T: Kind>(version: &str) -> Result<(), (&'static str, String)> {
    if T::VERSIONS.contains(&version) {
        return Ok(());
    }
    let versions: Vec<String> = T::VERSIONS
        .iter()
        .map(|v| format!("{}/{v}", T::GROUP))
        .collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    Err((
        "apiVersion",
        format!("{} for {}", expected(&versions, version), T::NAME),
    ))
}

/// The fields of an interpreted document besides `apiVersion` and `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument<S> {
    #[serde(default)]
    metadata: RawMetadata,
    #[serde(default)]
    spec: S,
}

/// The metadata postern reads. Other Kubernetes metadata (annotations, uid, ...) is allowed
/// and ignored: it is bookkeeping, not policy.
#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping")]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
}

/// Reads a document of kind `T` into `resources`, refusing a second one with the same
/// namespace and name: applied with `kubectl`, the second would replace the first, which is
/// rarely what was meant.
fn read<T: Kind>(
    resources: &mut Vec<Resource<T>>,
    object: Mapping,
    origin: Origin,
    options: &LoadOptions,
    diagnostics: &mut Diagnostics,
) {
    let Some(resource) = parse::<T>(object, origin, options, diagnostics) else {
        return;
    };
    let earlier = resources
        .iter()
        .find(|earlier| earlier.namespace == resource.namespace && earlier.name == resource.name);
    match earlier {
        Some(earlier) => diagnostics.error(Problem::at(
            &resource.origin,
            Some(&FieldPath::default().key("metadata").key("name")),
            format!(
                "{} is defined twice; the other is at {} document {}",
                resource.id(),
                earlier.origin.file,
                earlier.origin.index
            ),
        )),
        None => resources.push(resource),
    }
}

fn parse<T: Kind>(
    object: Mapping,
    origin: Origin,
    options: &LoadOptions,
    diagnostics: &mut Diagnostics,
) -> Option<Resource<T>> {
    let mut report = Report::new(&origin, diagnostics);
    let root = FieldPath::default();
    let raw: RawDocument<T::Raw> = report.deserialize(&root, Value::Mapping(object))?;
    let name = match raw.metadata.name {
        Some(name) if !name.is_empty() => Some(name),
        _ => {
            report.error(
                &root.key("metadata").key("name"),
                expected(&["a non-empty name"], "nothing"),
            );
            None
        }
    };
    let spec = T::validate(raw.spec, &root.key("spec"), &mut report);
    Some(Resource {
        namespace: namespace(raw.metadata.namespace.as_deref(), options),
        name: name?,
        labels: raw.metadata.labels,
        spec: spec?,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error, errors, load, stream, HTTPBIN, SEED_DEPLOYMENT};

    const SIDECAR: &str =
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\n";

    #[test]
    fn kubernetes_and_networking_kinds_are_ignored() {
        let ignored = [
            SEED_DEPLOYMENT,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: test}",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {hosts: [a]}",
            "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nspec: {host: a}",
            "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nspec: {}",
        ];
        let table = load(&stream(&[&stream(&ignored), HTTPBIN])).unwrap();
        assert_eq!(table.workloads.len(), 1);
        assert!(table.warnings.is_empty(), "{:?}", table.warnings);
    }

    #[test]
    fn empty_documents_are_skipped_but_counted() {
        let yaml = format!("---\n{HTTPBIN}---\n---\n{SIDECAR}spec: {{bogus: 1}}\n---\n");
        assert_error(
            &yaml,
            "test.yaml: document 3 (Sidecar test/s): spec.bogus: unknown field `bogus`, expected one of \
             `workloadSelector`, `ingress`, `egress`, `outboundTrafficPolicy`, `inboundConnectionPool`",
        );
    }

    #[test]
    fn yaml_syntax_errors_carry_line_and_column() {
        let yaml = format!("{HTTPBIN}---\nkind: Sidecar\nspec: [1\n");
        let err = errors(&yaml);
        assert!(
            err.starts_with("test.yaml: document 2: invalid YAML: "),
            "{err}"
        );
        assert!(
            err.contains("line 10 column 1, while parsing a flow sequence at line 9 column 7"),
            "{err}"
        );
    }

    #[test]
    fn a_document_must_be_an_object_with_api_version_and_kind() {
        assert_error(
            "[1, 2]",
            "test.yaml: document 1: expected a Kubernetes object with apiVersion and kind, found a list",
        );
        assert_error(
            "kind: Sidecar\nmetadata: {name: s}",
            "test.yaml: document 1 (Sidecar test/s): apiVersion: expected a string such as \
             networking.istio.io/v1, found nothing",
        );
        assert_error(
            "apiVersion: v1\nkind: 3",
            "test.yaml: document 1: kind: expected a string such as Sidecar, found a number",
        );
    }

    #[test]
    fn other_security_kinds_are_refused() {
        assert_error(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: prod}",
            "test.yaml: document 1 (AuthorizationPolicy prod/deny): kind: postern does not enforce \
             AuthorizationPolicy; ignoring it would weaken security",
        );
        assert!(
            errors("apiVersion: security.istio.io/v1\nkind: RequestAuthentication")
                .contains("postern does not enforce RequestAuthentication")
        );
    }

    #[test]
    fn unknown_groups_and_kinds_are_refused() {
        let expected = "expected Sidecar (networking.istio.io), PeerAuthentication (security.istio.io), \
                        Workload (postern.dev) or a core, apps/v1 or networking.istio.io kind (ignored)";
        assert_error(
            "apiVersion: example.com/v1\nkind: Thing\nmetadata: {name: t}",
            &format!("test.yaml: document 1 (Thing test/t): kind: {expected}, found Thing (example.com/v1)"),
        );
        assert_error(
            "apiVersion: postern.dev/v1alpha1\nkind: Policy",
            &format!("test.yaml: document 1 (Policy): kind: {expected}, found Policy (postern.dev/v1alpha1)"),
        );
    }

    #[test]
    fn unsupported_versions_of_known_kinds_are_refused() {
        assert_error(
            "apiVersion: networking.istio.io/v2\nkind: Sidecar\nmetadata: {name: s}",
            "test.yaml: document 1 (Sidecar test/s): apiVersion: expected networking.istio.io/v1alpha3, \
             networking.istio.io/v1beta1 or networking.istio.io/v1, found v2 for Sidecar",
        );
        assert_error(
            "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}",
            "test.yaml: document 1 (PeerAuthentication test/p): apiVersion: expected \
             security.istio.io/v1beta1 or security.istio.io/v1, found v1alpha1 for PeerAuthentication",
        );
        assert_error(
            "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: w}",
            "test.yaml: document 1 (Workload test/w): apiVersion: expected postern.dev/v1alpha1, \
             found v1 for Workload",
        );
    }

    #[test]
    fn metadata_name_is_required() {
        assert_error(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {namespace: prod}",
            "test.yaml: document 1 (Sidecar): metadata.name: expected a non-empty name, found nothing",
        );
        assert_error(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: ''}",
            "test.yaml: document 1 (Sidecar test/): metadata.name: expected a non-empty name, found nothing",
        );
    }

    #[test]
    fn metadata_may_carry_anything_and_the_namespace_defaults() {
        let yaml = "apiVersion: postern.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: w\n  \
                    annotations: {a: b}\n  uid: 1234\n  labels: {app: w}\nspec: {networkNamespace: host}";
        let table = load(yaml).unwrap();
        assert_eq!(table.workloads[0].namespace, "test");
    }

    #[test]
    fn unknown_top_level_fields_are_refused() {
        assert_error(
            &format!("{SIDECAR}status: {{}}"),
            "test.yaml: document 1 (Sidecar test/s): status: unknown field `status`, expected `metadata` or `spec`",
        );
    }

    #[test]
    fn the_same_namespace_and_name_twice_is_refused() {
        let yaml = stream(&[SIDECAR, HTTPBIN, "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\nmetadata: {name: s, namespace: test}"]);
        assert_error(
            &yaml,
            "test.yaml: document 3 (Sidecar test/s): metadata.name: Sidecar test/s is defined twice; \
             the other is at test.yaml document 1",
        );
        // The same name in another namespace, or of another kind, is another object.
        let yaml = stream(&[SIDECAR, "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: prod}",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: s}"]);
        load(&yaml).unwrap();
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let yaml = stream(&[
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}",
            HTTPBIN,
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  ingress:\n  \
             - {port: {number: 0, protocol: FTP}, tls: {mode: ISTIO_MUTUAL}}",
        ]);
        let err = errors(&yaml);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 6, "{err}");
        assert!(lines[0].starts_with("test.yaml: document 1 (AuthorizationPolicy test/a): kind:"));
        assert!(lines[1]
            .starts_with("test.yaml: document 3 (Sidecar test/s): spec.ingress[0].port.number:"));
        assert!(lines[2]
            .starts_with("test.yaml: document 3 (Sidecar test/s): spec.ingress[0].port.protocol:"));
        assert!(lines[3]
            .starts_with("test.yaml: document 3 (Sidecar test/s): spec.ingress[0].tls.mode:"));
        assert!(lines[4].starts_with(
            "test.yaml: document 3 (Sidecar test/s): spec.ingress[0].tls.serverCertificate:"
        ));
        assert!(lines[5].starts_with(
            "test.yaml: document 3 (Sidecar test/s): spec.ingress[0].tls.privateKey:"
        ));
    }
}
