//! One test per semantic rule, each asserting the field path of the problem it reports.

use serde_json::Value;
use weir_crds::{JobDocument, LoadError, Problem, StreamJobSpec, validate};

/// A valid windowed job with a declared schema; each test breaks one thing in it.
const BASE: &str = r#"
source:
  kafka:
    bootstrapServers: kafka:9092
    topic: payments
    schema:
      - {name: user_id, type: string}
      - {name: amount, type: double}
      - {name: currency, type: string}
      - {name: ts, type: long}
    eventTime: {field: ts, maxOutOfOrderness: 5s}
pipeline:
  - filter: "amount > 0 AND currency = 'EUR'"
  - select: ["user_id", "amount * 1.19 AS gross", "ts"]
  - keyBy: [user_id]
  - window: {tumbling: {size: 60s}}
  - aggregate:
      - {fn: sum, field: gross, as: total}
      - {fn: count}
sink:
  kafka:
    bootstrapServers: kafka:9092
    topic: spend
    keyField: user_id
"#;

fn spec_with(edit: impl FnOnce(&mut Value)) -> StreamJobSpec {
    let mut value = yaml(BASE);
    edit(&mut value);
    serde_json::from_value(value).unwrap_or_else(|e| panic!("the edited spec does not parse: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not YAML: {e}"))
}

fn set(value: &mut Value, path: &[&str], text: &str) {
    let mut node = value;
    for key in path {
        node = match key.parse::<usize>() {
            Ok(index) => &mut node[index],
            Err(_) => &mut node[*key],
        };
    }
    *node = yaml(text);
}

fn problems(spec: &StreamJobSpec) -> Vec<Problem> {
    match validate(spec) {
        Ok(()) => Vec::new(),
        Err(invalid) => invalid.0,
    }
}

/// Asserts that validation reports exactly one problem, at `path`, mentioning `words`.
fn assert_single_problem(spec: &StreamJobSpec, path: &str, words: &str) {
    let found = problems(spec);
    assert_eq!(found.len(), 1, "expected one problem at {path}, got {found:#?}");
    assert_eq!(found[0].path, path, "{found:#?}");
    assert!(found[0].message.contains(words), "message {:?} should mention {words:?}", found[0].message);
}

/// Asserts that validation reports a problem at `path` mentioning `words` (others may follow from it).
fn assert_has_problem(spec: &StreamJobSpec, path: &str, words: &str) {
    let found = problems(spec);
    assert!(
        found.iter().any(|p| p.path == path && p.message.contains(words)),
        "expected a problem at {path} mentioning {words:?}, got {found:#?}"
    );
}

#[test]
fn the_base_spec_is_valid() {
    assert_eq!(problems(&spec_with(|_| {})), []);
}

#[test]
fn a_filter_that_does_not_parse_is_reported_at_the_step() {
    let spec = spec_with(|v| set(v, &["pipeline", "0", "filter"], "'amount >'"));
    assert_single_problem(&spec, "spec.pipeline[0].filter", "not a valid SQL expression");
}

#[test]
fn a_filter_on_an_undeclared_field_is_reported() {
    let spec = spec_with(|v| set(v, &["pipeline", "0", "filter"], "'amount > 0 AND countri = 1'"));
    assert_single_problem(&spec, "spec.pipeline[0].filter", "unknown field `countri`");
}

#[test]
fn kafka_metadata_fields_are_always_known() {
    let spec = spec_with(|v| set(v, &["pipeline", "0", "filter"], "'_partition = 0 AND _offset > 10'"));
    assert_eq!(problems(&spec), []);
}

#[test]
fn a_computed_select_item_needs_an_alias() {
    let spec = spec_with(|v| set(v, &["pipeline", "1", "select", "2"], "'ts * 2'"));
    assert_single_problem(&spec, "spec.pipeline[1].select[2]", "AS name");
}

#[test]
fn a_select_item_on_an_unknown_field_is_reported() {
    let spec = spec_with(|v| set(v, &["pipeline", "1", "select", "1"], "'amont * 2 AS gross'"));
    assert_single_problem(&spec, "spec.pipeline[1].select[1]", "unknown field `amont`");
}

#[test]
fn a_select_producing_a_name_twice_is_reported() {
    let spec = spec_with(|v| set(v, &["pipeline", "1", "select", "2"], "'amount AS gross'"));
    assert_single_problem(&spec, "spec.pipeline[1].select[2]", "produced twice");
}

#[test]
fn fields_dropped_by_a_select_are_unknown_afterwards() {
    let spec = spec_with(|v| set(v, &["pipeline", "2", "keyBy"], "[currency]"));
    assert_has_problem(&spec, "spec.pipeline[2].keyBy[0]", "unknown field `currency`");
}

#[test]
fn without_a_declared_schema_any_field_may_be_referenced() {
    let spec = spec_with(|v| {
        set(v, &["source", "kafka", "schema"], "[]");
        set(v, &["pipeline", "0", "filter"], "'whatever > 1'");
    });
    assert_eq!(problems(&spec), []);
}

#[test]
fn a_window_needs_a_key_by_before_it() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        pipeline.remove(2);
    });
    assert_has_problem(&spec, "spec.pipeline[2].window", "needs a keyBy");
}

#[test]
fn an_aggregate_needs_a_window_before_it() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        pipeline.remove(3);
    });
    assert_has_problem(&spec, "spec.pipeline[3].aggregate", "needs a window");
}

#[test]
fn a_window_must_be_followed_by_an_aggregate() {
    let spec = spec_with(|v| {
        v["pipeline"].as_array_mut().unwrap().pop();
    });
    assert_single_problem(&spec, "spec.pipeline[3].window", "followed by an aggregate");
}

#[test]
fn key_by_without_a_window_is_reported() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        pipeline.truncate(3);
    });
    assert_single_problem(&spec, "spec.pipeline[2].keyBy", "window");
}

#[test]
fn a_second_window_is_reported() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        let window = pipeline[3].clone();
        pipeline.insert(4, window);
    });
    assert_has_problem(&spec, "spec.pipeline[4].window", "at most one");
}

#[test]
fn only_filter_and_select_may_follow_an_aggregate() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        pipeline.push(yaml("{keyBy: [total]}"));
    });
    assert_single_problem(&spec, "spec.pipeline[5].keyBy", "only filter and select");
}

/// The base spec with a dedupe step at `at` and the topic partitioned by the keyBy field.
fn spec_with_dedupe(at: usize, dedupe: &str) -> StreamJobSpec {
    spec_with(|v| {
        set(v, &["source", "kafka", "partitionedBy"], "[user_id]");
        let Some(pipeline) = v["pipeline"].as_array_mut() else { panic!("the base spec has a pipeline") };
        pipeline.insert(at, yaml(dedupe));
    })
}

#[test]
fn a_dedupe_before_the_key_by_is_valid() {
    assert!(problems(&spec_with_dedupe(1, "{dedupe: {key: [user_id, ts], within: 10m}}")).is_empty());
}

#[test]
fn a_dedupe_on_an_unknown_field_is_reported() {
    let spec = spec_with_dedupe(2, "{dedupe: {key: [amount], within: 10m}}");
    assert_single_problem(&spec, "spec.pipeline[2].dedupe.key[0]", "unknown field `amount`");
}

#[test]
fn a_dedupe_needs_a_key_and_a_bound() {
    let spec = spec_with_dedupe(0, "{dedupe: {key: [], within: 0s}}");
    assert_has_problem(&spec, "spec.pipeline[0].dedupe.key", "at least one field");
    assert_has_problem(&spec, "spec.pipeline[0].dedupe.within", "longer than 0s");
}

#[test]
fn a_dedupe_between_key_by_and_window_or_after_the_aggregate_is_reported() {
    let between = spec_with_dedupe(3, "{dedupe: {key: [user_id], within: 1m}}");
    assert_single_problem(&between, "spec.pipeline[3].dedupe", "before keyBy");
    let after = spec_with_dedupe(5, "{dedupe: {key: [user_id], within: 1m}}");
    assert_single_problem(&after, "spec.pipeline[5].dedupe", "only filter and select");
}

#[test]
fn a_dedupe_in_a_job_that_repartitions_needs_its_key_by_fields_unchanged() {
    let repartitioned = |at: usize| {
        spec_with(|v| {
            let Some(pipeline) = v["pipeline"].as_array_mut() else { panic!("the base spec has a pipeline") };
            pipeline.insert(at, yaml("{dedupe: {key: [user_id], within: 1m}}"));
        })
    };
    assert!(problems(&repartitioned(2)).is_empty(), "after the select: the rows reach the keyBy as they are");
    assert_single_problem(&repartitioned(1), "spec.pipeline[2].select", "between dedupe and a keyBy");
}

#[test]
fn a_filter_after_an_aggregate_sees_the_aggregate_output() {
    let spec = spec_with(|v| {
        let pipeline = v["pipeline"].as_array_mut().unwrap();
        pipeline.push(yaml("{filter: \"total > 100 AND window_start IS NOT NULL\"}"));
        pipeline.push(yaml("{filter: \"amount > 1\"}"));
    });
    assert_single_problem(&spec, "spec.pipeline[6].filter", "unknown field `amount`");
}

#[test]
fn sum_min_max_and_avg_need_a_field() {
    let spec = spec_with(|v| set(v, &["pipeline", "4", "aggregate", "0"], "{fn: avg, as: mean}"));
    assert_single_problem(&spec, "spec.pipeline[4].aggregate[0].field", "avg needs a field");
}

#[test]
fn an_aggregate_of_an_unknown_field_is_reported() {
    let spec = spec_with(|v| set(v, &["pipeline", "4", "aggregate", "0", "field"], "amount"));
    assert_single_problem(&spec, "spec.pipeline[4].aggregate[0].field", "unknown field `amount`");
}

#[test]
fn aggregate_output_names_must_be_unique() {
    let spec = spec_with(|v| set(v, &["pipeline", "4", "aggregate", "1", "as"], "total"));
    assert_single_problem(&spec, "spec.pipeline[4].aggregate[1].as", "produced twice");
}

#[test]
fn a_sliding_window_slide_may_not_exceed_its_size() {
    let spec = spec_with(|v| set(v, &["pipeline", "3", "window"], "{sliding: {size: 1m, slide: 5m}}"));
    assert_single_problem(&spec, "spec.pipeline[3].window.sliding.slide", "longer than size");
}

#[test]
fn a_sliding_window_puts_a_record_in_at_most_1000_windows() {
    let spec = spec_with(|v| set(v, &["pipeline", "3", "window"], "{sliding: {size: 8760h, slide: 1ms}}"));
    assert_single_problem(&spec, "spec.pipeline[3].window.sliding.slide", "at most 1000");
    let spec = spec_with(|v| set(v, &["pipeline", "3", "window"], "{sliding: {size: 1000s, slide: 1s}}"));
    assert_eq!(problems(&spec), []);
}

#[test]
fn a_zero_length_window_is_reported() {
    let spec = spec_with(|v| set(v, &["pipeline", "3", "window"], "{tumbling: {size: 0s}}"));
    assert_single_problem(&spec, "spec.pipeline[3].window.tumbling.size", "longer than 0s");
}

#[test]
fn the_sink_key_field_must_be_an_output_field() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "keyField"], "ts"));
    assert_single_problem(&spec, "spec.sink.kafka.keyField", "unknown field `ts`");
}

#[test]
fn partitioned_by_fields_must_exist() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "partitionedBy"], "[user]"));
    assert_single_problem(&spec, "spec.source.kafka.partitionedBy[0]", "unknown field `user`");
}

#[test]
fn the_event_time_field_must_exist() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "eventTime", "field"], "time"));
    assert_single_problem(&spec, "spec.source.kafka.eventTime.field", "unknown field `time`");
}

#[test]
fn the_event_time_field_must_hold_a_time() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "eventTime", "field"], "amount"));
    assert_single_problem(&spec, "spec.source.kafka.eventTime.field", "long, string or timestamp");
}

#[test]
fn a_field_declared_twice_is_reported() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "schema", "3", "name"], "amount"));
    assert_has_problem(&spec, "spec.source.kafka.schema[3].name", "declared twice");
}

#[test]
fn exactly_once_needs_a_checkpoint() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "delivery"], "exactlyOnce"));
    assert_single_problem(&spec, "spec.checkpoint", "exactlyOnce");
}

#[test]
fn savepoint_upgrades_need_a_checkpoint() {
    let spec = spec_with(|v| set(v, &["upgradeMode"], "savepoint"));
    assert_single_problem(&spec, "spec.checkpoint", "savepoint");
}

#[test]
fn the_default_upgrade_mode_follows_the_checkpoint_setting() {
    use weir_crds::UpgradeMode;
    assert_eq!(spec_with(|_| {}).effective_upgrade_mode(), UpgradeMode::Stateless);
    let with_checkpoint = spec_with(|v| set(v, &["checkpoint"], "{storage: 'file:///tmp/cp'}"));
    assert_eq!(with_checkpoint.effective_upgrade_mode(), UpgradeMode::Savepoint);
}

#[test]
fn a_checkpoint_storage_needs_a_known_scheme() {
    let spec = spec_with(|v| set(v, &["checkpoint"], "{storage: 'ftp://host/cp'}"));
    assert_single_problem(&spec, "spec.checkpoint.storage", "scheme");
}

#[test]
fn a_checkpoint_interval_below_100ms_is_reported() {
    let spec = spec_with(|v| set(v, &["checkpoint"], "{storage: 'file:///cp', interval: 10ms}"));
    assert_single_problem(&spec, "spec.checkpoint.interval", "100ms");
}

#[test]
fn min_replicas_may_not_exceed_max_replicas() {
    let spec = spec_with(|v| set(v, &["autoscaling"], "{minReplicas: 4, maxReplicas: 2, lagThreshold: 100}"));
    assert_single_problem(&spec, "spec.autoscaling.minReplicas", "maxReplicas");
}

#[test]
fn min_replicas_zero_needs_the_kafka_trigger() {
    let prometheus = spec_with(|v| set(v, &["autoscaling"], "{minReplicas: 0, maxReplicas: 2, lagThreshold: 100}"));
    assert_single_problem(&prometheus, "spec.autoscaling.minReplicas", "needs trigger kafka");
    let kafka =
        spec_with(|v| set(v, &["autoscaling"], "{minReplicas: 0, maxReplicas: 2, lagThreshold: 100, trigger: kafka}"));
    assert!(validate(&kafka).is_ok(), "{:?}", validate(&kafka));
}

#[test]
fn the_scale_down_stabilization_is_at_most_an_hour() {
    let long =
        spec_with(|v| set(v, &["autoscaling"], "{maxReplicas: 2, lagThreshold: 100, scaleDownStabilization: 61m}"));
    assert_single_problem(&long, "spec.autoscaling.scaleDownStabilization", "at most 1h");
}

#[test]
fn negative_parallelism_is_reported() {
    let spec = spec_with(|v| set(v, &["parallelism"], "-1"));
    assert_single_problem(&spec, "spec.parallelism", "0 or more");
}

#[test]
fn idempotent_delivery_needs_acks_all() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "acks"], "'1'"));
    assert_single_problem(&spec, "spec.sink.kafka.acks", "acks all");
}

#[test]
fn avro_needs_a_schema_registry() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "format"], "avro"));
    assert_single_problem(&spec, "spec.source.kafka.schemaRegistry", "avro");
}

#[test]
fn the_sink_does_not_write_protobuf() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "format"], "protobuf"));
    assert_single_problem(&spec, "spec.sink.kafka.format", "json or avro");
}

#[test]
fn sasl_needs_a_mechanism() {
    let spec =
        spec_with(|v| set(v, &["source", "kafka", "security"], "{protocol: SASL_SSL, credentialsSecret: creds}"));
    assert_single_problem(&spec, "spec.source.kafka.security.saslMechanism", "required");
}

#[test]
fn a_sasl_mechanism_needs_credentials() {
    let spec =
        spec_with(|v| set(v, &["sink", "kafka", "security"], "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512}"));
    assert_single_problem(&spec, "spec.sink.kafka.security.credentialsSecret", "required");
}

#[test]
fn plain_passwords_without_tls_need_allow_insecure() {
    let insecure = "{protocol: SASL_PLAINTEXT, saslMechanism: PLAIN, credentialsSecret: creds}";
    let spec = spec_with(|v| set(v, &["source", "kafka", "security"], insecure));
    assert_single_problem(&spec, "spec.source.kafka.security.protocol", "unencrypted");
    let allowed = spec_with(|v| {
        set(v, &["source", "kafka", "security"], insecure);
        set(v, &["source", "kafka", "security", "allowInsecure"], "true");
    });
    assert_eq!(problems(&allowed), []);
}

#[test]
fn secret_bearing_properties_are_refused_naming_the_secret_field() {
    for (property, field) in [
        ("ssl.key.password", "security.tlsSecret"),
        ("ssl.key.pem", "security.tlsSecret"),
        ("ssl.keystore.password", "security.tlsSecret"),
        ("sasl.password", "security.credentialsSecret"),
        ("sasl.oauthbearer.client.secret", "security.credentialsSecret"),
        ("sasl.jaas.config", "security.credentialsSecret"),
        ("SASL.OAUTHBEARER.CONFIG", "security.credentialsSecret"),
    ] {
        let spec = spec_with(|v| set(v, &["sink", "kafka", "properties"], &format!("{{'{property}': hunter2}}")));
        let expected = format!("spec.sink.kafka.{field}");
        assert_single_problem(&spec, &format!("spec.sink.kafka.properties[{property}]"), &expected);
    }
    let harmless = spec_with(|v| {
        let properties =
            "{ssl.endpoint.identification.algorithm: none, sasl.oauthbearer.token.endpoint.url: 'https://idp'}";
        set(v, &["sink", "kafka", "properties"], properties)
    });
    assert_eq!(problems(&harmless), []);
}

#[test]
fn managed_librdkafka_properties_are_refused() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "properties"], "{group.id: other, fetch.min.bytes: '1024'}"));
    assert_single_problem(&spec, "spec.source.kafka.properties[group.id]", "managed by Weir");
}

#[test]
fn an_invalid_topic_name_is_reported() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "topic"], "'out put'"));
    assert_single_problem(&spec, "spec.sink.kafka.topic", "topic name");
}

#[test]
fn every_problem_is_reported_at_once() {
    let spec = spec_with(|v| {
        set(v, &["parallelism"], "-3");
        set(v, &["pipeline", "0", "filter"], "'amount >'");
        set(v, &["sink", "kafka", "keyField"], "nope");
    });
    let paths: Vec<_> = problems(&spec).into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["spec.parallelism", "spec.pipeline[0].filter", "spec.sink.kafka.keyField"]);
}

#[test]
fn a_document_may_be_a_whole_resource_or_only_a_spec() {
    let whole = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: spend, namespace: shop}}\nspec:\n{}",
        BASE.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let document = JobDocument::parse(&whole).unwrap();
    assert_eq!((document.name.as_deref(), document.namespace.as_deref()), (Some("spend"), Some("shop")));
    let spec_only = JobDocument::parse(BASE).unwrap();
    assert_eq!(spec_only.name, None);
    assert_eq!(spec_only.spec, document.spec);
}

#[test]
fn a_document_that_is_json_parses_too() {
    let json = serde_json::to_string(&spec_with(|_| {})).unwrap();
    assert!(JobDocument::parse(&json).is_ok());
}

#[test]
fn an_invalid_document_is_refused_with_its_problems() {
    let broken = BASE.replace("keyField: user_id", "keyField: nope");
    match JobDocument::parse(&broken) {
        Err(LoadError::Invalid(invalid)) => assert_eq!(invalid.0[0].path, "spec.sink.kafka.keyField"),
        other => panic!("expected an invalid spec, got {other:?}"),
    }
}

#[test]
fn a_document_with_a_wrong_type_is_refused() {
    let broken = format!("parallelism: two\n{BASE}");
    assert!(matches!(JobDocument::parse(&broken), Err(LoadError::Parse(_))));
}

#[test]
fn the_kafka_trigger_is_refused_for_a_secured_source() {
    let spec = spec_with(|v| {
        set(v, &["autoscaling"], "{maxReplicas: 2, lagThreshold: 100, trigger: kafka}");
        set(
            v,
            &["source", "kafka", "security"],
            "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: c}",
        );
    });
    assert_single_problem(&spec, "spec.autoscaling.trigger", "TriggerAuthentication");
}

#[test]
fn start_offset_timestamp_needs_an_rfc3339_start_timestamp() {
    let missing = spec_with(|v| set(v, &["source", "kafka", "startOffset"], "timestamp"));
    assert_single_problem(&missing, "spec.source.kafka.startTimestamp", "required");
    let garbled = spec_with(|v| {
        set(v, &["source", "kafka", "startOffset"], "timestamp");
        set(v, &["source", "kafka", "startTimestamp"], "yesterday");
    });
    assert_single_problem(&garbled, "spec.source.kafka.startTimestamp", "RFC 3339");
    let stray = spec_with(|v| set(v, &["source", "kafka", "startTimestamp"], "'2026-11-01T00:00:00Z'"));
    assert_single_problem(&stray, "spec.source.kafka.startTimestamp", "only allowed");
    let good = spec_with(|v| {
        set(v, &["source", "kafka", "startOffset"], "timestamp");
        set(v, &["source", "kafka", "startTimestamp"], "'2026-11-01T00:00:00+01:00'");
    });
    assert_eq!(problems(&good), []);
}

#[test]
fn a_group_id_and_a_group_id_prefix_exclude_each_other() {
    let spec = spec_with(|v| {
        set(v, &["source", "kafka", "groupId"], "fixed");
        set(v, &["source", "kafka", "groupIdPrefix"], "team-a.");
    });
    assert_single_problem(&spec, "spec.source.kafka.groupIdPrefix", "not both");
}

#[test]
fn the_group_id_prefix_precedes_the_default_group_id() {
    let spec = spec_with(|v| set(v, &["source", "kafka", "groupIdPrefix"], "team-a."));
    assert_eq!(spec.group_id("shop", "spend"), "team-a.shop.spend");
    assert_eq!(spec_with(|_| {}).group_id("shop", "spend"), "shop.spend");
}

#[test]
fn a_raw_property_that_a_typed_field_also_sets_is_refused() {
    let spec = spec_with(|v| {
        set(v, &["source", "kafka", "fetchMinBytes"], "1024");
        set(v, &["source", "kafka", "properties"], "{fetch.min.bytes: '2048'}");
    });
    assert_single_problem(&spec, "spec.source.kafka.properties[fetch.min.bytes]", "fetchMinBytes");
    let alone = spec_with(|v| set(v, &["source", "kafka", "properties"], "{fetch.min.bytes: '2048'}"));
    assert_eq!(problems(&alone), []);
    let retries = spec_with(|v| set(v, &["sink", "kafka", "properties"], "{retries: '3'}"));
    assert_single_problem(&retries, "spec.sink.kafka.properties[retries]", "spec.sink.kafka.retry");
    let acks = spec_with(|v| set(v, &["sink", "kafka", "properties"], "{acks: '1'}"));
    assert_single_problem(&acks, "spec.sink.kafka.properties[acks]", "managed by Weir");
}

#[test]
fn a_retry_backoff_may_not_start_above_its_maximum() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "retry"], "{initialBackoff: 20s, maxBackoff: 5s}"));
    assert_single_problem(&spec, "spec.sink.kafka.retry.initialBackoff", "maxBackoff");
}

#[test]
fn fire_and_forget_sends_with_acks_zero_only() {
    let spec = spec_with(|v| {
        set(v, &["sink", "kafka", "delivery"], "fireAndForget");
        set(v, &["sink", "kafka", "acks"], "all");
    });
    assert_single_problem(&spec, "spec.sink.kafka.acks", "acks 0");
    let good = spec_with(|v| set(v, &["sink", "kafka", "delivery"], "fireAndForget"));
    assert_eq!(problems(&good), []);
}

#[test]
fn the_sink_timestamp_field_must_be_an_output_field() {
    let spec = spec_with(|v| set(v, &["sink", "kafka", "timestampField"], "ts"));
    assert_single_problem(&spec, "spec.sink.kafka.timestampField", "unknown field `ts`");
    let good = spec_with(|v| set(v, &["sink", "kafka", "timestampField"], "window_end"));
    assert_eq!(problems(&good), []);
}

#[test]
fn oauthbearer_tokens_without_tls_need_allow_insecure() {
    let insecure = "{protocol: SASL_PLAINTEXT, saslMechanism: OAUTHBEARER, credentialsSecret: token}";
    let spec = spec_with(|v| set(v, &["sink", "kafka", "security"], insecure));
    assert_single_problem(&spec, "spec.sink.kafka.security.protocol", "unencrypted");
    let over_tls = "{protocol: SASL_SSL, saslMechanism: OAUTHBEARER, credentialsSecret: token}";
    assert_eq!(problems(&spec_with(|v| set(v, &["sink", "kafka", "security"], over_tls))), []);
}

#[test]
fn scram_over_sasl_plaintext_is_allowed_because_the_password_never_travels() {
    let scram = "{protocol: SASL_PLAINTEXT, saslMechanism: SCRAM-SHA-256, credentialsSecret: creds}";
    assert_eq!(problems(&spec_with(|v| set(v, &["source", "kafka", "security"], scram))), []);
}

#[test]
fn msk_iam_needs_tls_even_with_allow_insecure_and_no_secret() {
    let plaintext = "{protocol: SASL_PLAINTEXT, saslMechanism: AWS_MSK_IAM, allowInsecure: true}";
    let spec = spec_with(|v| set(v, &["source", "kafka", "security"], plaintext));
    assert_single_problem(&spec, "spec.source.kafka.security.protocol", "AWS_MSK_IAM needs SASL_SSL");
    let good = "{protocol: SASL_SSL, saslMechanism: AWS_MSK_IAM, awsRegion: eu-west-1}";
    assert_eq!(problems(&spec_with(|v| set(v, &["source", "kafka", "security"], good))), []);
}

#[test]
fn headers_metadata_is_a_known_field() {
    let spec = spec_with(|v| {
        set(v, &["pipeline"], "[{select: [user_id, _headers]}]");
        set(v, &["sink", "kafka", "keyField"], "user_id");
    });
    assert_eq!(problems(&spec), []);
}

#[test]
fn the_state_budget_is_a_quantity_and_defaults_to_half_the_memory_limit() {
    assert_eq!(weir_crds::quantity_bytes("256Mi"), Some(256 << 20));
    assert_eq!(weir_crds::quantity_bytes("2G"), Some(2_000_000_000));
    assert_eq!(weir_crds::quantity_bytes("1.5Gi"), None, "fractions are not taken");
    assert_eq!(weir_crds::quantity_bytes("99999999999999999999"), None);
    let spec = spec_with(|v| set(v, &["stateBudget"], "64Ki"));
    assert_eq!(spec.state_budget_bytes(), Some(65_536));
    let spec = spec_with(|v| set(v, &["resources"], "{limits: {memory: 1Gi}}"));
    assert_eq!(spec.state_budget_bytes(), Some(512 << 20));
    assert_eq!(spec_with(|_| {}).state_budget_bytes(), None, "no limit, no budget");
}

#[test]
fn restore_from_names_one_savepoint_folder_and_needs_checkpoints() {
    let with = |restore: &str| {
        spec_with(|v| {
            set(v, &["checkpoint"], "{storage: 'file:///cp'}");
            set(v, &["restoreFrom"], restore);
        })
    };
    assert!(problems(&with("{savepoint: sp-1}")).is_empty());
    assert!(problems(&with("{path: 's3://bucket/ns.orders/savepoints/sp-1'}")).is_empty());
    assert_single_problem(&with("{path: 's3://bucket/ns.orders'}"), "spec.restoreFrom.path", "savepoint's folder");
    assert_single_problem(&with("{path: '/cp/g/savepoints/sp-1'}"), "spec.restoreFrom.path", "savepoint's folder");
    assert_single_problem(&with("{savepoint: a, path: 's3://b/g/savepoints/a'}"), "spec.restoreFrom", "either");
    let without_checkpoints = spec_with(|v| set(v, &["restoreFrom"], "{savepoint: sp-1}"));
    assert_single_problem(&without_checkpoints, "spec.restoreFrom", "checkpoint.storage");
}
