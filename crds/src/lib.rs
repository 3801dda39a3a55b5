//! The `StreamJob` API of Weir (`weir.dev/v1alpha1`): the custom resource types with their
//! schema, CEL rules and documentation, and the semantic validation that operator and runtime
//! share. Types and validation only: no client, no async runtime.
//!
//! Unsigned fields carry `format: int64` in the schema: the API server knows the formats
//! int32 and int64, not schemars' uint32 (kubectl warns of it), and each has a maximum.

pub mod document;
mod duration;
pub mod expr;
mod job;
pub mod kafka;
pub mod pipeline;
pub mod plan;
mod savepoint;
mod sink;
mod source;
mod status;
pub mod validation;

pub use document::{JobDocument, LoadError};
pub use duration::{DURATION_PATTERN, Duration, MAX_DURATION, ParseDurationError};
pub use job::{
    Autoscaling, Checkpoint, LagTrigger, PodTemplateOverrides, RestoreFrom, SavepointPolicy, StreamJob, StreamJobSpec,
    UpgradeMode, quantity_bytes,
};
pub use kafka::{CreateTopic, Format, KafkaSecurity, Retry, SaslMechanism, SecurityProtocol};
pub use pipeline::{AggregateFn, Aggregation, Step, Window};
pub use plan::PipelinePlan;
pub use savepoint::{
    JobReference, SavepointReason, SavepointState, StreamJobSavepoint, StreamJobSavepointSpec, StreamJobSavepointStatus,
};
pub use sink::{Acks, Compression, DeadLetter, Delivery, KafkaSink, OversizeRecords, Sink, TraceContext};
pub use source::{EventTime, FieldDecl, FieldType, IsolationLevel, KafkaSource, Source, StartOffset};
pub use status::{Condition, Phase, SavepointInfo, StreamJobStatus, Time};
pub use validation::{InvalidSpec, Problem, validate};

/// API group of the StreamJob resource.
pub const GROUP: &str = "weir.dev";
/// Label carried by every object rendered for a StreamJob and by its pods; value: the job's name.
pub const JOB_LABEL: &str = "weir.dev/streamjob";
