//! Kafka client configuration, authentication, retries and record plumbing.
pub mod auth;
pub mod clients;
pub mod config;
pub mod headers;
pub mod lag;
#[cfg(feature = "msk-iam")]
pub mod msk_iam;
pub mod rate;
pub mod retry;
pub mod start;
pub mod topics;
pub mod trace;
