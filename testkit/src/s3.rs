//! An S3-compatible object store for tests: moto's server (`e2e/s3/install-moto.sh`), on a
//! free local port, stopped when dropped.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Error, free_port, http, repo_root, wait_until};

/// A running moto S3 server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    binary: PathBuf,
}

impl S3Server {
    /// Installs moto if needed (cached) and starts it.
    pub fn start() -> Result<Self, Error> {
        let script = repo_root().join("e2e/s3/install-moto.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|source| Error::Spawn { what: script.display().to_string(), source })?;
        if !output.status.success() {
            return Err(Error::Start("installing moto failed".into()));
        }
        let binary = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let port = free_port().map_err(|source| Error::Spawn { what: "free port".into(), source })?;
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn { what: binary.clone(), source })?;
        let server = Self { child, port, binary: binary.into() };
        let address = server.address();
        wait_until(Duration::from_secs(60), "the S3 server to accept connections", || {
            TcpStream::connect(&address).is_ok()
        })?;
        Ok(server)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        match http("PUT", &self.address(), &format!("/{bucket}"), None, Duration::from_secs(30)) {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(Error::Failed(format!("creating bucket {bucket}: {status} {body}"))),
            Err(e) => Err(Error::Failed(format!("creating bucket {bucket}: {e}"))),
        }
    }

    /// The keys under `prefix` in `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, Error> {
        let path = format!("/{bucket}?list-type=2&prefix={prefix}&max-keys=1000");
        let (status, body) = http("GET", &self.address(), &path, None, Duration::from_secs(30))
            .map_err(|e| Error::Failed(format!("listing {bucket}: {e}")))?;
        if status != 200 {
            return Err(Error::Failed(format!("listing {bucket}: {status} {body}")));
        }
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split_once("</Key>"))
            .map(|(k, _)| k.to_owned())
            .collect())
    }

    /// The server's base URL. moto answers every service there, STS included (unsigned
    /// `AssumeRoleWithWebIdentity` calls are recognised by their `Action`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address())
    }

    /// moto's recorded state of every service, as JSON (`/moto-api/data.json`): for example
    /// `sts.AssumedRole`, the credentials STS issued.
    pub fn state(&self) -> Result<String, Error> {
        match http("GET", &self.address(), "/moto-api/data.json", None, Duration::from_secs(30)) {
            Ok((200, body)) => Ok(body),
            Ok((status, body)) => Err(Error::Failed(format!("reading moto's state: {status} {body}"))),
            Err(e) => Err(Error::Failed(format!("reading moto's state: {e}"))),
        }
    }

    /// The Python of moto's virtualenv, which also has botocore (AWS's own request signer):
    /// an independent implementation to check signatures against.
    pub fn python(&self) -> PathBuf {
        self.binary.with_file_name("python3")
    }

    /// The environment that points object_store's S3 client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://{}", self.address())),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
