//! Where a problem is (file, document, field) and how problems are collected.
//!
//! Loading never stops at the first problem: an operator fixing a config wants every mistake
//! in one run, so each stage records into [`Diagnostics`] and carries on with what is valid.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::policy::{PolicyTable, WorkloadPolicy};

/// Every problem found while loading configuration, one per line when displayed.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// The problems, in the order they were found (file order, then document order).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One problem: where it is, and what was expected versus found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct Problem {
    location: String,
    message: String,
}

impl Problem {
    /// A problem with a whole file (unreadable, not YAML...).
    pub(super) fn in_file(file: &str, message: impl Into<String>) -> Problem {
        Problem {
            location: file.to_owned(),
            message: message.into(),
        }
    }

    /// A problem with one document, optionally with one field of it.
    pub(super) fn at(
        origin: &Origin,
        field: Option<&FieldPath>,
        message: impl Into<String>,
    ) -> Problem {
        let location = match field {
            Some(field) => format!("{origin}: {field}"),
            None => origin.to_string(),
        };
        Problem {
            location,
            message: message.into(),
        }
    }
}

/// A document's place in the input: `seed.yaml: document 3 (Sidecar test/ingress-sidecar)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub file: String,
    /// 1-based, counting empty documents too, so it matches the `---` separators.
    pub index: usize,
    /// `Kind namespace/name`, or as much of it as is known.
    pub label: Option<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.index)?;
        match &self.label {
            Some(label) => write!(f, " ({label})"),
            None => Ok(()),
        }
    }
}

/// A field path in the `spec.ingress[0].tls.mode` notation Kubernetes uses in its own errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldPath(String);

impl FieldPath {
    /// The path of a named field below this one.
    pub fn key(&self, name: impl fmt::Display) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// The path of a list element below this one.
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// This path extended by the path serde reports relative to it.
    fn join(&self, relative: &serde_path_to_error::Path) -> FieldPath {
        use serde_path_to_error::Segment;
        relative
            .iter()
            .fold(self.clone(), |path, segment| match segment {
                Segment::Seq { index } => path.index(*index),
                Segment::Map { key } => path.key(key),
                Segment::Enum { variant } => path.key(variant),
                Segment::Unknown => path.key("?"),
            })
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors and warnings gathered across all stages of one load.
#[derive(Debug, Default)]
pub(super) struct Diagnostics {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Diagnostics {
    pub fn error(&mut self, problem: Problem) {
        self.errors.push(problem);
    }

    pub fn warn(&mut self, problem: Problem) {
        self.warnings.push(problem);
    }

    /// The table, unless any error was recorded: a partly valid config is never enforced.
    pub fn finish(self, workloads: Vec<WorkloadPolicy>) -> Result<PolicyTable, ConfigError> {
        if self.errors.is_empty() {
            Ok(PolicyTable {
                workloads,
                warnings: self.warnings.iter().map(Problem::to_string).collect(),
                ..PolicyTable::default()
            })
        } else {
            Err(ConfigError {
                problems: self.errors,
            })
        }
    }
}

/// Records problems about one document while it is being validated.
pub(super) struct Report<'a> {
    pub origin: &'a Origin,
    diagnostics: &'a mut Diagnostics,
}

impl<'a> Report<'a> {
    pub fn new(origin: &'a Origin, diagnostics: &'a mut Diagnostics) -> Report<'a> {
        Report {
            origin,
            diagnostics,
        }
    }

    pub fn error(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.diagnostics
            .error(Problem::at(self.origin, Some(field), message));
    }

    pub fn warn(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.diagnostics
            .warn(Problem::at(self.origin, Some(field), message));
    }

    /// The value of a field check, recording its message as an error at `field` if it failed.
    pub fn check<T>(&mut self, field: &FieldPath, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(field, message)).ok()
    }

    /// Deserializes `value`, found at `field`, recording serde's complaint (unknown field,
    /// wrong type, missing field) with its full path.
    pub fn deserialize<T: DeserializeOwned>(
        &mut self,
        field: &FieldPath,
        value: serde_yaml::Value,
    ) -> Option<T> {
        serde_path_to_error::deserialize(value)
            .map_err(|err| self.error(&field.join(err.path()), err.inner().to_string()))
            .ok()
    }
}

/// `expected A, B or C, found X`: the one shape every value complaint takes.
pub(super) fn expected(choices: &[&str], found: impl fmt::Display) -> String {
    let choices = match choices {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    };
    format!("expected {choices}, found {found}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_use_kubernetes_notation() {
        let path = FieldPath::default()
            .key("spec")
            .key("ingress")
            .index(0)
            .key("tls");
        assert_eq!(path.to_string(), "spec.ingress[0].tls");
    }

    #[test]
    fn expected_lists_choices_in_prose() {
        assert_eq!(expected(&["A"], "B"), "expected A, found B");
        assert_eq!(
            expected(&["A", "B", "C"], "D"),
            "expected A, B or C, found D"
        );
    }

    #[test]
    fn problems_name_file_document_and_field() {
        let origin = Origin {
            file: "a.yaml".into(),
            index: 2,
            label: Some("Sidecar test/s".into()),
        };
        let field = FieldPath::default().key("spec");
        let problem = Problem::at(&origin, Some(&field), "bad");
        assert_eq!(
            problem.to_string(),
            "a.yaml: document 2 (Sidecar test/s): spec: bad"
        );
    }

    #[test]
    fn an_error_prevents_the_table() {
        let mut diagnostics = Diagnostics::default();
        diagnostics.warn(Problem::in_file("a.yaml", "just so you know"));
        assert_eq!(
            diagnostics.finish(Vec::new()).unwrap().warnings,
            ["a.yaml: just so you know"]
        );

        let mut diagnostics = Diagnostics::default();
        diagnostics.error(Problem::in_file("a.yaml", "one"));
        diagnostics.error(Problem::in_file("b.yaml", "two"));
        let err = diagnostics.finish(Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "a.yaml: one\nb.yaml: two");
        assert_eq!(err.problems().len(), 2);
    }
}
