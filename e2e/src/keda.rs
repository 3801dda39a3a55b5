//! Real KEDA — its operator and metrics adapter, built from `github.com/kedacore/keda/v2` by
//! `e2e/keda/install.sh` — running for a [`LocalCluster`] (`e2e/keda/start.sh`).

use crate::{Error, cluster::LocalCluster, scripted::Scripted};

/// KEDA running for one cluster: its CRDs, RBAC and external-metrics APIService installed,
/// its operator and adapter acting with its ServiceAccount's token.
#[derive(Debug)]
pub struct Keda(Scripted);

impl Keda {
    /// Installs KEDA into `cluster` and starts it; returns once the external metrics API is
    /// Available.
    pub fn start(cluster: &LocalCluster) -> Result<Self, Error> {
        Scripted::start("keda", cluster).map(Self)
    }

    /// The operator's log so far.
    pub fn operator_log(&self) -> String {
        self.0.read("operator.log")
    }

    /// The adapter's log so far.
    pub fn adapter_log(&self) -> String {
        self.0.read("adapter.log")
    }
}
