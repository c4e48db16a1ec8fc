//! Helpers for the config unit tests: load YAML text as `test.yaml`, applied with
//! `kubectl -n test`, and the seed's manifests verbatim.

use super::{load_sources, ConfigError, LoadOptions};
use crate::policy::PolicyTable;

/// The seed's manifests, verbatim, from `deploy/examples/seed/`: "Enable global mTLS" (applied
/// with `kubectl -n test`), "Disable PeerAuthentication for external mTLS Port", and the Sidecar.
pub use postern_testbed::{
    SEED_PEER_AUTHENTICATION_DEFAULT as SEED_GLOBAL_MTLS,
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

/// The seed's httpbin ServiceAccount, Service and Deployment.
pub const SEED_DEPLOYMENT: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels:
    app: httpbin
    service: httpbin
spec:
  ports:
  - port: 8443
    name: https
    targetPort: 9080
  - port: 8080
    name: http
    targetPort: 9081
  selector:
    app: httpbin
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
      version: v1
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
      annotations:
        sidecar.istio.io/userVolume: '{"tls-secret":{"secret":{"secretName":"httpbin-mtls-termination","optional":true}},"tls-ca-secret":{"secret":{"secretName":"httpbin-mtls-termination-cacert"}}}'
        sidecar.istio.io/userVolumeMount: '{"tls-secret":{"mountPath":"/etc/istio/tls-certs/","readOnly":true},"tls-ca-secret":{"mountPath":"/etc/istio/tls-ca-certs/","readOnly":true}}'
    spec:
      serviceAccountName: httpbin
      containers:
      - image: docker.io/kennethreitz/httpbin
        imagePullPolicy: IfNotPresent
        name: httpbin
        ports:
        - containerPort: 80
"#;

/// Joins documents into one multi-document stream.
pub fn stream(documents: &[&str]) -> String {
    documents.join("\n---\n")
}
