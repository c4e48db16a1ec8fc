//! Real curl, run inside a network namespace.

use std::ffi::OsStr;

use anyhow::Result;

use crate::netns::Netns;

/// A bound on every curl the test bed runs, so that a hung connection fails a test instead of
/// hanging it (a later `--max-time` in `args` wins).
const CURL_MAX_TIME_SECS: &str = "20";

/// What curl did.
#[derive(Clone, Debug)]
pub struct CurlResult {
    /// curl's exit code (`-1` if it was killed by a signal): 0 ok, 7 refused, 28 timeout,
    /// 35 TLS handshake failed, 56 receive failure (e.g. reset by peer).
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `curl --max-time 20 ARGS...` inside `netns`. A non-zero exit is a result, not an error.
pub fn curl<I, S>(netns: &Netns, args: I) -> Result<CurlResult>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = netns.command("curl");
    cmd.args(bounded_args(args));
    run_curl(&mut cmd)
}

/// `--max-time 20`, followed by `args`: a later `--max-time` in `args` wins.
pub(crate) fn bounded_args<I, S>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ["--max-time", CURL_MAX_TIME_SECS]
        .iter()
        .map(std::ffi::OsString::from)
        .chain(args.into_iter().map(|arg| arg.as_ref().to_os_string()))
        .collect()
}

/// Runs `cmd`, a whole curl command line. A non-zero exit is a result, not an error.
pub(crate) fn run_curl(cmd: &mut std::process::Command) -> Result<CurlResult> {
    let output = crate::cmd::run_output(cmd)?;
    Ok(CurlResult {
        exit_code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

impl CurlResult {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// curl's `-v` lines, each without the progress meter that curl may have written in front
    /// of it. Without `-s`, curl draws its meter on stderr too, as `\r` and columns of figures
    /// with no newline, and when the response is slow enough the next verbose line is glued to
    /// it: `\r  0     0 ... --:--:--     0< HTTP/1.1 200 OK`.
    fn verbose_lines(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.stderr
            .lines()
            .map(|line| match line.rsplit_once('\r') {
                Some((_, drawn)) => drawn.trim_start_matches(|c: char| {
                    c.is_ascii_digit() || matches!(c, ' ' | ':' | '-' | '.' | 'k' | 'M' | 'G')
                }),
                None => line,
            })
    }

    /// The response's status line from `-v` output, e.g. `HTTP/2 200` or `HTTP/1.1 200 OK`.
    pub fn status_line(&self) -> Option<&str> {
        self.verbose_lines()
            .filter_map(|line| line.strip_prefix("< "))
            .find(|line| line.starts_with("HTTP/"))
            .map(str::trim)
    }

    /// The response's status code (needs `-v`).
    pub fn http_status(&self) -> Option<u16> {
        self.status_line()?.split_whitespace().nth(1)?.parse().ok()
    }

    /// `HTTP/2`, `HTTP/1.1` (needs `-v`).
    pub fn http_version(&self) -> Option<&str> {
        self.status_line()?.split_whitespace().next()
    }

    /// The TLS version, e.g. `TLSv1.3`, from `* SSL connection using TLSv1.3 / ...` (needs `-v`).
    pub fn tls_version(&self) -> Option<&str> {
        self.verbose_field("SSL connection using ")?
            .split_whitespace()
            .next()
    }

    /// The server certificate's subject, e.g.
    /// `CN=httpbin.test.svc.cluster.local; O=httpbin organization` (needs `-v`).
    pub fn server_subject(&self) -> Option<&str> {
        self.verbose_field("subject: ")
    }

    /// The server certificate's issuer (needs `-v`).
    pub fn server_issuer(&self) -> Option<&str> {
        self.verbose_field("issuer: ")
    }

    /// curl's own error, e.g. `(56) Recv failure: Connection reset by peer`.
    pub fn error(&self) -> Option<&str> {
        self.verbose_lines()
            .rev()
            .find_map(|line| line.strip_prefix("curl: "))
    }

    /// One line for humans: `HTTP/2 200 over TLSv1.3, server cert subject CN=...` or
    /// `curl exit 56: Recv failure: Connection reset by peer`.
    pub fn summary(&self) -> String {
        if let Some(status) = self.status_line() {
            let mut text = status.to_string();
            if let Some(tls) = self.tls_version() {
                text.push_str(&format!(" over {tls}"));
            }
            if let Some(subject) = self.server_subject() {
                text.push_str(&format!(", server cert subject {subject}"));
            }
            if self.exit_code != 0 {
                text.push_str(&format!(" (curl exit {})", self.exit_code));
            }
            return text;
        }
        match self.error() {
            Some(error) => {
                let message = error.split_once(") ").map_or(error, |(_, message)| message);
                format!("curl exit {}: {message}", self.exit_code)
            }
            // Neither an answer nor an error: show what curl did say.
            None => format!(
                "curl exit {}, no response; curl said:\n{}{}",
                self.exit_code,
                crate::cmd::tail(&self.stderr, 15),
                crate::cmd::tail(&self.stdout, 5)
            ),
        }
    }

    fn verbose_field(&self, prefix: &str) -> Option<&str> {
        self.verbose_lines()
            .filter_map(|line| line.strip_prefix('*'))
            .find_map(|line| line.trim_start().strip_prefix(prefix))
            .map(str::trim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS_OK: &str = "*   Trying 198.18.0.2:9080...
* Connected to httpbin.test.svc.cluster.local (198.18.0.2) port 9080 (#0)
* SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384
* Server certificate:
*  subject: CN=httpbin.test.svc.cluster.local; O=httpbin organization
*  issuer: O=example Inc.; CN=example.com
> GET /status/200 HTTP/2
< HTTP/2 200 
< content-type: text/html; charset=utf-8
";

    /// What a guest's curl wrote once, when the answer took long enough for the progress meter
    /// to be drawn (the test then saw "no response").
    const METER_GLUED: &str = "> Host: 198.18.0.2:9081
> Accept: */*
> 
\r  0     0    0     0    0     0      0      0 --:--:-- --:--:-- --:--:--     0< HTTP/1.1 200 OK
< Server: gunicorn
\r  0     0    0     0    0     0      0      0 --:--:--  0:00:01 --:--:--     0curl: (56) Recv failure: Connection reset by peer
";

    #[test]
    fn parses_verbose_lines_behind_the_progress_meter() {
        let result = CurlResult {
            exit_code: 56,
            stdout: String::new(),
            stderr: METER_GLUED.to_string(),
        };
        assert_eq!(result.http_status(), Some(200));
        assert_eq!(result.status_line(), Some("HTTP/1.1 200 OK"));
        assert_eq!(
            result.error(),
            Some("(56) Recv failure: Connection reset by peer")
        );
    }

    #[test]
    fn parses_a_tls_response() {
        let result = CurlResult {
            exit_code: 0,
            stdout: String::new(),
            stderr: TLS_OK.to_string(),
        };
        assert_eq!(result.http_status(), Some(200));
        assert_eq!(result.http_version(), Some("HTTP/2"));
        assert_eq!(result.tls_version(), Some("TLSv1.3"));
        assert_eq!(
            result.server_issuer(),
            Some("O=example Inc.; CN=example.com")
        );
        assert_eq!(
            result.summary(),
            "HTTP/2 200 over TLSv1.3, server cert subject CN=httpbin.test.svc.cluster.local; O=httpbin organization"
        );
    }

    #[test]
    fn summarises_a_reset() {
        let result = CurlResult {
            exit_code: 56,
            stdout: String::new(),
            stderr: "> GET /status/200 HTTP/1.1\n* Recv failure: Connection reset by peer\ncurl: (56) Recv failure: Connection reset by peer\n".to_string(),
        };
        assert_eq!(result.http_status(), None);
        assert_eq!(
            result.summary(),
            "curl exit 56: Recv failure: Connection reset by peer"
        );
    }
}
