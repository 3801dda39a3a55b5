//! How the operator copes with many jobs: applies N StreamJobs at once (parallelism 0, so no
//! runtime pods; kube-controller-manager's Deployment controller writes their status) to the
//! local Kubernetes control plane
//! and reports the time until every job has its children and `Ready=True`, the reconcile
//! latency percentiles from the operator's own histogram, and the operator's memory.
//!
//!     cargo bench -p weir-operator --bench scale            # 1000 jobs
//!     WEIR_BENCH_JOBS=200 cargo bench -p weir-operator --bench scale
//!     WEIR_BENCH_CONCURRENCY=4 cargo bench -p weir-operator --bench scale   # --concurrency (the most)
//!     WEIR_BENCH_LATENCY_TARGET=100ms cargo bench -p weir-operator --bench scale   # --api-latency-target

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};
use weir_crds::StreamJob;
use weir_e2e::{cluster::LocalCluster, http_get, operator_process::OperatorProcess};

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

/// What the bench watches: the jobs and the Deployments, each in a reflector store. Polling
/// with `kubectl get` instead would spend the cores the operator is measured on.
struct Watched {
    jobs: Store<StreamJob>,
    deployments: Store<Deployment>,
    _runtime: tokio::runtime::Runtime,
}

impl Watched {
    fn start(kubeconfig: &Path) -> Self {
        let runtime = must(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build(), "tokio");
        let client = runtime.block_on(async {
            let kubeconfig = must(Kubeconfig::read_from(kubeconfig), "reading the kubeconfig");
            let config =
                must(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await, "config");
            must(Client::try_from(config), "client")
        });
        let jobs = reflect::<StreamJob>(&runtime, &client);
        let deployments = reflect::<Deployment>(&runtime, &client);
        Self { jobs, deployments, _runtime: runtime }
    }

    /// Jobs with `Ready=True`, and Deployments.
    fn progress(&self) -> (usize, usize) {
        let ready = self.jobs.state().iter().filter(|job| ready(job)).count();
        (ready, self.deployments.state().len())
    }
}

fn reflect<K>(runtime: &tokio::runtime::Runtime, client: &Client) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff().reflect(writer);
    runtime.spawn(stream.for_each(|_| std::future::ready(())));
    reader
}

fn ready(job: &StreamJob) -> bool {
    job.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The upper bound of the bucket holding quantile `q` of the histogram series whose bucket
/// lines start with `series` (the name and the labels before `le`).
fn quantile(metrics: &str, series: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(series))
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
    let cluster = must(LocalCluster::start(), "starting the local cluster");
    must(cluster.install_crds(), "installing the CRDs");
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
    let target = std::env::var("WEIR_BENCH_LATENCY_TARGET").ok();
    if let Some(target) = &target {
        args.extend(["--api-latency-target", target.as_str()]);
    }
    let operator = must(OperatorProcess::start(binary, cluster.kubeconfig(), log, &args), "operator");
    let leading = weir_e2e::wait_until(Duration::from_secs(30), "the operator to lead", || {
        http_get(operator.metrics_addr(), "/metrics")
            .is_ok_and(|(_, body)| weir_e2e::metric_value(&body, "weir_operator_leader") == Some(1.0))
    });
    must(leading, "operator");
    let baseline = memory_kib(operator.pid(), "VmRSS:").unwrap_or(0);

    let watched = Watched::start(cluster.kubeconfig());
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
    // Three minutes for 1,000 jobs, and as long again per further 1,000.
    let deadline = started + Duration::from_secs(180 * jobs.div_ceil(1000).max(1) as u64);
    let (mut ready, mut deployments) = (0, 0);
    while Instant::now() < deadline {
        (ready, deployments) = watched.progress();
        if ready == jobs && deployments == jobs {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let settled = started.elapsed();
    let (_, metrics) = must(http_get(operator.metrics_addr(), "/metrics"), "operator metrics");
    let reconciles_ok = "weir_operator_reconcile_duration_seconds_bucket{result=\"ok\",";
    let ms = |q| quantile(&metrics, reconciles_ok, q).map_or("?".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
    println!("\n| figure | value | target |\n|---|---|---|");
    println!("| jobs with children and Ready=True | {ready}/{jobs} (Deployments: {deployments}) | all |");
    println!("| time from first apply to all Ready | {:.1} s | < 60 s |", settled.as_secs_f64());
    println!("| reconcile p50 (bucket bound) | ≤ {} | |", ms(0.5));
    println!("| reconcile p99 (bucket bound) | ≤ {} | < 100 ms |", ms(0.99));
    let waits = "weir_operator_reconcile_wait_seconds_bucket{";
    let wait = |q| quantile(&metrics, waits, q).map_or("?".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
    println!("| waited for a slot p50 / p99 (bucket bound) | ≤ {} / ≤ {} | |", wait(0.5), wait(0.99));
    let limit = weir_e2e::metric_value(&metrics, "weir_operator_reconcile_limit").unwrap_or(0.0);
    println!("| reconciles allowed at once at the end | {limit} | |");
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
    println!("\n| API requests by verb and resource | count | per job | answered p50 / p99 |\n|---|---|---|---|");
    for (name, count) in calls {
        let (verb, resource) = name.split_once(' ').unwrap_or_default();
        let series =
            format!("weir_operator_api_request_duration_seconds_bucket{{resource=\"{resource}\",verb=\"{verb}\",");
        let ms = |q| quantile(&metrics, &series, q).map_or("?".to_owned(), |s| format!("≤ {:.0} ms", s * 1000.0));
        println!("| {name} | {count} | {:.2} | {} / {} |", count / jobs as f64, ms(0.5), ms(0.99));
    }
}
