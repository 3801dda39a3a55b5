//! The autoscaling loop with real parts: the runtime pods' `weir_consumer_lag` scraped by
//! Prometheus, read by KEDA through the ScaledObject the operator renders, turned by the
//! HPA controller into a write of the StreamJob's `/scale`, and carried out by the operator
//! as a rescale through a savepoint; the output loses and repeats nothing.

use std::time::Duration;

use serde_json::json;
use weir_e2e::{
    kafka,
    stack::{LocalStack, running},
    wait_until,
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn lag_over_the_threshold_scales_the_job_up_through_prometheus_keda_and_the_hpa() {
    let stack = must(LocalStack::with_autoscaling(&["--rescale-stabilization", "1s"]), "starting the stack");
    let bootstrap = stack.broker.bootstrap();
    must(stack.broker.create_topic("clicks", 2), "creating the input topic");
    must(stack.broker.create_topic("big-clicks", 2), "creating the output topic");
    // A backlog the throttled source works through for a while, well over the threshold.
    must(kafka::produce_clicks(&bootstrap, "clicks", 0..3000), "producing clicks");
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "clicks"}, "spec": {
        "parallelism": 1,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "lagThreshold": 500},
        "source": {"kafka": {"bootstrapServers": bootstrap, "topic": "clicks", "maxRecordsPerSecond": 40,
            "schema": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}]}},
        "pipeline": [{"filter": "n >= 10"}],
        "sink": {"kafka": {"bootstrapServers": bootstrap, "topic": "big-clicks", "keyField": "user"}},
        "checkpoint": {"storage": stack.storage_url(), "interval": "2s"},
    }});
    must(stack.apply(&job), "applying the job");
    must(stack.wait_for_job("clicks", "1 ready pod and phase Running", WAIT, |j| running(j, 1)), "");

    // Prometheus scrapes the lag, labelled with the job and its namespace.
    let (_, prometheus) = stack.autoscaling.as_ref().expect("a stack with autoscaling");
    let query = r#"sum(weir_consumer_lag{streamjob="clicks",namespace="default"})"#;
    let mut lag = None;
    let scraped = wait_until(WAIT, "Prometheus to have the job's lag", || {
        lag = prometheus.value(query).ok().flatten();
        lag.is_some_and(|l| l > 500.0)
    });
    assert!(scraped.is_ok(), "lag {lag:?}\n{}", stack.diagnostics());

    // KEDA asks Prometheus, the HPA controller asks KEDA and writes /scale: two pods.
    let scaled = stack.wait_for_job("clicks", "2 ready pods after the scale-up", WAIT, |j| {
        running(j, 2) && j["spec"]["parallelism"] == 2
    });
    let scaled = must(scaled, "");
    assert_eq!(scaled["status"]["lastSavepoint"]["reason"], "rescale", "{:#}", scaled["status"]);
    let hpa = must(stack.kubectl(["get", "hpa", "keda-hpa-clicks", "-o", "json"]), "kubectl get hpa");
    let hpa: serde_json::Value = must(serde_json::from_slice(&hpa), "the HPA");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "StreamJob", "{hpa:#}");
    assert!(hpa["status"]["currentMetrics"][0]["external"]["current"].is_object(), "the HPA read the lag: {hpa:#}");

    // Nothing lost or repeated across the autoscaler's rescale.
    let output = must(kafka::read_click_numbers(&bootstrap, "big-clicks", 2990), "reading the output");
    assert_eq!(output, (10..3000).collect::<Vec<_>>(), "every record with n >= 10, once");
}
