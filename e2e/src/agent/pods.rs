//! What pods a Deployment should have: template hashes, pod names and objects, and the
//! rollout plan (which pods to start and which to stop next). Pure, so the ReplicaSet and
//! Deployment controller rules are unit-tested without processes or an API server.

use std::hash::{BuildHasher, Hasher};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, PodTemplateSpec},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

/// The label every pod carries with its template's hash, as the ReplicaSet controller sets it.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The node name of every pod the agent runs.
pub const NODE_NAME: &str = "local";

/// Kubernetes' alphabet for generated names: no vowels (no words) and no look-alike digits.
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A short, stable hash of a pod template (its JSON), spelled in the name alphabet.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    spell(u64::from_be_bytes([digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], 0]), 10)
}

/// Five random characters for a pod name, from a per-process random hasher seed.
pub fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    spell(hasher.finish(), 5)
}

/// The first `len` digits of `n` in the name alphabet.
fn spell(mut n: u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
            n /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// `<deployment>-<hash>-<suffix>`, as the ReplicaSet controller names pods.
pub fn pod_name(deployment: &str, hash: &str, suffix: &str) -> String {
    format!("{deployment}-{hash}-{suffix}")
}

/// The Pod object for one replica: the template's metadata plus the hash label, owned by
/// the Deployment (there is no garbage collector, so the agent also deletes it), bound to
/// the local node.
pub fn pod_object(deployment: &Deployment, hash: &str, name: &str) -> Pod {
    let template = deployment.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(NODE_NAME.to_owned());
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: deployment.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: deployment.metadata.name.clone().unwrap_or_default(),
                uid: deployment.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// How a Deployment replaces pods when its template changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Stop every old pod before starting new ones.
    Recreate,
    /// Replace pods gradually, within these absolute bounds.
    RollingUpdate {
        /// Pods allowed above the desired count.
        max_surge: u32,
        /// Pods allowed below the desired count of ready pods.
        max_unavailable: u32,
    },
}

impl Strategy {
    /// The Deployment's strategy with percentages resolved against `replicas` as the
    /// controller does (surge rounds up, unavailable down; both zero would never progress,
    /// so unavailable becomes one).
    pub fn of(deployment: &Deployment) -> Self {
        let spec = deployment.spec.as_ref();
        let replicas = desired_replicas(deployment);
        let strategy = spec.and_then(|s| s.strategy.as_ref());
        if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            return Self::Recreate;
        }
        let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
        let quarter = IntOrString::String("25%".into());
        let surge = rolling.and_then(|r| r.max_surge.as_ref()).unwrap_or(&quarter);
        let unavailable = rolling.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&quarter);
        let max_surge = scaled(surge, replicas, true);
        let max_unavailable = scaled(unavailable, replicas, false);
        if max_surge == 0 && max_unavailable == 0 {
            Self::RollingUpdate { max_surge, max_unavailable: 1 }
        } else {
            Self::RollingUpdate { max_surge, max_unavailable }
        }
    }

    /// Pods that may be unavailable while the Deployment still counts as available.
    pub fn max_unavailable(&self) -> u32 {
        match self {
            Self::Recreate => 0,
            Self::RollingUpdate { max_unavailable, .. } => *max_unavailable,
        }
    }
}

/// `spec.replicas`, one when unset (the API default).
pub fn desired_replicas(deployment: &Deployment) -> u32 {
    deployment.spec.as_ref().and_then(|s| s.replicas).map_or(1, |r| r.max(0).unsigned_abs())
}

/// An int-or-percent of `total`, rounded up or down.
fn scaled(value: &IntOrString, total: u32, round_up: bool) -> u32 {
    match value {
        IntOrString::Int(n) => (*n).max(0).unsigned_abs(),
        IntOrString::String(s) => {
            let percent: u32 = s.trim_end_matches('%').trim().parse().unwrap_or(25);
            let scaled = u64::from(total) * u64::from(percent);
            let result = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
            u32::try_from(result).unwrap_or(u32::MAX)
        }
    }
}

/// A running (not terminating) pod as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its template hash.
    pub hash: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Creation order (higher is newer).
    pub seq: u64,
}

/// What a Deployment needs next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// New pods to start with the current template.
    pub create: u32,
    /// Pods to stop.
    pub terminate: Vec<String>,
}

/// The next step towards `replicas` pods of template `hash`, given the running pods and
/// how many pods of other templates are still terminating (Recreate waits for them).
/// Scale-down removes unready pods first, then the newest, as the ReplicaSet controller does.
pub fn plan(replicas: u32, hash: &str, strategy: Strategy, pods: &[PodView], old_terminating: usize) -> Plan {
    let (new, old): (Vec<&PodView>, Vec<&PodView>) = pods.iter().partition(|p| p.hash == hash);
    let new_count = count(new.len());
    let mut plan = Plan::default();
    if old.is_empty() || strategy == Strategy::Recreate {
        if !old.is_empty() {
            plan.terminate = old.iter().map(|p| p.name.clone()).collect();
            return plan;
        }
        if strategy == Strategy::Recreate && old_terminating > 0 {
            return plan;
        }
        plan.create = replicas.saturating_sub(new_count);
        plan.terminate = victims(&new, new_count.saturating_sub(replicas));
        return plan;
    }
    let Strategy::RollingUpdate { max_surge, max_unavailable } = strategy else { return plan };
    // Too many new pods (scaled down mid-rollout): trim them like a ReplicaSet would.
    if new_count > replicas {
        plan.terminate = victims(&new, new_count - replicas);
        return plan;
    }
    let total = count(pods.len());
    plan.create = replicas.saturating_sub(new_count).min((replicas + max_surge).saturating_sub(total));
    // Unready old pods add nothing to availability: they can always go.
    let (old_ready, old_unready): (Vec<&PodView>, Vec<&PodView>) = old.iter().partition(|p| p.ready);
    plan.terminate = old_unready.iter().map(|p| p.name.clone()).collect();
    let ready = count(pods.iter().filter(|p| p.ready).count());
    let min_available = replicas.saturating_sub(max_unavailable);
    let removable = ready.saturating_sub(min_available).min(count(old_ready.len()));
    plan.terminate.extend(victims(&old_ready, removable));
    plan
}

/// The `n` pods to remove first: unready before ready, then newest first.
fn victims(pods: &[&PodView], n: u32) -> Vec<String> {
    let mut order = pods.to_vec();
    order.sort_by_key(|p| (p.ready, std::cmp::Reverse(p.seq)));
    order.into_iter().take(n as usize).map(|p| p.name.clone()).collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use k8s_openapi::api::{
        apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{Container, PodSpec},
    };

    fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    fn pod(name: &str, hash: &str, ready: bool, seq: u64) -> PodView {
        PodView { name: name.into(), hash: hash.into(), ready, seq }
    }

    const ROLLING: Strategy = Strategy::RollingUpdate { max_surge: 1, max_unavailable: 0 };

    fn deployment(replicas: i32, strategy: Option<DeploymentStrategy>) -> Deployment {
        Deployment {
            metadata: ObjectMeta { name: Some("d".into()), uid: Some("u".into()), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels([("app", "x")])), ..ObjectMeta::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "c".into(), ..Container::default() }],
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn scales_up_from_nothing() {
        assert_eq!(plan(2, "h", ROLLING, &[], 0), Plan { create: 2, terminate: vec![] });
    }

    #[test]
    fn scales_down_newest_and_unready_first() {
        let pods = [pod("a", "h", true, 1), pod("b", "h", true, 2), pod("c", "h", false, 0), pod("d", "h", true, 3)];
        assert_eq!(plan(2, "h", ROLLING, &pods, 0).terminate, vec!["c", "d"]);
        assert_eq!(plan(1, "h", ROLLING, &pods, 0).terminate, vec!["c", "d", "b"]);
    }

    #[test]
    fn a_steady_deployment_needs_nothing() {
        let pods = [pod("a", "h", true, 1), pod("b", "h", false, 2)];
        assert_eq!(plan(2, "h", ROLLING, &pods, 0), Plan::default());
    }

    #[test]
    fn rolling_update_surges_then_waits_for_readiness() {
        let old = [pod("a", "old", true, 1), pod("b", "old", true, 2)];
        assert_eq!(plan(2, "new", ROLLING, &old, 0), Plan { create: 1, terminate: vec![] });
        let surged = [pod("a", "old", true, 1), pod("b", "old", true, 2), pod("n1", "new", false, 3)];
        assert_eq!(plan(2, "new", ROLLING, &surged, 0), Plan::default(), "nothing goes before the new pod is ready");
        let ready = [pod("a", "old", true, 1), pod("b", "old", true, 2), pod("n1", "new", true, 3)];
        assert_eq!(plan(2, "new", ROLLING, &ready, 0), Plan { create: 0, terminate: vec!["b".into()] });
        let next = [pod("a", "old", true, 1), pod("n1", "new", true, 3)];
        assert_eq!(plan(2, "new", ROLLING, &next, 0), Plan { create: 1, terminate: vec![] });
        let done = [pod("n1", "new", true, 3), pod("n2", "new", true, 4)];
        assert_eq!(plan(2, "new", ROLLING, &done, 0), Plan::default());
    }

    #[test]
    fn rolling_update_with_unavailability_replaces_without_surge() {
        let strategy = Strategy::RollingUpdate { max_surge: 0, max_unavailable: 1 };
        let old = [pod("a", "old", true, 1), pod("b", "old", true, 2)];
        assert_eq!(plan(2, "new", strategy, &old, 0), Plan { create: 0, terminate: vec!["b".into()] });
        let one = [pod("a", "old", true, 1)];
        assert_eq!(plan(2, "new", strategy, &one, 0), Plan { create: 1, terminate: vec![] });
    }

    #[test]
    fn unready_old_pods_are_replaced_at_once() {
        let old = [pod("a", "old", false, 1), pod("b", "old", true, 2)];
        assert_eq!(plan(2, "new", ROLLING, &old, 0), Plan { create: 1, terminate: vec!["a".into()] });
    }

    #[test]
    fn old_pods_beyond_the_desired_count_go_when_availability_allows() {
        let pods = [pod("a", "old", true, 1), pod("b", "old", true, 2), pod("c", "old", true, 3)];
        let p = plan(1, "new", ROLLING, &pods, 0);
        assert_eq!(p.create, 0, "already above replicas + surge");
        assert_eq!(p.terminate, vec!["c", "b"]);
    }

    #[test]
    fn recreate_stops_everything_first_and_waits_for_it() {
        let old = [pod("a", "old", true, 1), pod("b", "old", true, 2)];
        assert_eq!(plan(2, "new", Strategy::Recreate, &old, 0).terminate, vec!["a", "b"]);
        assert_eq!(plan(2, "new", Strategy::Recreate, &[], 2), Plan::default());
        assert_eq!(plan(2, "new", Strategy::Recreate, &[], 0).create, 2);
    }

    #[test]
    fn strategy_percentages_resolve_like_the_controller() {
        assert_eq!(Strategy::of(&deployment(2, None)), Strategy::RollingUpdate { max_surge: 1, max_unavailable: 0 });
        assert_eq!(Strategy::of(&deployment(8, None)), Strategy::RollingUpdate { max_surge: 2, max_unavailable: 2 });
        let zero = DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::String("0%".into())),
            }),
        };
        assert_eq!(
            Strategy::of(&deployment(3, Some(zero))),
            Strategy::RollingUpdate { max_surge: 0, max_unavailable: 1 }
        );
        let recreate = DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None };
        assert_eq!(Strategy::of(&deployment(3, Some(recreate))), Strategy::Recreate);
    }

    #[test]
    fn pods_carry_the_template_hash_owner_and_node() {
        let d = deployment(1, None);
        let hash = template_hash(&d.spec.as_ref().unwrap().template);
        assert_eq!(hash.len(), 10);
        let p = pod_object(&d, &hash, &pod_name("d", &hash, "abcde"));
        assert_eq!(p.metadata.name.as_deref(), Some(format!("d-{hash}-abcde").as_str()));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[TEMPLATE_HASH_LABEL], hash);
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "x");
        assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].uid, "u");
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some(NODE_NAME));
    }

    #[test]
    fn the_hash_follows_the_template() {
        let d = deployment(1, None);
        let mut changed = d.clone();
        changed.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].args = Some(vec!["x".into()]);
        let template = |d: &Deployment| d.spec.as_ref().unwrap().template.clone();
        assert_eq!(template_hash(&template(&d)), template_hash(&template(&d.clone())));
        assert_ne!(template_hash(&template(&d)), template_hash(&template(&changed)));
        assert_ne!(random_suffix(), random_suffix());
    }
}
