//! Amazon MSK IAM authentication: the SASL token is a SigV4-presigned
//! `kafka-cluster:Connect` URL, base64url-encoded, carried by librdkafka's OAUTHBEARER
//! (as AWS's own signer libraries make it).
//!
//! Credentials, looked up at every signing, from the first of these that has any:
//! 1. the credentials Secret's `aws_access_key_id`, `aws_secret_access_key` and
//!    `aws_session_token` (read again each time, so a rotated Secret is used);
//! 2. the pod's `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`;
//! 3. IRSA on EKS: `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged for temporary
//!    credentials with STS `AssumeRoleWithWebIdentity` ([`WebIdentity`]).
//!
//! A source is used whole: a session token never comes from another source than its keys.

mod web_identity;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use rdkafka::client::OAuthToken;
use sha2::{Digest, Sha256};
pub use web_identity::{Error as WebIdentityError, REFRESH_EARLY, WebIdentity, sts_endpoint};

use super::config::{SecretMounts, Side};

/// How long a signed token is valid, as AWS's signers make it.
const EXPIRES: Duration = Duration::from_secs(900);
const SERVICE: &str = "kafka-cluster";
const USER_AGENT: &str = concat!("weir-runtime/", env!("CARGO_PKG_VERSION"));
/// The environment variables the signer reads.
const VARIABLES: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
];

/// Why no MSK IAM token could be signed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No region to sign for.
    #[error("no AWS region: set security.awsRegion or AWS_REGION")]
    NoRegion,
    /// No source has credentials.
    #[error(
        "no AWS credentials: set the credentials Secret's aws_access_key_id and aws_secret_access_key, \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE (IRSA)"
    )]
    NoCredentials,
    /// A source has some keys but not all that are needed.
    #[error("{source_name} has {present} but no {missing}")]
    Incomplete {
        /// Which source.
        source_name: &'static str,
        /// The key it has.
        present: &'static str,
        /// The key it lacks.
        missing: &'static str,
    },
    /// IRSA credentials could not be had.
    #[error(transparent)]
    WebIdentity(#[from] WebIdentityError),
}

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
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

/// The AWS variables of the pod's environment, read once (they do not change while the
/// process runs; what rotates are the files they name).
#[derive(Clone, Default)]
pub struct Environment(BTreeMap<String, String>);

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the values include secret keys.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Environment {
    /// The AWS variables of this process.
    pub fn of_process() -> Self {
        Self::from_pairs(VARIABLES.iter().filter_map(|name| Some((*name, std::env::var(name).ok()?))))
    }

    /// Given variables (tests, or a caller that knows better).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// A variable, unless unset or blank (AWS's SDKs treat both alike).
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Static keys from one source, looked up by the Secret key names; `None` if the source
/// has none of them.
fn static_credentials(
    source_name: &'static str,
    names: [&'static str; 3],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, Error> {
    let [id_name, secret_name, token_name] = names;
    let value = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    match (value(id_name), value(secret_name)) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Incomplete { source_name, present: id_name, missing: secret_name }),
        (None, Some(_)) => Err(Error::Incomplete { source_name, present: secret_name, missing: id_name }),
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Some(Credentials { access_key_id, secret_access_key, session_token: value(token_name) }))
        }
    }
}

/// Where a signing's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chosen {
    Static(Credentials),
    WebIdentity,
}

/// The precedence: Secret keys, then environment keys, then the web identity.
fn choose(secret: Option<Credentials>, environment: Option<Credentials>, web_identity: bool) -> Result<Chosen, Error> {
    match (secret.or(environment), web_identity) {
        (Some(credentials), _) => Ok(Chosen::Static(credentials)),
        (None, true) => Ok(Chosen::WebIdentity),
        (None, false) => Err(Error::NoCredentials),
    }
}

/// Signs MSK IAM tokens for one region.
#[derive(Debug, Clone)]
pub struct Signer {
    region: String,
    side: Side,
    secrets: SecretMounts,
    environment: Option<Credentials>,
    web_identity: Option<WebIdentity>,
}

impl Signer {
    /// A signer for `region` (or the pod's `AWS_REGION`) with the process's environment.
    pub fn from_environment(region: Option<String>, side: Side, secrets: &SecretMounts) -> Result<Self, Error> {
        Self::new(region, side, secrets, &Environment::of_process())
    }

    /// A signer for `region` (or `AWS_REGION` of `env`), with credentials looked up at each
    /// signing so rotated ones are used. Checks that some source has credentials, without
    /// calling STS (this runs at start, perhaps in an async task).
    pub fn new(region: Option<String>, side: Side, secrets: &SecretMounts, env: &Environment) -> Result<Self, Error> {
        let region = region
            .or_else(|| env.get("AWS_REGION").map(str::to_owned))
            .or_else(|| env.get("AWS_DEFAULT_REGION").map(str::to_owned))
            .ok_or(Error::NoRegion)?;
        let environment = static_credentials(
            "the environment",
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"],
            |name| env.get(name).map(str::to_owned),
        )?;
        let web_identity = WebIdentity::from_environment(env, &region);
        let signer = Self { region, side, secrets: secrets.clone(), environment, web_identity };
        if let Chosen::WebIdentity = signer.choose()?
            && let Some(web_identity) = &signer.web_identity
        {
            web_identity.check()?;
        }
        Ok(signer)
    }

    /// The web identity used when no static keys are given.
    pub fn web_identity(&self) -> Option<&WebIdentity> {
        self.web_identity.as_ref()
    }

    fn choose(&self) -> Result<Chosen, Error> {
        let secret = static_credentials(
            "the credentials Secret",
            ["aws_access_key_id", "aws_secret_access_key", "aws_session_token"],
            |key| std::fs::read_to_string(self.secrets.credential_file(self.side, key)).ok(),
        )?;
        choose(secret, self.environment.clone(), self.web_identity.is_some())
    }

    /// Credentials for a signing at `now`, and when they expire if they do.
    fn credentials(&self, now: SystemTime) -> Result<(Credentials, Option<DateTime<Utc>>), Error> {
        match (self.choose()?, &self.web_identity) {
            (Chosen::Static(credentials), _) => Ok((credentials, None)),
            (Chosen::WebIdentity, Some(web_identity)) => {
                let issued = web_identity.credentials(now)?;
                Ok((issued.credentials, Some(issued.expiration)))
            }
            (Chosen::WebIdentity, None) => Err(Error::NoCredentials),
        }
    }

    /// A token signed at `now`, valid for 15 minutes or until its credentials expire.
    pub fn token(&self, now: SystemTime) -> Result<OAuthToken, Error> {
        let (credentials, credentials_expire) = self.credentials(now)?;
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
        let signed_for_ms = time.timestamp_millis() + EXPIRES.as_millis() as i64;
        let lifetime_ms = credentials_expire.map_or(signed_for_ms, |e| signed_for_ms.min(e.timestamp_millis()));
        Ok(OAuthToken { token, principal_name: credentials.access_key_id, lifetime_ms })
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
        let signer = Signer::new(
            Some("eu-west-1".into()),
            Side::Source,
            &SecretMounts::new(dir.path()),
            &Environment::default(),
        )
        .unwrap();
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

    fn keys(id: &str, token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: id.into(),
            secret_access_key: format!("{id}-secret"),
            session_token: token.map(Into::into),
        }
    }

    #[test]
    fn secret_keys_win_over_environment_keys_which_win_over_the_web_identity() {
        let secret = Some(keys("SECRET", None));
        let env = Some(keys("ENV", Some("env-session")));
        assert_eq!(choose(secret.clone(), env.clone(), true).unwrap(), Chosen::Static(keys("SECRET", None)));
        assert_eq!(choose(None, env, true).unwrap(), Chosen::Static(keys("ENV", Some("env-session"))));
        assert_eq!(choose(None, None, true).unwrap(), Chosen::WebIdentity);
        assert!(matches!(choose(None, None, false), Err(Error::NoCredentials)));
    }

    #[test]
    fn a_source_is_used_whole_and_a_half_filled_one_is_refused() {
        let env = |pairs: &[(&str, &str)]| {
            let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            move |name: &str| map.get(name).cloned()
        };
        let names = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];
        let none = static_credentials("env", names, env(&[("AWS_SESSION_TOKEN", "stray")])).unwrap();
        assert_eq!(none, None, "a session token alone is no credentials");
        let blank = static_credentials("env", names, env(&[("AWS_ACCESS_KEY_ID", " "), ("AWS_SECRET_ACCESS_KEY", "")]));
        assert_eq!(blank.unwrap(), None, "blank values count as unset");
        let half = static_credentials("env", names, env(&[("AWS_ACCESS_KEY_ID", "AKIA")])).unwrap_err();
        assert_eq!(half.to_string(), "env has AWS_ACCESS_KEY_ID but no AWS_SECRET_ACCESS_KEY");
        let whole = static_credentials(
            "env",
            names,
            env(&[("AWS_ACCESS_KEY_ID", "AKIA\n"), ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_SESSION_TOKEN", "t")]),
        )
        .unwrap();
        assert_eq!(
            whole,
            Some(Credentials {
                access_key_id: "AKIA".into(),
                secret_access_key: "s".into(),
                session_token: Some("t".into())
            })
        );
    }

    /// The token's `X-Amz-Credential` access key and `X-Amz-Security-Token`.
    fn signed_with(token: &OAuthToken) -> (String, Option<String>) {
        let url =
            String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token.token).unwrap()).unwrap();
        let param =
            |name: &str| url.split(['?', '&']).find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_owned));
        let credential = param("X-Amz-Credential").unwrap();
        (credential.split("%2F").next().unwrap().to_owned(), param("X-Amz-Security-Token"))
    }

    #[test]
    fn the_signer_follows_the_precedence_and_reads_the_secret_at_each_signing() {
        let dir = tempfile::tempdir().unwrap();
        let env = Environment::from_pairs([
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "ENVKEY"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-session"),
            // Would fail if it were used: nothing listens there and the file is missing.
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/weir"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9"),
        ]);
        let signer = Signer::new(None, Side::Sink, &SecretMounts::new(dir.path()), &env).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        assert_eq!(signed_with(&signer.token(now).unwrap()), ("ENVKEY".into(), Some("env-session".into())));
        let creds = dir.path().join("sink-credentials");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("aws_access_key_id"), "SECRETKEY").unwrap();
        std::fs::write(creds.join("aws_secret_access_key"), "secret").unwrap();
        assert_eq!(
            signed_with(&signer.token(now).unwrap()),
            ("SECRETKEY".into(), None),
            "the Secret's keys, without the environment's session token"
        );
    }

    #[test]
    fn a_web_identity_without_its_token_file_is_refused_at_start_naming_role_and_file() {
        let env = Environment::from_pairs([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/weir"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
        ]);
        let error = Signer::new(None, Side::Source, &SecretMounts::new("/nonexistent"), &env).unwrap_err().to_string();
        assert!(
            error.contains("arn:aws:iam::123456789012:role/weir") && error.contains("/nonexistent/token"),
            "{error}"
        );
        let none = Signer::new(
            None,
            Side::Source,
            &SecretMounts::new("/nonexistent"),
            &Environment::from_pairs([("AWS_REGION", "us-east-1")]),
        );
        assert!(matches!(none, Err(Error::NoCredentials)));
    }

    #[test]
    fn debug_output_hides_secret_values() {
        let env =
            Environment::from_pairs([("AWS_SECRET_ACCESS_KEY", "hunter2"), ("AWS_SESSION_TOKEN", "sessiontoken")]);
        let shown = format!("{env:?} {:?}", keys("AKIA", Some("sessiontoken")));
        assert!(
            !shown.contains("hunter2") && !shown.contains("sessiontoken") && !shown.contains("AKIA-secret"),
            "{shown}"
        );
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && shown.contains("AKIA"), "{shown}");
    }
}
