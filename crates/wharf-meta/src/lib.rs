//! Registry metadata: repositories, blob visibility, manifests and the blobs and
//! child manifests they reference, tags, referrers and upload sessions.
//!
//! The [`MetaStore`] trait is what the core is written against; [`sqlite`] is the
//! embedded backend. Catalog, tag listing, reference checks and (later) garbage
//! collection are queries here, never walks of the blob store.

use wharf_oci::{Digest, RepoName, Tag};

pub mod auth;
pub mod sqlite;

pub use auth::{
    AuditEntry, AuditFilter, AuthStore, Credential, CredentialKind, Member, Permission, Project,
    Role, Throttle, ThrottleKey, ThrottlePolicy, User,
};
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A manifest names a blob the repository cannot see.
    #[error("blob {0} is not known in this repository")]
    MissingBlob(Digest),
    /// An index names a manifest the repository does not hold.
    #[error("manifest {0} is not known in this repository")]
    MissingManifest(Digest),
    /// The record changed under the caller (e.g. an upload's offset moved).
    #[error("conflicting concurrent change")]
    Conflict,
    /// The manifest is a child of an index in the same repository.
    #[error("manifest is referenced by index {0}")]
    Referenced(Digest),
    /// A record with this key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A record the operation refers to does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// Storing the manifest would take its project past its quota.
    #[error(
        "quota of project {project} exceeded: {used} bytes used, {adding} more needed, {limit} allowed"
    )]
    QuotaExceeded {
        project: String,
        used: u64,
        adding: u64,
        limit: u64,
    },
    /// The tag exists and may not be moved to another manifest.
    #[error("tag {0} is immutable")]
    Immutable(String),
    /// The caller no longer holds the named lease (it expired and another
    /// holder may have taken it).
    #[error("lease {0} is not held")]
    LeaseLost(String),
    #[error("metadata backend error: {0}")]
    Backend(String),
}

/// Conditions a manifest must meet to be stored, checked in the same
/// transaction as the store.
#[derive(Debug, Clone, Default)]
pub struct PutChecks {
    /// The repository's project and its quota in bytes: the project's usage
    /// (see [`MetaStore::project_usage`]) after the store may not exceed it
    /// unless the manifest adds nothing.
    pub quota: Option<(String, u64)>,
    /// Tags (of those given) that, if they exist, must already point at
    /// this manifest.
    pub immutable_tags: Vec<String>,
    /// Accept references to blobs the repository does not have and index
    /// children it does not hold (`storage.manifests.sparse`): they are
    /// recorded as references all the same.
    pub sparse: bool,
}

/// Per-project rules. Stored as given; `wharf-core` validates patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPolicy {
    /// Most bytes the project may use; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Tags matching any of these may not be overwritten or deleted.
    #[serde(default)]
    pub immutable: Vec<TagRule>,
    /// Which tags retention keeps; empty means retention is off.
    #[serde(default)]
    pub retention: Vec<RetentionRule>,
}

/// Repositories (relative to the project, e.g. `app/**`) and tags, as globs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    #[serde(default = "any_pattern")]
    pub repositories: String,
    pub tags: String,
}

/// Keeps the tags matching `repositories`/`tags` that `keep` selects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    #[serde(default = "any_pattern")]
    pub repositories: String,
    #[serde(default = "any_pattern")]
    pub tags: String,
    pub keep: Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Keep {
    /// Every matching tag.
    Always,
    /// The N most recently pushed matching tags of each repository.
    Newest(u32),
    /// Matching tags pushed within N days.
    PushedWithinDays(u32),
    /// Matching tags whose manifest was pulled within N days.
    PulledWithinDays(u32),
}

fn any_pattern() -> String {
    "**".into()
}

/// A tag with the times retention decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub repo: RepoName,
    pub tag: String,
    pub digest: Digest,
    /// When the tag was last pushed (set or re-set), ms.
    pub pushed_at_ms: i64,
    /// When its manifest was last pulled in this repository, ms, if ever.
    pub pulled_at_ms: Option<i64>,
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
    /// The artifact type a referrers listing reports.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's annotations as a JSON object, for referrers listings.
    pub annotations: Option<String>,
}

/// What a new manifest references; checked and recorded in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ManifestRefs {
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
}

/// A manifest that names another as its `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// An upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub repo: RepoName,
    /// Bytes received and durable so far.
    pub size: u64,
    /// The digest hasher's saved state after `size` bytes; `None` means re-hash.
    pub hash_state: Option<Vec<u8>>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One repository of a distribution root, read by `wharf import`: what is
/// stored in it, to be recorded in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ImportBatch {
    /// Blobs the repository links (`_layers`), with their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Manifests (`_manifests/revisions`) and what they reference. Each
    /// manifest's own blob file (distribution keeps manifests as blobs) is
    /// recorded as a blob the manifest references, so that a collection
    /// keeps it while the manifest exists: distribution, started again on
    /// the root, still reads it.
    pub manifests: Vec<(ManifestRecord, ManifestRefs)>,
    /// Tags (`_manifests/tags/*/current`); each names one of `manifests` or
    /// a manifest the repository holds already.
    pub tags: Vec<(Tag, Digest)>,
}

/// Where the import of a distribution root stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportState {
    /// A root was found and is not fully imported: collections wait.
    Pending,
    Complete,
}

/// The name of the lease a garbage collector holds while it works.
pub const GC_LEASE: &str = "gc";

/// Who holds a lease, since when and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// Whether items exist after the last one returned.
    pub more: bool,
}

/// Metadata storage.
///
/// Contract, proven for every backend by [`testsuite`]:
/// - Every method is atomic: it happens whole or not at all, and a concurrent
///   caller never sees half of it.
/// - Listings are sorted by byte-wise string order and paginate with an
///   exclusive `last` bound.
/// - A repository exists once anything was recorded in it; it is listed in the
///   catalog while it holds at least one manifest.
#[async_trait::async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Records that blob `digest` of `size` bytes is about to be committed to
    /// the blob store (or already is): creates its record, or refreshes it so
    /// that a garbage collection will not choose it for the grace period.
    /// With `pin` (an upload session's id), the blob is also pinned until
    /// that upload is finished by [`link_blob`](Self::link_blob) or removed:
    /// no collection chooses a pinned blob, whatever its grace period.
    /// `Conflict` while a live collection (one holding [`GC_LEASE`]) is
    /// deleting it: the caller waits and retries, and must not commit the
    /// bytes meanwhile. A mark left by a collector that no longer holds the
    /// lease is cleared instead: the caller's commit puts the bytes back.
    async fn record_blob(
        &self,
        digest: &Digest,
        size: u64,
        now_ms: i64,
        pin: Option<&str>,
    ) -> Result<(), MetaError>;

    /// Makes recorded blob `digest` visible in `repo`, or refreshes that
    /// link; with `finished_upload`, also removes that upload session (and
    /// its pin) in the same transaction. `MissingBlob` if the blob has no
    /// record or a collection is deleting it.
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        finished_upload: Option<&str>,
    ) -> Result<(), MetaError>;

    /// The blob's size if `repo` may see it.
    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError>;

    /// The blob's size if any repository links it.
    async fn blob_known(&self, digest: &Digest) -> Result<Option<u64>, MetaError>;

    /// Removes `repo`'s link to a blob. Returns whether there was one.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError>;

    /// Stores a manifest (replacing nothing if the digest is already there) and,
    /// if given, points `tag` at it. In the same transaction, every blob in
    /// `refs.blobs` must be linked in `repo` (else `MissingBlob`) and every
    /// manifest in `refs.children` must be in `repo` (else `MissingManifest`);
    /// on error nothing is stored.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: &ManifestRecord,
        refs: &ManifestRefs,
        tag: Option<&Tag>,
    ) -> Result<(), MetaError> {
        let tags = tag.map(std::slice::from_ref).unwrap_or(&[]);
        self.put_manifest_checked(repo, manifest, refs, tags, &PutChecks::default())
            .await
    }

    /// [`put_manifest`](Self::put_manifest) that points every one of `tags`
    /// at the manifest and also enforces `checks`: `QuotaExceeded` or
    /// `Immutable`, and nothing stored, when one fails.
    async fn put_manifest_checked(
        &self,
        repo: &RepoName,
        manifest: &ManifestRecord,
        refs: &ManifestRefs,
        tags: &[Tag],
        checks: &PutChecks,
    ) -> Result<(), MetaError>;

    /// The manifest a tag points at.
    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError>;

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError>;

    /// Deletes a manifest, the tags that point at it and its reference edges.
    /// Returns whether it existed. `Referenced` (and nothing deleted) while an
    /// index in the repository lists it.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError>;

    /// Deletes one tag. Returns whether it existed.
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError>;

    /// Storage used by a project's repositories (`project/...`, or names
    /// without `/` for `library`): the blobs its manifests reference, each
    /// counted once for the whole project, plus manifest bytes; and per
    /// repository, by name. Blobs no manifest references (an upload whose
    /// manifest has not come) do not count.
    async fn project_usage(&self, project: &str) -> Result<(u64, Vec<(String, u64)>), MetaError>;

    /// The project's policy as last set, if any.
    async fn project_policy(&self, project: &str) -> Result<Option<ProjectPolicy>, MetaError>;

    /// Sets (or with `None` removes) a project's policy.
    async fn set_project_policy(
        &self,
        project: &str,
        policy: Option<&ProjectPolicy>,
    ) -> Result<(), MetaError>;

    /// Every project that has a policy, by name.
    async fn project_policies(&self) -> Result<Vec<(String, ProjectPolicy)>, MetaError>;

    /// Every tag of a project's repositories with its push and pull times,
    /// ordered by repository, then newest push first.
    async fn project_tags(&self, project: &str) -> Result<Vec<TagInfo>, MetaError>;

    /// Every index → child edge in a project's repositories, as
    /// (repository, index digest, child digest), in no particular order.
    async fn project_index_children(
        &self,
        project: &str,
    ) -> Result<Vec<(RepoName, Digest, Digest)>, MetaError>;

    /// The tags of `repo` that point at `digest`, sorted.
    async fn manifest_tags(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<String>, MetaError>;

    /// Records manifest pulls: `(repo, digest, when_ms)`; a time never moves
    /// back, and manifests that are gone are skipped.
    async fn record_pulls(&self, pulls: &[(RepoName, Digest, i64)]) -> Result<(), MetaError>;

    /// Deletes `tag` if it still points at `digest`; then, if that left the
    /// manifest with no tag and no index of the repository lists it, the
    /// manifest too. Returns (tag deleted, manifest deleted).
    async fn delete_tag_and_untagged(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<(bool, bool), MetaError>;

    /// Deletes a repository: its manifests, tags, blob links and upload
    /// sessions (blobs themselves stay for garbage collection). Returns the
    /// ids of the upload sessions it had, or `None` if it did not exist.
    async fn delete_repository(&self, repo: &RepoName) -> Result<Option<Vec<String>>, MetaError>;

    /// Tags of `repo` after `last`, at most `n`. `None` if the repository holds
    /// no manifest.
    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Page>, MetaError>;

    /// Repositories holding at least one manifest, after `last`, at most `n`.
    async fn list_repositories(&self, last: Option<&str>, n: usize) -> Result<Page, MetaError>;

    /// Manifests in `repo` whose subject is `subject`, optionally only those of
    /// one artifact type, ordered by digest.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetaError>;

    /// Records a new, empty upload session.
    async fn create_upload(&self, upload: &Upload) -> Result<(), MetaError>;

    async fn get_upload(&self, id: &str) -> Result<Option<Upload>, MetaError>;

    /// Moves an upload from `from_size` to `to_size` bytes with a new hash state.
    /// `Conflict` if its size is no longer `from_size` or it is gone.
    async fn advance_upload(
        &self,
        id: &str,
        from_size: u64,
        to_size: u64,
        hash_state: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), MetaError>;

    /// Removes an upload session. Returns whether it existed.
    async fn delete_upload(&self, id: &str) -> Result<bool, MetaError>;

    /// Ids of uploads not updated since `before_ms`.
    async fn stale_uploads(&self, before_ms: i64) -> Result<Vec<String>, MetaError>;

    // ---- import of a distribution root --------------------------------------------

    /// Records one repository of a distribution root in one transaction, and
    /// that it was imported. Idempotent: what the repository holds already
    /// stays (a tag Wharf has moved since is not moved back), what is new is
    /// added. References are not checked (the importer read them from the
    /// root); tags whose manifest is neither in the batch nor in the
    /// repository are skipped.
    async fn import_repository(
        &self,
        repo: &RepoName,
        batch: &ImportBatch,
        now_ms: i64,
    ) -> Result<(), MetaError>;

    /// Names of the repositories imported so far.
    async fn imported_repositories(&self) -> Result<std::collections::HashSet<String>, MetaError>;

    /// Where the import stands; `None` if no distribution root was ever found.
    async fn import_state(&self) -> Result<Option<ImportState>, MetaError>;

    async fn set_import_state(&self, state: ImportState) -> Result<(), MetaError>;

    // ---- leases ------------------------------------------------------------------
    //
    // A lease is a named, exclusive, expiring claim, kept in the database so
    // that it holds across processes and nodes. Its holder renews it while
    // working; a holder that dies lets it expire, and the next one takes it.

    /// Takes lease `name` for `owner` until `now_ms + ttl_ms` if nobody
    /// holds it, its holder's time ran out, or `owner` holds it already.
    /// Returns the holder afterwards: `owner` if taken, else the other.
    async fn lease_acquire(
        &self,
        name: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Lease, MetaError>;

    /// Extends `owner`'s hold on `name` to `now_ms + ttl_ms`. `false` if
    /// `owner` no longer holds it (another took it after it expired, or it
    /// was released).
    async fn lease_renew(
        &self,
        name: &str,
        owner: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, MetaError>;

    /// Gives up `owner`'s hold on `name`; nothing if it holds none.
    async fn lease_release(&self, name: &str, owner: &str) -> Result<(), MetaError>;

    /// Who holds `name` at `now_ms`, if anyone.
    async fn lease_holder(&self, name: &str, now_ms: i64) -> Result<Option<Lease>, MetaError>;

    // ---- garbage collection ---------------------------------------------------
    //
    // A blob may be deleted when no manifest references it, no repository
    // links it, no upload pins it, and its record was not refreshed since the
    // grace cutoff. A collector holding [`GC_LEASE`] marks such blobs
    // (atomically re-checking all that), deletes their bytes, then forgets
    // the records it marked. Marks carry the collector's id: the next holder
    // of the lease takes over the marks of collectors that lost it.
    //
    // These calls are never on a request path: a backend that does their
    // work itself should do it at a low CPU priority (the SQLite backend
    // uses wharf-background), keeping each call's transaction short, since
    // requests that write wait for it.

    /// Removes links created before `before_ms` that no manifest of the same
    /// repository references (blobs uploaded or mounted for a push that never
    /// came). Returns how many. There can be any number, so a backend with
    /// transactions works in bounded batches, each committed on its own.
    async fn gc_drop_stale_links(&self, before_ms: i64) -> Result<u64, MetaError>;

    /// Marks up to `limit` deletable blobs (see above; recorded before
    /// `before_ms`) for collector `owner` at `now_ms`, and returns them with
    /// their sizes, in digest order, starting after `after` (the last digest
    /// of the previous batch, so a run does not re-read what it kept). First
    /// takes over the marks of other collectors, which no longer hold the
    /// lease. `LeaseLost` (and nothing marked) unless `owner` holds
    /// [`GC_LEASE`] at `now_ms`.
    async fn gc_mark(
        &self,
        owner: &str,
        before_ms: i64,
        now_ms: i64,
        limit: usize,
        after: Option<&Digest>,
    ) -> Result<Vec<(Digest, u64)>, MetaError>;

    /// Removes the records `owner` marked among `digests`.
    async fn gc_forget(&self, owner: &str, digests: &[Digest]) -> Result<(), MetaError>;

    /// Deletes (or with `dry_run` only lists) up to `limit` manifests that
    /// have had no tag since before `before_ms`, that no index of their
    /// repository lists and that are not referrers of a manifest still there.
    /// Deleting some can make others eligible: call until it returns none.
    async fn gc_untagged(
        &self,
        before_ms: i64,
        limit: usize,
        dry_run: bool,
    ) -> Result<Vec<(RepoName, Digest)>, MetaError>;

    /// What a collection with this cutoff would delete now: links, blobs, bytes.
    async fn gc_estimate(&self, before_ms: i64) -> Result<(u64, u64, u64), MetaError>;
}
