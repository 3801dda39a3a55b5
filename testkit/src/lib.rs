//! Light helpers for Weir's tests, shared by the runtime's, the operator's and the
//! end-to-end tests: Apache Kafka ([`broker`], started by `e2e/kafka/start.sh`) and clients
//! to feed and read it ([`kafka`], [`payments`]), an S3 server ([`s3`]), stand-ins for a
//! schema registry ([`registry`]) and an OpenTelemetry collector ([`otlp`]), and waiting,
//! HTTP and metrics helpers. No scenarios: those are `weir-e2e`'s.

pub mod broker;
pub mod kafka;
pub mod otlp;
pub mod payments;
pub mod registry;
pub mod s3;
pub mod server;

use std::{
    net::TcpListener,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Why a piece of test infrastructure could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A process could not be started.
    #[error("running {what}: {source}")]
    Spawn {
        /// What was run.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A start script failed; its output says why.
    #[error("did not start:\n{0}")]
    Start(String),
    /// A helper program ran but failed; the message says why.
    #[error("{0}")]
    Failed(String),
    /// A condition was not met in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The repository root, for scripts and manifests the tests use.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` distinct TCP ports on 127.0.0.1 that were free a moment ago: all are held at once
/// while chosen, since ports taken one after the other may come back the same.
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Timeout(timeout, what.to_owned()))
}

/// A plain HTTP/1.0 GET, returning the status code and body (for admin endpoints in tests).
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http("GET", address, path, None, Duration::from_secs(10))
}

/// [`http_get`] with `Authorization: Bearer <token>`, as a runtime's admin routes need.
pub fn http_get_with(address: &str, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    http("GET", address, path, Some(token), Duration::from_secs(10))
}

/// A plain HTTP/1.0 POST without a body, with a bearer `token` if given, waiting up to 2
/// minutes (savepoints take a while).
pub fn http_post(address: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    http("POST", address, path, token, Duration::from_secs(120))
}

pub(crate) fn http(
    method: &str,
    address: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(timeout))?;
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The total of every `weir_consumer_lag` sample on a Prometheus page.
pub fn lag_of(metrics: &str) -> i64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("weir_consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
        .sum()
}

/// The value of a Prometheus sample whose line starts with `series` (name and labels).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A binary of this workspace built next to the running test executable (`target/<profile>/`).
/// Tests cannot name another package's binaries; `cargo test --workspace` builds them all.
pub fn workspace_binary(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Spawn { what: "current_exe".into(), source })?;
    let dir = exe.parent().map(|d| if d.ends_with("deps") { d.parent().unwrap_or(d) } else { d });
    let binary = dir.map(|d| d.join(name)).unwrap_or_default();
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(Error::Start(format!(
            "{} is not built: run `cargo build --workspace --bins` (with `--release` for benchmarks) first",
            binary.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_chosen_together_are_distinct() {
        let ports: [u16; 8] = free_ports().unwrap();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
