//! Kafka client configuration.
pub mod config;
