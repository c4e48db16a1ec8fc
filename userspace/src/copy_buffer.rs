//! Copy buffers that exist only while bytes flow.
//!
//! An idle connection spends its life waiting in `read`. Giving that read a 64 KiB buffer
//! of its own would cost every idle connection 128 KiB (one buffer per direction), eight
//! times the budget of a whole connection. Instead each poll borrows a buffer from a pool of
//! the thread's and gives it back as soon as the read has nothing to return (`Pending`): an
//! idle connection holds none, and a busy one keeps its buffer from one read to the next
//! without an allocation.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

/// Four TLS records' worth of plaintext. In bulk, each read and write moves four times what
/// a 16 KiB buffer would, for a quarter of the system calls: with this size a plaintext port
/// moves more per second than with `splice(2)` (`docs/benchmarks.md`, levers).
pub const BUFFER_SIZE: usize = 64 * 1024;

/// Buffers a thread keeps for reuse; more are freed. Only connections between a read and
/// the write that follows it hold a buffer, so a single thread rarely needs many; 512 KiB
/// stays allocated at most.
const POOL_LIMIT: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// One direction's buffer, present only while that direction has bytes to move.
#[derive(Default)]
pub struct CopyBuffer {
    buffer: Option<Box<[u8]>>,
}

impl CopyBuffer {
    /// Reads what `from` has; empty at the end of the stream.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, from: &mut R) -> io::Result<&[u8]> {
        let n = poll_fn(|cx| {
            let buffer = self.buffer.get_or_insert_with(take);
            let mut read_buf = ReadBuf::new(buffer);
            match Pin::new(&mut *from).poll_read(cx, &mut read_buf) {
                Poll::Ready(result) => Poll::Ready(result.map(|()| read_buf.filled().len())),
                Poll::Pending => {
                    self.give_back();
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(self.buffer.as_deref().map_or(&[], |buffer| &buffer[..n]))
    }
}

impl CopyBuffer {
    /// The buffer, borrowed from the pool if this direction holds none.
    pub fn get(&mut self) -> &mut [u8] {
        self.buffer.get_or_insert_with(take)
    }

    /// Gives the buffer back to the pool: call before waiting for bytes.
    pub fn give_back(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give(buffer);
        }
    }
}

impl Drop for CopyBuffer {
    fn drop(&mut self) {
        self.give_back();
    }
}

fn take() -> Box<[u8]> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice())
}

fn give(buffer: Box<[u8]>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_LIMIT {
            pool.push(buffer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_a_busy_one_reads_everything() {
        let (mut near, mut far) = tokio::io::duplex(256 * 1024);
        let mut buffer = CopyBuffer::default();
        // Nothing to read: the poll is pending and the buffer goes back to the pool.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), buffer.read(&mut near))
                .await;
        assert!(pending.is_err(), "nothing was written yet");
        assert!(buffer.buffer.is_none(), "a waiting reader holds no buffer");

        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&sent).await.unwrap();
        far.shutdown().await.unwrap();
        let mut received = Vec::new();
        loop {
            let bytes = buffer.read(&mut near).await.unwrap();
            if bytes.is_empty() {
                break;
            }
            assert!(bytes.len() <= BUFFER_SIZE);
            received.extend_from_slice(bytes);
        }
        assert_eq!(received, sent);
    }
}
