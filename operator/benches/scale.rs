//! How the operator copes with many jobs: applies N StreamJobs at once (parallelism 0, so no
//! runtime pods; the node agent plays the Deployment controller) to the local control plane
//! and reports the time until every job has its children and `Ready=True`, the reconcile
//! latency percentiles from the operator's own histogram, and the operator's memory.
//!
//!     cargo bench -p weir-operator --bench scale            # 1000 jobs
//!     WEIR_BENCH_JOBS=200 cargo bench -p weir-operator --bench scale
//!     WEIR_BENCH_CONCURRENCY=4 cargo bench -p weir-operator --bench scale   # --concurrency

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_e2e::{
    agent_process::{AgentOptions, NodeAgent},
    devcluster::DevCluster,
    http_get,
    operator_process::OperatorProcess,
    workspace_binary,
};

const NAMESPACES: usize = 10;
const APPLIERS: usize = 8;

fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn job(index: usize) -> Value {
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": format!("job-{index}"), "namespace": format!("bench-{}", index % NAMESPACES)},
        "spec": {"parallelism": 0,
            "source": {"kafka": {"bootstrapServers": "kafka:9092", "topic": format!("in-{index}")}},
            "pipeline": [{"filter": "amount > 0"}],
            "sink": {"kafka": {"bootstrapServers": "kafka:9092", "topic": format!("out-{index}")}}}})
}

/// Jobs with `Ready=True` and Deployments, counted from one list each.
fn progress(cluster: &DevCluster) -> (usize, usize) {
    let list = |kind: &str| -> Value {
        let output = must(cluster.kubectl(["get", kind, "-A", "-o", "json"]), "kubectl get");
        serde_json::from_slice(&output.stdout).unwrap_or_default()
    };
    let jobs = list("streamjobs");
    let ready = jobs["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|j| {
                j["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .count()
    });
    let deployments = list("deployments")["items"].as_array().map_or(0, Vec::len);
    (ready, deployments)
}

/// The upper bound of the histogram bucket holding quantile `q` of reconcile durations.
fn quantile(metrics: &str, q: f64) -> Option<f64> {
    let prefix = "weir_operator_reconcile_duration_seconds_bucket{";
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains("result=\"ok\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets.iter().find(|(_, count)| *count >= q * total).map(|(le, _)| *le)
}

/// API requests the operator sent, by `verb resource`, from `weir_operator_api_requests_total`.
fn api_requests(metrics: &str) -> Vec<(String, f64)> {
    let prefix = "weir_operator_api_requests_total{";
    let label = |line: &str, name: &str| -> Option<String> {
        Some(line.split(&format!("{name}=\"")).nth(1)?.split('"').next()?.to_owned())
    };
    let mut calls: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let name = format!("{} {}", label(l, "verb")?, label(l, "resource")?);
            Some((name, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    calls
}

/// The share of reconciles (result `ok`) that took at most `bound` seconds, when `bound` is
/// a bucket bound.
fn share_within(metrics: &str, bound: &str) -> Option<f64> {
    let series = |le: &str| format!("weir_operator_reconcile_duration_seconds_bucket{{result=\"ok\",le=\"{le}\"}}");
    Some(weir_e2e::metric_value(metrics, &series(bound))? / weir_e2e::metric_value(metrics, &series("+Inf"))?)
}

fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let jobs: usize = std::env::var("WEIR_BENCH_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let cluster = must(DevCluster::start(), "starting the devcluster");
    must(cluster.install_crds(), "installing the CRDs");
    let agent_binary = must(workspace_binary("weir-node-agent"), "weir-node-agent");
    let _agent = must(NodeAgent::start(agent_binary, cluster.kubeconfig(), &AgentOptions::default()), "node agent");
    for n in 0..NAMESPACES {
        must(cluster.kubectl(["create", "namespace", &format!("bench-{n}")]), "kubectl create namespace");
    }
    let log = std::env::temp_dir().join(format!("weir-operator-bench-{}.log", std::process::id()));
    let binary = Path::new(env!("CARGO_BIN_EXE_weir-operator"));
    // `WEIR_BENCH_CONCURRENCY`: reconciles at once (the operator's `--concurrency`).
    let concurrency = std::env::var("WEIR_BENCH_CONCURRENCY").ok();
    let mut args = vec!["--identity", "bench"];
    if let Some(concurrency) = &concurrency {
        args.extend(["--concurrency", concurrency.as_str()]);
    }
    let operator = must(OperatorProcess::start(binary, cluster.kubeconfig(), log, &args), "operator");
    let leading = weir_e2e::wait_until(Duration::from_secs(30), "the operator to lead", || {
        http_get(operator.metrics_addr(), "/metrics")
            .is_ok_and(|(_, body)| weir_e2e::metric_value(&body, "weir_operator_leader") == Some(1.0))
    });
    must(leading, "operator");
    let baseline = memory_kib(operator.pid(), "VmRSS:").unwrap_or(0);

    println!("applying {jobs} StreamJobs with {APPLIERS} concurrent kubectl processes");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for applier in 0..APPLIERS {
            let cluster = &cluster;
            scope.spawn(move || {
                let items: Vec<Value> = (applier..jobs).step_by(APPLIERS).map(job).collect();
                let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
                let output = must(cluster.kubectl_stdin(&["apply", "-f", "-"], &list.to_string()), "kubectl apply");
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            });
        }
    });
    let applied = started.elapsed();
    println!("applied in {:.1} s", applied.as_secs_f64());
    let deadline = started + Duration::from_secs(180);
    let (mut ready, mut deployments) = (0, 0);
    while Instant::now() < deadline {
        (ready, deployments) = progress(&cluster);
        if ready == jobs && deployments == jobs {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let settled = started.elapsed();
    let (_, metrics) = must(http_get(operator.metrics_addr(), "/metrics"), "operator metrics");
    let ms = |q| quantile(&metrics, q).map_or("?".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
    println!("\n| figure | value | target |\n|---|---|---|");
    println!("| jobs with children and Ready=True | {ready}/{jobs} (Deployments: {deployments}) | all |");
    println!("| time from first apply to all Ready | {:.1} s | < 60 s |", settled.as_secs_f64());
    println!("| reconcile p50 (bucket bound) | ≤ {} | |", ms(0.5));
    println!("| reconcile p99 (bucket bound) | ≤ {} | < 100 ms |", ms(0.99));
    let share = share_within(&metrics, "0.1").map_or("?".to_owned(), |s| format!("{:.1} %", s * 100.0));
    println!("| reconciles within 100 ms | {share} | |");
    let rss =
        |field| memory_kib(operator.pid(), field).map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "| operator RSS now / peak | {} / {} (idle before: {:.1} MiB) | < 64 MiB |",
        rss("VmRSS:"),
        rss("VmHWM:"),
        baseline as f64 / 1024.0
    );
    let reconciles: f64 = ["ok", "error"]
        .iter()
        .filter_map(|r| weir_e2e::metric_value(&metrics, &format!("weir_operator_reconciles_total{{result=\"{r}\"}}")))
        .sum();
    println!("| reconciles | {reconciles} ({:.2} per job) | |", reconciles / jobs as f64);
    let calls = api_requests(&metrics);
    // Watches are long-lived streams and leases are leader election: neither is reconcile work.
    let work: f64 =
        calls.iter().filter(|(name, _)| !name.starts_with("watch ") && !name.ends_with(" leases")).map(|c| c.1).sum();
    println!(
        "| API requests of reconciles | {work} ({:.2} per job, {:.2} per reconcile) | |",
        work / jobs as f64,
        work / reconciles.max(1.0)
    );
    println!("\n| API requests by verb and resource | count | per job |\n|---|---|---|");
    for (name, count) in calls {
        println!("| {name} | {count} | {:.2} |", count / jobs as f64);
    }
}
