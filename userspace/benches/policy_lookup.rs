//! The policy decision postern makes per connection in user space, and what building the
//! table behind it costs. Run with `cargo bench -p postern --bench policy_lookup`.
//!
//! Inbound, the kernel's `sk_lookup` program picks the port's listener, and each listener
//! holds its own policy, so no table is searched per connection. Outbound, every captured
//! connection asks [`MeshDirectory::target`] where it goes and which SPIFFE ID must answer
//! there: that is the lookup measured, in a table of 1, 50 and 500 workloads.
//!
//! The table comes from the seed's YAML, loaded through `postern::config`: the global STRICT
//! PeerAuthentication once, then per workload the seed's port-level PeerAuthentication,
//! Sidecar, Workload (with a mesh identity and an address of its own) and Service (with a
//! virtual IP), each renamed `httpbin-N`. `load` measures loading that YAML and building the
//! directory, as a reload does.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use postern::config::{load_sources, LoadOptions};
use postern::outbound::MeshDirectory;
use postern::policy::PolicyTable;
use postern_testbed::{
    seed_service, SEED_PEER_AUTHENTICATION_DEFAULT, SEED_PEER_AUTHENTICATION_HTTPBIN, SEED_SIDECAR,
    SEED_WORKLOAD, SERVICE_IP,
};

const SIZES: [usize; 3] = [1, 50, 500];

/// The seed's Service ports and the Sidecar's ports: 9080 is DISABLE (not in the mesh), 9081
/// STRICT; any other port of a STRICT workload is in the mesh too.
const SERVICE_PORT: u16 = 8080;
const DISABLED_PORT: u16 = 9080;
const MESH_PORT: u16 = 9081;
const OTHER_PORT: u16 = 5432;

/// Workload `index`'s address and its Service's virtual IP.
fn addresses(index: usize) -> (IpAddr, IpAddr) {
    let [high, low] = u16::try_from(index).expect("few workloads").to_be_bytes();
    let [a, b, ..] = SERVICE_IP.octets();
    (
        IpAddr::V4(Ipv4Addr::new(198, 18, high, low)),
        IpAddr::V4(Ipv4Addr::new(a, b, high, low)),
    )
}

/// The seed's documents for workload `index`, renamed `httpbin-INDEX`.
fn replica(index: usize) -> String {
    let (address, service_ip) = addresses(index);
    let workload = format!(
        "{SEED_WORKLOAD}  addresses: [{address}]\n  serviceAccount: httpbin-{index}\n  \
         meshCertificates: /var/run/secrets/httpbin-{index}\n"
    );
    [
        SEED_PEER_AUTHENTICATION_HTTPBIN,
        SEED_SIDECAR,
        &workload,
        &seed_service(),
    ]
    .iter()
    .map(|document| {
        document
            .replace("app: httpbin\n", &format!("app: httpbin-{index}\n"))
            .replace("name: httpbin\n", &format!("name: httpbin-{index}\n"))
            .replace("ingress-sidecar\n", &format!("ingress-sidecar-{index}\n"))
            .replace(
                "external-mtls-port\n",
                &format!("external-mtls-port-{index}\n"),
            )
            .replace(&SERVICE_IP.to_string(), &service_ip.to_string())
    })
    .collect::<Vec<_>>()
    .join("---\n")
}

/// The YAML of `workloads` workloads, as one file.
fn yaml(workloads: usize) -> Vec<(String, String)> {
    let mut stream = vec![SEED_PEER_AUTHENTICATION_DEFAULT.to_owned()];
    stream.extend((0..workloads).map(replica));
    vec![("mesh.yaml".to_owned(), stream.join("---\n"))]
}

fn load(sources: &[(String, String)]) -> (PolicyTable, MeshDirectory) {
    let options = LoadOptions {
        default_namespace: "test".to_owned(),
        ..LoadOptions::default()
    };
    let table = load_sources(sources, &options).unwrap_or_else(|err| panic!("{err}"));
    let directory = MeshDirectory::build(&table, |workload| Ok(workload.addresses.clone()))
        .expect("addresses from the Workloads");
    (table, directory)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_lookup/mesh_target");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in SIZES {
        let (table, directory) = load(&yaml(size));
        assert_eq!(table.workloads.len(), size);
        // The middle workload: one destination of each kind the directory tells apart.
        let (address, service_ip) = addresses(size / 2);
        let destinations = [
            SocketAddr::new(address, MESH_PORT),
            SocketAddr::new(address, OTHER_PORT),
            SocketAddr::new(address, DISABLED_PORT),
            SocketAddr::new(service_ip, SERVICE_PORT),
        ];
        let found: Vec<bool> = destinations
            .iter()
            .map(|destination| directory.target(*destination).is_some())
            .collect();
        assert_eq!(found, [true, true, false, true], "{destinations:?}");
        group.throughput(Throughput::Elements(destinations.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &destinations, |b, d| {
            b.iter(|| {
                for destination in d {
                    black_box(directory.target(black_box(*destination)));
                }
            })
        });
    }
    group.finish();
}

fn reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_lookup/load");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for size in SIZES {
        let sources = yaml(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &sources, |b, s| {
            b.iter(|| load(s))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, reload);
criterion_main!(benches);
