//! Kafka client configuration, authentication, retries and record plumbing.
pub mod auth;
pub mod config;
pub mod headers;
#[cfg(feature = "msk-iam")]
pub mod msk_iam;
pub mod rate;
pub mod retry;
pub mod start;
pub mod trace;
