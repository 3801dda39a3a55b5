//! Readiness, liveness and startup probes, run by the agent as the kubelet would: httpGet
//! and tcpSocket against the pod IP, exec as a local command. gRPC probes are checked as a
//! TCP connect and HTTPS ones as a TCP connect too (no TLS client here).

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An HTTP GET whose status must be 200–399.
    Http {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
        /// Request path.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection must open.
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// A command must exit 0.
    Exec {
        /// The command and its arguments.
        argv: Vec<String>,
    },
}

/// A probe with its timing, resolved against the container and pod IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What is checked.
    pub action: Action,
    /// Wait before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// A check slower than this fails.
    pub timeout: Duration,
    /// Consecutive successes to pass again.
    pub success_threshold: u32,
    /// Consecutive failures to fail.
    pub failure_threshold: u32,
}

/// A probe that cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// A named port that the container does not declare.
    #[error("probe port {0:?} is not a port of the container")]
    UnknownPort(String),
    /// A port number out of range.
    #[error("probe port {0} is out of range")]
    BadPort(i32),
    /// No handler at all.
    #[error("probe has no httpGet, tcpSocket, exec or grpc handler")]
    NoHandler,
}

/// The probe with Kubernetes' defaults (period 10 s, timeout 1 s, failure threshold 3,
/// success threshold 1), any port name resolved, and the pod IP as host.
pub fn resolve(probe: &Probe, container: &Container, pod_ip: Ipv4Addr) -> Result<ProbeSpec, ProbeError> {
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |s| s.max(0).unsigned_abs().into()));
    let count = |v: Option<i32>, default: u32| v.map_or(default, |n| n.max(1).unsigned_abs());
    let pod_host = pod_ip.to_string();
    let action = if let Some(http) = &probe.http_get {
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_host.clone());
        let port = port(&http.port, container)?;
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            Action::Tcp { host, port }
        } else {
            let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
            let headers = http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
            Action::Http { host, port, path, headers }
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        Action::Tcp { host: tcp.host.clone().unwrap_or(pod_host), port: port(&tcp.port, container)? }
    } else if let Some(exec) = &probe.exec {
        Action::Exec { argv: exec.command.clone().unwrap_or_default() }
    } else if let Some(grpc) = &probe.grpc {
        Action::Tcp { host: pod_host, port: u16::try_from(grpc.port).map_err(|_| ProbeError::BadPort(grpc.port))? }
    } else {
        return Err(ProbeError::NoHandler);
    };
    Ok(ProbeSpec {
        action,
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_millis(100)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_millis(100)),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

fn port(port: &IntOrString, container: &Container) -> Result<u16, ProbeError> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
                .ok_or_else(|| ProbeError::UnknownPort(name.clone()))?,
        },
    };
    u16::try_from(number).map_err(|_| ProbeError::BadPort(number))
}

/// Where exec probes run: the container's resolved environment and working directory.
#[derive(Debug, Clone, Default)]
pub struct ExecContext {
    /// Environment variables (the whole environment).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The user and group the container runs as, if not the agent's (supplementary groups
    /// are dropped for a check).
    pub user: Option<(u32, u32)>,
}

/// Runs one check; false on failure or timeout.
pub async fn check(action: &Action, timeout: Duration, exec: &ExecContext) -> bool {
    tokio::time::timeout(timeout, run(action, exec)).await.unwrap_or(false)
}

async fn run(action: &Action, exec: &ExecContext) -> bool {
    match action {
        Action::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
        Action::Http { host, port, path, headers } => {
            http_status(host, *port, path, headers).await.is_ok_and(|status| (200..400).contains(&status))
        }
        Action::Exec { argv } => {
            let Some((program, args)) = argv.split_first() else { return false };
            let mut command = tokio::process::Command::new(program);
            if let Some((uid, gid)) = exec.user {
                command.uid(uid).gid(gid);
            }
            command
                .args(args)
                .env_clear()
                .envs(exec.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&exec.cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success())
        }
    }
}

/// The status code of `GET path`, reading only the status line.
async fn http_status(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

/// Consecutive-result bookkeeping: a probe passes after `success_threshold` successes in a
/// row and fails after `failure_threshold` failures in a row.
#[derive(Debug, Clone)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    passing: bool,
}

impl Tracker {
    /// A tracker starting as `passing` (liveness starts alive, readiness and startup not).
    pub fn new(spec: &ProbeSpec, passing: bool) -> Self {
        Self {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            successes: 0,
            failures: 0,
            passing,
        }
    }

    /// Records one result and returns whether the probe passes now.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.success_threshold {
                self.passing = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failure_threshold {
                self.passing = false;
            }
        }
        self.passing
    }

    /// Whether the probe passes.
    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Whether the last `failure_threshold` checks all failed (liveness and startup kill then).
    pub fn failed(&self) -> bool {
        self.failures >= self.failure_threshold
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    use super::*;

    fn container() -> Container {
        Container {
            ports: Some(vec![ContainerPort {
                name: Some("admin".into()),
                container_port: 9249,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }
    }

    #[test]
    fn http_probes_resolve_named_ports_and_defaults() {
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("admin".into()),
                path: Some("/readyz".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            ..Probe::default()
        };
        let spec = resolve(&probe, &container(), Ipv4Addr::new(127, 0, 0, 5)).unwrap();
        assert_eq!(
            spec.action,
            Action::Http { host: "127.0.0.5".into(), port: 9249, path: "/readyz".into(), headers: vec![] }
        );
        assert_eq!((spec.period, spec.timeout), (Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!((spec.success_threshold, spec.failure_threshold), (1, 3));
    }

    #[test]
    fn unknown_port_names_and_empty_probes_are_errors() {
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::String("nope".into()), host: None }),
            ..Probe::default()
        };
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(resolve(&probe, &container(), ip), Err(ProbeError::UnknownPort("nope".into())));
        assert_eq!(resolve(&Probe::default(), &container(), ip), Err(ProbeError::NoHandler));
    }

    #[test]
    fn trackers_need_consecutive_results() {
        let spec = ProbeSpec {
            action: Action::Exec { argv: vec![] },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let mut t = Tracker::new(&spec, false);
        assert!(!t.record(true));
        assert!(t.record(true));
        assert!(t.record(false) && t.record(false));
        assert!(t.record(true), "a success resets the failure count");
        assert!(t.record(false) && t.record(false));
        assert!(!t.record(false));
        assert!(!t.passing());
    }
}
