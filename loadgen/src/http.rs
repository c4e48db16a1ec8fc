//! Just enough HTTP/1.1 for the benchmark, on both sides: requests with a `Content-Length`
//! body or none, responses with a `Content-Length` body, every body byte `x`.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::Io;

/// The byte every body is made of, so a body is checked without keeping a copy.
pub const BODY_BYTE: u8 = b'x';

/// Longest request or response head either side accepts.
const MAX_HEAD: usize = 8 * 1024;

/// Size of the chunks bodies are written and read in.
pub const CHUNK: usize = 64 * 1024;

/// A stream with the bytes read past the last message kept for the next one.
pub struct Buffered<S> {
    pub stream: S,
    pending: Vec<u8>,
}

/// A message head: its text and the length of the body that follows.
pub struct Head {
    pub text: String,
    pub content_length: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Buffered<S> {
    pub fn new(stream: S) -> Self {
        Buffered {
            stream,
            pending: Vec::with_capacity(1024),
        }
    }

    /// Reads up to the blank line after the head; `None` at a clean end of stream before any
    /// byte of a new message.
    pub async fn read_head(&mut self) -> Result<Option<Head>> {
        loop {
            if let Some(end) = find_blank_line(&self.pending) {
                let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                self.pending.drain(..end + 4);
                let content_length = match header(&text, "content-length") {
                    Some(value) => value
                        .parse()
                        .with_context(|| format!("bad Content-Length {value:?}"))?,
                    None => 0,
                };
                return Ok(Some(Head {
                    text,
                    content_length,
                }));
            }
            if self.pending.len() > MAX_HEAD {
                bail!("no end of the message head within {MAX_HEAD} bytes");
            }
            let mut chunk = [0u8; 2048];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                bail!("the stream ended inside a message head");
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads a body of `length` bytes and fails unless every byte is [`BODY_BYTE`].
    pub async fn read_body(&mut self, length: u64) -> Result<()> {
        let from_pending = self.pending.len().min(usize::try_from(length)?);
        check_body(&self.pending[..from_pending])?;
        self.pending.drain(..from_pending);
        let mut left = length - from_pending as u64;
        let mut chunk = vec![0u8; CHUNK];
        while left > 0 {
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                bail!("the stream ended with {left} body bytes still to come");
            }
            check_body(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Whether the peer has closed its side: end of stream with nothing unread. A TLS peer
    /// that closes without close_notify counts as closed.
    pub async fn at_end(&mut self) -> Result<bool> {
        if !self.pending.is_empty() {
            return Ok(false);
        }
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte).await {
            Ok(n) => Ok(n == 0),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes `length` body bytes.
pub async fn write_body<W: AsyncWrite + Unpin>(to: &mut W, length: u64) -> Result<()> {
    let chunk = vec![BODY_BYTE; CHUNK];
    let mut left = length;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        to.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

fn check_body(bytes: &[u8]) -> Result<()> {
    if bytes.iter().any(|&b| b != BODY_BYTE) {
        bail!("the body holds bytes that were never sent");
    }
    Ok(())
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The value of header `name` (lower case) in a message head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// A client's side of one HTTP/1.1 connection.
pub type ClientConn = Buffered<Box<dyn Io>>;

/// Sends `GET /bytes/LEN` and checks the answer: 200, `LEN` bytes of `x`. With `close`, asks
/// the server to close and checks that it does.
pub async fn get(conn: &mut ClientConn, length: u64, close: bool) -> Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    let request =
        format!("GET /bytes/{length} HTTP/1.1\r\nHost: bench\r\nConnection: {connection}\r\n\r\n");
    conn.stream.write_all(request.as_bytes()).await?;
    expect_ok(conn, length).await?;
    if close && !conn.at_end().await? {
        bail!("the server did not close the connection after `Connection: close`");
    }
    Ok(())
}

/// Sends `POST /upload` with `length` bytes and checks that the server counted them all.
pub async fn upload(conn: &mut ClientConn, length: u64) -> Result<()> {
    let head = format!("POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: {length}\r\n\r\n");
    conn.stream.write_all(head.as_bytes()).await?;
    write_body(&mut conn.stream, length).await?;
    conn.stream.flush().await?;
    let head = conn
        .read_head()
        .await?
        .context("the server closed before answering")?;
    check_status(&head)?;
    let mut body = vec![0u8; usize::try_from(head.content_length)?];
    let from_pending = conn.pending.len().min(body.len());
    body[..from_pending].copy_from_slice(&conn.pending[..from_pending]);
    conn.pending.drain(..from_pending);
    conn.stream.read_exact(&mut body[from_pending..]).await?;
    let counted = String::from_utf8_lossy(&body);
    if counted != length.to_string() {
        bail!("the server received {counted} bytes of the {length} sent");
    }
    Ok(())
}

async fn expect_ok(conn: &mut ClientConn, length: u64) -> Result<()> {
    let head = conn
        .read_head()
        .await?
        .context("the server closed before answering")?;
    check_status(&head)?;
    if head.content_length != length {
        bail!(
            "Content-Length {} where {length} was asked for",
            head.content_length
        );
    }
    conn.read_body(length).await
}

fn check_status(head: &Head) -> Result<()> {
    let status = head.text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("answer {status:?}, not 200");
    }
    Ok(())
}
