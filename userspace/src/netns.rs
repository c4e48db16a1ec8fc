//! Sockets inside workload network namespaces.
//!
//! A socket belongs to the network namespace its creating thread was in when it was created,
//! for its whole life. So postern enters a workload's namespace on the current thread only
//! long enough to create a socket (`setns` there and back), and everything else (accept,
//! connect, I/O on the tokio runtime) happens from postern's own namespace. TCP sockets for
//! connections are made a few at a time, so that most connections need no `setns` at all.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

use nix::sched::{setns, CloneFlags};
use tokio::net::TcpSocket;

use crate::policy::NetnsRef;

/// TCP sockets made in one visit to a namespace whose spare ones ran out. `setns` there and
/// back costs about 8 µs (`perf`, 1.25 % of an ECDSA handshake's CPU), so a visit per four
/// connections instead of one per connection saves about 6 µs on each; each namespace keeps
/// at most three sockets (descriptors) spare per address family.
const SOCKET_BATCH: usize = 4;

thread_local! {
    /// This thread's own network namespace, opened once, so that returning from a workload's
    /// namespace costs one `setns` and no `open`.
    static HOME: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// An open handle on a workload's network namespace.
#[derive(Debug)]
pub struct Netns {
    reference: NetnsRef,
    /// `None` for the host's namespace: nothing to enter.
    file: Option<File>,
    /// The namespace's inode number: a stable identity for as long as it exists.
    inode: u64,
    /// TCP sockets made ahead in the namespace for the connections to come.
    spare: Mutex<Spare>,
}

/// Unused TCP sockets of a namespace, by address family.
#[derive(Debug, Default)]
struct Spare {
    v4: Vec<TcpSocket>,
    v6: Vec<TcpSocket>,
}

impl Netns {
    /// Opens the namespace; fails with the path in the message if it does not exist or is not
    /// a network namespace.
    pub fn open(reference: &NetnsRef) -> io::Result<Netns> {
        let (file, inode) = match reference {
            NetnsRef::Host => {
                let own = File::open("/proc/self/ns/net")?;
                let inode = own.metadata()?.ino();
                (None, inode)
            }
            NetnsRef::Path(path) => {
                let file = File::open(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open network namespace {}: {e}", path.display()),
                    )
                })?;
                // Entering once proves it really is a network namespace, before any socket
                // or eBPF attachment depends on it.
                enter(&file).map_err(|e| {
                    io::Error::other(format!(
                        "{} is not a network namespace postern can enter: {e}",
                        path.display()
                    ))
                })?;
                leave();
                let inode = file.metadata()?.ino();
                (Some(file), inode)
            }
        };
        Ok(Netns {
            reference: reference.clone(),
            file,
            inode,
            spare: Mutex::default(),
        })
    }

    pub fn reference(&self) -> &NetnsRef {
        &self.reference
    }

    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// A file descriptor of the namespace, for attaching eBPF programs to it.
    pub fn fd(&self) -> io::Result<File> {
        match &self.file {
            Some(file) => file.try_clone(),
            None => File::open("/proc/self/ns/net"),
        }
    }

    /// The namespace's own addresses, without loopback and IPv6 link-local ones: where other
    /// workloads reach it.
    pub fn addresses(&self) -> io::Result<Vec<std::net::IpAddr>> {
        let interfaces = self.run(|| nix::ifaddrs::getifaddrs().map_err(io::Error::from))?;
        let mut addresses: Vec<std::net::IpAddr> = interfaces
            .filter_map(|interface| {
                let address = interface.address?;
                let v4 = address
                    .as_sockaddr_in()
                    .map(|a| std::net::IpAddr::V4(a.ip()));
                v4.or_else(|| {
                    address
                        .as_sockaddr_in6()
                        .map(|a| std::net::IpAddr::V6(a.ip()))
                })
            })
            .filter(|ip| match ip {
                std::net::IpAddr::V4(v4) => !v4.is_loopback(),
                std::net::IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// A new TCP socket in the namespace, of the address family of `address` (one it is to
    /// bind to or connect to). Taken from the spare ones; when there are none, one visit to
    /// the namespace makes [`SOCKET_BATCH`] of them.
    pub fn tcp_socket(&self, address: SocketAddr) -> io::Result<TcpSocket> {
        let make = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4,
            SocketAddr::V6(_) => TcpSocket::new_v6,
        };
        if self.file.is_none() {
            return make();
        }
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let spare = match address {
            SocketAddr::V4(_) => &mut spare.v4,
            SocketAddr::V6(_) => &mut spare.v6,
        };
        if spare.is_empty() {
            *spare = self.run(|| (0..SOCKET_BATCH).map(|_| make()).collect())?;
        }
        Ok(spare.pop().expect("a batch holds at least one socket"))
    }

    /// Runs `create` inside this namespace on the current thread, then returns to postern's
    /// own. `create` must not block or yield: it is meant for creating sockets.
    pub fn run<T>(&self, create: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let Some(file) = &self.file else {
            return create();
        };
        enter(file)?;
        let result = create();
        leave();
        result
    }
}

fn enter(target: &File) -> io::Result<()> {
    HOME.with(|home| -> io::Result<()> {
        let mut home = home.borrow_mut();
        if home.is_none() {
            *home = Some(File::open("/proc/thread-self/ns/net")?);
        }
        Ok(())
    })?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn leave() {
    HOME.with(|home| {
        let home = home.borrow();
        let home = home.as_ref().expect("enter() opened the home namespace");
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A runtime thread stuck in a workload's namespace would create later sockets in
            // the wrong place; there is no safe way to continue.
            eprintln!("postern: cannot return to its own network namespace: {e}");
            std::process::abort();
        }
    });
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::mpsc;

    use super::*;

    /// `SIOCGSKNS` (linux/sockios.h): a descriptor of the socket's network namespace.
    const SIOCGSKNS: libc::c_ulong = 0x894C;

    fn namespace_inode(socket: &TcpSocket) -> u64 {
        // SAFETY: the ioctl takes no argument and returns a new descriptor or -1.
        let fd = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS) };
        assert!(fd >= 0, "SIOCGSKNS: {}", io::Error::last_os_error());
        // SAFETY: the descriptor was just returned to us and nothing else owns it.
        let namespace = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        namespace.metadata().expect("fstat").ino()
    }

    #[test]
    fn sockets_are_made_in_the_namespace_a_batch_at_a_time() {
        // A namespace of a thread's own: nothing to remove afterwards, it ends with the thread.
        let (path_tx, path_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare (run as root)");
            let path = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            path_tx.send(path).expect("send");
            let _ = done_rx.recv();
        });
        let path = path_rx.recv().expect("the thread's namespace");
        let netns = Netns::open(&NetnsRef::Path(path.into())).expect("open");
        let own = File::open("/proc/thread-self/ns/net")
            .and_then(|file| file.metadata())
            .expect("own namespace")
            .ino();
        assert_ne!(netns.inode(), own);

        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let sockets: Vec<TcpSocket> = (0..SOCKET_BATCH + 1)
            .map(|_| netns.tcp_socket(v4).expect("socket"))
            .collect();
        for socket in &sockets {
            assert_eq!(namespace_inode(socket), netns.inode());
        }
        let v6 = netns
            .tcp_socket(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)))
            .expect("IPv6 socket");
        assert_eq!(namespace_inode(&v6), netns.inode());
        assert!(v6.local_addr().is_ok_and(|addr| addr.is_ipv6()));
        {
            let spare = netns.spare.lock().expect("lock");
            // Two batches for five IPv4 sockets, one for the IPv6 one.
            assert_eq!(spare.v4.len(), 2 * SOCKET_BATCH - sockets.len());
            assert_eq!(spare.v6.len(), SOCKET_BATCH - 1);
        }
        let host = Netns::open(&NetnsRef::Host).expect("host");
        assert_eq!(namespace_inode(&host.tcp_socket(v4).expect("socket")), own);

        done_tx.send(()).expect("send");
        holder.join().expect("holder thread");
    }
}
