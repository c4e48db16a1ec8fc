//! Istio `PeerAuthentication` documents: which mutual-TLS mode a workload's ports require.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::document::Kind;
use super::error::{expected, FieldPath, Report};
use super::values::{self, choose, optional, port_number, Choice, Labels};
use crate::policy::MtlsMode;

/// A valid PeerAuthentication. A mode of `None` is Istio's UNSET: inherit from the next
/// level (namespace, then mesh).
#[derive(Debug)]
pub(super) struct PeerAuthentication {
    /// `selector.matchLabels`; `None` for a namespace-wide (or mesh-wide) policy.
    pub selector: Option<Labels>,
    pub mode: Option<MtlsMode>,
    /// `portLevelMtls`, only ever present with a selector.
    pub port_level: BTreeMap<u16, Option<MtlsMode>>,
}

#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPeerAuthenticationSpec {
    selector: Option<RawSelector>,
    mtls: Option<RawMtls>,
    /// Kept as YAML: its keys are port numbers, written as YAML integers or strings.
    port_level_mtls: Option<Mapping>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<Labels>,
}

#[derive(Deserialize, Default)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
struct RawMtls {
    mode: Option<String>,
}

const MODES: &[Choice<Option<MtlsMode>>] = &[
    Choice::Accept("UNSET", None),
    Choice::Accept("DISABLE", Some(MtlsMode::Disable)),
    Choice::Accept("PERMISSIVE", Some(MtlsMode::Permissive)),
    Choice::Accept("STRICT", Some(MtlsMode::Strict)),
];

impl Kind for PeerAuthentication {
    const NAME: &'static str = "PeerAuthentication";
    const GROUP: &'static str = "security.istio.io";
    const VERSIONS: &'static [&'static str] = &["v1beta1", "v1"];
    type Raw = RawPeerAuthenticationSpec;

    fn validate(
        raw: RawPeerAuthenticationSpec,
        spec: &FieldPath,
        report: &mut Report,
    ) -> Option<PeerAuthentication> {
        let has_selector = raw.selector.is_some();
        let selector = optional(raw.selector, |selector| {
            let field = spec.key("selector").key("matchLabels");
            report.check(&field, values::selector(selector.match_labels))
        });
        let mode = mode(raw.mtls.unwrap_or_default(), &spec.key("mtls"), report);
        let port_level = optional(raw.port_level_mtls, |ports| {
            let field = spec.key("portLevelMtls");
            if !has_selector {
                // Istio's validation rejects it too: port numbers only mean something for
                // the workloads a selector picks.
                report.error(&field, "portLevelMtls requires a selector, as in Istio");
            }
            let ports = port_level(ports, &field, report);
            ports.filter(|_| has_selector)
        });
        Some(PeerAuthentication {
            selector: selector?,
            mode: mode?,
            port_level: port_level?.unwrap_or_default(),
        })
    }
}

/// An `mtls` block (`spec.mtls`, or one `portLevelMtls` entry); absent means UNSET.
fn mode(mtls: RawMtls, path: &FieldPath, report: &mut Report) -> Option<Option<MtlsMode>> {
    let found = mtls.mode.as_deref().unwrap_or("UNSET");
    report.check(&path.key("mode"), choose(Some(found), MODES))
}

fn port_level(
    ports: Mapping,
    path: &FieldPath,
    report: &mut Report,
) -> Option<BTreeMap<u16, Option<MtlsMode>>> {
    // Every entry is checked, so that all their problems are reported at once.
    let entries: Vec<Option<(u16, Option<MtlsMode>)>> = ports
        .into_iter()
        .map(|(key, mtls)| port_entry(key, mtls, path, report))
        .collect();
    let mut modes = BTreeMap::new();
    for (port, mode) in entries.into_iter().collect::<Option<Vec<_>>>()? {
        if modes.insert(port, mode).is_some() {
            report.error(&path.key(port), format!("port {port} is listed twice"));
            return None;
        }
    }
    Some(modes)
}

fn port_entry(
    key: Value,
    mtls: Value,
    path: &FieldPath,
    report: &mut Report,
) -> Option<(u16, Option<MtlsMode>)> {
    let text = match key {
        Value::Number(number) => number.to_string(),
        Value::String(text) => text,
        other => format!("{other:?}"),
    };
    let field = path.key(&text);
    let number = text
        .parse()
        .map_err(|_| expected(&["a port number 1-65535"], &text));
    let port = report.check(&field, number.and_then(port_number));
    let mtls: RawMtls = report.deserialize(&field, mtls)?;
    let mode = mode(mtls, &field, report)?;
    Some((port?, mode))
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error, load, stream, HTTPBIN};
    use crate::policy::{MtlsMode, PortAction};

    const LOCATION: &str = "test.yaml: document 1 (PeerAuthentication test/p)";

    fn peer_authentication(spec: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p}}\nspec: {spec}")
    }

    const MODES: &str = "expected UNSET, DISABLE, PERMISSIVE or STRICT";

    #[test]
    fn modes_are_istio_enum_names() {
        assert_error(
            &peer_authentication("{mtls: {mode: MUTUAL}}"),
            &format!("{LOCATION}: spec.mtls.mode: {MODES}, found MUTUAL"),
        );
        assert_error(
            &peer_authentication("{mtls: {mode: strict}}"),
            &format!("{LOCATION}: spec.mtls.mode: {MODES}, found strict"),
        );
        assert_error(
            &peer_authentication(
                "{selector: {matchLabels: {app: a}}, portLevelMtls: {9080: {mode: OFF}}}",
            ),
            &format!("{LOCATION}: spec.portLevelMtls.9080.mode: {MODES}, found OFF"),
        );
    }

    #[test]
    fn port_level_mtls_requires_a_selector() {
        assert_error(
            &peer_authentication("{mtls: {mode: STRICT}, portLevelMtls: {9080: {mode: DISABLE}}}"),
            &format!(
                "{LOCATION}: spec.portLevelMtls: portLevelMtls requires a selector, as in Istio"
            ),
        );
    }

    #[test]
    fn port_level_keys_are_port_numbers() {
        let spec = |ports: &str| {
            peer_authentication(&format!(
                "{{selector: {{matchLabels: {{app: a}}}}, portLevelMtls: {ports}}}"
            ))
        };
        assert_error(
            &spec("{0: {mode: DISABLE}, http: {mode: DISABLE}, 65536: {mode: DISABLE}}"),
            &[
                format!("{LOCATION}: spec.portLevelMtls.0: expected a port number 1-65535, found 0"),
                format!("{LOCATION}: spec.portLevelMtls.http: expected a port number 1-65535, found http"),
                format!("{LOCATION}: spec.portLevelMtls.65536: expected a port number 1-65535, found 65536"),
            ]
            .join("\n"),
        );
        assert_error(
            &spec("{9080: {mode: DISABLE}, '9080': {mode: STRICT}}"),
            &format!("{LOCATION}: spec.portLevelMtls.9080: port 9080 is listed twice"),
        );
        assert_error(
            &spec("{9080: {mode: DISABLE, extra: 1}}"),
            &format!(
                "{LOCATION}: spec.portLevelMtls.9080.extra: unknown field `extra`, expected `mode`"
            ),
        );
    }

    #[test]
    fn numeric_string_keys_are_ports_too() {
        let yaml = peer_authentication(
            "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {'9080': {mode: DISABLE}}}",
        );
        let table = load(&stream(&[&yaml, HTTPBIN])).unwrap();
        let port = &table.workloads[0].ports[0];
        assert_eq!(
            (port.port, port.mtls, &port.action),
            (9080, MtlsMode::Disable, &PortAction::Plaintext)
        );
    }

    #[test]
    fn a_selector_needs_match_labels() {
        assert_error(
            &peer_authentication("{selector: {matchLabels: {}}}"),
            &format!(
                "{LOCATION}: spec.selector.matchLabels: expected at least one label, found none \
                 (omit the selector entirely to apply to the whole namespace)"
            ),
        );
        assert_error(
            &peer_authentication("{selector: {labels: {app: a}}}"),
            &format!(
                "{LOCATION}: spec.selector.labels: unknown field `labels`, expected `matchLabels`"
            ),
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert_error(
            &peer_authentication("{mtls: {mode: STRICT, enabled: true}}"),
            &format!("{LOCATION}: spec.mtls.enabled: unknown field `enabled`, expected `mode`"),
        );
    }
}
