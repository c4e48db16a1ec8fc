//! Outbound capture, attached to a mesh workload's cgroup v2 directory.
//!
//! `cgroup/connect4` and `cgroup/connect6` run when a socket of the workload connects. A TCP
//! connect to a mesh destination (a configured mesh workload's address and port) is rewritten
//! to postern's outbound listener on loopback, port `OUTBOUND_PORT`, and the original
//! destination is remembered under the socket's cookie. When the connection is established,
//! the `sock_ops` program moves it to a table keyed by the client socket's local address and
//! port, which is what postern sees as the peer of the connection it accepts.
//!
//! The redirect does not depend on postern being alive: if it is not, nothing listens on the
//! outbound port and the connect is refused. Traffic meant for mesh mTLS never leaves in clear.
//! postern's own outbound sockets belong to postern's cgroup, so they are not captured.

use crate::addr::{v4_mapped, v6_bytes};
use aya_ebpf::{
    bindings::{bpf_sock_addr, bpf_sock_ops, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use core::ptr::{read_volatile, write_volatile};
use postern_common::{
    SocketEndpoint, MAX_MESH_DESTINATIONS, MAX_PENDING_CONNECTIONS, MESH_DESTINATION_CAPTURE,
    MESH_DESTINATION_PASS, OUTBOUND_PORT,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
/// The verdict that lets the connect go on (to the rewritten address, if rewritten).
const ALLOW: i32 = 1;

/// Mesh destinations: (address, port), or (address, 0) for every port of the address without
/// an entry of its own; the value is `MESH_DESTINATION_CAPTURE` or `MESH_DESTINATION_PASS`.
#[map]
static MESH_DESTINATIONS: HashMap<SocketEndpoint, u32> =
    HashMap::with_max_entries(MAX_MESH_DESTINATIONS, 0);

/// Socket cookie → original destination, from connect until established.
#[map]
static DESTINATION_BY_COOKIE: LruHashMap<u64, SocketEndpoint> =
    LruHashMap::with_max_entries(MAX_PENDING_CONNECTIONS, 0);

/// Client socket's local address → original destination, until postern takes it.
#[map]
static ORIGINAL_DESTINATIONS: LruHashMap<SocketEndpoint, SocketEndpoint> =
    LruHashMap::with_max_entries(MAX_PENDING_CONNECTIONS, 0);

#[cgroup_sock_addr(connect4)]
pub fn capture_connect4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    if !is_tcp(addr) {
        return ALLOW;
    }
    // SAFETY: the kernel hands sock_addr programs a valid `bpf_sock_addr`; `user_ip4` and
    // `user_port` are readable and writable in connect4 programs, 4 bytes at a time.
    let (ip, port) = unsafe {
        (
            read_volatile(&raw const (*addr).user_ip4),
            read_volatile(&raw const (*addr).user_port),
        )
    };
    let destination = SocketEndpoint::new(v4_mapped(ip), user_port(port));
    if remember(&ctx, destination) {
        // SAFETY: as above.
        unsafe {
            write_volatile(
                &raw mut (*addr).user_ip4,
                u32::from_ne_bytes([127, 0, 0, 1]),
            );
            write_volatile(&raw mut (*addr).user_port, outbound_port());
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn capture_connect6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    if !is_tcp(addr) {
        return ALLOW;
    }
    // SAFETY: as in `capture_connect4`; `user_ip6` one word at a time.
    let (ip, port) = unsafe {
        (
            [
                read_volatile(&raw const (*addr).user_ip6[0]),
                read_volatile(&raw const (*addr).user_ip6[1]),
                read_volatile(&raw const (*addr).user_ip6[2]),
                read_volatile(&raw const (*addr).user_ip6[3]),
            ],
            read_volatile(&raw const (*addr).user_port),
        )
    };
    let bytes = v6_bytes(ip);
    if !remember(&ctx, SocketEndpoint::new(bytes, user_port(port))) {
        return ALLOW;
    }
    // An IPv4 destination through a dual-stack socket goes to the IPv4 listener, as
    // `::ffff:127.0.0.1`; IPv6 to `::1`.
    let loopback: [u32; 4] = if is_v4_mapped(&bytes) {
        [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([127, 0, 0, 1]),
        ]
    } else {
        [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
    };
    // SAFETY: as above.
    unsafe {
        write_volatile(&raw mut (*addr).user_ip6[0], loopback[0]);
        write_volatile(&raw mut (*addr).user_ip6[1], loopback[1]);
        write_volatile(&raw mut (*addr).user_ip6[2], loopback[2]);
        write_volatile(&raw mut (*addr).user_ip6[3], loopback[3]);
        write_volatile(&raw mut (*addr).user_port, outbound_port());
    }
    ALLOW
}

#[sock_ops]
pub fn record_original_destination(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: the kernel hands sock_ops programs a valid `bpf_sock_ops`.
    let (op, family, local_port) = unsafe {
        (
            read_volatile(&raw const (*ops).op),
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_port),
        )
    };
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the context is what `bpf_get_socket_cookie` takes in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a plain copy out of the map.
    let Some(destination) = (unsafe { DESTINATION_BY_COOKIE.get(&cookie) }).copied() else {
        return 1;
    };
    let local = match family {
        AF_INET => local_v4(ops),
        AF_INET6 => local_v6(ops),
        _ => return 1,
    };
    // `local_port` is host byte order in `bpf_sock_ops`.
    let key = SocketEndpoint::new(local, local_port as u16);
    let _ = ORIGINAL_DESTINATIONS.insert(&key, &destination, 0);
    let _ = DESTINATION_BY_COOKIE.remove(&cookie);
    1
}

// Family-specific context reads live in their own functions, never inlined, so that LLVM
// cannot merge them into one load through a selected pointer, which the verifier refuses.

#[inline(never)]
fn local_v4(ops: *mut bpf_sock_ops) -> [u8; 16] {
    // SAFETY: as in `record_original_destination`.
    v4_mapped(unsafe { read_volatile(&raw const (*ops).local_ip4) })
}

#[inline(never)]
fn local_v6(ops: *mut bpf_sock_ops) -> [u8; 16] {
    // SAFETY: as in `record_original_destination`; one load per word.
    v6_bytes(unsafe {
        [
            read_volatile(&raw const (*ops).local_ip6[0]),
            read_volatile(&raw const (*ops).local_ip6[1]),
            read_volatile(&raw const (*ops).local_ip6[2]),
            read_volatile(&raw const (*ops).local_ip6[3]),
        ]
    })
}

fn is_tcp(addr: *mut bpf_sock_addr) -> bool {
    // SAFETY: as in `capture_connect4`.
    unsafe { read_volatile(&raw const (*addr).type_) == SOCK_STREAM }
}

/// If `destination` is in the mesh, remembers it under the socket's cookie.
fn remember(ctx: &SockAddrContext, destination: SocketEndpoint) -> bool {
    let any_port = SocketEndpoint::new(destination.addr, 0);
    // SAFETY: plain copies out of the map.
    let verdict = unsafe {
        match MESH_DESTINATIONS.get(&destination) {
            Some(verdict) => *verdict,
            None => MESH_DESTINATIONS
                .get(&any_port)
                .copied()
                .unwrap_or(MESH_DESTINATION_PASS),
        }
    };
    if verdict != MESH_DESTINATION_CAPTURE {
        return false;
    }
    // SAFETY: the context is what `bpf_get_socket_cookie` takes in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Redirect even if the table is full: a connection that postern cannot place fails,
    // which is better than one that leaves in clear.
    let _ = DESTINATION_BY_COOKIE.insert(&cookie, &destination, 0);
    true
}

/// `user_port` holds the port in network byte order in its low 16 bits.
fn user_port(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

fn outbound_port() -> u32 {
    u32::from(OUTBOUND_PORT.to_be())
}

fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}
