//! Apache Kafka for tests: a single-node KRaft broker started by `e2e/kafka/start.sh` on
//! free 127.0.0.1 ports, with PLAINTEXT, SASL_PLAINTEXT, SSL (client certificates required)
//! and SASL_SSL listeners, stopped when dropped or when the test process exits.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};
use tempfile::TempDir;

use crate::{Error, repo_root, wait_until};

/// A running broker and what its clients need to reach it.
#[derive(Debug)]
pub struct Broker {
    dir: TempDir,
    info: HashMap<String, String>,
}

/// One way in: a listener's address, security protocol and SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// No authentication.
    Plaintext,
    /// SASL over plain TCP with the mechanism named (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    SaslPlaintext(&'static str),
    /// TLS with a client certificate (mTLS).
    Ssl,
    /// SASL over TLS with the mechanism named.
    SaslSsl(&'static str),
}

impl Broker {
    /// Installs Kafka if needed (cached under `~/.cache/weir`) and starts a new broker.
    pub fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("weir-kafka-")
            .tempdir()
            .map_err(|source| Error::Spawn { what: "mkdtemp".into(), source })?;
        let info = launch(dir.path())?;
        Ok(Self { dir, info })
    }

    fn get(&self, key: &str) -> &str {
        self.info.get(key).map_or("", String::as_str)
    }

    /// `host:port` of the PLAINTEXT listener, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.get("bootstrap").to_owned()
    }

    /// `host:port` of `listener`.
    pub fn address(&self, listener: Listener) -> String {
        self.get(match listener {
            Listener::Plaintext => "bootstrap",
            Listener::SaslPlaintext(_) => "sasl_plaintext",
            Listener::Ssl => "ssl",
            Listener::SaslSsl(_) => "sasl_ssl",
        })
        .to_owned()
    }

    /// The SASL user every mechanism knows, and its password.
    pub fn user(&self) -> (&str, &str) {
        (self.get("user"), self.get("password"))
    }

    /// The test CA (PEM) that signed the broker's and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        PathBuf::from(self.get("ca"))
    }

    /// The client certificate and its key (PEM) for the SSL listener.
    pub fn client_certificate(&self) -> (PathBuf, PathBuf) {
        (PathBuf::from(self.get("client_cert")), PathBuf::from(self.get("client_key")))
    }

    /// librdkafka settings that reach the broker through `listener` with valid credentials.
    pub fn client_config(&self, listener: Listener) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.address(listener));
        let (user, password) = self.user();
        let (cert, key) = self.client_certificate();
        match listener {
            Listener::Plaintext => {}
            Listener::SaslPlaintext(mechanism) => {
                config.set("security.protocol", "SASL_PLAINTEXT").set("sasl.mechanism", mechanism);
                config.set("sasl.username", user).set("sasl.password", password);
            }
            Listener::Ssl => {
                config.set("security.protocol", "SSL").set("ssl.ca.location", self.ca().display().to_string());
                config.set("ssl.certificate.location", cert.display().to_string());
                config.set("ssl.key.location", key.display().to_string());
            }
            Listener::SaslSsl(mechanism) => {
                config.set("security.protocol", "SASL_SSL").set("sasl.mechanism", mechanism);
                config.set("ssl.ca.location", self.ca().display().to_string());
                config.set("sasl.username", user).set("sasl.password", password);
            }
        }
        config
    }

    /// The broker's data and configuration folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a topic with `partitions` partitions (and waits until the broker has it).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), Error> {
        self.create_topic_with(name, partitions, &[])
    }

    /// Creates a topic with topic-level settings such as `("cleanup.policy", "compact")`.
    pub fn create_topic_with(&self, name: &str, partitions: u32, config: &[(&str, &str)]) -> Result<(), Error> {
        let partitions =
            i32::try_from(partitions).map_err(|e| Error::Failed(format!("{partitions} partitions: {e}")))?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in config {
            topic = topic.set(key, value);
        }
        let admin = self.admin()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(admin.create_topics([&topic], &options))
            .map_err(|e| Error::Failed(format!("creating topic {name}: {e}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(()),
            Some(Err((_, code))) => Err(Error::Failed(format!("creating topic {name}: {code}"))),
            None => Err(Error::Failed(format!("creating topic {name}: no answer"))),
        }
    }

    /// Grows `topic` to `partitions` partitions.
    pub fn add_partitions(&self, topic: &str, partitions: u32) -> Result<(), Error> {
        let count = usize::try_from(partitions).map_err(|e| Error::Failed(e.to_string()))?;
        let admin = self.admin()?;
        let results = futures::executor::block_on(
            admin.create_partitions([&NewPartitions::new(topic, count)], &AdminOptions::new()),
        )
        .map_err(|e| Error::Failed(format!("adding partitions to {topic}: {e}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(()),
            Some(Err((_, code))) => Err(Error::Failed(format!("adding partitions to {topic}: {code}"))),
            None => Err(Error::Failed(format!("adding partitions to {topic}: no answer"))),
        }
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>, Error> {
        self.client_config(Listener::Plaintext)
            .create()
            .map_err(|e| Error::Failed(format!("admin client for {}: {e}", self.bootstrap())))
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("kafka.pid")).ok().map(|p| p.trim().to_owned())
    }

    /// Stops the broker cleanly (SIGTERM, then waits for it to exit), keeping its data, as
    /// a broker outage would.
    pub fn stop(&self) {
        self.signal("-TERM", Duration::from_secs(60));
    }

    /// `kill -9`: the broker dies at once, without flushing or closing its logs.
    pub fn kill(&self) {
        self.signal("-KILL", Duration::from_secs(10));
    }

    fn signal(&self, signal: &str, wait: Duration) {
        let Some(pid) = self.pid() else { return };
        let kill = |args: &[&str]| Command::new("kill").args(args).stderr(Stdio::null()).status();
        let _ = kill(&[signal, &pid]);
        let gone = wait_until(wait, "the broker to exit", || !kill(&["-0", &pid]).is_ok_and(|s| s.success()));
        if gone.is_err() {
            let _ = kill(&["-KILL", &pid]);
        }
    }

    /// Starts a stopped (or killed) broker again on the same ports, users and data.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.info = launch(self.dir.path())?;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `start.sh DIR` (which returns once the broker serves requests) and parses its line.
fn launch(dir: &Path) -> Result<HashMap<String, String>, Error> {
    let script = repo_root().join("e2e/kafka/start.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .env("KAFKA_WATCH_PID", std::process::id().to_string())
        // A broker held in a static is never dropped: its folder goes when the tests exit.
        .env("KAFKA_REMOVE_AFTER", "1")
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
    if !output.status.success() {
        return Err(Error::Start(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let info: HashMap<String, String> = line
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if info.contains_key("pid") && info.contains_key("bootstrap") {
        Ok(info)
    } else {
        Err(Error::Start(format!("start.sh printed no pid and bootstrap: {line}")))
    }
}
