//! Helpers for the config unit tests: load YAML text as `test.yaml`, applied with
//! `kubectl -n test`, and the seed's manifests verbatim.

use super::{load_sources, ConfigError, LoadOptions};
use crate::policy::PolicyTable;

/// The seed's manifests, verbatim, from `deploy/examples/seed/`: "Enable global mTLS" (applied
/// with `kubectl -n test`), "Disable PeerAuthentication for external mTLS Port", the Sidecar,
/// and the ServiceAccount, Service and Deployment.
pub use postern_testbed::{
    SEED_DEPLOYMENT, SEED_PEER_AUTHENTICATION_DEFAULT as SEED_GLOBAL_MTLS,
    SEED_PEER_AUTHENTICATION_HTTPBIN as SEED_DISABLE_PORT, SEED_SIDECAR,
};

/// Loads `yaml` as one file named `test.yaml`, with `test` as the default namespace.
pub fn load(yaml: &str) -> Result<PolicyTable, ConfigError> {
    let options = LoadOptions {
        default_namespace: "test".to_owned(),
        ..LoadOptions::default()
    };
    load_sources(&[("test.yaml".to_owned(), yaml.to_owned())], &options)
}

/// The problems loading `yaml` reports, one per line; panics if it loads.
pub fn errors(yaml: &str) -> String {
    match load(yaml) {
        Ok(table) => panic!("expected errors, loaded {table:#?}"),
        Err(err) => err.to_string(),
    }
}

/// Asserts that loading `yaml` fails with exactly one problem, equal to `expected`.
#[track_caller]
pub fn assert_error(yaml: &str, expected: &str) {
    assert_eq!(errors(yaml), expected);
}

/// The warnings loading `yaml` reports; panics if it fails.
pub fn warnings(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(table) => table.warnings,
        Err(err) => panic!("expected no errors, found:\n{err}"),
    }
}

/// A Workload in namespace `test` with the seed's httpbin labels, in its own netns.
pub const HTTPBIN: &str = "
apiVersion: postern.dev/v1alpha1
kind: Workload
metadata: {name: httpbin, namespace: test, labels: {app: httpbin, version: v1}}
spec:
  networkNamespace: /run/netns/httpbin
";

/// Joins documents into one multi-document stream.
pub fn stream(documents: &[&str]) -> String {
    documents.join("\n---\n")
}
