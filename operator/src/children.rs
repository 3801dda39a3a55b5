//! The kinds of object the operator renders for each job, in one registry.
//!
//! A new rendered object is its render function, its field in [`Rendered`], an `impl Child`
//! and one line in [`each_kind`]: the controller then watches it into a store, reconciles
//! apply it (or delete it once the job no longer renders one), and a test checks the chart
//! grants the operator what that takes.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt::Debug,
    sync::Arc,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{Resource, runtime::reflector::Store};
use serde::{Serialize, de::DeserializeOwned};

use crate::{cache::Fingerprint, config::OperatorConfig, keda::ScaledObject, render::Rendered};

/// A kind of object rendered for each job and owned by it.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Fingerprint
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + Sized
    + 'static
{
    /// Whether applying it replaces pods: the job file and the Deployment go in the order a
    /// rollout sets (see `reconcile::roll`); the others are applied whatever the rollout does.
    const ROLLED: bool = false;

    /// Whether the store keeps the whole object. When it does not, the generation the
    /// operator's last write left vouches for the part left out: any spec change bumps it.
    const WHOLE: bool = true;

    /// This kind's object among what was rendered for a job; `None` when the job has none,
    /// so one left from before is deleted.
    fn rendered(rendered: &Rendered) -> Option<&Self>;

    /// Whether the cluster serves this kind (KEDA's CRD may not be installed).
    fn served(_config: &OperatorConfig) -> bool {
        true
    }

    /// Drops what the store does not keep.
    fn slim(&mut self) {}
}

/// Something done once per child kind.
pub trait EachKind {
    /// Does it for kind `K`.
    fn kind<K: Child>(&mut self);
}

/// Calls `each` for every child kind, in the order a first deploy applies them.
pub fn each_kind(each: &mut impl EachKind) {
    each.kind::<ConfigMap>();
    each.kind::<Deployment>();
    each.kind::<Service>();
    each.kind::<PodDisruptionBudget>();
    each.kind::<ScaledObject>();
}

impl Child for ConfigMap {
    const ROLLED: bool = true;

    fn rendered(rendered: &Rendered) -> Option<&Self> {
        Some(&rendered.config_map)
    }
}

impl Child for Deployment {
    const ROLLED: bool = true;
    // The pod template is most of a Deployment's memory (about 20 KiB each, typed), and
    // nothing but the apply decision reads it.
    const WHOLE: bool = false;

    fn rendered(rendered: &Rendered) -> Option<&Self> {
        Some(&rendered.deployment)
    }

    fn slim(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            spec.template = Default::default();
        }
    }
}

impl Child for Service {
    fn rendered(rendered: &Rendered) -> Option<&Self> {
        Some(&rendered.service)
    }
}

impl Child for PodDisruptionBudget {
    fn rendered(rendered: &Rendered) -> Option<&Self> {
        Some(&rendered.pod_disruption_budget)
    }
}

impl Child for ScaledObject {
    fn rendered(rendered: &Rendered) -> Option<&Self> {
        rendered.scaled_object.as_ref()
    }

    fn served(config: &OperatorConfig) -> bool {
        config.keda_available
    }
}

/// The reflector stores of the child kinds the controller watches, one per kind.
#[derive(Clone, Debug, Default)]
pub struct Stores {
    stores: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Stores {
    /// Keeps `store` as the store of `K`.
    pub fn insert<K: Child>(&mut self, store: Store<K>) {
        self.stores.insert(TypeId::of::<K>(), Arc::new(store));
    }

    /// The store of `K`, if it is watched.
    pub fn get<K: Child>(&self) -> Option<&Store<K>> {
        self.stores.get(&TypeId::of::<K>())?.downcast_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(apiGroup, resource)` pairs and their verbs in the chart's operator rules.
    fn chart_rules() -> Vec<(String, String, BTreeSet<String>)> {
        let helpers = include_str!("../../charts/weir/templates/_helpers.tpl");
        let start = helpers.find(r#"{{- define "weir.operatorRules" -}}"#).expect("the operator rules");
        let body = &helpers[start..];
        let body = &body[body.find('\n').unwrap() + 1..body.find("{{- end }}").unwrap()];
        let rules: Vec<serde_json::Value> = serde_yaml::from_str(body).expect("the rules are YAML");
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
        };
        let mut out = Vec::new();
        for rule in rules {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    out.push((group.clone(), resource, strings(&rule["verbs"]).into_iter().collect()));
                }
            }
        }
        out
    }

    struct Granted {
        rules: Vec<(String, String, BTreeSet<String>)>,
        missing: Vec<String>,
    }

    impl EachKind for Granted {
        fn kind<K: Child>(&mut self) {
            let (group, resource) = (K::group(&()).into_owned(), K::plural(&()).into_owned());
            // Watched into a store, server-side applied (which creates), deleted when no longer rendered.
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                let granted =
                    self.rules.iter().any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(verb));
                if !granted {
                    self.missing.push(format!("{verb} {resource} in group {group:?}"));
                }
            }
        }
    }

    #[test]
    fn the_chart_grants_what_every_child_kind_needs() {
        let mut granted = Granted { rules: chart_rules(), missing: Vec::new() };
        each_kind(&mut granted);
        assert!(granted.missing.is_empty(), "the chart's operator rules lack {:?}", granted.missing);
    }

    struct Kinds(BTreeSet<String>);

    impl EachKind for Kinds {
        fn kind<K: Child>(&mut self) {
            self.0.insert(K::kind(&()).into_owned());
        }
    }

    fn kind_of<K: Resource<DynamicType = ()>>(_: &K) -> String {
        K::kind(&()).into_owned()
    }

    #[test]
    fn every_rendered_object_is_a_registered_kind() {
        let mut job: weir_crds::StreamJob = serde_yaml::from_str(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {name: j, namespace: ns, uid: u}\nspec:\n  \
             source: {kafka: {bootstrapServers: 'k:9092', topic: in}}\n  \
             sink: {kafka: {bootstrapServers: 'k:9092', topic: out}}\n  \
             autoscaling: {maxReplicas: 4, lagThreshold: 100}\n",
        )
        .unwrap();
        job.metadata.generation = Some(1);
        let rendered = crate::render::render(&job, &OperatorConfig::default()).unwrap();
        // No `..`: a new field of `Rendered` does not compile here until it is listed, and then
        // this fails until its kind is registered.
        let Rendered { config_map, deployment, service, pod_disruption_budget, scaled_object } = &rendered;
        let scaled_object = scaled_object.as_ref().expect("autoscaling renders a ScaledObject");
        let rendered_kinds: BTreeSet<String> = [
            kind_of(config_map),
            kind_of(deployment),
            kind_of(service),
            kind_of(pod_disruption_budget),
            kind_of(scaled_object),
        ]
        .into();
        let mut registered = Kinds(BTreeSet::new());
        each_kind(&mut registered);
        assert_eq!(registered.0, rendered_kinds);
    }

    #[test]
    fn a_store_is_found_by_its_kind() {
        let (reader, _writer) = kube::runtime::reflector::store::<Service>();
        let mut stores = Stores::default();
        stores.insert(reader);
        assert!(stores.get::<Service>().is_some());
        assert!(stores.get::<ConfigMap>().is_none());
    }
}
