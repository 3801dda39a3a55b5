//! Amazon MSK IAM authentication: the SASL token is a SigV4-presigned
//! `kafka-cluster:Connect` URL, base64url-encoded, carried by librdkafka's OAUTHBEARER
//! (as AWS's own signer libraries make it). Credentials come from the pod's environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or from the
//! credentials Secret's `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use rdkafka::client::OAuthToken;
use sha2::{Digest, Sha256};

use super::config::{SecretMounts, Side};

/// How long a signed token is valid, as AWS's signers make it.
const EXPIRES: Duration = Duration::from_secs(900);
const SERVICE: &str = "kafka-cluster";
const USER_AGENT: &str = concat!("weir-runtime/", env!("CARGO_PKG_VERSION"));

/// AWS credentials.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: this may reach a log.
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// Signs MSK IAM tokens for one region.
#[derive(Debug, Clone)]
pub struct Signer {
    region: String,
    side: Side,
    secrets: SecretMounts,
}

impl Signer {
    /// A signer for `region` (or the pod's `AWS_REGION`), with credentials looked up at each
    /// signing so rotated ones are used.
    pub fn from_environment(region: Option<String>, side: Side, secrets: &SecretMounts) -> Result<Self, String> {
        let region = region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .ok_or("no AWS region: set security.awsRegion or AWS_REGION")?;
        let signer = Self { region, side, secrets: secrets.clone() };
        signer.credentials()?;
        Ok(signer)
    }

    fn credentials(&self) -> Result<Credentials, String> {
        let from_secret = |key: &str| {
            std::fs::read_to_string(self.secrets.credential_file(self.side, key)).ok().map(|s| s.trim().to_owned())
        };
        let lookup = |key: &str, env: &str| from_secret(key).or_else(|| std::env::var(env).ok());
        Ok(Credentials {
            access_key_id: lookup("aws_access_key_id", "AWS_ACCESS_KEY_ID").ok_or("no AWS access key id")?,
            secret_access_key: lookup("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY")
                .ok_or("no AWS secret access key")?,
            session_token: lookup("aws_session_token", "AWS_SESSION_TOKEN"),
        })
    }

    /// A token signed at `now`.
    pub fn token(&self, now: SystemTime) -> Result<OAuthToken, String> {
        let credentials = self.credentials()?;
        let host = format!("kafka.{}.amazonaws.com", self.region);
        let time: DateTime<Utc> = now.into();
        let mut url = presign(&Presign {
            host: &host,
            path: "/",
            query: &[("Action", "kafka-cluster:Connect")],
            service: SERVICE,
            region: &self.region,
            credentials: &credentials,
            time,
            expires: EXPIRES,
            payload_hash: &hex(&Sha256::digest(b"")),
        });
        let _ = write!(url, "&User-Agent={}", encode(USER_AGENT));
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url);
        let expires_ms = time.timestamp_millis() + EXPIRES.as_millis() as i64;
        Ok(OAuthToken { token, principal_name: credentials.access_key_id, lifetime_ms: expires_ms })
    }
}

/// What a SigV4 query-string presignature covers.
struct Presign<'a> {
    host: &'a str,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    service: &'a str,
    region: &'a str,
    credentials: &'a Credentials,
    time: DateTime<Utc>,
    expires: Duration,
    payload_hash: &'a str,
}

/// A GET URL presigned with AWS Signature Version 4 (query parameters, `host` signed).
fn presign(request: &Presign<'_>) -> String {
    let date = request.time.format("%Y%m%d").to_string();
    let stamp = request.time.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);
    let credential = format!("{}/{scope}", request.credentials.access_key_id);
    let expires = request.expires.as_secs().to_string();
    let mut params: Vec<(String, String)> =
        request.query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    params.extend([
        ("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into()),
        ("X-Amz-Credential".into(), credential),
        ("X-Amz-Date".into(), stamp.clone()),
        ("X-Amz-Expires".into(), expires),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ]);
    if let Some(token) = &request.credentials.session_token {
        params.push(("X-Amz-Security-Token".into(), token.clone()));
    }
    let mut encoded: Vec<(String, String)> = params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let query = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let canonical = format!("GET\n{}\n{query}\nhost:{}\n\nhost\n{}", request.path, request.host, request.payload_hash);
    let to_sign = format!("AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let mut key = hmac(format!("AWS4{}", request.credentials.secret_access_key).as_bytes(), date.as_bytes());
    for part in [request.region, request.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!("https://{}{}?{query}&X-Amz-Signature={signature}", request.host, request.path)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SigV4 URI encoding: unreserved characters as they are, every other byte as `%XX`.
fn encode(text: &str) -> String {
    text.bytes().fold(String::with_capacity(text.len()), |mut s, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    /// The presigned URL example of AWS's SigV4 documentation for S3 (GET /test.txt).
    #[test]
    fn presigning_matches_the_aws_documentation_example() {
        let time = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z").unwrap().with_timezone(&Utc);
        let url = presign(&Presign {
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            service: "s3",
            region: "us-east-1",
            credentials: &example_credentials(),
            time,
            expires: Duration::from_secs(86400),
            payload_hash: "UNSIGNED-PAYLOAD",
        });
        assert!(
            url.ends_with("X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"),
            "{url}"
        );
    }

    #[test]
    fn an_msk_token_is_a_presigned_connect_url() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("source-credentials");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("aws_access_key_id"), "AKIAIOSFODNN7EXAMPLE").unwrap();
        std::fs::write(creds.join("aws_secret_access_key"), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n").unwrap();
        std::fs::write(creds.join("aws_session_token"), "session").unwrap();
        let signer =
            Signer::from_environment(Some("eu-west-1".into()), Side::Source, &SecretMounts::new(dir.path())).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let token = signer.token(now).unwrap();
        let url =
            String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token.token).unwrap()).unwrap();
        assert!(url.starts_with("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"), "{url}");
        assert!(url.contains("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F"), "{url}");
        assert!(url.contains("%2Feu-west-1%2Fkafka-cluster%2Faws4_request"), "{url}");
        assert!(url.contains("X-Amz-Security-Token=session"), "{url}");
        assert!(url.contains("&User-Agent=weir-runtime%2F"), "{url}");
        assert_eq!(token.principal_name, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(token.lifetime_ms, 1_780_000_900_000);
    }
}
