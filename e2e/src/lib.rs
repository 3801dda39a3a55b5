//! Test infrastructure for Weir, owned by the project: a local Kubernetes control plane
//! (`devcluster`) built from Debian's packaged Kubernetes libraries, and helpers to drive it.

pub mod devcluster;

use std::{net::TcpListener, path::PathBuf};

/// The repository root, for scripts and manifests the tests use.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
