//! Checks for the scalar values several document kinds share: ports, addresses, paths,
//! label selectors and Istio enum names. Each returns the `expected ..., found ...` message
//! on failure; the caller knows the field path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::error::expected;

/// Kubernetes labels, or a selector's labels (which must all be present on a match).
pub(super) type Labels = BTreeMap<String, String>;

/// Whether every label of `selector` is among `labels`, as Kubernetes `matchLabels` works.
pub(super) fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// A selector's labels, which must be non-empty: Istio treats an empty selector as a
/// mistake, and reading it as "select everything" would widen the policy silently.
pub(super) fn selector(labels: Option<Labels>) -> Result<Labels, String> {
    match labels {
        Some(labels) if !labels.is_empty() => Ok(labels),
        _ => Err(expected(
            &["at least one label"],
            "none (omit the selector entirely to apply to the whole namespace)",
        )),
    }
}

pub(super) fn port_number(number: u64) -> Result<u16, String> {
    u16::try_from(number)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| expected(&["a port number 1-65535"], number))
}

pub(super) fn ip_address(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| expected(&["an IP address"], format!("{text:?}")))
}

pub(super) fn absolute_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(expected(&["an absolute path"], format!("{text:?}")))
    }
}

/// An optional field's check: `Some(None)` when absent, `None` when present but invalid
/// (`validate` has reported why), `Some(Some(value))` when valid.
pub(super) fn optional<T, U>(
    value: Option<T>,
    validate: impl FnOnce(T) -> Option<U>,
) -> Option<Option<U>> {
    match value {
        None => Some(None),
        Some(value) => validate(value).map(Some),
    }
}

/// One name of an Istio enum and what postern makes of it.
pub(super) enum Choice<T> {
    Accept(&'static str, T),
    /// A name Istio knows that postern refuses, with the reason.
    Refuse(&'static str, &'static str),
}

/// The value of an Istio enum field (`None` when absent), spelled exactly as Istio does.
pub(super) fn choose<T: Copy>(found: Option<&str>, choices: &[Choice<T>]) -> Result<T, String> {
    let accepted: Vec<&str> = choices
        .iter()
        .filter_map(|choice| match choice {
            Choice::Accept(name, _) => Some(*name),
            Choice::Refuse(..) => None,
        })
        .collect();
    let Some(found) = found else {
        return Err(expected(&accepted, "nothing"));
    };
    for choice in choices {
        match choice {
            Choice::Accept(name, value) if *name == found => return Ok(*value),
            Choice::Refuse(name, why) if *name == found => {
                return Err(format!("{} ({why})", expected(&accepted, found)))
            }
            _ => {}
        }
    }
    Err(expected(&accepted, found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selector_matches_a_superset_of_its_labels() {
        let workload = labels(&[("app", "httpbin"), ("version", "v1")]);
        assert!(selects(&labels(&[("app", "httpbin")]), &workload));
        assert!(selects(&workload, &workload));
        assert!(!selects(&labels(&[("app", "other")]), &workload));
        assert!(!selects(&labels(&[("tier", "web")]), &workload));
    }

    #[test]
    fn a_selector_needs_labels() {
        assert!(selector(None).is_err());
        assert!(selector(Some(Labels::new())).is_err());
        assert!(selector(Some(labels(&[("app", "a")]))).is_ok());
    }

    #[test]
    fn port_numbers_are_1_to_65535() {
        assert_eq!(port_number(1), Ok(1));
        assert_eq!(port_number(65535), Ok(65535));
        assert_eq!(
            port_number(0),
            Err("expected a port number 1-65535, found 0".into())
        );
        assert!(port_number(65536).is_err());
    }

    #[test]
    fn paths_must_be_absolute() {
        assert_eq!(absolute_path("/etc/a"), Ok(PathBuf::from("/etc/a")));
        assert_eq!(
            absolute_path("etc/a"),
            Err(r#"expected an absolute path, found "etc/a""#.into())
        );
    }

    #[test]
    fn choices_accept_refuse_and_list_the_accepted() {
        let choices = [
            Choice::Accept("A", 1),
            Choice::Accept("B", 2),
            Choice::Refuse("C", "no C here"),
        ];
        assert_eq!(choose(Some("B"), &choices), Ok(2));
        assert_eq!(
            choose(Some("C"), &choices),
            Err("expected A or B, found C (no C here)".into())
        );
        assert_eq!(
            choose(Some("b"), &choices),
            Err("expected A or B, found b".into())
        );
        assert_eq!(
            choose(None, &choices),
            Err("expected A or B, found nothing".into())
        );
    }
}
