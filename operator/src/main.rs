//! `weir-operator`: reconciles StreamJobs while it holds the leader lease.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use clap::Parser;
use kube::runtime::events::Reporter;
use tracing::{error, info};
use weir_operator::{
    admin, api_client,
    config::OperatorConfig,
    controller::{self, ControllerSettings},
    events::Announcer,
    leader::{LeaderElector, LeaseSettings},
    metrics::Metrics,
    reconcile::Context,
    throttle::{Limiter, Throttle},
};

/// Fewest StreamJobs reconciled at once, however slowly the API server answers: one slow
/// reconcile (a savepoint) leaves another to go on.
const MIN_CONCURRENCY: usize = 2;

#[derive(Debug, Parser)]
#[command(version, about = "Runs Weir StreamJobs on Kubernetes")]
struct Args {
    /// Watch StreamJobs in this namespace only; all namespaces when unset.
    #[arg(long, env = "WEIR_NAMESPACE")]
    namespace: Option<String>,
    /// Runtime image of StreamJobs that do not set `spec.image`.
    #[arg(long, env = "WEIR_RUNTIME_IMAGE")]
    runtime_image: Option<String>,
    /// Prometheus server KEDA queries for consumer lag, unless a StreamJob names one.
    #[arg(long, env = "WEIR_PROMETHEUS_ADDRESS", default_value = "http://prometheus-operated.monitoring:9090")]
    prometheus_address: String,
    /// Address of the operator's `/metrics` and `/healthz`.
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Time between reconciles of a steady job, which refresh its consumer lag in status.
    #[arg(long, default_value = "30s")]
    resync_interval: weir_crds::Duration,
    /// Quiet time after a rollout before a rescale (from KEDA or `kubectl scale`) starts; a
    /// scale-down also waits until the smaller parallelism has been asked for this long.
    #[arg(long, default_value = "30s")]
    rescale_stabilization: weir_crds::Duration,
    /// Most StreamJobs reconciled at once. The operator starts with 2 and adds one at a time
    /// while the API server answers within `--api-latency-target`; it backs off when it does
    /// not (see the user guide).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// How long nine in ten API requests may take before the operator reconciles fewer
    /// StreamJobs at once.
    #[arg(long, default_value = "25ms")]
    api_latency_target: weir_crds::Duration,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "weir-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long the lease lasts without renewal: the longest a failover takes.
    #[arg(long, default_value = "15s")]
    lease_duration: weir_crds::Duration,
    /// This replica's identity in the election; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: `json` or `text`.
    #[arg(long, env = "WEIR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log_format);
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::new()?);
    let limiter = Limiter::new(MIN_CONCURRENCY, args.concurrency.into(), args.api_latency_target.get());
    let throttle = Arc::new(Throttle::new(limiter));
    let client = api_client::measured_client(metrics.clone(), throttle.clone()).await?;
    let served = metrics.clone();
    let metrics_addr = args.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = admin::serve(metrics_addr, served).await {
            error!("admin server on {metrics_addr}: {e}");
        }
    });
    let identity = args.identity.clone().unwrap_or_else(|| format!("weir-operator-{}", std::process::id()));
    let mut elector = LeaderElector::new(
        client.clone(),
        LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            duration: args.lease_duration.get(),
        },
    );
    info!(%identity, "waiting for the leader lease");
    tokio::select! {
        () = elector.acquire() => {}
        () = wait_for_signal() => return Ok(ExitCode::SUCCESS),
    }
    info!(%identity, "leading");
    metrics.leader.set(1);

    let mut config = OperatorConfig {
        prometheus_address: args.prometheus_address.clone(),
        resync_interval: args.resync_interval.get(),
        rescale_stabilization: args.rescale_stabilization.get(),
        ..OperatorConfig::default()
    };
    if let Some(image) = args.runtime_image.clone() {
        config.runtime_image = image;
    }
    config.keda_available = controller::keda_installed(&client, args.namespace.as_deref()).await;
    if !config.keda_available {
        info!("KEDA's ScaledObject API is not served: autoscaling settings will not be rendered");
    }
    let reporter = Reporter { controller: "weir-operator".into(), instance: Some(identity) };
    let announcer = Announcer::start(client.clone(), reporter, metrics.events_dropped.clone());
    let ctx = Arc::new(Context::new(client, announcer, throttle, metrics.clone(), config));
    let settings = ControllerSettings { namespace: args.namespace.clone(), concurrency: args.concurrency };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(controller::run(ctx, settings, async move {
        let _ = stopped.await;
    }));
    tokio::select! {
        () = elector.hold() => {
            // Another replica may act from now on: stop at once rather than race it.
            error!("lost the leader lease; exiting");
            running.abort();
            metrics.leader.set(0);
            Ok(ExitCode::FAILURE)
        }
        _ = &mut running => Ok(ExitCode::FAILURE),
        () = wait_for_signal() => {
            let _ = stop.send(());
            let _ = running.await;
            elector.release().await;
            info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "text" { builder.init() } else { builder.json().init() }
}
