//! postern's own resources: its file-descriptor limit, and the global connection cap derived
//! from it, so that a flood of connections is refused at the door instead of exhausting
//! descriptors that listeners, the admin endpoints and certificate reloads also need.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept out of the connection cap: listeners, the admin socket and endpoint, eBPF
/// maps and programs, namespace handles, certificate files being re-read, the runtime's own.
const RESERVED_FDS: u64 = 256;

/// Each connection holds two descriptors: the client's socket and the app's.
const FDS_PER_CONNECTION: u64 = 2;

/// `RLIMIT_NOFILE` before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the soft default (often 1024) is meant
/// for programs that use `select(2)`, which postern does not.
pub fn raise_fd_limit() -> nix::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(FdLimit {
        before: soft,
        now: soft.max(hard),
    })
}

/// The default `--max-connections` for a descriptor limit: what is left after the reserve,
/// two descriptors per connection, and at least one connection.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let connections = fd_limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    usize::try_from(connections).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Below the hard limit, but high enough for the other tests running alongside.
        setrlimit(Resource::RLIMIT_NOFILE, hard / 2, hard).unwrap();
        let limit = raise_fd_limit().unwrap();
        assert_eq!(
            limit,
            FdLimit {
                before: hard / 2,
                now: hard
            }
        );
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }

    #[test]
    fn the_connection_cap_leaves_headroom() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(1_048_576), 524_160);
        assert_eq!(default_max_connections(100), 1);
    }
}
