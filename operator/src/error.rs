//! The one error type of the operator library, with a short label per
//! variant for the `reason` of the errors metric.

/// What went wrong while reconciling a gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object cannot be acted on as it is (no namespace, no uid, a
    /// field the API server should have refused). Reported, not retried fast.
    #[error("malformed gateway: {0}")]
    Malformed(String),
    /// Reading an object from the API server failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A server-side apply of a child object failed.
    #[error("applying {what}: {source}")]
    Apply {
        /// The child being applied.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child object failed.
    #[error("deleting {what}: {source}")]
    Delete {
        /// The child being deleted.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the gateway's status failed.
    #[error("writing status: {0}")]
    PatchStatus(#[source] kube::Error),
    /// Creating or reading the control channel's certificates failed.
    #[error("control-channel certificates: {0}")]
    Pki(#[from] ringway_control::pki::PkiError),
    /// The control client could not be built from the certificates.
    #[error("control client: {0}")]
    ControlClient(#[from] ringway_control::ClientError),
}

impl Error {
    /// A short label for the `reason` of `ringway_operator_reconcile_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed",
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::PatchStatus(_) => "patch_status",
            Error::Pki(_) => "pki",
            Error::ControlClient(_) => "control_client",
        }
    }
}
