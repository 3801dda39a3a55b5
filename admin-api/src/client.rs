//! Calls to one runtime pod's admin port: plain HTTP/1.0, one request per connection, the
//! body read to the end (the answers are small), so no HTTP client stack is needed.

use std::{net::SocketAddr, time::Duration};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Assigned, Resumed, Savepoint, SavepointQuery, Slot, Status, routes};

/// Why a call got no answer of the expected kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// No HTTP answer: refused, reset, or not in time.
    #[error("{0}")]
    Unreachable(String),
    /// An answer other than 200.
    #[error("{code} {}", body.trim())]
    Refused {
        /// The status code.
        code: u16,
        /// What the runtime said.
        body: String,
    },
    /// A 200 whose body is not the expected document.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// One pod's admin API.
#[derive(Clone, Copy)]
pub struct AdminClient<'a> {
    address: SocketAddr,
    token: Option<&'a str>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: it may end up in a log.
        f.debug_struct("AdminClient").field("address", &self.address).field("timeout", &self.timeout).finish()
    }
}

impl<'a> AdminClient<'a> {
    /// The pod at `address`, called with the job's `token` (when it has one), each call given
    /// `timeout`.
    pub fn new(address: SocketAddr, token: Option<&'a str>, timeout: Duration) -> Self {
        Self { address, token, timeout }
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, CallError> {
        self.json("GET", routes::STATUS).await
    }

    /// `POST /savepoint`: answered once the savepoint is durable.
    pub async fn savepoint(&self, query: &SavepointQuery) -> Result<Savepoint, CallError> {
        self.json("POST", &query.path()).await
    }

    /// `POST /resume`.
    pub async fn resume(&self) -> Result<Resumed, CallError> {
        self.json("POST", routes::RESUME).await
    }

    /// `POST /assign`: answered once the partitions moved.
    pub async fn assign(&self, slot: Slot) -> Result<Assigned, CallError> {
        self.json("POST", &slot.assign_path()).await
    }

    /// `POST /release`: answered once every partition is handed over.
    pub async fn release(&self) -> Result<Assigned, CallError> {
        self.json("POST", routes::RELEASE).await
    }

    /// `GET /metrics`, in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String, CallError> {
        self.ok("GET", routes::METRICS).await
    }

    async fn json<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<T, CallError> {
        let body = self.ok(method, path).await?;
        serde_json::from_str(&body).map_err(|e| CallError::BadAnswer(e.to_string()))
    }

    async fn ok(&self, method: &str, path: &str) -> Result<String, CallError> {
        match self.call(method, path).await? {
            (200, body) => Ok(body),
            (code, body) => Err(CallError::Refused { code, body }),
        }
    }

    /// Sends `method path`; the status code and body.
    async fn call(&self, method: &str, path: &str) -> Result<(u16, String), CallError> {
        let address = self.address;
        let request = async {
            let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting: {e}"))?;
            let authorization = self.token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
            let head =
                format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\n\r\n");
            stream.write_all(head.as_bytes()).await.map_err(|e| format!("sending: {e}"))?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.map_err(|e| format!("reading: {e}"))?;
            let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
            // hyper answers in the request's version: `HTTP/1.0 200 OK`.
            let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status code")?;
            Ok::<_, String>((code, body.to_owned()))
        };
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, request).await {
            Ok(answer) => answer.map_err(CallError::Unreachable),
            Err(_) => Err(CallError::Unreachable(format!("no answer in {timeout:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A pod that answers every request with `response`, and hands back the requests it got.
    async fn pod(response: &'static str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 4096];
                let read = stream.read(&mut request).await.unwrap();
                let _ = seen.send(String::from_utf8_lossy(&request[..read]).into_owned());
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        (address, requests)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn answers_are_typed_and_the_token_is_presented() {
        let (address, mut requests) = pod("HTTP/1.0 200 OK\r\n\r\n{\"slot\":1,\"slots\":2}").await;
        let assigned = AdminClient::new(address, Some("s3cret"), TIMEOUT).assign(Slot { slot: 1, slots: 2 }).await;
        assert_eq!(assigned, Ok(Assigned { slot: Some(1), slots: Some(2) }));
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("POST /assign?slot=1&slots=2 HTTP/1.0\r\n"), "{request}");
        assert!(request.contains("Authorization: Bearer s3cret\r\n"), "{request}");
    }

    #[tokio::test]
    async fn refusals_bad_answers_and_silence_are_told_apart() {
        let (refusing, _) = pod("HTTP/1.0 401 Unauthorized\r\n\r\nthe admin token is required\n").await;
        let refused = AdminClient::new(refusing, None, TIMEOUT).resume().await.unwrap_err();
        assert_eq!(refused.to_string(), "401 the admin token is required");
        let (garbled, _) = pod("HTTP/1.0 200 OK\r\n\r\nnot json").await;
        assert!(matches!(AdminClient::new(garbled, None, TIMEOUT).status().await, Err(CallError::BadAnswer(_))));
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = AdminClient::new(silent.local_addr().unwrap(), None, Duration::from_millis(100));
        assert_eq!(client.metrics().await, Err(CallError::Unreachable("no answer in 100ms".into())));
    }
}
