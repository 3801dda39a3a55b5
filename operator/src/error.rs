//! What can go wrong in a reconcile, with a short category for metrics.

/// A reconcile failure. Invalid specs are not errors: they are reported in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field the API server always sets.
    #[error("StreamJob has no {0}")]
    MissingField(&'static str),
    /// An object could not be serialized.
    #[error("serializing: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A rendered object could not be built.
    #[error("rendering {0}")]
    Render(String),
    /// Server-side apply of a child failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: String,
        /// Name of the child.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Another API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// A savepoint before a rollout failed; the old pods go on running.
    #[error("{0}")]
    Savepoint(String),
    /// The admin token Secret exists but holds no token.
    #[error("Secret {0} has no `token` key: delete it and the operator writes a new one")]
    AdminToken(String),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short, bounded category for the `reason` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingField(_) => "missing_field",
            Self::Serialize(_) | Self::Render(_) => "render",
            Self::Apply { .. } => "apply",
            Self::Api { .. } => "api",
            Self::Finalizer(_) => "finalizer",
            Self::Savepoint(_) => "savepoint",
            Self::AdminToken(_) => "admin_token",
        }
    }

    /// Wraps an API error with what was being done.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Api { what, source }
    }
}
