//! The Weir runtime: runs one StreamJob in a pod. Kafka records are decoded in batches into
//! Arrow, run through the job's pipeline ([`engine`]) per source partition, and the results
//! are encoded and produced to the sink topic.

pub mod codec;
pub mod engine;
