//! Runs the real `wharf` binary for tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// An HTTP client for the tests. reqwest is built here without a default
/// TLS provider (the binary brings ring), so say which.
pub fn client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub startup: Duration,
    pub stderr_path: std::path::PathBuf,
}

impl Server {
    /// Starts `wharf serve` with `args` and `env`, waiting for the line it
    /// prints once the port is bound.
    pub fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr_path = data.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr);
        if !args.contains(&"--data") && !env.iter().any(|(k, _)| k.contains("ROOTDIRECTORY")) {
            cmd.arg("--data").arg(data);
        }
        if !args.contains(&"--addr") {
            cmd.args(["--addr", "127.0.0.1:0"]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wharf");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("wharf listening on "),
            "unexpected first line {line:?}; stderr: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        let addr = line["wharf listening on ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .to_owned();
        Server {
            child,
            addr,
            startup: started.elapsed(),
            stderr_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), cheap to make in bulk.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
