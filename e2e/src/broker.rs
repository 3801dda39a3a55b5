//! A Kafka-protocol broker for tests: tansu with sqlite storage on a free 127.0.0.1 port,
//! started by `e2e/broker/run-tansu.sh`, stopped when dropped or when the test process exits.

use std::{
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{Error, free_port, repo_root, wait_until};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    dir: TempDir,
    port: u16,
    transactions: bool,
}

impl Broker {
    /// Installs tansu if needed (cached) and starts it.
    pub fn start() -> Result<Self, Error> {
        Self::start_flavour(false)
    }

    /// Starts the tansu build with Kafka transactions (memory storage: a restart loses data).
    /// Its known defects: consumer-group joins take about 20 s, and read_committed readers
    /// still see records of aborted transactions (the log has the ABORT markers, but Fetch
    /// answers list no aborted transactions): read with [`crate::kafka::committed`].
    pub fn start_transactional() -> Result<Self, Error> {
        Self::start_flavour(true)
    }

    fn start_flavour(transactions: bool) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("weir-broker-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let port = free_port().map_err(|source| Error::Spawn { what: "free port".into(), source })?;
        let broker = Self { dir, port, transactions };
        broker.launch()?;
        Ok(broker)
    }

    fn launch(&self) -> Result<(), Error> {
        let script = repo_root().join("e2e/broker/run-tansu.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("TANSU_FLAVOUR", if self.transactions { "transactions" } else { "sqlite" })
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .arg(std::process::id().to_string())
            .output()
            .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
        if !output.status.success() {
            return Err(Error::Start(String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        let address = format!("127.0.0.1:{}", self.port);
        wait_until(Duration::from_secs(30), "the broker to accept connections", || TcpStream::connect(&address).is_ok())
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), Error> {
        let binary = installed_tansu(self.transactions)?;
        let output = Command::new(binary)
            .args(["topic", "create", name, "--broker", &format!("tcp://{}", self.bootstrap())])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .map_err(|source| Error::Spawn { what: "tansu topic create".into(), source })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Start(format!("creating topic {name}: {}", String::from_utf8_lossy(&output.stderr))))
        }
    }

    /// Stops the broker, keeping its data, as a broker outage would.
    pub fn stop(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("tansu.pid")) {
            let pid = pid.trim();
            let kill = |args: &[&str]| Command::new("kill").args(args).stderr(Stdio::null()).status();
            let _ = kill(&[pid]);
            let _ = wait_until(Duration::from_secs(10), "the broker to exit", || {
                !kill(&["-0", pid]).is_ok_and(|s| s.success())
            });
        }
    }

    /// Starts a stopped broker again on the same port and data.
    pub fn restart(&self) -> Result<(), Error> {
        self.stop();
        self.launch()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn installed_tansu(transactions: bool) -> Result<String, Error> {
    let script =
        repo_root().join(if transactions { "e2e/broker/install-tansu-txn.sh" } else { "e2e/broker/install-tansu.sh" });
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
    if !output.status.success() {
        return Err(Error::Start(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
