//! `weir-node-agent`: the kubelet of a local control plane without a container runtime. It
//! registers node `local` and runs the pods bound to it as local processes.

use std::path::PathBuf;

use clap::Parser;
use weir_e2e::agent::{self, Config, images::ImageMapping, images::ImageTable};

/// Registers node `local` and runs the pods the scheduler binds to it as local processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Kubeconfig file with the node's identity, `system:node:local` (default: KUBECONFIG,
    /// then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Folder for pods' working directories, logs, pid files and volumes.
    #[arg(long)]
    state_dir: PathBuf,
    /// Image (without tag) or command basename mapped to a local program: NAME=PATH. Repeatable.
    #[arg(long = "image", value_name = "NAME=PATH")]
    images: Vec<ImageMapping>,
    /// Exit (stopping every pod) when this process is gone.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Folder of per-address locks shared by agents on this machine.
    #[arg(long)]
    ip_lock_dir: Option<PathBuf>,
    /// Delete the state dir when exiting.
    #[arg(long)]
    remove_state_dir: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Single-threaded on purpose: children are tied to the spawning thread's life (see
/// `agent::process::Spawner`), and this thread lives as long as the agent.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A closed stderr must not bring the agent (and its pods) down: tracing would panic
    // reporting the failed write on that same stderr.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let config = Config {
        kubeconfig: args.kubeconfig,
        state_dir: args.state_dir,
        images: ImageTable::new(args.images),
        watch_pid: args.watch_pid,
        remove_state_dir: args.remove_state_dir,
        ip_lock_dir: args.ip_lock_dir.unwrap_or_else(|| std::env::temp_dir().join("weir-node-agent-ips")),
    };
    agent::run(config).await?;
    Ok(())
}
