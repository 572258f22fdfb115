use wharf_meta::MetaError;
use wharf_oci::Digest;
use wharf_store::StoreError;

/// Why a registry operation failed. The API layer maps each variant to an OCI
/// error code and HTTP status in one exhaustive `match`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// A chunk did not start where the upload ends.
    #[error("chunk out of order: the upload holds {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references blob {0}, which this repository does not have")]
    ManifestBlobUnknown(Digest),
    #[error("index references manifest {0}, which this repository does not have")]
    ManifestChildUnknown(Digest),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("the manifest is listed by index {0}: delete the index first")]
    ManifestReferenced(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest is larger than the 4 MiB limit")]
    ManifestTooLarge,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("size invalid: {0}")]
    SizeInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    /// The client went away or sent a broken body; nothing was recorded.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The push would take the project past its quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A project rule protects the tag from being moved or deleted.
    #[error("{0}")]
    Immutable(String),
    /// A project policy that cannot be used (bad pattern, zero count).
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// Something else holds what this needs; try again later.
    #[error("{0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<MetaError> for CoreError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Referenced(d) => CoreError::ManifestReferenced(d),
            MetaError::QuotaExceeded {
                project,
                used,
                adding,
                limit,
            } => CoreError::QuotaExceeded(crate::policy::quota_message(
                &project, used, adding, limit,
            )),
            MetaError::Immutable(t) => CoreError::Immutable(format!("tag {t} is immutable")),
            e => CoreError::Internal(e.to_string()),
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UploadNotFound(_) => CoreError::BlobUploadUnknown,
            // The store holds fewer bytes than the metadata says: a power loss
            // took unsynced upload data. The client must start again.
            e @ StoreError::OffsetMismatch { .. } => {
                tracing::warn!(error = %e, "upload data lost; the client must restart the upload");
                CoreError::BlobUploadUnknown
            }
            StoreError::Body(e) => CoreError::Body(e.to_string()),
            StoreError::Io(e) => CoreError::Internal(e.to_string()),
        }
    }
}
