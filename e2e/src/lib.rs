//! Test infrastructure for Weir, owned by the project: the real Kubernetes control plane
//! ([`cluster`]: kube-apiserver, kube-controller-manager and kube-scheduler built from
//! `k8s.io/kubernetes`), the node agent that is its kubelet and runs pods as local processes
//! ([`agent`], binary `weir-node-agent`, started from tests with
//! [`agent_process::NodeAgent`]), KEDA ([`keda`]) and Prometheus ([`prometheus`]), and the
//! end-to-end scenarios. Kafka and the light helpers are `weir-testkit`'s, re-exported here.

pub mod agent;
pub mod agent_process;
pub mod chart;
pub mod cluster;
pub mod gitops;
pub mod keda;
pub mod operator_process;
pub mod prometheus;
pub mod scripted;
pub mod stack;
pub mod windowed;

pub use weir_testkit::*;
