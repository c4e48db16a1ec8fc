//! postern's test bed: real network namespaces, the seed's topology, its certificates, the real
//! httpbin, real curl and a postern under test, each an RAII value that cleans up after itself.
//!
//! Everything here needs root (network namespaces, bpffs, bind mounts) and the prerequisites that
//! `cargo xtask setup` installs.
//!
//! ```no_run
//! use postern_testbed::{curl, find_postern_bin, seed_curl_args, Postern, SeedRequest, SeedTopology, TopologyOptions};
//!
//! # fn main() -> anyhow::Result<()> {
//! let topology = SeedTopology::build(TopologyOptions::default())?;
//! let config = topology.seed_config()?;
//! let postern = Postern::start(&find_postern_bin()?, &topology, &config, &[])?;
//! let result = curl(topology.client(), seed_curl_args(&topology, SeedRequest::ExternalMtls))?;
//! assert_eq!(result.http_status(), Some(200), "{}", result.stderr);
//! assert_eq!(topology.wait_httpbin_requests(1, std::time::Duration::from_secs(2))?, 1);
//! drop(postern);
//! # Ok(())
//! # }
//! ```

mod bench_certs;
mod certs;
mod cmd;
mod curl;
mod figures;
mod mesh;
mod netns;
mod pinned;
mod postern;
mod process;
mod seed;
#[cfg(test)]
mod selftest;
mod sweep;
mod topology;
mod usage;

pub use bench_certs::{CertSet, KeyKind, SERVER_NAME as BENCH_SERVER_NAME};
pub use certs::{SeedCerts, SEED_OPENSSL_COMMANDS};
pub use cmd::{display_command, shell_quote};
pub use curl::{curl, CurlResult};
pub use figures::{median_and_p99, Figures, FIGURES_ENV};
pub use mesh::{
    cgroup2_mount, httpbin_mesh_workload, remove_cgroup, seed_service, spiffe_id, Cgroup,
    MeshCerts, MeshClient, MESH_CLIENT_IPV4, MESH_CLIENT_IPV6, OTHER_TRUST_DOMAIN,
    POD_MESH_LINK_IPV4, POD_MESH_LINK_IPV6, SERVICE_IP, TEST_CGROUP_PREFIX, TRUST_DOMAIN,
};
pub use netns::{Netns, TEST_NETNS_PREFIX};
pub use pinned::{PinnedServer, Tls12RawKeyCheck};
pub use postern::{
    find_postern_bin, CheckResult, KeptPostern, Postern, PosternOptions, TEST_BPFFS_PREFIX,
};
pub use process::{bpffs_mounted, require_root, stop_process, Signal, BPFFS_ROOT};
pub use seed::{
    seed_config, seed_curl_args, seed_curl_args_to, SeedRequest, APP_PORT, EXTERNAL_PORT,
    INTERNAL_PORT, NAMESPACE, SEED_DEPLOYMENT, SEED_HOST, SEED_PEER_AUTHENTICATION_DEFAULT,
    SEED_PEER_AUTHENTICATION_HTTPBIN, SEED_SIDECAR, SEED_WORKLOAD,
};
pub use sweep::sweep_leftovers;
pub use topology::{KeptTopology, SeedTopology, TopologyOptions};
pub use usage::{PeakUsage, Usage};
