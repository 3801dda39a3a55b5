//! Plain HTTP/1.0 calls to the runtime pods' admin port (metrics, savepoints): one request
//! per connection, bodies read to the end, so no HTTP client crate is needed.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::admin_token::AdminToken;

/// The admin address of a pod that has an IP.
pub fn admin_address(pod: &Pod, admin_port: i32) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(admin_port).ok()?))
}

/// Sends `method path` to `address`, with the job's admin `token` when the route needs one;
/// returns the status code and body, or why it failed.
pub async fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting: {e}"))?;
        let authorization = token.map(|t| format!("Authorization: Bearer {}\r\n", t.expose())).unwrap_or_default();
        let head = format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\n\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| format!("sending: {e}"))?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.map_err(|e| format!("reading: {e}"))?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP response")?;
        // hyper answers in the request's version: `HTTP/1.0 200 OK`.
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status code")?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(timeout, request).await.map_err(|_| format!("no answer in {timeout:?}"))?
}
