//! The app behind every proxy: HTTP/1.1 with keep-alive, one thread, no logging.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{header, write_body, Buffered, BODY_BYTE, CHUNK};

pub async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = answer(stream).await {
                eprintln!("backend: {e:#}");
            }
        });
    }
}

async fn answer(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Buffered::new(stream);
    while let Some(head) = conn.read_head().await? {
        let request = head.text.lines().next().unwrap_or_default().to_string();
        let mut words = request.split(' ');
        let close = header(&head.text, "connection") == Some("close");
        match (words.next(), words.next()) {
            (Some("GET"), Some(path)) if path.starts_with("/bytes/") => {
                let length: u64 = path["/bytes/".len()..]
                    .parse()
                    .with_context(|| format!("bad length in {request:?}"))?;
                let mut reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").into_bytes();
                if length <= CHUNK as u64 {
                    reply.resize(reply.len() + length as usize, BODY_BYTE);
                    conn.stream.write_all(&reply).await?;
                } else {
                    conn.stream.write_all(&reply).await?;
                    write_body(&mut conn.stream, length).await?;
                }
            }
            (Some("POST"), Some("/upload")) => {
                conn.read_body(head.content_length).await?;
                let count = head.content_length.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{count}",
                    count.len()
                );
                conn.stream.write_all(reply.as_bytes()).await?;
            }
            _ => bail!("unexpected request {request:?}"),
        }
        if close {
            conn.stream.shutdown().await?;
            return Ok(());
        }
    }
    Ok(())
}
