//! The admin HTTP endpoint, on loopback of the host's network namespace: `/healthz`,
//! `/readyz`, `/metrics` (Prometheus text) and `/config_dump` (JSON) for orchestrators,
//! scrapers and operators.
//!
//! Deliberately small: HTTP/1.1, GET only, one request per connection, bounded request size
//! and time. It serves no private keys and changes nothing; `postern certs` uses the
//! root-only Unix socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::AdminState;

/// The longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Answers until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, Arc::clone(&state)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn answer(mut stream: TcpStream, state: Arc<AdminState>) {
    let Ok(Some(request_line)) =
        tokio::time::timeout(Duration::from_secs(5), read_request_line(&mut stream)).await
    else {
        return;
    };
    let (status, content_type, body) = respond(&request_line, &state);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads the request head (up to a blank line) and returns its first line.
async fn read_request_line(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    text.lines().next().map(str::to_string)
}

fn respond(request_line: &str, state: &AdminState) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".to_string());
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => ("200 OK", TEXT, "ok\n".to_string()),
        "/readyz" => match state.readiness() {
            Ok(()) => {
                let warning = state.reload_warning().map(|w| format!("warning: {w}\n"));
                (
                    "200 OK",
                    TEXT,
                    format!("ready\n{}", warning.unwrap_or_default()),
                )
            }
            Err(reasons) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {reasons}\n"),
            ),
        },
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            state.render_metrics(),
        ),
        "/config_dump" => ("200 OK", "application/json", state.config_dump()),
        _ => (
            "404 Not Found",
            TEXT,
            "not found; try /healthz, /readyz, /metrics or /config_dump\n".to_string(),
        ),
    }
}
