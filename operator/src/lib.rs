//! `weir-operator`: a kube-rs controller that turns StreamJobs into running runtime pods and
//! reports their state.
//!
//! Each reconcile is a pipeline: validate (shared with the runtime, in `weir-crds`) →
//! [`render`] (pure, typed objects) → [`plan`] the step (pure, from the views [`observe`]
//! reads) → [`reconcile`] performs it (server-side apply, one field manager) → the status
//! (planned the same way).

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
pub mod keda;
pub mod labels;
pub mod lag;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod pod_http;
pub mod pod_watch;
pub mod reconcile;
pub mod render;
pub mod savepoint;
pub mod savepoint_lifecycle;
pub mod throttle;

pub use error::Error;
