//! Plaintext relaying without copying the bytes through user space.
//!
//! A plaintext port has nothing to do with the bytes, so each direction moves them with
//! `splice(2)`: from the source socket into a pipe, then from the pipe into the destination
//! socket. The kernel hands pages along instead of copying them into a buffer of postern's
//! and back. TLS ports keep the copy loop: their bytes must pass through rustls.
//!
//! Like the copy buffers, a pipe exists only while a direction has bytes in flight: it is
//! borrowed from a pool of the thread's for each burst and given back, empty, once the source
//! has nothing more to read, so an idle connection holds no pipe (and no descriptors for one).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;

use crate::copy_buffer::CopyBuffer;
use tokio::net::{TcpStream, UnixStream};

/// The most one `splice` moves: the default capacity of a pipe (16 pages).
const CHUNK: usize = 64 * 1024;

/// Pipes a thread keeps for reuse; more are closed.
const POOL_LIMIT: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A socket tokio drives whose readiness a direction waits for.
pub trait Socket: AsFd {
    fn ready(&self, interest: Interest) -> impl std::future::Future<Output = io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for TcpStream {
    async fn ready(&self, interest: Interest) -> io::Result<()> {
        TcpStream::ready(self, interest).await.map(drop)
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
}

impl Socket for UnixStream {
    async fn ready(&self, interest: Interest) -> io::Result<()> {
        UnixStream::ready(self, interest).await.map(drop)
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
}

/// Both ends of a pipe, non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// One direction's pipe while it holds bytes or a burst is under way. Dropped with bytes
/// still in it (the connection broke), the pipe is closed rather than reused.
#[derive(Default)]
struct Borrowed {
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet passed on.
    pending: usize,
}

impl Borrowed {
    fn pipe(&mut self) -> io::Result<&Pipe> {
        if self.pipe.is_none() {
            let pooled = POOL.with(|pool| pool.borrow_mut().pop());
            self.pipe = Some(match pooled {
                Some(pipe) => pipe,
                None => Pipe::new()?,
            });
        }
        Ok(self.pipe.as_ref().expect("set above"))
    }

    /// Gives an empty pipe back to the pool.
    fn give_back(&mut self) {
        if self.pending != 0 {
            return;
        }
        if let Some(pipe) = self.pipe.take() {
            POOL.with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_LIMIT {
                    pool.push(pipe);
                }
            });
        }
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Moves up to `len` bytes from `from` to `to`, one of which is a pipe, without blocking.
fn splice(from: &impl AsRawFd, to: &impl AsRawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call; null offsets mean the
    // descriptors' own positions (sockets and pipes have none).
    let moved = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(moved).map_err(|_| io::Error::last_os_error())
}

/// Receives what `from` has into `buffer` without blocking. A read shorter than the buffer
/// has drained the socket (a stream socket returns less only when nothing more is queued),
/// so tokio is told to wait for new bytes rather than find out with a read that would only
/// fail with `EAGAIN`: one system call fewer for every small message.
fn receive(from: &impl Socket, buffer: &mut [u8]) -> io::Result<usize> {
    let mut received = 0;
    let result = from.try_io(Interest::READABLE, || {
        // SAFETY: `buffer` is valid for writes of its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                from.as_fd().as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        received = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        if received > 0 && received < buffer.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && received > 0 => Ok(received),
        other => other.map(|()| received),
    }
}

/// Sends all of `bytes` to `to`, waiting while its send buffer is full.
async fn send_all(
    to: &impl Socket,
    mut bytes: &[u8],
    moved: &mut u64,
    activity: &impl Fn(),
) -> io::Result<()> {
    while !bytes.is_empty() {
        let sent = to.try_io(Interest::WRITABLE, || {
            // SAFETY: `bytes` is valid for reads of its length for the duration of the call.
            let n = unsafe {
                libc::send(
                    to.as_fd().as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(n) => {
                bytes = &bytes[n..];
                *moved += n as u64;
                activity();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.ready(Interest::WRITABLE).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the rest of a burst with `splice(2)` until `from` has nothing more to read now
/// (`Ok(false)`) or has finished sending (`Ok(true)`).
async fn splice_burst(
    from: &impl Socket,
    to: &impl Socket,
    borrowed: &mut Borrowed,
    moved: &mut u64,
    activity: &impl Fn(),
) -> io::Result<bool> {
    loop {
        let pipe = borrowed.pipe()?;
        let read = from.try_io(Interest::READABLE, || {
            splice(&from.as_fd(), &pipe.write, CHUNK)
        });
        match read {
            Ok(0) => return Ok(true),
            Ok(bytes) => borrowed.pending = bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                borrowed.give_back();
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        while borrowed.pending > 0 {
            let pending = borrowed.pending;
            let pipe = borrowed.pipe()?;
            let wrote = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, &to.as_fd(), pending)
            });
            match wrote {
                Ok(bytes) => {
                    borrowed.pending -= bytes;
                    *moved += bytes as u64;
                    activity();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    to.ready(Interest::WRITABLE).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Moves the bytes `from` sends to `to` until `from` finishes sending, then half-closes `to`
/// (FIN) so it sees the end of stream while the other direction goes on. `moved` counts the
/// bytes delivered; `activity` is called after each delivery.
///
/// Each burst starts with an ordinary read into a borrowed copy buffer: requests and answers
/// smaller than it cost one read and one write, and the short read spares the read that would
/// find the socket empty. A read that fills the buffer is bulk: the rest of the burst goes
/// through a pipe by `splice(2)`.
pub async fn pump(
    from: &impl Socket,
    to: &impl Socket,
    moved: &mut u64,
    activity: impl Fn(),
) -> io::Result<()> {
    let mut buffer = CopyBuffer::default();
    let mut borrowed = Borrowed::default();
    loop {
        buffer.give_back();
        from.ready(Interest::READABLE).await?;
        let bytes = buffer.get();
        let received = match receive(from, bytes) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        send_all(to, &bytes[..received], moved, &activity).await?;
        if received == bytes.len()
            && splice_burst(from, to, &mut borrowed, moved, &activity).await?
        {
            break;
        }
    }
    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)
}
