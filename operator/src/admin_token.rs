//! The token of each job's runtime admin API: random, generated once per job into a Secret
//! the job owns (`<job>-admin-token`), mounted into its pods, and presented by the operator
//! on every call that reads or changes a pod's state. Never logged, never in status.

use std::{
    collections::HashMap,
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, Client, api::PostParams};
use rand::Rng;

use crate::{Error, labels::JobRef, render::ADMIN_TOKEN_KEY};

/// A job's admin token. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A new random token: 32 bytes, hex.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The value, for an `Authorization: Bearer` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The Secret holding `token` for the job.
pub fn secret(job_ref: &JobRef, token: &AdminToken) -> Secret {
    let data = [(ADMIN_TOKEN_KEY.to_owned(), ByteString(token.0.clone().into_bytes()))];
    Secret {
        metadata: job_ref.child_meta(job_ref.admin_token_name()),
        type_: Some("Opaque".into()),
        data: Some(data.into()),
        ..Secret::default()
    }
}

/// The token a Secret holds, if any.
fn token_of(secret: &Secret) -> Option<AdminToken> {
    let bytes = secret.data.as_ref()?.get(ADMIN_TOKEN_KEY)?;
    let text = std::str::from_utf8(&bytes.0).ok()?.trim();
    (!text.is_empty()).then(|| AdminToken(text.to_owned()))
}

/// How long a Secret seen is trusted to be still there while nothing about the job's pods
/// changes. The operator may not watch Secrets (its role only gets and creates them), so a
/// Secret deleted under running pods is written again within this time, before a pod that
/// restarts waits long for its volume.
pub const RECHECK: Duration = Duration::from_secs(300);

/// What a reconcile expects of the job's Secret, which decides how it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The job has no Deployment yet, so most likely no Secret: it is created first, and
    /// read only when it exists already.
    Absent,
    /// New pods are coming: the Secret is read now.
    Needed,
    /// Nothing changes for the pods: a Secret seen within [`RECHECK`] is not read again.
    Steady,
}

/// The tokens known so far, by job uid, with when their Secret was last seen: a steady job
/// costs one read of its Secret per [`RECHECK`], not one per reconcile.
#[derive(Debug, Default)]
pub struct Tokens {
    known: Mutex<HashMap<String, (AdminToken, Instant)>>,
}

impl Tokens {
    /// The job's token: known, read from its Secret, or generated into a new Secret.
    pub async fn get(&self, client: &Client, job_ref: &JobRef) -> Result<AdminToken, Error> {
        match self.known(job_ref) {
            Some((token, _)) => Ok(token),
            None => self.ensure(client, job_ref, Expect::Needed).await,
        }
    }

    fn known(&self, job_ref: &JobRef) -> Option<(AdminToken, Instant)> {
        self.known.lock().ok()?.get(job_ref.uid()).cloned()
    }

    /// The job's token from its Secret, which is written again if it went missing: before
    /// new pods, which cannot start without it.
    pub async fn ensure(&self, client: &Client, job_ref: &JobRef, expect: Expect) -> Result<AdminToken, Error> {
        let known = self.known(job_ref);
        if let Some((token, seen)) = &known
            && expect == Expect::Steady
            && seen.elapsed() < RECHECK
        {
            return Ok(token.clone());
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &job_ref.namespace);
        let name = job_ref.admin_token_name();
        let existing = if expect == Expect::Absent && known.is_none() {
            None
        } else {
            secrets.get_opt(&name).await.map_err(Error::api("reading the admin token"))?
        };
        let token = match existing {
            Some(secret) => token_of(&secret).ok_or_else(|| Error::AdminToken(name.clone()))?,
            None => {
                // Running pods hold the token they mounted: a Secret deleted under them is
                // written again with it.
                let token = known.map(|(token, _)| token).unwrap_or_else(AdminToken::generate);
                match secrets.create(&PostParams::default(), &secret(job_ref, &token)).await {
                    Ok(_) => token,
                    // There already, or written by another reconcile a moment ago: that one
                    // counts.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        let written = secrets.get(&name).await.map_err(Error::api("reading the admin token"))?;
                        token_of(&written).ok_or_else(|| Error::AdminToken(name.clone()))?
                    }
                    Err(source) => return Err(Error::Apply { kind: "Secret".into(), name, source }),
                }
            }
        };
        if let Ok(mut known) = self.known.lock() {
            known.insert(job_ref.uid().to_owned(), (token.clone(), Instant::now()));
        }
        Ok(token)
    }

    /// Forgets a deleted job's token.
    pub fn forget(&self, job_ref: &JobRef) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(job_ref.uid());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_never_shown_in_debug() {
        let (a, b) = (AdminToken::generate(), AdminToken::generate());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(format!("{a:?}"), "AdminToken(..)");
    }

    #[test]
    fn the_secret_holds_the_token_under_its_key() {
        let token = AdminToken::generate();
        let mut secret = Secret { data: None, ..Secret::default() };
        assert_eq!(token_of(&secret), None);
        secret.data = Some([(ADMIN_TOKEN_KEY.to_owned(), ByteString(token.expose().as_bytes().to_vec()))].into());
        assert_eq!(token_of(&secret), Some(token));
    }
}
