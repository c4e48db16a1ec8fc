//! Configuration: Istio `Sidecar` and `PeerAuthentication` documents, exactly as users
//! already write them, plus postern's own `Workload` documents, resolved into the effective
//! [`PolicyTable`] with Istio's selection and precedence rules.
//!
//! Stages, one file each: `document` splits YAML streams and dispatches on `apiVersion` and
//! `kind`; `sidecar`, `peer_authentication` and `workload` validate one kind each (`values`
//! holds the checks they share); `resolve` applies Istio's rules per workload; `table`
//! renders the result for `postern check`. Every stage records problems in `error`'s
//! collector and carries on, so one run reports every mistake; any error means no table.

mod document;
mod error;
mod limits;
mod peer_authentication;
mod resolve;
mod service;
mod sidecar;
mod table;
#[cfg(test)]
pub(crate) mod testing;
mod values;
mod workload;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Problem};
pub use table::render_table;

use crate::policy::PolicyTable;
use error::Diagnostics;

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// How documents are placed, where they do not say so themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// The namespace of documents without `metadata.namespace`, as `kubectl -n` sets it.
    pub default_namespace: String,
    /// Istio's mesh root namespace: its selector-less Sidecar and PeerAuthentication apply
    /// to the whole mesh.
    pub root_namespace: String,
    /// The mesh's trust domain: workloads' SPIFFE IDs are `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`.
    pub trust_domain: String,
}

impl Default for LoadOptions {
    /// `default`, `istio-system` and `cluster.local`, as in a stock cluster and Istio install.
    fn default() -> Self {
        LoadOptions {
            default_namespace: "default".to_owned(),
            root_namespace: "istio-system".to_owned(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// Reads every path (a file, or a directory whose `*.yaml` / `*.yml` files are read in name
/// order), each a multi-document YAML stream, and resolves the effective policy.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<PolicyTable, ConfigError> {
    let (sources, diagnostics) = read_paths(paths);
    resolve_sources(&sources, options, diagnostics)
}

/// A digest of what [`load`] would read at `paths`: the names and contents of the files, read
/// through the paths as given. It changes when any file changes, appears or goes, including
/// when Kubernetes swaps a mounted ConfigMap's `..data` symlink.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let (sources, _) = read_paths(paths);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sources.hash(&mut hasher);
    hasher.finish()
}

fn read_paths(paths: &[PathBuf]) -> (Vec<(String, String)>, Diagnostics) {
    let mut diagnostics = Diagnostics::default();
    let mut sources = Vec::new();
    for path in paths {
        read_path(path, &mut sources, &mut diagnostics);
    }
    (sources, diagnostics)
}

/// Same as [`load`], from in-memory `(display name, contents)` pairs.
pub fn load_sources(
    sources: &[(String, String)],
    options: &LoadOptions,
) -> Result<PolicyTable, ConfigError> {
    resolve_sources(sources, options, Diagnostics::default())
}

fn resolve_sources(
    sources: &[(String, String)],
    options: &LoadOptions,
    mut diagnostics: Diagnostics,
) -> Result<PolicyTable, ConfigError> {
    let documents = document::parse_sources(sources, options, &mut diagnostics);
    let workloads = resolve::resolve(&documents, options, &mut diagnostics);
    let services = resolve::services(&documents);
    diagnostics
        .finish(workloads)
        .map(|table| PolicyTable { services, ..table })
}

/// Appends the file at `path`, or the YAML files of the directory at `path`.
fn read_path(path: &Path, sources: &mut Vec<(String, String)>, diagnostics: &mut Diagnostics) {
    let name = path.display().to_string();
    if !path.is_dir() {
        read_file(path, sources, diagnostics);
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) => {
            return diagnostics.error(Problem::in_file(
                &name,
                format!("cannot list directory: {err}"),
            ))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if is_yaml(&entry.path()) && !entry.path().is_dir() => {
                files.push(entry.path())
            }
            Ok(_) => {}
            Err(err) => diagnostics.error(Problem::in_file(
                &name,
                format!("cannot list directory: {err}"),
            )),
        }
    }
    files.sort();
    if files.is_empty() {
        diagnostics.warn(Problem::in_file(
            &name,
            "directory has no *.yaml or *.yml files",
        ));
    }
    for file in files {
        read_file(&file, sources, diagnostics);
    }
}

fn read_file(path: &Path, sources: &mut Vec<(String, String)>, diagnostics: &mut Diagnostics) {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => sources.push((name, text)),
        Err(err) => diagnostics.error(Problem::in_file(&name, format!("cannot read: {err}"))),
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const WORKLOAD: &str = "apiVersion: postern.dev/v1alpha1
kind: Workload
metadata: {name: w, namespace: test}
spec: {networkNamespace: host}
";

    #[test]
    fn directories_are_read_in_name_order_yaml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("b.yml"),
            WORKLOAD.replace("name: w", "name: b"),
        )
        .unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            WORKLOAD.replace("name: w", "name: a"),
        )
        .unwrap();
        fs::write(dir.path().join("c.json"), "not yaml at all: [").unwrap();
        // Both claim the whole host netns: the complaint is about the later file, b.yml.
        let err = load(&[dir.path().to_owned()], &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.yml: document 1 (Workload test/b)"), "{err}");
        assert!(
            err.contains("Workload test/a (") && err.contains("a.yaml document 1)"),
            "{err}"
        );
        assert!(!err.contains("c.json"), "{err}");
    }

    #[test]
    fn files_are_read_and_missing_ones_reported_with_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        fs::write(&good, WORKLOAD).unwrap();
        let table = load(std::slice::from_ref(&good), &LoadOptions::default()).unwrap();
        assert_eq!(table.workloads[0].id(), "test/w");

        let bad = dir.path().join("bad.yaml");
        fs::write(&bad, "kind: [").unwrap();
        let missing = dir.path().join("missing.yaml");
        let err = load(&[missing, good, bad], &LoadOptions::default()).unwrap_err();
        assert_eq!(err.problems().len(), 2, "{err}");
        assert!(
            err.to_string().contains("missing.yaml: cannot read"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("bad.yaml: document 1: invalid YAML"),
            "{err}"
        );
    }

    #[test]
    fn the_fingerprint_follows_contents_through_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("..2026_first");
        let second = dir.path().join("..2026_second");
        fs::create_dir(&first).unwrap();
        fs::create_dir(&second).unwrap();
        fs::write(first.join("w.yaml"), WORKLOAD).unwrap();
        fs::write(
            second.join("w.yaml"),
            WORKLOAD.replace("name: w", "name: v"),
        )
        .unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("..2026_first", &data).unwrap();
        std::os::unix::fs::symlink("..data/w.yaml", dir.path().join("w.yaml")).unwrap();
        let paths = [dir.path().to_owned()];
        let before = fingerprint(&paths);
        assert_eq!(
            before,
            fingerprint(&paths),
            "unchanged files, same fingerprint"
        );
        // Kubernetes' atomic update: a new `..data` link renamed over the old one.
        let next = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..2026_second", &next).unwrap();
        fs::rename(&next, &data).unwrap();
        assert_ne!(before, fingerprint(&paths));
    }

    #[test]
    fn an_empty_directory_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let table = load(&[dir.path().to_owned()], &LoadOptions::default()).unwrap();
        assert!(table.workloads.is_empty());
        assert_eq!(table.warnings.len(), 1);
        assert!(table.warnings[0].ends_with("directory has no *.yaml or *.yml files"));
    }
}
