//! postern: terminates TLS for a workload's inbound ports, steered there by eBPF `sk_lookup`,
//! configured with the Istio `Sidecar` and `PeerAuthentication` YAML users already have.
//!
//! One module per concern: `config` reads YAML into the effective `policy` table; `redirect`
//! keeps the kernel side in step with it; `netns` creates sockets inside workload network
//! namespaces; `tls` builds rustls configurations; `terminator` accepts, handshakes and
//! splices.

pub mod admin;
pub mod capture;
pub mod config;
pub mod copy_buffer;
pub mod daemon;
pub mod handover;
pub mod http_admin;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod outbound;
pub mod policy;
pub mod redirect;
pub mod resources;
pub mod terminator;
pub mod tls;
