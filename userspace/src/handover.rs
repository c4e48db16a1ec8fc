//! Zero-downtime restart: a new postern takes the running one's listening sockets over the
//! admin socket, with `SCM_RIGHTS`.
//!
//! The conversation, on one connection to the old postern's admin socket:
//! 1. new → old: `takeover\n`;
//! 2. old → new: one message whose bytes are a JSON list of keys (`<netns inode> <label>`),
//!    then `\n`, and whose `SCM_RIGHTS` carry the listeners' descriptors in the same order;
//! 3. the new postern serves with them (the kernel's SOCKMAP already holds these very
//!    sockets, so it never has a gap), then new → old: `serving\n`;
//! 4. the old postern stops accepting and drains; it leaves the pinned kernel state alone.
//!
//! If the new postern fails before step 3, the connection closes without `serving`, and the
//! old one carries on as if nothing happened.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The request line that starts a takeover.
pub const REQUEST: &str = "takeover";

/// What the new postern says once it serves.
const SERVING: &str = "serving\n";

/// At most this many descriptors go in one message (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_LISTENERS: usize = 250;

/// The label of the HTTP admin endpoint's listener, handed over with the others.
pub const ADMIN_HTTP: &str = "admin-http";

/// How long the old postern waits for the new one to serve.
const SERVE_DEADLINE: Duration = Duration::from_secs(120);

/// A listener's key in a handover: its network namespace's inode and its label.
pub type Key = (u64, String);

fn encode(key: &Key) -> String {
    format!("{} {}", key.0, key.1)
}

fn decode(text: &str) -> io::Result<Key> {
    let (inode, label) = text
        .split_once(' ')
        .ok_or_else(|| io::Error::other(format!("malformed listener key {text:?}")))?;
    let inode = inode
        .parse()
        .map_err(|_| io::Error::other(format!("malformed listener key {text:?}")))?;
    Ok((inode, label.to_string()))
}

/// The old postern's side: sends every listener, then waits (blocking, up to a deadline) until
/// the new postern says it serves. `Ok` means the old postern must stop accepting now.
pub fn give(mut stream: UnixStream, listeners: &[(Key, BorrowedFd<'_>)]) -> io::Result<()> {
    if listeners.len() > MAX_LISTENERS {
        let error = format!(
            "{} listeners are more than a handover carries ({MAX_LISTENERS})",
            listeners.len()
        );
        // The new postern shows this instead of a closed connection.
        let _ = stream.write_all(format!("error: {error}\n").as_bytes());
        return Err(io::Error::other(error));
    }
    stream.set_nonblocking(false)?;
    let keys: Vec<String> = listeners.iter().map(|(key, _)| encode(key)).collect();
    let mut text = serde_json::to_string(&keys).map_err(io::Error::other)?;
    text.push('\n');
    let fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        &rights,
        MsgFlags::empty(),
        None,
    )?;
    // The descriptors went with the first byte; the rest of the text, if the kernel took only
    // part of it, goes plainly.
    stream.write_all(&text.as_bytes()[sent..])?;
    stream.set_read_timeout(Some(SERVE_DEADLINE))?;
    let mut answer = String::new();
    stream
        .take(SERVING.len() as u64)
        .read_to_string(&mut answer)?;
    if answer == SERVING {
        Ok(())
    } else {
        Err(io::Error::other(
            "the new postern closed the handover before it served",
        ))
    }
}

/// What the new postern received.
pub struct Taken {
    pub listeners: HashMap<Key, OwnedFd>,
    stream: UnixStream,
}

impl Taken {
    /// Tells the old postern to stop accepting and drain.
    pub fn serving(mut self) -> io::Result<()> {
        self.stream.write_all(SERVING.as_bytes())
    }
}

/// The new postern's side: asks the postern answering on `admin_socket` for its listeners.
/// `None` if no postern answers there (nothing to take over).
pub fn take(admin_socket: &Path) -> io::Result<Option<Taken>> {
    let mut stream = match UnixStream::connect(admin_socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{REQUEST}\n").as_bytes())?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
    let (mut text, fds) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, fds)
    };
    let mut bytes = buffer[..text].to_vec();
    while !bytes.ends_with(b"\n") {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..n]);
        text = bytes.len();
    }
    let text = String::from_utf8_lossy(&bytes[..text]);
    if let Some(error) = text.strip_prefix("error: ") {
        return Err(io::Error::other(error.trim().to_string()));
    }
    let keys: Vec<String> = serde_json::from_str(text.trim()).map_err(|e| {
        io::Error::other(format!(
            "the running postern's answer is not a handover: {e}"
        ))
    })?;
    if keys.len() != fds.len() {
        return Err(io::Error::other(format!(
            "the running postern named {} listeners but sent {}",
            keys.len(),
            fds.len()
        )));
    }
    let listeners = keys
        .iter()
        .map(|key| decode(key))
        .zip(fds)
        .map(|(key, fd)| key.map(|key| (key, fd)))
        .collect::<io::Result<_>>()?;
    stream.set_read_timeout(None)?;
    Ok(Some(Taken { listeners, stream }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// An old postern's side of a handover, on a thread.
    struct Old {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        addresses: Vec<std::net::SocketAddr>,
        thread: std::thread::JoinHandle<io::Result<()>>,
    }

    /// An old postern on a fresh admin socket: it reads the request line, then gives `count`
    /// listeners (each a loopback socket of its own) with keys `(1, "test/w:N")`.
    fn old_postern(count: usize) -> Old {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let server = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addresses = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let old = std::thread::spawn(move || {
            let (stream, _) = server.accept().unwrap();
            let mut line = [0u8; REQUEST.len() + 1];
            (&stream).read_exact(&mut line).unwrap();
            assert_eq!(&line[..REQUEST.len()], REQUEST.as_bytes());
            let keyed: Vec<(Key, BorrowedFd<'_>)> = listeners
                .iter()
                .enumerate()
                .map(|(n, listener)| ((1, format!("test/w:{n}")), listener.as_fd()))
                .collect();
            give(stream, &keyed)
        });
        Old {
            _dir: dir,
            path,
            addresses,
            thread: old,
        }
    }

    #[test]
    fn listeners_and_their_keys_cross_a_socket() {
        let old = old_postern(3);
        let taken = take(&old.path).unwrap().expect("a postern answers");
        assert_eq!(taken.listeners.len(), 3);
        for (n, address) in old.addresses.iter().enumerate() {
            let fd = taken.listeners[&(1, format!("test/w:{n}"))]
                .try_clone()
                .unwrap();
            assert_eq!(
                std::net::TcpListener::from(fd).local_addr().unwrap(),
                *address
            );
        }
        taken.serving().unwrap();
        old.thread.join().unwrap().unwrap();
    }

    #[test]
    fn too_many_listeners_are_refused_with_the_reason() {
        let old = old_postern(MAX_LISTENERS + 1);
        let error = take(&old.path).err().expect("refused").to_string();
        assert!(error.contains("more than a handover carries"), "{error}");
        assert!(old.thread.join().unwrap().is_err());
    }

    #[test]
    fn a_new_postern_that_never_serves_leaves_the_old_one_serving() {
        let old = old_postern(1);
        let taken = take(&old.path).unwrap().expect("a postern answers");
        drop(taken);
        assert!(old.thread.join().unwrap().is_err(), "no `serving`, no stop");
    }

    #[test]
    fn nobody_answering_is_nothing_to_take_over() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take(&dir.path().join("none.sock")).unwrap().is_none());
    }
}
