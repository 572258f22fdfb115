//! Registry operations: push, pull, mount, delete, listings and referrers.
//!
//! Written against the [`BlobStore`] and [`MetaStore`] traits only, so every
//! operation works unchanged on any pair of backends. Request parsing and HTTP
//! belong to `wharf-api`; this crate speaks in validated types.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use wharf_meta::{ManifestRecord, ManifestRefs, MetaError, MetaStore, PutChecks, Upload};
use wharf_oci::manifest::MAX_MANIFEST_SIZE;
use wharf_oci::{
    Algorithm, Digest, DigestHasher, Manifest, ManifestError, Reference, RepoName, Tag,
};
use wharf_store::{BlobStore, StoreError};

mod error;
mod gc;
mod policy;
pub use error::CoreError;
pub mod import;
pub use gc::{GcEvents, GcOptions, GcReport};
pub use policy::{PULL_FLUSH_INTERVAL, RetentionReport};
pub use wharf_meta::Page;
pub use wharf_meta::{Keep, ProjectPolicy, RetentionRule, TagInfo, TagRule};
pub use wharf_store::{BlobRead, ByteStream};

/// Settings of the core that the binary's configuration controls.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Whether DELETE of blobs, manifests and tags is allowed
    /// (`storage.delete.enabled`).
    pub delete_enabled: bool,
    /// Whether deleting a manifest by digest also deletes the manifests whose
    /// `subject` it is (signatures, SBOMs: `storage.delete.referrers`).
    pub delete_referrers: bool,
    /// Accept manifests that reference blobs or index children the
    /// repository does not hold (`storage.manifests.sparse`).
    pub sparse_manifests: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            delete_enabled: true,
            delete_referrers: true,
            sparse_manifests: false,
        }
    }
}

/// What a manifest push asks for besides its reference.
#[derive(Debug, Clone, Default)]
pub struct PutManifestOptions {
    /// The `digest` query parameter: the digest the client computed, whose
    /// algorithm the registry uses (so a push by tag can be sha512).
    pub digest: Option<Digest>,
    /// The `tag` query parameters: more tags to point at the manifest.
    pub tags: Vec<Tag>,
}

/// A parsed manifest as the metadata store records it, and what it
/// references (blobs and index children, sorted, once each).
pub(crate) fn record_of(
    digest: Digest,
    body: Vec<u8>,
    m: &Manifest,
) -> (ManifestRecord, ManifestRefs) {
    let mut blobs: Vec<Digest> = m.required_blobs().map(|d| d.digest.clone()).collect();
    blobs.sort();
    blobs.dedup();
    let mut children: Vec<Digest> = m.manifests.iter().map(|d| d.digest.clone()).collect();
    children.sort();
    children.dedup();
    let annotations = m
        .annotations
        .as_ref()
        .filter(|a| !a.is_empty())
        .and_then(|a| serde_json::to_string(a).ok());
    (
        ManifestRecord {
            digest,
            media_type: m.media_type.clone(),
            content: body,
            artifact_type: m.effective_artifact_type().map(str::to_owned),
            subject: m.subject.as_ref().map(|s| s.digest.clone()),
            annotations,
        },
        ManifestRefs { blobs, children },
    )
}

/// How deep referrers of referrers are followed on delete.
const MAX_REFERRER_DEPTH: usize = 8;

/// The registry: one per process, shared by all requests.
pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    config: CoreConfig,
    /// Uploads with a request in progress on this node. Two requests writing
    /// one upload at once would interleave their bytes.
    busy: Mutex<HashSet<String>>,
    /// Manifest pulls not yet written (see [`Registry::note_pull`]).
    pulls: Mutex<HashMap<RepoName, HashMap<Digest, i64>>>,
}

/// Where a chunk claims to start and end (`Content-Range`), if it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

/// The result of a cross-repository mount request.
#[derive(Debug)]
pub enum MountResult {
    Mounted {
        digest: Digest,
    },
    /// The blob could not be mounted; a normal upload session was opened instead.
    Session(UploadState),
}

/// What a client needs to know about an upload session.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub id: String,
    pub size: u64,
}

/// A manifest as served to clients.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

#[derive(Debug, Clone)]
pub struct PutManifestResult {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Every tag now pointing at the manifest because of this push.
    pub tags: Vec<Tag>,
}

struct BusyGuard<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.id);
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(blobs: Arc<dyn BlobStore>, meta: Arc<dyn MetaStore>, config: CoreConfig) -> Self {
        Registry {
            blobs,
            meta,
            config,
            busy: Mutex::new(HashSet::new()),
            pulls: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    fn claim(&self, id: &str) -> Result<BusyGuard<'_>, CoreError> {
        let mut s = self
            .busy
            .lock()
            .map_err(|_| CoreError::Internal("busy set poisoned".into()))?;
        if !s.insert(id.to_owned()) {
            return Err(CoreError::BlobUploadInvalid(
                "another request is writing this upload".into(),
            ));
        }
        Ok(BusyGuard {
            set: &self.busy,
            id: id.to_owned(),
        })
    }

    fn check_delete(&self) -> Result<(), CoreError> {
        if self.config.delete_enabled {
            Ok(())
        } else {
            Err(CoreError::Unsupported(
                "deletion is disabled (storage.delete.enabled)".into(),
            ))
        }
    }

    // ---- blobs -------------------------------------------------------------

    /// The size of a blob `repo` may see.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CoreError> {
        self.meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or(CoreError::BlobUnknown)
    }

    /// Opens a blob `repo` may see, optionally a byte range of it.
    pub async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeInclusive<u64>>,
    ) -> Result<BlobRead, CoreError> {
        self.blob_size(repo, digest).await?;
        match self.blobs.open(digest, range).await? {
            Some(r) => Ok(r),
            None => {
                // Metadata says yes, storage says no: the store lost a blob.
                tracing::error!(%digest, "blob linked in metadata is missing from storage");
                Err(CoreError::BlobUnknown)
            }
        }
    }

    /// Bytes a project uses (each blob once) and per repository.
    pub async fn project_usage(
        &self,
        project: &str,
    ) -> Result<(u64, Vec<(String, u64)>), CoreError> {
        Ok(self.meta.project_usage(project).await?)
    }

    /// Deletes a repository with its manifests, tags, links and upload
    /// sessions; its blobs go with the next garbage collection if nothing
    /// else uses them. `NameUnknown` if it does not exist.
    pub async fn delete_repository(&self, repo: &RepoName) -> Result<(), CoreError> {
        self.check_delete()?;
        if let Some(page) = self.meta.list_tags(repo, None, usize::MAX).await? {
            self.check_mutable(repo, &page.items).await?;
        }
        let Some(uploads) = self.meta.delete_repository(repo).await? else {
            return Err(CoreError::NameUnknown);
        };
        for id in uploads {
            if let Err(e) = self.blobs.delete_upload(&id).await {
                tracing::warn!(upload = %id, error = %e, "removing an upload of a deleted repository failed");
            }
        }
        Ok(())
    }

    /// Removes `repo`'s link to a blob. The bytes go when nothing links them (GC).
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), CoreError> {
        self.check_delete()?;
        if self.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(CoreError::BlobUnknown)
        }
    }

    /// Makes a blob visible in `repo` without copying it: from `from` if that
    /// repository can see it, else from anywhere in the registry if `from` is
    /// not given. Otherwise opens an upload session.
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<MountResult, CoreError> {
        let size = match from {
            Some(from) => self.meta.blob_in_repo(from, digest).await?,
            None => self.meta.blob_known(digest).await?,
        };
        if size.is_some() && self.blobs.stat(digest).await?.is_some() {
            // A collection may have taken the blob since: then it is not
            // linkable, and the client uploads it like any other.
            match self.meta.link_blob(repo, digest, None).await {
                Ok(()) => {
                    return Ok(MountResult::Mounted {
                        digest: digest.clone(),
                    });
                }
                Err(MetaError::MissingBlob(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(MountResult::Session(self.start_upload(repo).await?))
    }

    // ---- uploads -------------------------------------------------------------

    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadState, CoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_upload(&id).await?;
        let now = now_ms();
        let upload = Upload {
            id: id.clone(),
            repo: repo.clone(),
            size: 0,
            hash_state: Some(DigestHasher::new(Algorithm::Sha256).save_state()),
            created_at_ms: now,
            updated_at_ms: now,
        };
        if let Err(e) = self.meta.create_upload(&upload).await {
            let _ = self.blobs.delete_upload(&id).await;
            return Err(e.into());
        }
        Ok(UploadState { id, size: 0 })
    }

    async fn upload_in(&self, repo: &RepoName, id: &str) -> Result<Upload, CoreError> {
        match self.meta.get_upload(id).await? {
            Some(u) if &u.repo == repo => Ok(u),
            _ => Err(CoreError::BlobUploadUnknown),
        }
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState, CoreError> {
        let u = self.upload_in(repo, id).await?;
        Ok(UploadState {
            id: u.id,
            size: u.size,
        })
    }

    /// Appends a chunk to an upload. `range`, when the client sent one, must
    /// start where the upload ends (else `RangeNotSatisfiable`) and must match
    /// the bytes sent.
    pub async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<UploadState, CoreError> {
        let _busy = self.claim(id)?;
        let u = self.upload_in(repo, id).await?;
        let size = self.append_locked(&u, range, body).await?;
        if let Err(e) = self.check_blob_quota(repo, None, size).await {
            self.drop_upload(&u.id).await;
            return Err(e);
        }
        Ok(UploadState { id: u.id, size })
    }

    async fn append_locked(
        &self,
        u: &Upload,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<u64, CoreError> {
        if let Some(r) = range
            && (r.start != u.size || r.end < r.start)
        {
            return Err(CoreError::RangeNotSatisfiable { size: u.size });
        }
        let hasher = u
            .hash_state
            .as_deref()
            .and_then(DigestHasher::restore_state);
        let hasher = Arc::new(Mutex::new(hasher));
        let h = Arc::clone(&hasher);
        let hashed: ByteStream = body
            .inspect(move |chunk| {
                if let (Ok(c), Ok(mut g)) = (chunk, h.lock())
                    && let Some(hs) = g.as_mut()
                {
                    hs.update(c);
                }
            })
            .boxed();
        let new_size = self.blobs.append_upload(&u.id, u.size, hashed).await?;
        if let Some(r) = range
            && new_size - u.size != r.end - r.start + 1
        {
            // Not recorded: the bytes past u.size are dropped by the next append.
            return Err(CoreError::SizeInvalid(format!(
                "Content-Range {}-{} does not match the {} bytes received",
                r.start,
                r.end,
                new_size - u.size
            )));
        }
        let state = hasher
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(DigestHasher::save_state));
        match self
            .meta
            .advance_upload(&u.id, u.size, new_size, state.as_deref(), now_ms())
            .await
        {
            Ok(()) => Ok(new_size),
            Err(MetaError::Conflict) => Err(CoreError::BlobUploadUnknown),
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes an upload: appends the final chunk if any, verifies the digest
    /// and makes the blob visible in `repo`.
    pub async fn complete_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: Option<ByteStream>,
    ) -> Result<u64, CoreError> {
        let _busy = self.claim(id)?;
        let mut u = self.upload_in(repo, id).await?;
        if let Some(body) = body {
            u.size = self.append_locked(&u, range, body).await?;
            u = self.upload_in(repo, id).await?;
        }
        let hasher = u
            .hash_state
            .as_deref()
            .and_then(DigestHasher::restore_state)
            .filter(|h| h.algorithm() == digest.algorithm());
        let actual = match hasher {
            Some(h) => h.finish(),
            None => {
                // Another algorithm, or no saved state: hash the stored bytes.
                let mut h = DigestHasher::new(digest.algorithm());
                let mut s = self.blobs.read_upload(&u.id, u.size).await?;
                while let Some(chunk) = s.next().await {
                    h.update(&chunk.map_err(StoreError::Io)?);
                }
                h.finish()
            }
        };
        if &actual != digest {
            return Err(CoreError::DigestInvalid(format!(
                "upload has digest {actual}, not {digest}"
            )));
        }
        if let Err(e) = self.check_blob_quota(repo, Some(digest), u.size).await {
            self.drop_upload(&u.id).await;
            return Err(e);
        }
        // Record and pin the blob, commit its bytes, then link it and end the
        // session in one transaction: no collection, at any grace period,
        // takes a blob between its commit and its link.
        self.record_blob(digest, u.size, &u.id).await?;
        self.blobs.commit_upload(&u.id, u.size, digest).await?;
        self.meta.link_blob(repo, digest, Some(&u.id)).await?;
        Ok(u.size)
    }

    /// Refreshes a blob's record and pins it for upload `pin` before its
    /// bytes are committed, waiting out a garbage collection that is
    /// deleting an older copy (see [`gc`]).
    async fn record_blob(&self, digest: &Digest, size: u64, pin: &str) -> Result<(), CoreError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .meta
                .record_blob(digest, size, now_ms(), Some(pin))
                .await
            {
                Ok(()) => return Ok(()),
                Err(MetaError::Conflict) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(MetaError::Conflict) => {
                    return Err(CoreError::Busy(format!(
                        "blob {digest} is being garbage-collected; retry"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Removes a refused upload's session and bytes: a refused push leaves
    /// nothing behind.
    async fn drop_upload(&self, id: &str) {
        if let Err(e) = self.meta.delete_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "removing a refused upload's record failed");
        }
        if let Err(e) = self.blobs.delete_upload(id).await {
            tracing::warn!(upload = %id, error = %e, "removing a refused upload's data failed");
        }
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), CoreError> {
        let _busy = self.claim(id)?;
        let u = self.upload_in(repo, id).await?;
        self.meta.delete_upload(&u.id).await?;
        self.blobs.delete_upload(&u.id).await?;
        Ok(())
    }

    /// A single-request upload (`POST ?digest=` or a session's whole body at once).
    pub async fn upload_monolithic(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64, CoreError> {
        let s = self.start_upload(repo).await?;
        let r = self
            .complete_upload(repo, &s.id, digest, None, Some(body))
            .await;
        if r.is_err() {
            let _ = self.meta.delete_upload(&s.id).await;
            let _ = self.blobs.delete_upload(&s.id).await;
        }
        r
    }

    /// Removes upload sessions idle for longer than `age` (with `dry_run`,
    /// only counts them). Returns how many.
    pub async fn purge_stale_uploads(
        &self,
        age: Duration,
        dry_run: bool,
    ) -> Result<usize, CoreError> {
        let before = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let ids = self.meta.stale_uploads(before).await?;
        if dry_run {
            for id in &ids {
                tracing::info!(upload = %id, "stale upload session would be removed (dry run)");
            }
            return Ok(ids.len());
        }
        let mut n = 0;
        for id in ids {
            // A request working on it now makes it not stale after all.
            let Ok(_busy) = self.claim(&id) else { continue };
            self.meta.delete_upload(&id).await?;
            self.blobs.delete_upload(&id).await?;
            n += 1;
        }
        Ok(n)
    }

    // ---- manifests -------------------------------------------------------------

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ServedManifest, CoreError> {
        let rec = match reference {
            Reference::Tag(t) => self.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.meta.manifest_by_digest(repo, d).await?,
        };
        let rec = rec.ok_or(CoreError::ManifestUnknown)?;
        Ok(ServedManifest {
            digest: rec.digest,
            media_type: rec.media_type,
            content: Bytes::from(rec.content),
        })
    }

    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        opts: &PutManifestOptions,
    ) -> Result<PutManifestResult, CoreError> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(CoreError::ManifestTooLarge);
        }
        // The digest the client names (in the path, or the `digest`
        // parameter) sets the algorithm, and must be the body's.
        let named = match (reference, &opts.digest) {
            (Reference::Digest(d), Some(p)) if d != p => {
                return Err(CoreError::DigestInvalid(format!(
                    "the digest parameter {p} is not the reference {d}"
                )));
            }
            (Reference::Digest(d), _) => Some(d),
            (Reference::Tag(_), p) => p.as_ref(),
        };
        let digest = match named {
            Some(d) => {
                let actual = d.of_same_algorithm(&body);
                if &actual != d {
                    return Err(CoreError::DigestInvalid(format!(
                        "manifest has digest {actual}, not {d}"
                    )));
                }
                actual
            }
            None => Digest::sha256_of(&body),
        };
        let m = Manifest::parse(&body, content_type).map_err(|e| match e {
            ManifestError::Unsupported(t) => {
                CoreError::ManifestInvalid(format!("manifest media type {t:?} is not supported"))
            }
            other => CoreError::ManifestInvalid(other.to_string()),
        })?;
        let (record, ManifestRefs { blobs, children }) =
            record_of(digest.clone(), body.to_vec(), &m);
        let subject = record.subject.clone();
        let mut tags: Vec<Tag> = Vec::with_capacity(1 + opts.tags.len());
        if let Reference::Tag(t) = reference {
            tags.push(t.clone());
        }
        for t in &opts.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let mut checks = PutChecks {
            sparse: self.config.sparse_manifests,
            ..PutChecks::default()
        };
        if let Some(p) = self.policy(repo.project()).await? {
            checks.quota = p.quota.map(|q| (repo.project().to_owned(), q));
            checks.immutable_tags = tags
                .iter()
                .filter(|t| p.is_immutable(repo, t.as_str()))
                .map(|t| t.to_string())
                .collect();
        }
        self.meta
            .put_manifest_checked(
                repo,
                &record,
                &ManifestRefs { blobs, children },
                &tags,
                &checks,
            )
            .await
            .map_err(|e| match e {
                MetaError::MissingBlob(d) => CoreError::ManifestBlobUnknown(d),
                MetaError::MissingManifest(d) => CoreError::ManifestChildUnknown(d),
                MetaError::Immutable(t) => CoreError::Immutable(format!(
                    "tag {t} of {repo} is immutable (a rule of project {}): push under a new tag",
                    repo.project()
                )),
                other => other.into(),
            })?;
        Ok(PutManifestResult {
            digest,
            subject,
            tags,
        })
    }

    /// Deletes a tag (only that tag) or a manifest by digest (and its tags).
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), CoreError> {
        self.check_delete()?;
        let found = match reference {
            Reference::Tag(t) => {
                self.check_mutable(repo, &[t.to_string()]).await?;
                self.meta.delete_tag(repo, t).await?
            }
            Reference::Digest(d) => {
                let tags = self.meta.manifest_tags(repo, d).await?;
                self.check_mutable(repo, &tags).await?;
                // The subject first: if an index still lists it, nothing goes.
                let found = self.meta.delete_manifest(repo, d).await?;
                if found && self.config.delete_referrers {
                    self.delete_referrers(repo, d).await?;
                }
                found
            }
        };
        if found {
            Ok(())
        } else {
            Err(CoreError::ManifestUnknown)
        }
    }

    /// Deletes the manifests that name `subject` (and theirs, to a depth).
    async fn delete_referrers(&self, repo: &RepoName, subject: &Digest) -> Result<(), CoreError> {
        let mut level = vec![subject.clone()];
        for _ in 0..MAX_REFERRER_DEPTH {
            let mut next = Vec::new();
            for s in &level {
                for r in self.meta.referrers(repo, s, None).await? {
                    // A referrer under an immutable tag stays, orphaned.
                    let tags = self.meta.manifest_tags(repo, &r.digest).await?;
                    if let Err(CoreError::Immutable(_)) = self.check_mutable(repo, &tags).await {
                        continue;
                    }
                    match self.meta.delete_manifest(repo, &r.digest).await {
                        Ok(_) => next.push(r.digest),
                        // Also a child of an index: the index keeps it.
                        Err(MetaError::Referenced(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(())
    }

    // ---- listings ----------------------------------------------------------------

    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Page, CoreError> {
        self.meta
            .list_tags(repo, last, n)
            .await?
            .ok_or(CoreError::NameUnknown)
    }

    pub async fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, CoreError> {
        Ok(self.meta.list_repositories(last, n).await?)
    }

    /// The OCI image index listing the manifests whose subject is `subject`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes, CoreError> {
        let refs = self.meta.referrers(repo, subject, artifact_type).await?;
        let manifests: Vec<serde_json::Value> = refs
            .into_iter()
            .map(|r| {
                let mut d = serde_json::Map::new();
                d.insert("mediaType".into(), r.media_type.into());
                d.insert("digest".into(), r.digest.as_str().into());
                d.insert("size".into(), r.size.into());
                if let Some(at) = r.artifact_type {
                    d.insert("artifactType".into(), at.into());
                }
                if let Some(a) = r
                    .annotations
                    .and_then(|a| serde_json::from_str::<BTreeMap<String, String>>(&a).ok())
                {
                    d.insert("annotations".into(), serde_json::json!(a));
                }
                serde_json::Value::Object(d)
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": wharf_oci::media::OCI_INDEX,
            "manifests": manifests,
        });
        serde_json::to_vec(&index)
            .map(Bytes::from)
            .map_err(|e| CoreError::Internal(e.to_string()))
    }
}
