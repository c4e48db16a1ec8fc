//! Sockets inside workload network namespaces.
//!
//! A socket belongs to the network namespace its creating thread was in when it was created,
//! for its whole life. So postern enters a workload's namespace on the current thread only
//! long enough to create a socket (`setns` there and back), and everything else (accept,
//! connect, I/O on the tokio runtime) happens from postern's own namespace.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, CloneFlags};

use crate::policy::NetnsRef;

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
