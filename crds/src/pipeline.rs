//! The steps a record goes through between source and sink.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// One step of the pipeline. Each list item has exactly one of these keys.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Keep records for which this SQL expression is true, e.g. `amount > 0 AND currency = 'EUR'`.
    Filter(String),
    /// Replace each record by these SQL expressions, e.g. `user_id`, `amount * 1.19 AS gross`.
    /// An expression other than a plain field needs `AS name`.
    Select(#[schemars(length(max = 256))] Vec<String>),
    /// Group records by these fields for the window and aggregate that follow.
    KeyBy(#[schemars(length(max = 64))] Vec<String>),
    /// Assign records to event-time windows; an `aggregate` step must follow.
    Window(Window),
    /// Aggregate each key's records per window; emits one record per key and window when
    /// the window closes.
    Aggregate(#[schemars(length(max = 64))] Vec<Aggregation>),
    /// Drop a record when one with the same key was passed on less than `within` apart in
    /// event time, e.g. a producer's retries. Repeats are found within a partition.
    Dedupe(Dedupe),
}

impl Step {
    /// The step's key in the resource, for messages and field paths.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Filter(_) => "filter",
            Self::Select(_) => "select",
            Self::KeyBy(_) => "keyBy",
            Self::Window(_) => "window",
            Self::Aggregate(_) => "aggregate",
            Self::Dedupe(_) => "dedupe",
        }
    }
}

/// Settings of a dedupe step.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dedupe {
    /// Fields whose values make two records the same, e.g. `[payment_id]`.
    #[schemars(length(min = 1, max = 64))]
    pub key: Vec<String>,
    /// How far apart in event time two records with one key are still one, e.g. `10m`.
    /// Each key is remembered for twice this after its last record; records this far behind
    /// the watermark are late.
    pub within: Duration,
}

/// The most sliding windows one record may belong to: each costs an update per record, and
/// a `size / slide` in the millions would make one record cost seconds.
pub const MAX_WINDOWS_PER_RECORD: u128 = 1000;

/// An event-time window. Exactly one of `tumbling`, `sliding` or `session`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Window {
    /// Fixed, non-overlapping windows of `size`, aligned to the epoch.
    Tumbling(TumblingWindow),
    /// Windows of `size` starting every `slide`; a record belongs to `size / slide` windows,
    /// at most [`MAX_WINDOWS_PER_RECORD`].
    Sliding(SlidingWindow),
    /// Per-key windows that close after `gap` without records.
    Session(SessionWindow),
}

/// Settings of a tumbling window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TumblingWindow {
    /// Window length, e.g. `60s`.
    pub size: Duration,
}

/// Settings of a sliding window.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.slide) <= duration(self.size)")
    .message("slide must not be longer than size").field_path(".slide"))]
#[x_kube(validation = Rule::new(
    "duration(self.size).getMilliseconds() <= 1000 * duration(self.slide).getMilliseconds()"
).message("a record belongs to size / slide windows, at most 1000: make slide longer").field_path(".slide"))]
pub struct SlidingWindow {
    /// Window length, e.g. `5m`.
    pub size: Duration,
    /// How often a new window starts, e.g. `1m`; at most `size`.
    pub slide: Duration,
}

/// Settings of a session window.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionWindow {
    /// Inactivity that closes a session, e.g. `30m`.
    pub gap: Duration,
}

/// An aggregate function.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFn {
    /// Sum of the field.
    Sum,
    /// Number of records (or of non-null values of `field` when given).
    Count,
    /// Smallest value of the field.
    Min,
    /// Largest value of the field.
    Max,
    /// Arithmetic mean of the field.
    Avg,
}

impl AggregateFn {
    /// The name used in the resource and in default output names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Count => "count",
            Self::Min => "min",
            Self::Max => "max",
            Self::Avg => "avg",
        }
    }
}

/// One aggregate of a window's records.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.fn == 'count' || has(self.field)")
    .message("field is required for sum, min, max and avg").field_path(".field"))]
pub struct Aggregation {
    /// `sum`, `count`, `min`, `max` or `avg`.
    #[serde(rename = "fn")]
    pub function: AggregateFn,
    /// Input field; optional only for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub field: Option<String>,
    /// Output field name. Defaults to `<fn>_<field>`, and `count` for a count without field.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub alias: Option<String>,
}

impl Aggregation {
    /// The name of the output field this aggregate produces.
    pub fn output_name(&self) -> String {
        match (&self.alias, &self.field) {
            (Some(alias), _) => alias.clone(),
            (None, Some(field)) => format!("{}_{}", self.function.name(), field),
            (None, None) => self.function.name().to_owned(),
        }
    }
}

/// Field names of a windowed aggregate's output, besides the key fields and aggregates.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";
