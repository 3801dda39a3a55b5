//! The Node object, as a kubelet registers it and keeps it alive: the scheduler binds pods
//! only to a Ready node with room for them, and the node lifecycle controller lifts the
//! `not-ready` taint the API server puts on a new Node only while the node's Lease is
//! renewed. The node reports a fixed, generous capacity rather than the
//! machine's: its pods are local processes sharing one machine whatever it reports, and the
//! scheduler would otherwise refuse pods whose requests add up past two real cores.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, OwnerReference},
    },
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::status::time;

/// Where node Leases live.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How long a Lease holds without renewal, as the kubelet sets it.
const LEASE_SECONDS: i32 = 40;
/// How often the Lease is renewed (a quarter of its duration, as the kubelet does).
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the node offers the scheduler.
const CAPACITY: [(&str, &str); 4] =
    [("cpu", "64"), ("memory", "256Gi"), ("pods", "1000"), ("ephemeral-storage", "1Ti")];

/// The Node object's metadata: the well-known labels a kubelet sets.
pub fn node_object(name: &str) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ("kubernetes.io/os".to_owned(), std::env::consts::OS.to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
    ]);
    Node {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..ObjectMeta::default() },
        ..Node::default()
    }
}

/// A Ready node's status with the capacity above.
pub fn node_status(name: &str, now: std::time::SystemTime) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> =
        CAPACITY.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    };
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition("Ready", "True", "KubeletReady", "the weir node agent runs pods as local processes"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure is tracked"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure is tracked"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure is tracked"),
        ]),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: "127.0.0.1".into() },
            NodeAddress { type_: "Hostname".into(), address: name.to_owned() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            operating_system: std::env::consts::OS.into(),
            kubelet_version: format!("weir-node-agent/{}", env!("CARGO_PKG_VERSION")),
            container_runtime_version: "local-processes://".into(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates the Node (or keeps the one an earlier run left), writes its status and returns
/// its uid (the Lease's owner).
pub async fn register(client: &Client, name: &str) -> Result<String, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    match api.create(&PostParams::default(), &node_object(name)).await {
        Ok(_) => tracing::info!(node = name, "registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => tracing::info!(node = name, "already registered"),
        Err(e) => return Err(e),
    }
    let status = node_status(name, std::time::SystemTime::now());
    let node = api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// The node's Lease as renewed at `now`, owned by the Node so it goes with it.
pub fn lease(name: &str, node_uid: &str, now: std::time::SystemTime) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.to_owned(),
                uid: node_uid.to_owned(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(time(now).0)),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews the node's Lease (server-side apply creates it the first time).
pub async fn renew(client: &Client, name: &str, node_uid: &str) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = lease(name, node_uid, std::time::SystemTime::now());
    api.patch(name, &PatchParams::apply("weir-node-agent").force(), &Patch::Apply(&lease)).await?;
    Ok(())
}

/// Reports the node not ready as the agent stops, so nothing more is scheduled to it (a
/// node may not delete its own Node object; its Lease lapses too).
pub async fn mark_stopped(client: &Client, name: &str) {
    let mut status = node_status(name, std::time::SystemTime::now());
    if let Some(ready) = status.conditions.as_mut().and_then(|cs| cs.iter_mut().find(|c| c.type_ == "Ready")) {
        ready.status = "False".into();
        ready.reason = Some("KubeletStopped".into());
        ready.message = Some("the weir node agent stopped".into());
    }
    let api: Api<Node> = Api::all(client.clone());
    if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await {
        tracing::warn!(node = name, "reporting the node stopped: {e}");
    }
}

/// The architecture as Kubernetes (Go) spells it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_with_room_and_labelled() {
        let node = node_object("local");
        assert_eq!(node.metadata.labels.as_ref().unwrap()["kubernetes.io/hostname"], "local");
        let status = node_status("local", std::time::SystemTime::now());
        let ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.as_ref().unwrap()["pods"].0, "1000");
    }

    #[test]
    fn the_lease_is_held_by_the_node_and_goes_with_it() {
        let lease = lease("local", "u1", std::time::SystemTime::now());
        let spec = lease.spec.unwrap();
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_duration_seconds), (Some("local"), Some(40)));
        assert!(spec.renew_time.is_some());
        assert_eq!(lease.metadata.owner_references.unwrap()[0].uid, "u1");
    }
}
