//! `weir-runtime --job FILE`: runs one StreamJob until SIGTERM, then drains, commits and exits 0.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, sync::atomic::Ordering};

use clap::Parser;
use tracing::{error, info, warn};
use weir_crds::JobDocument;
use weir_runtime::{
    admin,
    assignment::AssignmentMode,
    kafka::config::SecretMounts,
    metrics::Metrics,
    runner::{self, Settings, Shared},
    telemetry::Telemetry,
};

#[derive(Debug, Parser)]
#[command(version, about = "Runs a Weir StreamJob's Kafka pipeline")]
struct Args {
    /// StreamJob file: the whole resource or its spec, YAML or JSON.
    #[arg(long)]
    job: PathBuf,
    /// Address of the admin server (metrics, health, status).
    #[arg(long, env = "WEIR_ADMIN_ADDR", default_value = "0.0.0.0:9249")]
    admin_addr: SocketAddr,
    /// Job name for metrics and the default group id; defaults to the resource's name.
    #[arg(long, env = "WEIR_JOB_NAME")]
    name: Option<String>,
    /// Namespace for the default group id; defaults to the resource's namespace.
    #[arg(long, env = "WEIR_JOB_NAMESPACE")]
    namespace: Option<String>,
    /// This instance's name (the pod name): its transactional id and savepoint manifest.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Who assigns partitions: a Kafka consumer group, or the operator (`POST /assign`).
    #[arg(long, env = "WEIR_ASSIGNMENT", value_enum, default_value_t = AssignmentMode::Group)]
    assignment: AssignmentMode,
    /// Savepoint to start from (partitions without newer checkpoints of this lineage): an id
    /// in the job's own storage, or the URL of any savepoint's folder (another job's).
    #[arg(long, env = "WEIR_RESTORE_FROM")]
    restore_from: Option<String>,
    /// Folder where Kafka and schema registry credentials are mounted.
    #[arg(long, env = "WEIR_SECRETS_DIR", default_value = "/var/run/secrets/weir")]
    secrets_dir: PathBuf,
    /// Serialized protobuf `FileDescriptorSet` of a `protobuf` source (the operator mounts
    /// the ConfigMap key `spec.source.kafka.protobuf.descriptorSet` and passes its path).
    #[arg(long, env = "WEIR_DESCRIPTOR_SET")]
    descriptor_set: Option<PathBuf>,
    /// File holding the admin token (the operator mounts the job's `<job>-admin-token`
    /// Secret): every admin request but metrics and health checks must present it. Without
    /// it the admin routes are open to whoever reaches the port.
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// How often the source topic is checked for added partitions, e.g. `30s`.
    #[arg(long, default_value = "30s")]
    partition_discovery_interval: weir_crds::Duration,
    /// Time between offset commits, e.g. `1s`.
    #[arg(long, default_value = "1s")]
    commit_interval: weir_crds::Duration,
    /// File to write the fatal error to when the job stops on one (Kubernetes shows it as
    /// the container's termination message), e.g. `/dev/termination-log`.
    #[arg(long, env = "WEIR_TERMINATION_LOG")]
    termination_log: Option<PathBuf>,
    /// Log format: `json` or `text`.
    #[arg(long, env = "WEIR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args.log_format);
    let text = match std::fs::read_to_string(&args.job) {
        Ok(text) => text,
        Err(e) => {
            error!("cannot read {}: {e}", args.job.display());
            return ExitCode::from(2);
        }
    };
    let document = match JobDocument::parse(&text) {
        Ok(document) => document,
        Err(e) => {
            error!("{}: {e}", args.job.display());
            return ExitCode::from(2);
        }
    };
    let access = match admin_access(args.admin_token_file.as_deref()) {
        Ok(access) => access,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let name = args.name.clone().or(document.name.clone()).unwrap_or_else(|| "streamjob".into());
    let namespace = args.namespace.clone().or(document.namespace.clone()).unwrap_or_else(|| "default".into());
    let group_id = document.spec.group_id(&namespace, &name);
    let metrics = match Metrics::new(&name) {
        Ok(metrics) => metrics,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Arc::new(Shared::new(metrics));
    shared.set_assignment_mode(args.assignment);
    let instance = args.instance.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| name.clone())
    });
    // Built before the async runtime: the exporter's blocking client runs on its own thread.
    // A tracing setup that does not work costs the spans, not the job.
    let telemetry = Telemetry::from_env().unwrap_or_else(|e| {
        warn!("{e}; running without exporting spans");
        None
    });
    let spans = telemetry.as_ref().map(|t| t.spans(&name, &group_id));
    if telemetry.is_some() {
        info!("exporting spans over OTLP/HTTP");
    }
    let settings = Settings {
        name,
        instance,
        restore_from: args.restore_from.clone().filter(|s| !s.is_empty()),
        group_id,
        spec: document.spec,
        secrets: SecretMounts::new(&args.secrets_dir),
        descriptor_set: args.descriptor_set.clone(),
        commit_interval: args.commit_interval.get(),
        partition_discovery: args.partition_discovery_interval.get(),
        spans,
        assignment: args.assignment,
    };
    let result = serve_and_run(args.admin_addr, settings, shared, access);
    // After a drain (SIGTERM) or a fatal error alike: export the spans still queued.
    if let Some(Err(e)) = telemetry.as_ref().map(Telemetry::shutdown) {
        error!("{e}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            if let Some(path) = &args.termination_log {
                write_termination_message(path, &e);
            }
            ExitCode::FAILURE
        }
    }
}

/// Kubernetes keeps at most 4096 bytes of a termination message.
fn write_termination_message(path: &std::path::Path, message: &str) {
    let mut end = message.len().min(4096);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(e) = std::fs::write(path, &message[..end]) {
        error!("writing the termination message to {}: {e}", path.display());
    }
}

/// Who may call the admin routes: holders of the token in `file`, or anyone without one.
fn admin_access(file: Option<&std::path::Path>) -> Result<admin::Access, String> {
    let Some(file) = file else {
        warn!("no --admin-token-file: the admin routes (savepoints, assignment, status) are open to anyone");
        return Ok(admin::Access::Open);
    };
    let token = std::fs::read_to_string(file).map_err(|e| format!("admin token {}: {e}", file.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("admin token {} is empty", file.display()));
    }
    Ok(admin::Access::Token(token.into()))
}

fn serve_and_run(
    admin_addr: SocketAddr,
    settings: Settings,
    shared: Arc<Shared>,
    access: admin::Access,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async move {
        let admin = tokio::spawn(admin::serve(admin_addr, shared.clone(), access));
        let on_signal = shared.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("stopping: draining in-flight records");
            on_signal.shutdown.store(true, Ordering::Relaxed);
        });
        info!(%admin_addr, job = settings.name, "starting");
        let handle = tokio::runtime::Handle::current();
        let job = tokio::task::spawn_blocking(move || runner::run(settings, shared, handle));
        tokio::select! {
            result = job => result.map_err(|e| format!("job thread: {e}"))?.map_err(|e| e.to_string()),
            result = admin => Err(format!("admin server on {admin_addr} stopped: {:?}", result.map_err(|e| e.to_string()))),
        }
    })
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
