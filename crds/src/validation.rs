//! Semantic validation of a StreamJob: what the CRD schema and CEL rules cannot say.
//! The operator reports these problems as a status condition and an Event; the runtime
//! refuses to start with them. Rules that CEL also enforces are repeated here, because the
//! runtime may read a spec that never passed an API server.

use std::{collections::BTreeSet, fmt};

use crate::{
    Aggregation, Checkpoint, Delivery, FieldType, KafkaSecurity, LagTrigger, Retry, SecurityProtocol, StartOffset,
    StreamJobSpec, UpgradeMode,
    expr::{self, SelectItem},
    kafka::{Format, KafkaProperties, MANAGED_PROPERTIES, SaslMechanism, secret_field},
    pipeline::{Step, WINDOW_END, WINDOW_START, Window},
};

/// Kafka metadata every input record carries as extra fields, usable in expressions.
/// `_headers` is a map from header name to value, for `select`.
pub const METADATA_FIELDS: &[&str] = &["_key", "_topic", "_partition", "_offset", "_timestamp", "_headers"];

/// One problem with a spec: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path from the resource root, e.g. `spec.pipeline[2].filter`.
    pub path: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid StreamJob: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidSpec(pub Vec<Problem>);

/// Checks a spec and returns every problem found, each with its field path.
pub fn validate(spec: &StreamJobSpec) -> Result<(), InvalidSpec> {
    let mut check = Checker::default();
    check.parallelism(spec);
    check.source(spec);
    check.pipeline(spec);
    check.sink(spec);
    check.checkpoint(spec);
    check.restore_from(spec);
    check.savepoints(spec);
    check.autoscaling(spec);
    if check.problems.is_empty() { Ok(()) } else { Err(InvalidSpec(check.problems)) }
}

/// The fields of the records at some point of the pipeline, when they can be known.
#[derive(Debug, Clone)]
enum Fields {
    /// No schema declared and no select yet: any field may exist.
    Unknown,
    Known(Vec<String>),
}

impl Fields {
    fn lacks(&self, field: &str) -> bool {
        matches!(self, Self::Known(fields) if !fields.iter().any(|f| f == field))
    }

    fn describe(&self) -> String {
        match self {
            Self::Unknown => String::new(),
            Self::Known(fields) => fields.join(", "),
        }
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn require_field(&mut self, fields: &Fields, field: &str, path: &str) {
        if fields.lacks(field) {
            self.report(path, format!("unknown field `{field}`; known fields: {}", fields.describe()));
        }
    }

    fn parallelism(&mut self, spec: &StreamJobSpec) {
        if spec.parallelism < 0 {
            self.report("spec.parallelism", "must be 0 or more");
        }
    }

    fn source(&mut self, spec: &StreamJobSpec) {
        let kafka = &spec.source.kafka;
        let base = "spec.source.kafka";
        self.kafka_basics(base, &kafka.bootstrap_servers, &kafka.topic);
        let mut seen = BTreeSet::new();
        for (i, decl) in kafka.schema.iter().enumerate() {
            if !seen.insert(decl.name.as_str()) {
                self.report(format!("{base}.schema[{i}].name"), format!("field `{}` is declared twice", decl.name));
            }
        }
        let fields = input_fields(spec);
        for (i, field) in kafka.partitioned_by.iter().enumerate() {
            self.require_field(&fields, field, &format!("{base}.partitionedBy[{i}]"));
        }
        if let Some(field) = kafka.event_time.as_ref().and_then(|e| e.field.as_ref()) {
            {
                let path = format!("{base}.eventTime.field");
                self.require_field(&fields, field, &path);
                let declared = kafka.schema.iter().find(|d| &d.name == field);
                if let Some(decl) = declared
                    .filter(|d| !matches!(d.field_type, FieldType::Long | FieldType::Timestamp | FieldType::String))
                {
                    self.report(
                        path,
                        format!(
                            "event time field `{}` must be long, string or timestamp, not {:?}",
                            decl.name, decl.field_type
                        ),
                    );
                }
            }
        }
        match kafka.format {
            Format::Avro if kafka.schema_registry.is_none() => {
                self.report(format!("{base}.schemaRegistry"), "format avro needs schemaRegistry")
            }
            Format::Protobuf if kafka.protobuf.is_none() => self
                .report(format!("{base}.protobuf"), "format protobuf needs protobuf (descriptor set and message type)"),
            _ => {}
        }
        match (kafka.start_offset, &kafka.start_timestamp) {
            (StartOffset::Timestamp, None) => {
                self.report(format!("{base}.startTimestamp"), "required with startOffset timestamp")
            }
            (StartOffset::Timestamp, Some(time)) if chrono::DateTime::parse_from_rfc3339(time).is_err() => {
                self.report(format!("{base}.startTimestamp"), format!("`{time}` is not an RFC 3339 time"))
            }
            (StartOffset::Earliest | StartOffset::Latest, Some(_)) => {
                self.report(format!("{base}.startTimestamp"), "only allowed with startOffset timestamp")
            }
            _ => {}
        }
        if kafka.group_id.is_some() && kafka.group_id_prefix.is_some() {
            self.report(format!("{base}.groupIdPrefix"), "set groupId or groupIdPrefix, not both");
        }
        if kafka.batch_size == 0 {
            self.report(format!("{base}.batchSize"), "must be at least 1");
        }
        if kafka.max_records_per_second == Some(0) {
            self.report(format!("{base}.maxRecordsPerSecond"), "must be at least 1");
        }
        self.security(base, kafka.security.as_ref());
        self.retry(base, &kafka.retry);
        let typed = [
            ("fetch.min.bytes", "fetchMinBytes", kafka.fetch_min_bytes.is_some()),
            ("fetch.wait.max.ms", "fetchMaxWaitMs", kafka.fetch_max_wait_ms.is_some()),
            ("max.partition.fetch.bytes", "maxPartitionFetchBytes", kafka.max_partition_fetch_bytes.is_some()),
            ("retry.backoff.ms", "retry", true),
            ("retry.backoff.max.ms", "retry", true),
            ("reconnect.backoff.ms", "retry", true),
            ("reconnect.backoff.max.ms", "retry", true),
        ];
        self.properties(base, &kafka.properties, &typed);
    }

    fn retry(&mut self, base: &str, retry: &Retry) {
        if retry.initial_backoff.get() > retry.max_backoff.get() {
            self.report(format!("{base}.retry.initialBackoff"), "initialBackoff must not exceed maxBackoff");
        }
    }

    fn kafka_basics(&mut self, base: &str, servers: &str, topic: &str) {
        if servers.split(',').any(|s| s.trim().is_empty()) {
            self.report(format!("{base}.bootstrapServers"), "must be a comma-separated list of host:port");
        }
        let valid_topic = !topic.is_empty()
            && topic.len() <= 249
            && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_topic {
            self.report(
                format!("{base}.topic"),
                "a topic name has 1 to 249 characters from a-z, A-Z, 0-9, '.', '_', '-'",
            );
        }
    }

    fn security(&mut self, base: &str, security: Option<&KafkaSecurity>) {
        let Some(security) = security else { return };
        let path = format!("{base}.security");
        match (security.protocol.uses_sasl(), security.sasl_mechanism) {
            (true, None) => self.report(format!("{path}.saslMechanism"), "required with a SASL_ protocol"),
            (false, Some(_)) => self.report(format!("{path}.saslMechanism"), "only allowed with a SASL_ protocol"),
            _ => {}
        }
        let Some(mechanism) = security.sasl_mechanism else { return };
        if mechanism.needs_credentials_secret() && security.credentials_secret.is_none() {
            self.report(format!("{path}.credentialsSecret"), "required with saslMechanism");
        }
        let unencrypted = security.protocol == SecurityProtocol::SaslPlaintext;
        if unencrypted && mechanism.sends_secret() && !security.allow_insecure {
            self.report(
                format!("{path}.protocol"),
                "PLAIN and OAUTHBEARER over SASL_PLAINTEXT send the secret unencrypted: use SASL_SSL, or set \
                 allowInsecure",
            );
        }
        if unencrypted && mechanism == SaslMechanism::AwsMskIam {
            self.report(
                format!("{path}.protocol"),
                "AWS_MSK_IAM needs SASL_SSL: MSK serves IAM authentication over TLS only",
            );
        }
    }

    /// Refuses raw properties Weir manages, and raw properties that a typed field also sets:
    /// `typed` lists (property, field, whether the field is set).
    fn properties(&mut self, base: &str, properties: &KafkaProperties, typed: &[(&str, &str, bool)]) {
        for key in properties.keys() {
            if let Some(field) = secret_field(key) {
                self.report(
                    format!("{base}.properties[{key}]"),
                    format!(
                        "secrets do not go in properties, where the StreamJob and its ConfigMap show them to anyone \
                         who can read those: put it in a Secret and name it in {base}.{field}"
                    ),
                );
            } else if MANAGED_PROPERTIES.contains(&key.as_str()) {
                self.report(
                    format!("{base}.properties[{key}]"),
                    "this property is managed by Weir from the StreamJob's own fields; set those instead",
                );
            } else if let Some((_, field, _)) = typed.iter().find(|(property, _, set)| property == key && *set) {
                self.report(format!("{base}.properties[{key}]"), format!("set either {base}.{field} or this property"));
            }
        }
    }

    fn pipeline(&mut self, spec: &StreamJobSpec) {
        let mut fields = input_fields(spec);
        let mut key: Option<&[String]> = None;
        let mut window_at: Option<usize> = None;
        let mut aggregated = false;
        let mut dedupe_at: Option<usize> = None;
        for (i, step) in spec.pipeline.iter().enumerate() {
            let path = format!("spec.pipeline[{i}].{}", step.kind());
            if aggregated && !matches!(step, Step::Filter(_) | Step::Select(_)) {
                self.report(&path, "only filter and select may follow aggregate");
                continue;
            }
            match step {
                Step::Filter(text) => self.filter(text, &fields, &path),
                Step::Select(items) => fields = self.select(items, &fields, &path),
                Step::KeyBy(keys) => {
                    if key.is_some() {
                        self.report(&path, "a pipeline has at most one keyBy");
                    } else if keys.is_empty() {
                        self.report(&path, "name at least one field");
                    }
                    for (j, field) in keys.iter().enumerate() {
                        self.require_field(&fields, field, &format!("{path}[{j}]"));
                    }
                    key = Some(keys);
                }
                Step::Window(window) => {
                    if window_at.is_some() {
                        self.report(&path, "a pipeline has at most one window");
                    } else if key.is_none() {
                        self.report(&path, "window needs a keyBy step before it");
                    }
                    self.window(window, &path);
                    window_at = Some(i);
                }
                Step::Aggregate(aggregations) => {
                    if window_at.is_none() {
                        self.report(&path, "aggregate needs a window step before it");
                    }
                    self.aggregations(aggregations, &fields, &path);
                    fields = aggregate_output(key.unwrap_or_default(), aggregations);
                    aggregated = true;
                }
                Step::Dedupe(dedupe) => {
                    if key.is_some() {
                        self.report(&path, "dedupe must come before keyBy");
                    }
                    for (j, field) in dedupe.key.iter().enumerate() {
                        self.require_field(&fields, field, &format!("{path}.key[{j}]"));
                    }
                    if dedupe.key.is_empty() {
                        self.report(format!("{path}.key"), "name at least one field");
                    }
                    if dedupe.within.get().is_zero() {
                        self.report(format!("{path}.within"), "must be longer than 0s");
                    }
                    dedupe_at.get_or_insert(i);
                }
            }
        }
        let partitioned_by = &spec.source.kafka.partitioned_by;
        if let (Some(at), Some(keys)) = (dedupe_at, key)
            && !keys.iter().all(|k| partitioned_by.contains(k))
        {
            // The job may repartition: the dedupe runs where the rows arrive by their keyBy
            // fields, so those must not change between the dedupe and the keyBy.
            let key_at = spec.pipeline.iter().position(|s| matches!(s, Step::KeyBy(_))).unwrap_or_default();
            if let Some(select) = (at..key_at).find(|&i| matches!(spec.pipeline[i], Step::Select(_))) {
                self.report(
                    format!("spec.pipeline[{select}].select"),
                    "a select between dedupe and a keyBy that repartitions the records is not supported: move it \
                     before the dedupe, or list the keyBy fields in spec.source.kafka.partitionedBy if the topic is \
                     partitioned by them",
                );
            }
        }
        if let Some(at) = window_at.filter(|_| !aggregated) {
            self.report(format!("spec.pipeline[{at}].window"), "window must be followed by an aggregate step");
        }
        if key.is_some() && window_at.is_none() {
            let at = spec.pipeline.iter().position(|s| matches!(s, Step::KeyBy(_))).unwrap_or_default();
            self.report(format!("spec.pipeline[{at}].keyBy"), "keyBy must be followed by a window and an aggregate");
        }
        if let Some(key_field) = &spec.sink.kafka.key_field {
            self.require_field(&fields, key_field, "spec.sink.kafka.keyField");
        }
        if let Some(timestamp_field) = &spec.sink.kafka.timestamp_field {
            self.require_field(&fields, timestamp_field, "spec.sink.kafka.timestampField");
        }
    }

    fn filter(&mut self, text: &str, fields: &Fields, path: &str) {
        match expr::parse_expr(text) {
            Ok(parsed) => {
                for field in expr::referenced_fields(&parsed) {
                    self.require_field(fields, &field, path);
                }
            }
            Err(e) => self.report(path, e.to_string()),
        }
    }

    fn select(&mut self, items: &[String], fields: &Fields, path: &str) -> Fields {
        if items.is_empty() {
            self.report(path, "select at least one expression");
        }
        let mut output: Option<Vec<String>> = Some(Vec::new());
        for (j, text) in items.iter().enumerate() {
            let item_path = format!("{path}[{j}]");
            match expr::parse_select_item(text) {
                Ok(SelectItem::Wildcard) => match (fields, output.as_mut()) {
                    (Fields::Known(known), Some(out)) => out.extend(known.iter().cloned()),
                    _ => output = None,
                },
                Ok(SelectItem::Named { expr, name }) => {
                    for field in expr::referenced_fields(&expr) {
                        self.require_field(fields, &field, &item_path);
                    }
                    if let Some(out) = output.as_mut() {
                        if out.contains(&name) {
                            self.report(&item_path, format!("output field `{name}` is produced twice"));
                        }
                        out.push(name);
                    }
                }
                Err(e) => self.report(&item_path, e.to_string()),
            }
        }
        output.map_or(Fields::Unknown, Fields::Known)
    }

    fn window(&mut self, window: &Window, path: &str) {
        let positive = |d: &crate::Duration| !d.get().is_zero();
        match window {
            Window::Tumbling(w) if !positive(&w.size) => {
                self.report(format!("{path}.tumbling.size"), "must be longer than 0s")
            }
            Window::Sliding(w) => {
                if !positive(&w.slide) {
                    self.report(format!("{path}.sliding.slide"), "must be longer than 0s");
                } else if w.slide.get() > w.size.get() {
                    self.report(format!("{path}.sliding.slide"), "slide must not be longer than size");
                } else if w.size.get().as_millis() > crate::pipeline::MAX_WINDOWS_PER_RECORD * w.slide.get().as_millis()
                {
                    self.report(
                        format!("{path}.sliding.slide"),
                        "a record belongs to size / slide windows, at most 1000: make slide longer",
                    );
                }
            }
            Window::Session(w) if !positive(&w.gap) => {
                self.report(format!("{path}.session.gap"), "must be longer than 0s")
            }
            _ => {}
        }
    }

    fn aggregations(&mut self, aggregations: &[Aggregation], fields: &Fields, path: &str) {
        if aggregations.is_empty() {
            self.report(path, "name at least one aggregate");
        }
        let mut names = BTreeSet::new();
        for (j, aggregation) in aggregations.iter().enumerate() {
            match &aggregation.field {
                Some(field) => self.require_field(fields, field, &format!("{path}[{j}].field")),
                None if aggregation.function != crate::AggregateFn::Count => {
                    self.report(format!("{path}[{j}].field"), format!("{} needs a field", aggregation.function.name()))
                }
                None => {}
            }
            let name = aggregation.output_name();
            if !names.insert(name.clone()) {
                self.report(format!("{path}[{j}].as"), format!("output field `{name}` is produced twice; set `as`"));
            }
        }
    }

    fn sink(&mut self, spec: &StreamJobSpec) {
        let kafka = &spec.sink.kafka;
        let base = "spec.sink.kafka";
        self.kafka_basics(base, &kafka.bootstrap_servers, &kafka.topic);
        match kafka.format {
            Format::Avro if kafka.schema_registry.is_none() => {
                self.report(format!("{base}.schemaRegistry"), "format avro needs schemaRegistry")
            }
            Format::Protobuf => self.report(format!("{base}.format"), "the sink writes json or avro"),
            _ => {}
        }
        match (kafka.delivery, kafka.acks) {
            (Delivery::Idempotent | Delivery::ExactlyOnce, Some(acks)) if acks != crate::Acks::All => {
                self.report(format!("{base}.acks"), "idempotent and exactlyOnce delivery need acks all")
            }
            (Delivery::FireAndForget, Some(acks)) if acks != crate::Acks::None => {
                self.report(format!("{base}.acks"), "fireAndForget delivery sends with acks 0")
            }
            _ => {}
        }
        for name in kafka.headers.keys().filter(|name| name.is_empty()) {
            self.report(format!("{base}.headers[{name}]"), "a header needs a name");
        }
        if kafka.delivery == Delivery::ExactlyOnce && spec.checkpoint.is_none() {
            self.report(
                "spec.checkpoint",
                "exactlyOnce delivery needs checkpoint.storage: transactions commit with checkpoints",
            );
        }
        self.security(base, kafka.security.as_ref());
        self.retry(base, &kafka.retry);
        let typed = [
            ("batch.size", "batchSizeBytes", kafka.batch_size_bytes.is_some()),
            ("request.timeout.ms", "requestTimeout", kafka.request_timeout.is_some()),
            ("message.timeout.ms", "deliveryTimeout", kafka.delivery_timeout.is_some()),
            ("delivery.timeout.ms", "deliveryTimeout", kafka.delivery_timeout.is_some()),
            ("retries", "retry", true),
            ("message.send.max.retries", "retry", true),
            ("retry.backoff.ms", "retry", true),
            ("retry.backoff.max.ms", "retry", true),
        ];
        self.properties(base, &kafka.properties, &typed);
        if let Some(dead_letter) = &spec.dead_letter {
            let servers = dead_letter.bootstrap_servers.as_deref().unwrap_or(&spec.source.kafka.bootstrap_servers);
            self.kafka_basics("spec.deadLetter", servers, &dead_letter.topic);
        }
    }

    fn checkpoint(&mut self, spec: &StreamJobSpec) {
        let stateful_mode = matches!(spec.upgrade_mode, Some(UpgradeMode::Savepoint | UpgradeMode::LastState));
        match &spec.checkpoint {
            None if stateful_mode => {
                self.report("spec.checkpoint", "upgradeMode savepoint and lastState need checkpoint.storage")
            }
            None => {}
            Some(Checkpoint { interval, storage, .. }) => {
                if interval.get() < std::time::Duration::from_millis(100) {
                    self.report("spec.checkpoint.interval", "must be at least 100ms");
                }
                let known_scheme = ["file://", "s3://", "gs://", "az://", "abfs://", "abfss://"]
                    .iter()
                    .any(|scheme| storage.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
                if !known_scheme {
                    self.report("spec.checkpoint.storage", "must be a URL with scheme file, s3, gs, az, abfs or abfss");
                }
            }
        }
    }

    fn savepoints(&mut self, spec: &StreamJobSpec) {
        let Some(policy) = &spec.savepoints else { return };
        if spec.checkpoint.is_none() {
            self.report("spec.savepoints", "savepoints need checkpoint.storage");
        }
        if policy.interval.as_ref().is_some_and(|i| i.get() < std::time::Duration::from_secs(1)) {
            self.report("spec.savepoints.interval", "must be at least 1s");
        }
        if policy.max_age.as_ref().is_some_and(|a| a.get().is_zero()) {
            self.report("spec.savepoints.maxAge", "must be longer than 0s");
        }
    }

    fn restore_from(&mut self, spec: &StreamJobSpec) {
        let Some(restore) = &spec.restore_from else { return };
        if spec.checkpoint.is_none() {
            self.report(
                "spec.restoreFrom",
                "restoreFrom needs checkpoint.storage: the job's checkpoints continue the savepoint",
            );
        }
        match (&restore.savepoint, &restore.path) {
            (Some(_), Some(_)) | (None, None) => self.report("spec.restoreFrom", "name either a savepoint or a path"),
            (None, Some(path)) => {
                let savepoint_folder = path
                    .split_once("://")
                    .and_then(|(_, rest)| rest.trim_end_matches('/').rsplit_once("/savepoints/"))
                    .is_some_and(|(folder, id)| !id.is_empty() && !id.contains('/') && folder.contains('/'));
                if !savepoint_folder {
                    self.report(
                        "spec.restoreFrom.path",
                        "must be a savepoint's folder, <storage>/<job folder>/savepoints/<id>, as a StreamJobSavepoint's \
                         status.path shows it",
                    );
                }
            }
            (Some(_), None) => {}
        }
    }

    fn autoscaling(&mut self, spec: &StreamJobSpec) {
        let Some(autoscaling) = &spec.autoscaling else { return };
        if autoscaling.min_replicas > autoscaling.max_replicas {
            self.report("spec.autoscaling.minReplicas", "minReplicas must not exceed maxReplicas");
        }
        if autoscaling.min_replicas == 0 && autoscaling.trigger != LagTrigger::Kafka {
            self.report("spec.autoscaling.minReplicas", crate::job::MIN_ZERO_NEEDS_KAFKA);
        }
        if autoscaling.scale_down_stabilization.get() > std::time::Duration::from_secs(3600) {
            self.report("spec.autoscaling.scaleDownStabilization", crate::job::STABILIZATION_TOO_LONG);
        }
        if autoscaling.lag_threshold < 1 {
            self.report("spec.autoscaling.lagThreshold", "must be at least 1");
        }
        if autoscaling.trigger == LagTrigger::Kafka && spec.source.kafka.security.is_some() {
            self.report(
                "spec.autoscaling.trigger",
                "the kafka trigger cannot reach a source with security (it would need a KEDA TriggerAuthentication); \
                 use the prometheus trigger",
            );
        }
    }
}

/// The fields of the source records: the declared schema plus Kafka metadata, or unknown.
fn input_fields(spec: &StreamJobSpec) -> Fields {
    let schema = &spec.source.kafka.schema;
    if schema.is_empty() {
        return Fields::Unknown;
    }
    let declared = schema.iter().map(|d| d.name.clone());
    Fields::Known(declared.chain(METADATA_FIELDS.iter().map(|f| (*f).to_owned())).collect())
}

/// The fields of a windowed aggregate's output: key, window bounds, aggregates.
fn aggregate_output(key: &[String], aggregations: &[Aggregation]) -> Fields {
    let bounds = [WINDOW_START, WINDOW_END].map(str::to_owned);
    let outputs = aggregations.iter().map(Aggregation::output_name);
    Fields::Known(key.iter().cloned().chain(bounds).chain(outputs).collect())
}
