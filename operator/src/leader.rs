//! Leader election on a `coordination.k8s.io/v1` Lease: one operator replica acts, the
//! others wait and take over when the holder stops renewing.
//!
//! Expiry is judged by the local clock from when this replica last saw the lease record
//! change (as client-go does), so clocks of different nodes need not agree.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tracing::{info, warn};

use crate::Error;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    /// Time between renewals: a third of the lease, so two renewals may fail before it expires.
    pub fn renew_period(&self) -> Duration {
        self.duration / 3
    }
}

/// One replica's view of the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen and when it was first seen, by the local clock.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// An elector for `settings`; nothing is written until [`Self::try_acquire_or_renew`].
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, observed: None }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.settings.renew_period()).await;
        }
    }

    /// Renews the lease until a renewal fails for longer than the lease lasts, then returns:
    /// another replica may lead by then, so this one must stop acting.
    pub async fn hold(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    warn!("renewing the leader lease: {e}");
                    if last_renewal.elapsed() >= self.settings.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Takes or renews the lease; `Ok(false)` when another replica holds it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let name = &self.settings.name;
        let now = MicroTime(Timestamp::now());
        let duration_seconds = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(name).await.map_err(Error::api("reading the leader lease"))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!("{holder}/{:?}", spec.renew_time);
        let seen_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let lease_seconds = spec.lease_duration_seconds.map_or(self.settings.duration.as_secs(), |s| s.max(0) as u64);
        let expired = seen_at.elapsed() >= Duration::from_secs(lease_seconds);
        let mine = holder == self.settings.identity;
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if !mine {
            info!(previous = %holder, "taking over the leader lease");
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.settings.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now);
        // `replace` carries the resourceVersion read above, so a concurrent writer makes it fail.
        let result = self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await;
        self.write(result)
    }

    /// Gives the lease up so another replica can take over at once (on shutdown).
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(&self.settings.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await {
            warn!("releasing the leader lease: {e}");
        }
    }

    fn write(&mut self, result: kube::Result<Lease>) -> Result<bool, Error> {
        match result {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                let record = format!("{}/{:?}", spec.holder_identity.unwrap_or_default(), spec.renew_time);
                self.observed = Some((record, Instant::now()));
                Ok(true)
            }
            // Someone else wrote first: not ours this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(Error::Api { what: "writing the leader lease".into(), source }),
        }
    }
}
