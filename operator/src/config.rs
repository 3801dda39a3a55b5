//! Settings the operator was installed with, shared by every reconcile.

/// Operator-wide defaults and switches.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Runtime image for StreamJobs that do not name one.
    pub runtime_image: String,
    /// Prometheus server KEDA queries when a StreamJob's autoscaling does not name one.
    pub prometheus_address: String,
    /// Port of the runtime's admin server (metrics, health, savepoints) inside each pod.
    pub admin_port: i32,
    /// Whether KEDA's `ScaledObject` API is served; without it autoscaling is reported, not rendered.
    pub keda_available: bool,
    /// Time between reconciles of a steady job, which refresh its consumer lag in status.
    pub resync_interval: std::time::Duration,
    /// Quiet time after a rollout before a rescale starts, so that a burst of `/scale`
    /// writes (KEDA, `kubectl scale`) becomes one savepoint rollout.
    pub rescale_stabilization: std::time::Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            runtime_image: format!("ghcr.io/weir-dev/weir-runtime:{}", env!("CARGO_PKG_VERSION")),
            prometheus_address: "http://prometheus-operated.monitoring:9090".into(),
            admin_port: 9249,
            keda_available: true,
            resync_interval: std::time::Duration::from_secs(30),
            rescale_stabilization: std::time::Duration::from_secs(30),
        }
    }
}
