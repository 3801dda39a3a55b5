//! SASL OAUTHBEARER tokens for librdkafka's refresh callback: a bearer token read from the
//! mounted credentials Secret, read again at every refresh so a rotated token is picked up.
//! (MSK IAM tokens are signed in [`super::msk_iam`] when that feature is built.)

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use rdkafka::client::OAuthToken;
use weir_crds::{KafkaSecurity, SaslMechanism};

use super::config::{SecretMounts, Side};

/// librdkafka asks again at 80% of a token's lifetime: a token without an expiry, or one
/// valid for long, is still read again about this often, so rotations are seen.
const REREAD_EVERY: Duration = Duration::from_secs(60);

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("reading the OAUTHBEARER token {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("the OAUTHBEARER token file {0} is empty")]
    Empty(PathBuf),
    /// MSK IAM signing failed.
    #[error("signing the AWS MSK IAM token: {0}")]
    MskIam(String),
}

/// Where a client's OAUTHBEARER tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A token file (the credentials Secret's `token` key).
    File(PathBuf),
    /// Signed from AWS credentials for Amazon MSK.
    #[cfg(feature = "msk-iam")]
    MskIam(Box<super::msk_iam::Signer>),
}

impl TokenSource {
    /// The token source of a connection, when its SASL mechanism uses tokens.
    pub fn for_connection(
        security: Option<&KafkaSecurity>,
        side: Side,
        secrets: &SecretMounts,
    ) -> Result<Option<Self>, TokenError> {
        match security.and_then(|s| s.sasl_mechanism) {
            Some(SaslMechanism::OAuthBearer) => Ok(Some(Self::File(secrets.credential_file(side, "token")))),
            #[cfg(feature = "msk-iam")]
            Some(SaslMechanism::AwsMskIam) => {
                let region = security.and_then(|s| s.aws_region.clone());
                super::msk_iam::Signer::from_environment(region, side, secrets)
                    .map(|signer| Some(Self::MskIam(Box::new(signer))))
                    .map_err(|e| TokenError::MskIam(e.to_string()))
            }
            #[cfg(not(feature = "msk-iam"))]
            Some(SaslMechanism::AwsMskIam) => Err(TokenError::MskIam(
                "this runtime was built without the msk-iam feature; use an image built with it".into(),
            )),
            _ => Ok(None),
        }
    }

    /// A fresh token for librdkafka.
    pub fn token(&self) -> Result<OAuthToken, TokenError> {
        match self {
            Self::File(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.clone(), source })?;
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(TokenError::Empty(path.clone()));
                }
                Ok(bearer_token(token, SystemTime::now()))
            }
            #[cfg(feature = "msk-iam")]
            Self::MskIam(signer) => signer.token(SystemTime::now()).map_err(|e| TokenError::MskIam(e.to_string())),
        }
    }
}

/// A bearer token with the principal and expiry of its JWT claims when it is a JWT, valid
/// until it expires or [`REREAD_EVERY`] from `now`, whichever comes first.
pub fn bearer_token(token: String, now: SystemTime) -> OAuthToken {
    let claims = jwt_claims(&token);
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let reread_at = now_ms + REREAD_EVERY.as_millis() as i64;
    let expires_ms = claims.as_ref().and_then(|c| c.get("exp")).and_then(serde_json::Value::as_i64).map(|s| s * 1000);
    let principal_name =
        claims.as_ref().and_then(|c| c.get("sub")).and_then(serde_json::Value::as_str).unwrap_or("weir").to_owned();
    OAuthToken { token, principal_name, lifetime_ms: expires_ms.map_or(reread_at, |e| e.min(reread_at)) }
}

/// The claims of a JWT (its middle part), without verifying it: the broker does that.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.signature", encode(r#"{"alg":"RS256"}"#), encode(claims))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_jwt_names_its_principal_and_expires_when_it_says() {
        let token = bearer_token(jwt(r#"{"sub":"svc-weir","exp":1000030}"#), at(1_000_000));
        assert_eq!(token.principal_name, "svc-weir");
        assert_eq!(token.lifetime_ms, 1_000_030_000);
    }

    #[test]
    fn a_long_lived_or_opaque_token_is_read_again_within_a_minute() {
        let long = bearer_token(jwt(r#"{"sub":"a","exp":9000000}"#), at(1_000_000));
        assert_eq!(long.lifetime_ms, 1_000_060_000);
        let opaque = bearer_token("not-a-jwt".into(), at(1_000_000));
        assert_eq!((opaque.principal_name.as_str(), opaque.lifetime_ms), ("weir", 1_000_060_000));
    }

    #[test]
    fn the_token_file_is_read_at_every_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let source = TokenSource::File(path.clone());
        assert_eq!(source.token().unwrap().token, "first");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(source.token().unwrap().token, "rotated");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(source.token(), Err(TokenError::Empty(_))));
    }

    #[test]
    fn oauthbearer_reads_the_token_key_of_the_credentials_secret() {
        let security: KafkaSecurity = serde_json::from_str(
            r#"{"protocol": "SASL_SSL", "saslMechanism": "OAUTHBEARER", "credentialsSecret": "token"}"#,
        )
        .unwrap();
        let secrets = SecretMounts::new("/var/run/secrets/weir");
        let Some(TokenSource::File(path)) = TokenSource::for_connection(Some(&security), Side::Sink, &secrets).unwrap()
        else {
            panic!("expected a token file");
        };
        assert_eq!(path, PathBuf::from("/var/run/secrets/weir/sink-credentials/token"));
        let scram: KafkaSecurity = serde_json::from_str(
            r#"{"protocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-256", "credentialsSecret": "c"}"#,
        )
        .unwrap();
        assert!(TokenSource::for_connection(Some(&scram), Side::Sink, &secrets).unwrap().is_none());
    }
}
