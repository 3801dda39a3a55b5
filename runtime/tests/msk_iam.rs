//! MSK IAM with IRSA: the signer exchanges the pod's web identity token for temporary
//! credentials at a real STS (moto's server) and signs with them; the credentials are
//! cached, refreshed before they expire, and STS failures name the role.
#![cfg(feature = "msk-iam")]

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use base64::Engine;
use rdkafka::client::OAuthToken;
use weir_runtime::kafka::{
    config::{SecretMounts, Side},
    msk_iam::{Environment, Signer},
};
use weir_testkit::s3::S3Server;

const ROLE: &str = "arn:aws:iam::123456789012:role/weir-orders";
const SESSION: &str = "weir-orders-0";

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// IRSA's environment as EKS's pod identity webhook sets it, with STS at `endpoint`.
fn irsa(endpoint: &str, token_file: &Path) -> Environment {
    Environment::from_pairs([
        ("AWS_REGION", "eu-west-1"),
        ("AWS_STS_REGIONAL_ENDPOINTS", "regional"),
        ("AWS_ROLE_ARN", ROLE),
        ("AWS_ROLE_SESSION_NAME", SESSION),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", &*token_file.to_string_lossy()),
        ("AWS_ENDPOINT_URL_STS", endpoint),
    ])
}

/// A folder with a projected-token file and no credentials Secret.
struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new() -> Self {
        let pod = Self { dir: must(tempfile::tempdir(), "a temporary folder") };
        pod.project_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6b3JkZXJzOndlaXIifQ.first");
        pod
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// What the kubelet does when it rotates the token.
    fn project_token(&self, token: &str) {
        must(std::fs::write(self.token_file(), token), "writing the token file");
    }

    fn signer(&self, endpoint: &str) -> Signer {
        let secrets = SecretMounts::new(self.dir.path().join("no-secrets"));
        must(Signer::new(None, Side::Source, &secrets, &irsa(endpoint, &self.token_file())), "an IRSA signer")
    }
}

/// The query parameters of a token's presigned URL, decoded.
fn parameters(token: &OAuthToken) -> Vec<(String, String)> {
    let url = must(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token.token), "a base64url token");
    let url = must(url::Url::parse(&String::from_utf8_lossy(&url)), "a URL in the token");
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn parameter(token: &OAuthToken, name: &str) -> String {
    parameters(token).into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_default()
}

/// The access key a token was signed with (the first part of `X-Amz-Credential`).
fn access_key(token: &OAuthToken) -> String {
    parameter(token, "X-Amz-Credential").split('/').next().unwrap_or_default().to_owned()
}

/// The credentials moto's STS issued, as it recorded them.
fn issued(server: &S3Server) -> Vec<serde_json::Value> {
    let state: serde_json::Value =
        must(serde_json::from_str(&must(server.state(), "moto's state")), "moto's state as JSON");
    state["sts"]["AssumedRole"].as_array().cloned().unwrap_or_default()
}

/// The error of a signing that must fail (tokens have no Debug: they are secrets).
fn refusal(result: Result<OAuthToken, weir_runtime::kafka::msk_iam::Error>) -> String {
    match result {
        Ok(token) => panic!("signed with {}", access_key(&token)),
        Err(error) => error.to_string(),
    }
}

/// The signature botocore (what AWS's own MSK IAM signer libraries use) gives the token's
/// request, signed at the token's time with `role`'s credentials as moto issued them.
fn botocore_signature(sts: &S3Server, token: &OAuthToken, role: &serde_json::Value) -> String {
    const SCRIPT: &str = r#"
import sys, datetime
from unittest import mock
from urllib.parse import urlsplit, parse_qsl
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
host, stamp, region, key, secret, session = sys.argv[1:7]
request = AWSRequest(method="GET", url=f"https://{host}/?Action=kafka-cluster%3AConnect")
at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
with mock.patch.object(botocore.auth, "get_current_datetime", return_value=at):
    botocore.auth.SigV4QueryAuth(Credentials(key, secret, session), "kafka-cluster", region, expires=900).add_auth(request)
print(dict(parse_qsl(urlsplit(request.url).query))["X-Amz-Signature"])
"#;
    let output = std::process::Command::new(sts.python())
        .args(["-c", SCRIPT, "kafka.eu-west-1.amazonaws.com", &parameter(token, "X-Amz-Date"), "eu-west-1"])
        .args(
            ["access_key_id", "secret_access_key", "session_token"]
                .map(|field| role[field].as_str().unwrap_or_default()),
        )
        .output();
    let output = must(output, "running botocore");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn at(now: SystemTime, minutes: u64) -> SystemTime {
    now + Duration::from_secs(minutes * 60)
}

#[test]
fn the_token_is_signed_with_the_temporary_credentials_sts_issued_for_the_role() {
    let sts = S3Server::start().unwrap();
    let pod = Pod::new();
    let signer = pod.signer(&sts.endpoint());
    let now = SystemTime::now();

    let token = signer.token(now).unwrap();

    let issued = issued(&sts);
    assert_eq!(issued.len(), 1, "one AssumeRoleWithWebIdentity call: {issued:?}");
    let role = &issued[0];
    assert_eq!(role["role_arn"], ROLE);
    assert_eq!(role["session_name"], SESSION);
    let key = access_key(&token);
    assert_eq!(role["access_key_id"], key.as_str(), "X-Amz-Credential carries the STS access key");
    assert_eq!(
        role["session_token"],
        parameter(&token, "X-Amz-Security-Token").as_str(),
        "X-Amz-Security-Token carries the STS session token"
    );
    assert!(key.starts_with("ASIA"), "a temporary key: {key}");
    assert_eq!(
        parameter(&token, "X-Amz-Signature"),
        botocore_signature(&sts, &token, role),
        "signed with the STS secret key as AWS's signer signs"
    );
    assert_eq!(parameter(&token, "Action"), "kafka-cluster:Connect");
    assert!(parameter(&token, "X-Amz-Credential").ends_with("/eu-west-1/kafka-cluster/aws4_request"));
    assert_eq!(token.principal_name, key);
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(token.lifetime_ms, now_ms + 900_000, "STS's hour outlives the token's 15 minutes");
}

#[test]
fn credentials_are_cached_then_fetched_again_before_they_expire_reading_the_rotated_token() {
    let sts = S3Server::start().unwrap();
    let pod = Pod::new();
    let signer = pod.signer(&sts.endpoint());
    let now = SystemTime::now();

    let first = access_key(&signer.token(now).unwrap());
    assert_eq!(access_key(&signer.token(at(now, 30)).unwrap()), first, "cached for most of the hour");
    assert_eq!(issued(&sts).len(), 1);

    pod.project_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb3RhdGVkIn0.second");
    // STS's credentials last an hour; at 56 minutes they are within 5 minutes of expiring.
    let second = access_key(&signer.token(at(now, 56)).unwrap());
    assert_ne!(second, first, "fresh credentials from a second STS call");
    assert_eq!(issued(&sts).len(), 2);

    // The token file is read at every fetch: without it, no credentials once the cached ones
    // have expired.
    std::fs::remove_file(pod.token_file()).unwrap();
    let error = refusal(signer.token(at(now, 120)));
    assert!(error.contains(ROLE) && error.contains(&pod.token_file().display().to_string()), "{error}");
    pod.project_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0aGlyZCJ9.third");
    let third = access_key(&signer.token(at(now, 120)).unwrap());
    assert!(third != first && third != second);
    assert_eq!(issued(&sts).len(), 3);
}

#[test]
fn a_failed_refresh_keeps_the_current_credentials_until_they_expire_then_names_the_role() {
    let sts = S3Server::start().unwrap();
    let endpoint = sts.endpoint();
    let pod = Pod::new();
    let signer = pod.signer(&endpoint);
    let now = SystemTime::now();
    let first = signer.token(now).unwrap();
    drop(sts);

    let during = signer.token(at(now, 56)).unwrap();
    assert_eq!(access_key(&during), access_key(&first), "still valid for 4 minutes: used");
    let expires_ms = first.lifetime_ms - 900_000 + 3_600_000;
    assert!(
        during.lifetime_ms <= expires_ms + 1_000,
        "the token lives no longer than its credentials, so librdkafka asks again in time"
    );

    let error = refusal(signer.token(at(now, 61)));
    assert!(error.contains(ROLE) && error.contains(&endpoint), "{error}");
}

/// An STS stand-in that refuses every call as STS does, with HTTP 403 and an `ErrorResponse`.
fn refusing_sts() -> String {
    let listener = must(TcpListener::bind("127.0.0.1:0"), "a local port");
    let address = must(listener.local_addr(), "the local address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let body = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
                <Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message>\
                </Error><RequestId>1</RequestId></ErrorResponse>";
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{address}")
}

#[test]
fn an_access_denied_is_a_token_error_naming_the_role_and_the_next_refresh_tries_again() {
    let endpoint = refusing_sts();
    let pod = Pod::new();
    let signer = pod.signer(&endpoint);
    for _ in 0..2 {
        let error = refusal(signer.token(SystemTime::now()));
        assert!(error.contains(ROLE), "{error}");
        assert!(error.contains("AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity"), "{error}");
        assert!(error.contains("HTTP 403"), "{error}");
    }
}

#[test]
fn an_unreachable_sts_is_a_token_error_naming_the_role_and_the_endpoint() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let pod = Pod::new();
    let signer = pod.signer(&endpoint);
    let error = refusal(signer.token(SystemTime::now()));
    assert!(error.contains(ROLE) && error.contains(&endpoint), "{error}");
}

#[tokio::test]
async fn signing_inside_an_async_task_does_not_disturb_its_runtime() {
    let sts = S3Server::start().unwrap();
    let pod = Pod::new();
    let signer = pod.signer(&sts.endpoint());
    // librdkafka's refresh callback may run on a tokio worker (a consumer stream's poll).
    let token = signer.token(SystemTime::now()).unwrap();
    assert!(access_key(&token).starts_with("ASIA"));
}
