//! Content-addressed blob storage.
//!
//! A [`BlobStore`] holds blob bytes and the bytes of unfinished uploads. It knows
//! nothing of repositories: which repository may see which blob is metadata
//! (`wharf-meta`). Digests are verified by the caller before
//! [`BlobStore::commit_upload`]; the store's job is to make that commit atomic.

use std::ops::RangeInclusive;

use bytes::Bytes;
use futures::stream::BoxStream;
use wharf_oci::Digest;

pub mod fs;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// A stream of bytes in or out of the store.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The upload session has no data in the store (never created, committed or deleted).
    #[error("upload {0} not found")]
    UploadNotFound(String),
    /// The caller's offset does not match what the store holds.
    #[error("upload {id} holds {actual} bytes, not {expected}")]
    OffsetMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    /// The request body failed while it was being read (client went away).
    #[error("reading the request body failed: {0}")]
    Body(std::io::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A committed blob opened for reading.
pub struct BlobRead {
    /// The whole blob's size, whatever range was asked for.
    pub size: u64,
    pub stream: ByteStream,
}

/// Storage for blob bytes.
///
/// Contract, proven for every backend by [`testsuite`]:
/// - A blob is visible (to `stat` and `open`) only after `commit_upload` returned
///   `Ok`, and then whole: no reader ever sees a partial blob, whatever crashes.
/// - Committing the same digest twice keeps one copy and succeeds both times.
/// - Upload ids are opaque strings the caller chose and validated (path-safe).
/// - Methods are safe to call concurrently; different uploads never interfere.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The size of a committed blob, or `None` if absent.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;

    /// Opens a committed blob, optionally only the bytes of `range` (inclusive,
    /// already checked by the caller against the size from `stat`). `None` if absent.
    async fn open(
        &self,
        digest: &Digest,
        range: Option<RangeInclusive<u64>>,
    ) -> Result<Option<BlobRead>, StoreError>;

    /// Removes a committed blob. Returns whether it existed. Readers that already
    /// opened it may finish.
    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError>;

    /// [`delete`](Self::delete) of each digest, one after the other; one
    /// result per digest, in order. For garbage collection: a backend can
    /// save a round trip per blob, and should run the work at a low CPU
    /// priority, since it is background work that must not delay requests.
    async fn delete_many(&self, digests: &[Digest]) -> Vec<Result<bool, StoreError>> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            out.push(self.delete(d).await);
        }
        out
    }

    /// Creates an empty upload. Creating an existing one resets it to empty.
    async fn create_upload(&self, id: &str) -> Result<(), StoreError>;

    /// Appends `data` to the upload, which the caller believes holds `offset`
    /// bytes. Bytes the store holds beyond `offset` (left by an append that failed
    /// half way) are discarded first; holding fewer is `OffsetMismatch`. On `Ok`
    /// the new size is returned and the bytes survive a crash of the process,
    /// though not necessarily a power loss (then a later call reports
    /// `OffsetMismatch` and the client starts the upload again). On `Err` the
    /// upload still holds at least its first `offset` bytes unchanged.
    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
    ) -> Result<u64, StoreError>;

    /// Streams the first `size` bytes of an upload (to re-hash it).
    async fn read_upload(&self, id: &str, size: u64) -> Result<ByteStream, StoreError>;

    /// Makes the first `size` bytes of the upload visible as blob `digest`,
    /// atomically and durably, and removes the upload. The caller has verified
    /// the digest. An upload holding fewer than `size` bytes is `OffsetMismatch`
    /// and nothing becomes visible.
    async fn commit_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<(), StoreError>;

    /// Removes an upload's data. Removing an absent upload is not an error.
    async fn delete_upload(&self, id: &str) -> Result<(), StoreError>;
}
