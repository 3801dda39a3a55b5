//! IRSA (IAM roles for service accounts): temporary AWS credentials from STS
//! `AssumeRoleWithWebIdentity`, given the role in `AWS_ROLE_ARN` and the projected
//! service-account token in `AWS_WEB_IDENTITY_TOKEN_FILE`.
//!
//! The credentials are cached and fetched again [`REFRESH_EARLY`] before they expire; the
//! token file is read again at every fetch because the kubelet rotates it. When a fetch
//! fails while the cached credentials are still valid, those are used (with a warning) and
//! the next token refresh tries again.
//!
//! Signing runs in librdkafka's token callback, which may run on a tokio worker: the STS
//! call runs on a thread of its own with a one-off current-thread runtime, so it neither
//! needs nor disturbs the caller's runtime (reqwest's blocking client panics inside one).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Utc};
use quick_xml::events::Event;
use tracing::{info, warn};

use super::{Credentials, Environment, USER_AGENT, encode};

/// Fetch new credentials this long before the cached ones expire (as AWS's SDKs do).
pub const REFRESH_EARLY: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Regions that `AWS_STS_REGIONAL_ENDPOINTS=legacy` sends to the global endpoint.
const LEGACY_GLOBAL_REGIONS: &[&str] = &[
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "aws-global",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// Why no web identity credentials could be had. Each names the role, so a log line says
/// which IRSA binding to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The projected token could not be read.
    #[error("reading the web identity token {path} for role {role}: {source}")]
    ReadToken {
        /// The role.
        role: String,
        /// The token file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the web identity token file {path} for role {role} is empty")]
    EmptyToken {
        /// The role.
        role: String,
        /// The token file.
        path: PathBuf,
    },
    /// STS could not be reached or did not answer.
    #[error("assuming role {role} with web identity at {endpoint}: {reason}")]
    Unreachable {
        /// The role.
        role: String,
        /// The STS endpoint.
        endpoint: String,
        /// The cause.
        reason: String,
    },
    /// STS refused (access denied, invalid token, …).
    #[error("STS at {endpoint} refused to assume role {role} with web identity (HTTP {status}): {code}: {message}")]
    Refused {
        /// The role.
        role: String,
        /// The STS endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// STS's error code, such as `AccessDenied`.
        code: String,
        /// STS's explanation.
        message: String,
    },
    /// The answer could not be understood.
    #[error("the STS answer from {endpoint} for role {role} is not usable: {reason}")]
    Malformed {
        /// The role.
        role: String,
        /// The STS endpoint.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Credentials issued by STS, with their expiry.
#[derive(Debug, Clone)]
pub(super) struct Issued {
    pub credentials: Credentials,
    pub expiration: DateTime<Utc>,
}

/// Assumes one role with the pod's web identity token, caching what STS issues. Clones
/// share the cache.
#[derive(Clone)]
pub struct WebIdentity {
    role_arn: String,
    token_file: PathBuf,
    session_name: String,
    endpoint: String,
    cache: Arc<Mutex<Option<Issued>>>,
}

impl std::fmt::Debug for WebIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cache holds secrets: never printed.
        f.debug_struct("WebIdentity")
            .field("role_arn", &self.role_arn)
            .field("token_file", &self.token_file)
            .field("session_name", &self.session_name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl WebIdentity {
    /// The web identity of `env` (IRSA's `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`),
    /// if both are set, with STS reached for `region`.
    pub fn from_environment(env: &Environment, region: &str) -> Option<Self> {
        let role_arn = env.get("AWS_ROLE_ARN")?.to_owned();
        let token_file = PathBuf::from(env.get("AWS_WEB_IDENTITY_TOKEN_FILE")?);
        let session_name = env.get("AWS_ROLE_SESSION_NAME").map_or_else(default_session_name, str::to_owned);
        Some(Self { role_arn, token_file, session_name, endpoint: sts_endpoint(env, region), cache: Arc::default() })
    }

    /// The role assumed.
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// The STS endpoint called.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Checks that the token file can be read, without calling STS (this runs at start, maybe
    /// inside an async task).
    pub fn check(&self) -> Result<(), Error> {
        self.read_token().map(drop)
    }

    /// Credentials valid at `now`: the cached ones unless they expire within
    /// [`REFRESH_EARLY`], else fresh ones from STS.
    pub(super) fn credentials(&self, now: SystemTime) -> Result<Issued, Error> {
        let now: DateTime<Utc> = now.into();
        let early = chrono::Duration::from_std(REFRESH_EARLY).unwrap_or_default();
        // Held across the STS call, so concurrent refreshes make one call.
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(issued) = cache.as_ref().filter(|i| i.expiration - early > now) {
            return Ok(issued.clone());
        }
        match self.assume_role() {
            Ok(issued) => {
                info!(
                    role = %self.role_arn,
                    access_key_id = %issued.credentials.access_key_id,
                    expiration = %issued.expiration,
                    "assumed the IAM role with the web identity token"
                );
                *cache = Some(issued.clone());
                Ok(issued)
            }
            Err(error) => match cache.as_ref().filter(|i| i.expiration > now) {
                Some(issued) => {
                    warn!(%error, expiration = %issued.expiration, "refreshing AWS credentials failed; using the current ones until they expire");
                    Ok(issued.clone())
                }
                None => Err(error),
            },
        }
    }

    fn read_token(&self) -> Result<String, Error> {
        let text = std::fs::read_to_string(&self.token_file).map_err(|source| Error::ReadToken {
            role: self.role_arn.clone(),
            path: self.token_file.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::EmptyToken { role: self.role_arn.clone(), path: self.token_file.clone() });
        }
        Ok(token.to_owned())
    }

    /// One `AssumeRoleWithWebIdentity` call (unsigned: the token is the proof).
    fn assume_role(&self) -> Result<Issued, Error> {
        let token = self.read_token()?;
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("WebIdentityToken", &token),
        ]);
        let (status, answer) = post_form(&self.endpoint, body).map_err(|reason| Error::Unreachable {
            role: self.role_arn.clone(),
            endpoint: self.endpoint.clone(),
            reason,
        })?;
        let malformed =
            |reason: String| Error::Malformed { role: self.role_arn.clone(), endpoint: self.endpoint.clone(), reason };
        if !(200..300).contains(&status) {
            let (code, message) = parse_error(&answer).map_err(|reason| {
                malformed(format!("HTTP {status} ({reason}): {}", answer.chars().take(200).collect::<String>()))
            })?;
            return Err(Error::Refused {
                role: self.role_arn.clone(),
                endpoint: self.endpoint.clone(),
                status,
                code,
                message,
            });
        }
        parse_credentials(&answer).map_err(malformed)
    }
}

/// `weir-<milliseconds>`, as AWS's SDKs name a session when `AWS_ROLE_SESSION_NAME` is unset.
fn default_session_name() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("weir-{millis}")
}

/// The STS endpoint: `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL` (unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else the regional endpoint, or the global one
/// for the legacy regions when `AWS_STS_REGIONAL_ENDPOINTS=legacy`.
pub fn sts_endpoint(env: &Environment, region: &str) -> String {
    if !env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        && let Some(url) = env.get("AWS_ENDPOINT_URL_STS").or_else(|| env.get("AWS_ENDPOINT_URL"))
    {
        return url.to_owned();
    }
    let legacy = env.get("AWS_STS_REGIONAL_ENDPOINTS").is_some_and(|v| v.eq_ignore_ascii_case("legacy"));
    if legacy && LEGACY_GLOBAL_REGIONS.contains(&region) {
        "https://sts.amazonaws.com".to_owned()
    } else if region.starts_with("cn-") {
        format!("https://sts.{region}.amazonaws.com.cn")
    } else {
        format!("https://sts.{region}.amazonaws.com")
    }
}

/// An `application/x-www-form-urlencoded` body.
fn form(fields: &[(&str, &str)]) -> String {
    fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// POSTs a form and returns the status and body, on a thread of its own (see the module doc).
fn post_form(endpoint: &str, body: String) -> Result<(u16, String), String> {
    let call = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP client: {e}"))?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .user_agent(USER_AGENT)
                .build()
                .map_err(|e| with_causes(&e))?;
            let response = client
                .post(endpoint)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8")
                .body(body)
                .send()
                .await
                .map_err(|e| with_causes(&e))?;
            let status = response.status().as_u16();
            let text = response.text().await.map_err(|e| with_causes(&e))?;
            Ok((status, text))
        })
    };
    std::thread::scope(|scope| {
        scope.spawn(call).join().unwrap_or_else(|_| Err("the STS request thread panicked".to_owned()))
    })
}

/// An error with its chain of causes (reqwest's own message alone says little).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text of every leaf element, keyed by its path of local names (`A/B/C`), entities
/// resolved. Enough for STS's small, flat answers.
fn leaf_texts(xml: &str) -> Result<BTreeMap<String, String>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut texts = BTreeMap::new();
    loop {
        match reader.read_event().map_err(|e| format!("invalid XML: {e}"))? {
            Event::Start(element) => {
                path.push(String::from_utf8_lossy(element.local_name().as_ref()).into_owned());
                text.clear();
            }
            Event::Text(content) => text.push_str(&content.xml_content().map_err(|e| format!("invalid XML: {e}"))?),
            Event::CData(content) => text.push_str(&content.decode().map_err(|e| format!("invalid XML: {e}"))?),
            Event::GeneralRef(reference) => {
                let name = reference.decode().map_err(|e| format!("invalid XML: {e}"))?;
                let resolved = if reference.is_char_ref() {
                    reference.resolve_char_ref().map_err(|e| format!("invalid XML: {e}"))?
                } else {
                    quick_xml::escape::resolve_xml_entity(&name).and_then(|s| s.chars().next())
                };
                text.push(resolved.ok_or_else(|| format!("invalid XML: unknown entity &{name};"))?);
            }
            Event::End(_) => {
                if !text.is_empty() {
                    texts.insert(path.join("/"), std::mem::take(&mut text));
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(texts)
}

/// The credentials of an `AssumeRoleWithWebIdentity` answer.
pub(super) fn parse_credentials(xml: &str) -> Result<Issued, String> {
    let texts = leaf_texts(xml)?;
    let field = |name: &str| {
        texts
            .get(&format!("AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/Credentials/{name}"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no Credentials/{name} in the answer"))
    };
    let expiration = field("Expiration")?;
    let expiration = DateTime::parse_from_rfc3339(&expiration)
        .map_err(|e| format!("Credentials/Expiration {expiration:?} is not an RFC 3339 time: {e}"))?
        .with_timezone(&Utc);
    Ok(Issued {
        credentials: Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        expiration,
    })
}

/// The code and message of an STS error answer (`ErrorResponse/Error/{Code,Message}`).
fn parse_error(xml: &str) -> Result<(String, String), String> {
    let texts = leaf_texts(xml)?;
    let code = texts.get("ErrorResponse/Error/Code").ok_or("no ErrorResponse/Error/Code")?;
    let message = texts.get("ErrorResponse/Error/Message").map_or("", String::as_str);
    Ok((code.trim().to_owned(), message.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example answer of STS's API reference, with an escaped character in the token.
    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>amzn1.account.AF6RHO7KZU5XRVQJGXK6HB56KR2A</SubjectFromWebIdentityToken>
    <Audience>client.5498841531868486423.1548@apps.example.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/FederatedWebIdentityRole/app1</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:app1</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE&amp;&#43;</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2014-10-24T23:00:23Z</Expiration>
      <AccessKeyId>ASgeIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <SourceIdentity>SourceIdentityValue</SourceIdentity>
    <Provider>www.amazon.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn the_credentials_and_expiry_of_an_sts_answer_are_read() {
        let issued = parse_credentials(ANSWER).unwrap();
        assert_eq!(issued.credentials.access_key_id, "ASgeIAIOSFODNN7EXAMPLE");
        assert_eq!(issued.credentials.secret_access_key, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY");
        assert_eq!(
            issued.credentials.session_token.as_deref(),
            Some("AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE&+")
        );
        assert_eq!(issued.expiration, DateTime::parse_from_rfc3339("2014-10-24T23:00:23Z").unwrap());
    }

    #[test]
    fn prefixed_names_cdata_and_fractional_expiry_are_understood() {
        let xml = "<?xml version=\"1.0\"?><s:AssumeRoleWithWebIdentityResponse xmlns:s=\"x\">\
            <s:AssumeRoleWithWebIdentityResult><s:Credentials>\
            <s:AccessKeyId>ASIA1</s:AccessKeyId><s:SecretAccessKey><![CDATA[a<b]]></s:SecretAccessKey>\
            <s:SessionToken>tok</s:SessionToken><s:Expiration>2026-11-22T08:40:45.869396Z</s:Expiration>\
            </s:Credentials></s:AssumeRoleWithWebIdentityResult></s:AssumeRoleWithWebIdentityResponse>";
        let issued = parse_credentials(xml).unwrap();
        assert_eq!(issued.credentials.secret_access_key, "a<b");
        assert_eq!(issued.expiration.timestamp_subsec_micros(), 869_396);
    }

    #[test]
    fn an_answer_without_a_credential_or_with_a_bad_expiry_is_refused() {
        let missing = ANSWER.replace("<AccessKeyId>ASgeIAIOSFODNN7EXAMPLE</AccessKeyId>", "");
        assert_eq!(parse_credentials(&missing).unwrap_err(), "no Credentials/AccessKeyId in the answer");
        let elsewhere = "<AssumeRoleWithWebIdentityResponse><Other><Credentials><AccessKeyId>A</AccessKeyId>\
            </Credentials></Other></AssumeRoleWithWebIdentityResponse>";
        assert!(parse_credentials(elsewhere).is_err(), "only the result's Credentials count");
        let bad_time = ANSWER.replace("2014-10-24T23:00:23Z", "tomorrow");
        assert!(parse_credentials(&bad_time).unwrap_err().contains("tomorrow"));
        assert!(parse_credentials("<a><b></a>").unwrap_err().starts_with("invalid XML"));
    }

    #[test]
    fn an_sts_error_answer_gives_its_code_and_message() {
        let xml = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
    <Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>
  <RequestId>0d2e5b1e-0000-4000-8000-000000000000</RequestId>
</ErrorResponse>"#;
        assert_eq!(
            parse_error(xml).unwrap(),
            ("AccessDenied".to_owned(), "Not authorized to perform sts:AssumeRoleWithWebIdentity".to_owned())
        );
        assert!(parse_error("<html>Bad gateway</html>").is_err());
    }

    #[test]
    fn the_sts_endpoint_is_the_override_else_regional_else_global_for_legacy() {
        let env = |pairs: &[(&str, &str)]| Environment::from_pairs(pairs.iter().copied());
        assert_eq!(sts_endpoint(&env(&[]), "eu-west-1"), "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(sts_endpoint(&env(&[]), "cn-north-1"), "https://sts.cn-north-1.amazonaws.com.cn");
        let legacy = env(&[("AWS_STS_REGIONAL_ENDPOINTS", "legacy")]);
        assert_eq!(sts_endpoint(&legacy, "eu-west-1"), "https://sts.amazonaws.com");
        assert_eq!(sts_endpoint(&legacy, "af-south-1"), "https://sts.af-south-1.amazonaws.com");
        let both = [("AWS_ENDPOINT_URL", "http://all:1"), ("AWS_ENDPOINT_URL_STS", "http://sts:2")];
        assert_eq!(sts_endpoint(&env(&both), "eu-west-1"), "http://sts:2");
        assert_eq!(sts_endpoint(&env(&both[..1]), "eu-west-1"), "http://all:1");
        let ignored = [both[0], ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")];
        assert_eq!(sts_endpoint(&env(&ignored), "eu-west-1"), "https://sts.eu-west-1.amazonaws.com");
    }

    #[test]
    fn the_request_is_a_form_with_every_reserved_character_escaped() {
        let body = form(&[("RoleArn", "arn:aws:iam::1:role/a b"), ("WebIdentityToken", "x.y_z-~+=")]);
        assert_eq!(body, "RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fa%20b&WebIdentityToken=x.y_z-~%2B%3D");
    }

    #[test]
    fn the_session_name_comes_from_the_environment_or_is_made_up() {
        let mut pairs = vec![("AWS_ROLE_ARN", "arn:r"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")];
        assert!(
            WebIdentity::from_environment(&Environment::from_pairs(pairs.clone()), "us-east-1")
                .unwrap()
                .session_name
                .starts_with("weir-")
        );
        pairs.push(("AWS_ROLE_SESSION_NAME", "job-a"));
        assert_eq!(
            WebIdentity::from_environment(&Environment::from_pairs(pairs.clone()), "us-east-1").unwrap().session_name,
            "job-a"
        );
        assert!(WebIdentity::from_environment(&Environment::from_pairs(pairs[..1].to_vec()), "us-east-1").is_none());
    }
}
