//! The whole local stack: a Kafka-protocol broker, the API server, the operator, the node
//! agent and runtime pods. A StreamJob applied with kubectl runs as pods that consume and
//! produce; its status reaches Running with the pods' lag; a rescale through `/scale`
//! changes the pods and loses no record.

use std::time::Duration;

use serde_json::json;
use weir_e2e::{
    kafka,
    stack::{LocalStack, running},
};

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn a_stream_job_runs_and_rescales_on_the_local_stack() {
    let started = std::time::Instant::now();
    let stack = must(LocalStack::start(&["--rescale-stabilization", "1s"]), "starting the stack");
    let step = |what: &str| eprintln!("{:>6.1}s {what}", started.elapsed().as_secs_f64());
    step("stack up");
    let bootstrap = stack.broker.bootstrap();
    must(stack.broker.create_topic("clicks", 2), "creating the input topic");
    must(stack.broker.create_topic("big-clicks", 2), "creating the output topic");
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": {"name": "clicks"}, "spec": {
        "parallelism": 2,
        "source": {"kafka": {"bootstrapServers": bootstrap, "topic": "clicks",
            "schema": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}]}},
        "pipeline": [{"filter": "n >= 10"}],
        "sink": {"kafka": {"bootstrapServers": bootstrap, "topic": "big-clicks", "keyField": "user"}},
    }});
    must(stack.apply(&job), "applying the job");

    let running_job = must(stack.wait_for_job("clicks", "2 ready pods and phase Running", WAIT, |j| running(j, 2)), "");
    step("running");
    assert_eq!(running_job["status"]["selector"], "weir.dev/streamjob=clicks");
    must(kafka::produce_clicks(&bootstrap, "clicks", 0..100), "producing clicks");
    let output = must(kafka::read_click_numbers(&bootstrap, "big-clicks", 90), "reading");
    assert_eq!(output, (10..100).collect::<Vec<_>>(), "every record with n >= 10, once");
    step("output read");
    must(stack.wait_for_job("clicks", "the consumer lag in status", WAIT, |j| j["status"]["consumerLag"].is_i64()), "");
    step("lag reported");

    must(stack.scale("clicks", 1), "kubectl scale");
    let rescaled = |j: &serde_json::Value| running(j, 1) && j["status"]["observedGeneration"] == 2;
    must(stack.wait_for_job("clicks", "1 ready pod after the rescale", WAIT, rescaled), "");
    step("rescaled");
    must(kafka::produce_clicks(&bootstrap, "clicks", 100..120), "producing clicks");
    let output = must(kafka::read_click_numbers(&bootstrap, "big-clicks", 110), "reading");
    assert_eq!(output, (10..120).collect::<Vec<_>>(), "nothing lost or repeated across the rescale");
}
