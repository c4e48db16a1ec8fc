//! Types shared by postern's eBPF programs and its userspace daemon. Both sides see the same
//! bytes, so every type here is `#[repr(C)]` with explicit padding.

#![no_std]

/// Capacity of the rule table (one rule per intercepted port and destination prefix, plus one
/// "every other port" rule per workload) in one network namespace.
pub const MAX_RULES: u32 = 1024;

/// Capacity of the listener SOCKMAP: one listener per rule.
pub const MAX_LISTENERS: u32 = MAX_RULES;

/// The source address of postern's own connections to the app (network byte order when read
/// from `bpf_sk_lookup.remote_ip4`). Never intercepted, so the app may listen on the very port
/// that postern intercepts.
pub const POSTERN_SOURCE_V4: [u8; 4] = [127, 0, 0, 6];

/// Port value of the rule that covers every port without a rule of its own.
pub const ANY_PORT: u16 = 0;

/// Bits of `RuleKey` before the address: the port (16) and padding (16). A rule with this
/// prefix length matches every destination address.
pub const RULE_PORT_PREFIX_LEN: u32 = 32;

/// Bits in front of an IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`).
pub const V4_MAPPED_PREFIX_LEN: u32 = 96;

/// Key of the LPM-trie rule table. Longest-prefix match over `port` then `addr`: the port must
/// match exactly (it is inside every stored prefix), the address by prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleKey {
    /// Destination port, big-endian, so its bytes come first in prefix order.
    pub port_be: [u8; 2],
    pub pad: [u8; 2],
    /// Destination address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
}

impl RuleKey {
    pub const fn new(port: u16, addr: [u8; 16]) -> Self {
        Self {
            port_be: port.to_be_bytes(),
            pad: [0; 2],
            addr,
        }
    }

    /// Prefix length of a full key: every bit compared.
    pub const FULL_PREFIX_LEN: u32 = RULE_PORT_PREFIX_LEN + 128;
}

/// The rule applies to connections from loopback sources too. Without it, connections from
/// 127.0.0.0/8 and ::1 pass (as Istio never captures a pod's own loopback traffic); set on
/// explicitly configured ports, clear on the "every other port" rule.
pub const RULE_FLAG_INTERCEPT_LOOPBACK: u32 = 1;

/// Value of the rule table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Index into the listener SOCKMAP.
    pub listener: u32,
    /// Index into the per-CPU counter array.
    pub counter: u32,
    pub flags: u32,
    pub pad: u32,
}

/// Per-rule counters, per CPU; userspace sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// Connections handed to postern's listener.
    pub steered: u64,
    /// Connections refused because the listener was gone (postern down): fail closed.
    pub dropped: u64,
}

/// Port of postern's outbound listeners in a workload's network namespace, on `127.0.0.1`
/// and `::1` (Istio's outbound capture port). Captured connects are redirected there.
pub const OUTBOUND_PORT: u16 = 15001;

/// Value of a mesh destination entry: connects to it are captured.
pub const MESH_DESTINATION_CAPTURE: u32 = 1;
/// Value of a mesh destination entry: connects to it pass untouched, even if the address has
/// an every-port entry (a DISABLE port of a STRICT workload).
pub const MESH_DESTINATION_PASS: u32 = 0;

/// Capacity of the mesh destination table of one captured cgroup.
pub const MAX_MESH_DESTINATIONS: u32 = 4096;

/// Capacity of the original-destination tables: connections being set up at once.
pub const MAX_PENDING_CONNECTIONS: u32 = 65536;

/// A TCP endpoint: IPv4 as `::ffff:a.b.c.d`, port in host byte order. Key of the mesh
/// destination table (port 0: every port of the address) and of the original-destination
/// table (the client socket's local address), and the latter's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketEndpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub pad: u16,
}

impl SocketEndpoint {
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, pad: 0 }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::SocketEndpoint {}
    // SAFETY: plain old data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::RuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounters {}
}
