//! postern's `sk_lookup` program, attached to each workload's network namespace.
//!
//! For every new inbound TCP connection the kernel asks this program which socket should
//! receive it. An intercepted destination (port, optionally address prefix) is steered to
//! postern's listener for it with `bpf_sk_assign`; the packet is not rewritten, so the accepted
//! socket's local address is the original destination. If that listener is gone (postern is
//! down), the connection is dropped, which the client sees as a reset: traffic meant for TLS
//! never reaches the app in clear.
//!
//! `capture` holds the outbound capture programs, attached to mesh workloads' cgroups.
//!
//! Built for the bpf target only; on the host this file is an empty program so that workspace
//! wide commands (`cargo test --workspace`) do not trip over it.

#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod addr;
#[cfg(target_arch = "bpf")]
mod capture;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{
            bpf_sk_lookup,
            sk_action::{SK_DROP, SK_PASS},
        },
        macros::{map, sk_lookup},
        maps::{lpm_trie::Key, LpmTrie, PerCpuArray, SockMap},
        programs::SkLookupContext,
    };
    use postern_common::{
        Rule, RuleCounters, RuleKey, ANY_PORT, MAX_LISTENERS, MAX_RULES, POSTERN_SOURCE_V4,
        RULE_FLAG_INTERCEPT_LOOPBACK,
    };

    use core::ptr::read_volatile;

    use crate::addr::{v4_mapped, v6_bytes};

    const AF_INET: u32 = 2;
    const AF_INET6: u32 = 10;
    const IPPROTO_TCP: u32 = 6;

    /// (port, destination prefix) → listener and counter.
    #[map]
    static RULES: LpmTrie<RuleKey, Rule> = LpmTrie::with_max_entries(MAX_RULES, 0);

    /// postern's listening sockets. An entry disappears by itself when the socket's last file
    /// descriptor is closed, which is what makes a dead postern fail closed.
    #[map]
    static LISTENERS: SockMap = SockMap::with_max_entries(MAX_LISTENERS, 0);

    /// Per rule, per CPU: connections steered and dropped.
    #[map]
    static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

    /// The addresses of one lookup, in network byte order.
    struct Peers {
        remote: [u8; 16],
        local: [u8; 16],
        remote_is_v4: bool,
    }

    #[sk_lookup]
    pub fn steer_to_postern(ctx: SkLookupContext) -> u32 {
        decide(&ctx)
    }

    fn decide(ctx: &SkLookupContext) -> u32 {
        let lookup = ctx.lookup;
        // SAFETY: as in `read_v4`.
        let (protocol, family, local_port) = unsafe {
            (
                read_volatile(&raw const (*lookup).protocol),
                read_volatile(&raw const (*lookup).family),
                read_volatile(&raw const (*lookup).local_port),
            )
        };
        if protocol != IPPROTO_TCP {
            return SK_PASS;
        }
        let Some(peers) = read_peers(ctx, family) else {
            return SK_PASS;
        };
        if peers.remote_is_v4 && peers.remote[12..] == POSTERN_SOURCE_V4 {
            // postern's own connection to the app.
            return SK_PASS;
        }
        // `local_port` is host byte order in `bpf_sk_lookup`.
        let port = local_port as u16;
        let Some(rule) = find_rule(port, &peers.local) else {
            return SK_PASS;
        };
        if rule.flags & RULE_FLAG_INTERCEPT_LOOPBACK == 0 && is_loopback(&peers) {
            return SK_PASS;
        }
        match LISTENERS.redirect_sk_lookup(ctx, rule.listener, 0) {
            Ok(()) => {
                count(rule.counter, |c| c.steered += 1);
                SK_PASS
            }
            Err(_) => {
                count(rule.counter, |c| c.dropped += 1);
                SK_DROP
            }
        }
    }

    fn read_peers(ctx: &SkLookupContext, family: u32) -> Option<Peers> {
        let mut peers = Peers {
            remote: [0; 16],
            local: [0; 16],
            remote_is_v4: false,
        };
        match family {
            AF_INET => read_v4(ctx.lookup, &mut peers),
            AF_INET6 => read_v6(ctx.lookup, &mut peers),
            _ => return None,
        }
        Some(peers)
    }

    // The verifier only allows context loads at a constant offset from the context pointer.
    // Each family's reads live in their own function, never inlined, because LLVM otherwise
    // merges the two branches into one load through a selected pointer, which it refuses.

    #[inline(never)]
    fn read_v4(lookup: *mut bpf_sk_lookup, peers: &mut Peers) {
        // SAFETY: the kernel hands sk_lookup programs a valid `bpf_sk_lookup`.
        unsafe {
            peers.remote = v4_mapped(read_volatile(&raw const (*lookup).remote_ip4));
            peers.local = v4_mapped(read_volatile(&raw const (*lookup).local_ip4));
        }
        peers.remote_is_v4 = true;
    }

    #[inline(never)]
    fn read_v6(lookup: *mut bpf_sk_lookup, peers: &mut Peers) {
        // SAFETY: as in `read_v4`; one load per word, for the same reason.
        unsafe {
            peers.remote = v6_bytes([
                read_volatile(&raw const (*lookup).remote_ip6[0]),
                read_volatile(&raw const (*lookup).remote_ip6[1]),
                read_volatile(&raw const (*lookup).remote_ip6[2]),
                read_volatile(&raw const (*lookup).remote_ip6[3]),
            ]);
            peers.local = v6_bytes([
                read_volatile(&raw const (*lookup).local_ip6[0]),
                read_volatile(&raw const (*lookup).local_ip6[1]),
                read_volatile(&raw const (*lookup).local_ip6[2]),
                read_volatile(&raw const (*lookup).local_ip6[3]),
            ]);
        }
        peers.remote_is_v4 = false;
    }

    /// The rule for this exact port and the longest matching destination prefix, else the
    /// workload's rule for every other port, if it has one.
    fn find_rule(port: u16, local: &[u8; 16]) -> Option<Rule> {
        let exact = Key::new(RuleKey::FULL_PREFIX_LEN, RuleKey::new(port, *local));
        if let Some(rule) = RULES.get(&exact) {
            return Some(*rule);
        }
        let any = Key::new(RuleKey::FULL_PREFIX_LEN, RuleKey::new(ANY_PORT, *local));
        RULES.get(&any).copied()
    }

    fn is_loopback(peers: &Peers) -> bool {
        if peers.remote_is_v4 {
            peers.remote[12] == 127
        } else {
            peers.remote[..15] == [0; 15] && peers.remote[15] == 1
        }
    }

    fn count(index: u32, update: impl FnOnce(&mut RuleCounters)) {
        if let Some(counters) = COUNTERS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            update(unsafe { &mut *counters });
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
