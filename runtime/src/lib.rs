//! The Weir runtime: runs one StreamJob in a pod. Kafka records are decoded in batches into
//! Arrow ([`codec`]), run through the job's pipeline per source partition ([`engine`]), and the
//! results are encoded and produced to the sink topic ([`runner`]). The admin server
//! ([`admin`]) exports [`metrics`], health and status; [`telemetry`] exports spans when asked to.

pub mod admin;
pub mod assignment;
pub mod checkpoint;
pub mod codec;
pub mod engine;
pub mod kafka;
pub mod metrics;
pub mod progress;
pub mod repartition;
pub mod runner;
mod sync;
pub mod telemetry;
