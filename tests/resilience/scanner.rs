//! postern's TLS configuration, as real external scanners see it: Debian's `sslscan` (cipher
//! suites, protocols, Heartbleed) and `testssl.sh` (protocols over its own sockets, which also
//! probe SSLv2 and SSLv3 that Debian's OpenSSL, and so sslscan, cannot speak; in the soak also
//! its cipher categories, forward secrecy and known vulnerabilities) against the mTLS port.
//! No SSLv2/3, TLS 1.0/1.1, and no cipher suite outside a short list of strong ones.
//!
//! The list, and why: only AEAD ciphers (AES-GCM, ChaCha20-Poly1305) with ephemeral ECDHE key
//! exchange, or TLS 1.3. That rules out NULL and anonymous suites (no encryption or no
//! authentication), EXPORT and DES (broken key sizes), RC4 (biased keystream), 3DES (64-bit
//! blocks: Sweet32), every CBC suite (padding oracles such as Lucky13, and SHA-1 MACs) and
//! static RSA key exchange (no forward secrecy). Listing what is allowed rather than what is
//! banned means a new weak suite cannot slip through unnoticed.

use postern_testbed::{display_command, Figures, EXTERNAL_PORT};

use crate::{record, soak, Running};

const WEAK_PROTOCOLS: [&str; 4] = ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"];

/// Whether an OpenSSL or IANA cipher suite name is on the strong list.
fn strong(protocol: &str, cipher: &str) -> bool {
    let aead = ["GCM", "CHACHA20"].iter().any(|a| cipher.contains(a));
    match protocol {
        "TLSv1.3" => cipher.starts_with("TLS_AES_") || cipher.starts_with("TLS_CHACHA20_"),
        "TLSv1.2" => cipher.starts_with("ECDHE-") && aead,
        _ => false,
    }
}

/// What sslscan found.
#[derive(Default)]
struct Scan {
    /// `(protocol, enabled)`.
    protocols: Vec<(String, bool)>,
    /// `(protocol, cipher)` accepted.
    ciphers: Vec<(String, String)>,
}

/// sslscan's verdict lines.
fn parse_sslscan(output: &str) -> Scan {
    let Scan {
        mut protocols,
        mut ciphers,
    } = Scan::default();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [protocol, state] if protocol.starts_with("SSLv") || protocol.starts_with("TLSv") => {
                protocols.push((protocol.to_string(), *state == "enabled"));
            }
            [verdict, protocol, _, _, cipher, ..]
                if *verdict == "Preferred" || *verdict == "Accepted" =>
            {
                ciphers.push((protocol.to_string(), cipher.to_string()));
            }
            _ => {}
        }
    }
    Scan { protocols, ciphers }
}

#[test]
fn a_tls_scanner_finds_no_weak_protocol_or_cipher() {
    let run = Running::seed(false, &[]);
    let certs = run.topology.certs();
    let target = format!("{}:{EXTERNAL_PORT}", run.topology.pod_ipv4());
    let mut sslscan = run.topology.client().command("sslscan");
    sslscan
        .args(["--no-colour", "--show-sigs"])
        .arg(format!("--certs={}", certs.client_cert.display()))
        .arg(format!("--pk={}", certs.client_key.display()))
        .arg(&target);
    let command = display_command(&sslscan);
    let output = sslscan
        .output()
        .expect("sslscan runs (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{command}` failed:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let Scan { protocols, ciphers } = parse_sslscan(&text);
    let enabled: Vec<&str> = protocols
        .iter()
        .filter(|(_, on)| *on)
        .map(|(p, _)| p.as_str())
        .collect();
    let weak: Vec<String> = ciphers
        .iter()
        .filter(|(protocol, cipher)| !strong(protocol, cipher))
        .map(|(protocol, cipher)| format!("{protocol} {cipher}"))
        .collect();

    let mut figures = Figures::new(
        "TLS scanner",
        &format!("Debian's `sslscan` (with the seed's client certificate) and `testssl.sh`, from the external client's namespace against the mTLS port {target}: the protocols and cipher suites postern accepts. Strong means AEAD (AES-GCM, ChaCha20-Poly1305) with ECDHE or TLS 1.3: no NULL, anonymous, EXPORT, DES, RC4, 3DES, CBC or static-RSA suite may be accepted."),
    );
    figures
        .add("protocols enabled", enabled.join(", "))
        .add(
            "cipher suites accepted",
            ciphers
                .iter()
                .map(|(p, c)| format!("{p} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .add("weak cipher suites accepted", weak.len())
        .add(
            "TLS renegotiation",
            section(&text, "TLS renegotiation:").join("; "),
        )
        .add("Heartbleed", section(&text, "Heartbleed:").join("; "));
    assert_eq!(protocols.len(), 6, "sslscan judged every protocol:\n{text}");
    for weak_protocol in WEAK_PROTOCOLS {
        assert!(
            !enabled.contains(&weak_protocol),
            "{weak_protocol} is enabled:\n{text}"
        );
    }
    assert!(
        !ciphers.is_empty(),
        "sslscan found no cipher at all:\n{text}"
    );
    assert!(weak.is_empty(), "weak cipher suites accepted: {weak:?}");
    let heartbleed = section(&text, "Heartbleed:");
    assert!(
        !heartbleed.is_empty() && heartbleed.iter().all(|l| l.contains("not vulnerable")),
        "{heartbleed:?}"
    );
    testssl(&run, &target, &mut figures);
    record(&figures);
}

/// The lines under an sslscan heading (e.g. `Heartbleed:`), up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect()
}

/// testssl.sh's verdicts: protocols always; in the soak also cipher categories, forward
/// secrecy and vulnerabilities. Fails on a weak protocol offered, or on any finding of
/// severity MEDIUM or worse.
fn testssl(run: &Running, target: &str, figures: &mut Figures) {
    let json = run.topology.work_dir().join("testssl.json");
    let mut testssl = run.topology.client().command("testssl");
    testssl.args([
        "--quiet",
        "--warnings",
        "off",
        "--color",
        "0",
        "--protocols",
    ]);
    if soak() {
        testssl.args(["--std", "--fs", "--vulnerable"]);
    }
    let checks = display_command(&testssl);
    testssl.arg("--jsonfile").arg(&json).arg(target);
    let output = testssl
        .output()
        .expect("testssl runs (cargo xtask setup installs it)");
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap_or_else(|e| {
        panic!(
            "`{checks}` wrote no JSON report ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let field = |finding: &serde_json::Value, name: &str| {
        finding[name].as_str().unwrap_or_default().to_string()
    };
    let verdict = |id: &str| {
        findings
            .iter()
            .find(|f| field(f, "id") == id)
            .map(|f| field(f, "finding"))
    };
    let serious: Vec<String> = findings
        .iter()
        .filter(|f| ["MEDIUM", "HIGH", "CRITICAL"].contains(&field(f, "severity").as_str()))
        .map(|f| format!("{}: {}", field(f, "id"), field(f, "finding")))
        .collect();
    let ids = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"];
    let protocols: Vec<String> = ids
        .iter()
        .map(|id| format!("{id} {}", verdict(id).unwrap_or_else(|| "-".into())))
        .collect();
    figures
        .add(
            "testssl.sh checks",
            checks.rsplit(" testssl ").next().unwrap_or_default(),
        )
        .add("testssl.sh protocols", protocols.join(", "))
        .add(
            "testssl.sh findings of severity MEDIUM or worse",
            serious.len(),
        );
    for weak in &ids[..4] {
        assert_eq!(
            verdict(weak).as_deref(),
            Some("not offered"),
            "testssl.sh on {weak}"
        );
    }
    assert!(serious.is_empty(), "testssl.sh: {serious:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aead_with_forward_secrecy_is_strong() {
        assert!(strong("TLSv1.3", "TLS_AES_256_GCM_SHA384"));
        assert!(strong("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305"));
        for (protocol, cipher) in [
            ("TLSv1.2", "AES256-GCM-SHA384"),
            ("TLSv1.2", "ECDHE-RSA-AES128-SHA"),
            ("TLSv1.2", "DES-CBC3-SHA"),
            ("TLSv1.2", "ECDHE-RSA-RC4-SHA"),
            ("TLSv1.2", "NULL-SHA256"),
            ("TLSv1.0", "ECDHE-RSA-AES256-GCM-SHA384"),
        ] {
            assert!(!strong(protocol, cipher), "{protocol} {cipher}");
        }
    }
}
