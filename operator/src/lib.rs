//! `weir-operator`: a kube-rs controller that turns StreamJobs into running runtime pods and
//! reports their state.
//!
//! Each reconcile is a pipeline: validate (shared with the runtime, in `weir-crds`) →
//! [`render`] (pure, typed objects) → apply (server-side apply, one field manager) →
//! [`status`] (pure, from what was observed).

pub mod admin;
pub mod admin_token;
pub mod api_client;
pub mod assignment;
pub mod cache;
pub mod children;
pub mod config;
pub mod controller;
pub mod decode;
mod error;
pub mod events;
pub mod failure;
pub mod keda;
pub mod labels;
pub mod lag;
pub mod leader;
pub mod metrics;
pub mod pod_http;
pub mod pod_watch;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod savepoint;
pub mod status;
pub mod throttle;

pub use error::Error;
