//! The embedded SQLite backend.
//!
//! WAL mode with `synchronous=FULL` (an acknowledged push survives power loss).
//! One writer connection behind an async mutex (SQLite allows one writer at a
//! time; queueing beats retrying on SQLITE_BUSY) and a pool of reader
//! connections. Writes run on tokio's blocking pool (they fsync); reads run
//! inline (see [`SqliteMeta::read`]). rusqlite rather than sqlx: measured here,
//! sqlx's SQLite driver (a worker thread and channel hop per connection) capped
//! a one-row query at under a third of the HTTP layer's request rate.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use wharf_oci::{Digest, RepoName, Tag};

mod auth;

use crate::{
    GC_LEASE, ImportBatch, ImportState, Lease, ManifestRecord, ManifestRefs, MetaError, MetaStore,
    Page, ProjectPolicy, PutChecks, Referrer, TagInfo, Upload,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records the last.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_core.sql"),
    include_str!("../migrations/sqlite/0002_auth.sql"),
    include_str!("../migrations/sqlite/0003_gc.sql"),
    include_str!("../migrations/sqlite/0004_untagged.sql"),
    include_str!("../migrations/sqlite/0005_policy.sql"),
    include_str!("../migrations/sqlite/0006_coordination.sql"),
    include_str!("../migrations/sqlite/0007_login_throttles.sql"),
    include_str!("../migrations/sqlite/0008_repository_manifested.sql"),
    include_str!("../migrations/sqlite/0009_import.sql"),
];
/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 16;

pub struct SqliteMeta {
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<ReaderPool>,
    tags: TagCache,
}

/// Repositories with at most this many tags have their tag list cached.
const TAG_CACHE_MAX_LIST: usize = 10_000;
/// The cache is emptied when it holds more tags than this in all.
const TAG_CACHE_MAX_TOTAL: usize = 200_000;

/// Sorted tag lists of recently listed repositories, each with the
/// repository's `tags_version` when it was read. A list is served only while
/// the version in the database is still the same: the triggers of migration
/// 6 bump it on every tag added or removed, by any process, so the cache is
/// sound with other writers on the database (`wharf gc`, `wharf repo rm`,
/// `wharf import`, other nodes).
#[derive(Default)]
struct TagCache {
    inner: Mutex<TagCacheInner>,
}

#[derive(Default)]
struct TagCacheInner {
    lists: std::collections::HashMap<String, (i64, Arc<Vec<String>>)>,
    total: usize,
}

impl TagCache {
    fn get(&self, repo: &str) -> Option<(i64, Arc<Vec<String>>)> {
        self.inner.lock().ok()?.lists.get(repo).cloned()
    }

    fn insert(&self, repo: &str, version: i64, list: Arc<Vec<String>>) {
        let Ok(mut g) = self.inner.lock() else { return };
        if g.total + list.len() > TAG_CACHE_MAX_TOTAL {
            g.lists.clear();
            g.total = 0;
        }
        g.total += list.len();
        if let Some((_, old)) = g.lists.insert(repo.to_owned(), (version, list)) {
            g.total -= old.len();
        }
    }

    /// Drops a repository's list early (its version has moved on anyway).
    fn invalidate(&self, repo: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = g.lists.remove(repo) {
            g.total -= old.len();
        }
    }
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, MetaError> {
        if let Some(c) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(c);
        }
        let mut c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(Duration::from_secs(10))?;
        stable_plans(&c)?;
        cede_in_background(&mut c)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        if let Ok(mut v) = self.idle.lock()
            && v.len() < MAX_IDLE_READERS
        {
            v.push(c);
        }
    }
}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        MetaError::Backend(e.to_string())
    }
}

/// Keeps cached statements' plans: without this, the bundled SQLite (built with
/// STAT4) re-prepares a statement on every run whose bound values could change
/// its plan, which showed up as the top SQLite cost in a profile of manifest GETs.
fn stable_plans(c: &Connection) -> Result<(), MetaError> {
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// SQLite virtual-machine steps between two calls of the progress handler:
/// some tens of microseconds.
const CEDE_EVERY_STEPS: std::os::raw::c_int = 1000;

/// Makes a long statement run on a background thread (a garbage collection's
/// marking, `wharf gc` in its own process) cede the CPU as it goes; see
/// `wharf_background::cede`. On request threads the handler does nothing.
fn cede_in_background(c: &mut Connection) -> Result<(), MetaError> {
    c.progress_handler(
        CEDE_EVERY_STEPS,
        Some(|| {
            wharf_background::cede();
            false
        }),
    )?;
    Ok(())
}

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend(e.to_string())
}

fn parse_digest(s: &str) -> Result<Digest, MetaError> {
    s.parse()
        .map_err(|e| MetaError::Backend(format!("stored digest {s:?} is invalid: {e}")))
}

fn to_i64(n: u64) -> Result<i64, MetaError> {
    i64::try_from(n).map_err(|_| MetaError::Backend(format!("{n} does not fit the database")))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX)
}

type RawManifest = (
    String,
    String,
    Vec<u8>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn manifest_from_raw(r: RawManifest) -> Result<ManifestRecord, MetaError> {
    let (digest, media_type, content, artifact_type, subject, annotations) = r;
    Ok(ManifestRecord {
        digest: parse_digest(&digest)?,
        media_type,
        content,
        artifact_type,
        subject: subject.as_deref().map(parse_digest).transpose()?,
        annotations,
    })
}

fn raw_manifest(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawManifest> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

impl SqliteMeta {
    /// Opens (creating and migrating if needed) the database at `path`. The
    /// file is created with mode 0600.
    pub async fn open(path: &Path) -> Result<SqliteMeta, MetaError> {
        let path = path.to_owned();
        let p = path.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Connection, MetaError> {
            if !p.exists() {
                create_private_file(&p)
                    .map_err(|e| MetaError::Backend(format!("creating {}: {e}", p.display())))?;
            }
            let mut c = Connection::open(&p)?;
            c.busy_timeout(Duration::from_secs(10))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.pragma_update(None, "foreign_keys", true)?;
            stable_plans(&c)?;
            cede_in_background(&mut c)?;
            migrate(&mut c)?;
            Ok(c)
        })
        .await
        .map_err(backend)??;
        Ok(SqliteMeta {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            tags: TagCache::default(),
        })
    }

    /// Runs a read on the calling task. In WAL mode readers never wait for the
    /// writer, and a read of a hot database takes microseconds: less than the
    /// hop to the blocking pool, which halved the request rate when measured.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let c = self.readers.take()?;
        let r = f(&c);
        self.readers.give_back(c);
        r
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let mut guard = self.writer.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut guard))
            .await
            .map_err(backend)?
    }

    /// Drops stale links `batch` at a time, each batch its own transaction,
    /// walking the primary key from where the last one stopped: writers wait
    /// for one batch, not for the whole sweep, and no link is read twice.
    async fn drop_stale_links_in_batches(
        &self,
        before_ms: i64,
        batch: usize,
    ) -> Result<u64, MetaError> {
        let mut after: (i64, String) = (i64::MIN, String::new());
        let mut dropped = 0;
        loop {
            let from = after.clone();
            let keys: Vec<(i64, String)> = self
                .write_in_background(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let keys = tx
                        .prepare_cached(&format!(
                            "SELECT repo_id, digest FROM repo_blobs \
                             WHERE (repo_id, digest) > (?2, ?3) AND {STALE_LINK} \
                             ORDER BY repo_id, digest LIMIT ?4"
                        ))?
                        .query_map(params![before_ms, from.0, from.1, batch as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?
                        .collect::<Result<Vec<(i64, String)>, _>>()?;
                    {
                        let mut delete = tx.prepare_cached(
                            "DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2",
                        )?;
                        for (repo, digest) in &keys {
                            delete.execute(params![repo, digest])?;
                        }
                    }
                    tx.commit()?;
                    Ok(keys)
                })
                .await?;
            dropped += keys.len() as u64;
            match keys.last() {
                Some(last) if keys.len() == batch => after = last.clone(),
                _ => return Ok(dropped),
            }
        }
    }

    /// A write of garbage collection's, on a background thread: one that
    /// runs only when requests leave the CPU idle. Holding the write lock
    /// there makes writers wait while requests saturate the CPU, so its
    /// transactions stay small (the collector's batches).
    async fn write_in_background<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let mut guard = self.writer.clone().lock_owned().await;
        wharf_background::run("wharf-gc-sql", move || f(&mut guard))
            .await
            .map_err(backend)?
    }
}

impl SqliteMeta {
    /// A page of tags straight from the database, for repositories too large
    /// to cache.
    async fn list_tags_paged(
        &self,
        repo: &RepoName,
        last: String,
        n: usize,
    ) -> Result<Option<Page>, MetaError> {
        let repo = repo.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT t.name FROM repositories r JOIN tags t ON t.repo_id = r.id \
                 WHERE r.name = ?1 AND t.name > ?2 ORDER BY t.name LIMIT ?3",
            )?;
            let items = st
                .query_map(params![repo, last, limit(n)], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            if items.is_empty() && !repo_has_manifests(c, &repo)? {
                return Ok(None);
            }
            Ok(Some(page(items, n)))
        })
        .await
    }
}

/// Stores a manifest (nothing if the repository has it) and its edges to the
/// blobs and child manifests it references.
fn insert_manifest<'a>(
    tx: &rusqlite::Transaction<'_>,
    repo_id: i64,
    m: &ManifestRecord,
    blobs: impl Iterator<Item = &'a Digest>,
    children: &[Digest],
    now: i64,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "INSERT INTO manifests (repo_id, digest, media_type, size, content, artifact_type, subject, annotations, created_at, untagged_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        repo_id,
        m.digest.as_str(),
        m.media_type,
        m.content.len() as i64,
        m.content,
        m.artifact_type,
        m.subject.as_ref().map(|s| s.as_str()),
        m.annotations,
        now
    ])?;
    for b in blobs {
        tx.prepare_cached("INSERT INTO manifest_blobs (repo_id, manifest_digest, blob_digest) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
            .execute(params![repo_id, m.digest.as_str(), b.as_str()])?;
    }
    for ch in children {
        tx.prepare_cached("INSERT INTO manifest_children (repo_id, manifest_digest, child_digest) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
            .execute(params![repo_id, m.digest.as_str(), ch.as_str()])?;
    }
    Ok(())
}

/// Whether `owner` holds lease `name` at `now`.
fn holds_lease(c: &Connection, name: &str, owner: &str, now: i64) -> Result<bool, MetaError> {
    Ok(
        c.prepare_cached(
            "SELECT 1 FROM leases WHERE name = ?1 AND owner = ?2 AND expires_at > ?3",
        )?
        .query_row(params![name, owner, now], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some(),
    )
}

/// Whether the repository has held a manifest (and was not deleted since):
/// then its tag list answers, empty or not.
fn repo_has_manifests(c: &Connection, repo: &str) -> Result<bool, MetaError> {
    Ok(
        c.prepare_cached("SELECT 1 FROM repositories r WHERE r.name = ?1 AND r.manifested = 1")?
            .query_row([repo], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some(),
    )
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

fn migrate(c: &mut Connection) -> Result<(), MetaError> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        return Err(MetaError::Backend(format!(
            "database schema version {current} is newer than this Wharf ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied metadata migration");
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn repo_id_for_write(tx: &rusqlite::Transaction<'_>, repo: &str) -> Result<i64, MetaError> {
    tx.prepare_cached(
        "INSERT INTO repositories (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
    )?
    .execute(params![repo, now_ms()])?;
    Ok(tx
        .prepare_cached("SELECT id FROM repositories WHERE name = ?1")?
        .query_row([repo], |r| r.get(0))?)
}

/// Records when a manifest lost its last tag.
fn mark_if_untagged(
    tx: &rusqlite::Transaction<'_>,
    repo_id: i64,
    digest: &str,
    now: i64,
) -> Result<(), MetaError> {
    tx.prepare_cached(
        "UPDATE manifests SET untagged_at = ?3 WHERE repo_id = ?1 AND digest = ?2 \
         AND untagged_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM tags t WHERE t.repo_id = ?1 AND t.manifest_digest = ?2)",
    )?
    .execute(params![repo_id, digest, now])?;
    Ok(())
}

/// The SQL condition selecting a project's repositories (`r`), and its argument.
fn project_filter(project: &str) -> (&'static str, String) {
    // `library` holds the one-component names; others their `project/` prefix.
    if project == "library" {
        ("r.name NOT LIKE '%/%' AND ?1 = ?1", String::new())
    } else {
        let mut p = String::new();
        for ch in project.chars() {
            if matches!(ch, '\\' | '%' | '_') {
                p.push('\\');
            }
            p.push(ch);
        }
        ("r.name LIKE ?1 ESCAPE '\\'", format!("{p}/%"))
    }
}

/// Bytes a project uses: blobs its manifests reference, once each, plus
/// manifest bytes.
fn project_total(c: &Connection, project: &str) -> Result<u64, MetaError> {
    let (filter, arg) = project_filter(project);
    let total: i64 = c
        .prepare_cached(&format!(
            "SELECT (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN \
               (SELECT mb.blob_digest FROM manifest_blobs mb JOIN repositories r ON r.id = mb.repo_id WHERE {filter})) \
             + (SELECT coalesce(sum(m.size), 0) FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE {filter})"
        ))?
        .query_row([&arg], |r| r.get(0))?;
    Ok(total as u64)
}

/// `QuotaExceeded` if storing manifest `m` of `repo_id` (with `blobs`) would
/// take `project` past `limit`. A manifest that adds nothing always passes,
/// so re-tagging works in a project over its quota.
fn check_quota(
    tx: &rusqlite::Transaction<'_>,
    project: &str,
    limit: u64,
    repo_id: i64,
    m: &ManifestRecord,
    blobs: &[Digest],
) -> Result<(), MetaError> {
    let (filter, arg) = project_filter(project);
    let mut adding = 0u64;
    let exists: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
        .query_row(params![repo_id, m.digest.as_str()], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        adding += m.content.len() as u64;
    }
    let mut counted = tx.prepare_cached(&format!(
        "SELECT 1 FROM manifest_blobs mb JOIN repositories r ON r.id = mb.repo_id \
         WHERE mb.blob_digest = ?2 AND {filter} LIMIT 1"
    ))?;
    for b in blobs {
        let found: Option<i64> = counted
            .query_row(params![arg, b.as_str()], |r| r.get(0))
            .optional()?;
        if found.is_none() {
            let size: i64 = tx
                .prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
                .query_row([b.as_str()], |r| r.get(0))?;
            adding += size as u64;
        }
    }
    if adding == 0 {
        return Ok(());
    }
    let used = project_total(tx, project)?;
    if used.saturating_add(adding) > limit {
        return Err(MetaError::QuotaExceeded {
            project: project.to_owned(),
            used,
            adding,
            limit,
        });
    }
    Ok(())
}

/// An untagged manifest (`m`) no index of its repository lists and that is not
/// the referrer of a manifest still there.
const UNTAGGED_UNUSED: &str = "m.untagged_at IS NOT NULL AND m.untagged_at < ?1 \
     AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = m.repo_id AND t.manifest_digest = m.digest) \
     AND NOT EXISTS (SELECT 1 FROM manifest_children mc WHERE mc.repo_id = m.repo_id AND mc.child_digest = m.digest) \
     AND NOT (m.subject IS NOT NULL AND EXISTS \
          (SELECT 1 FROM manifests s WHERE s.repo_id = m.repo_id AND s.digest = m.subject))";

/// Stale links dropped per transaction.
const LINK_BATCH: usize = 2000;
/// A link (`repo_blobs`) made before `?1` that no manifest of its repository uses.
const STALE_LINK: &str = "created_at < ?1 AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
     WHERE mb.repo_id = repo_blobs.repo_id AND mb.blob_digest = repo_blobs.digest)";

/// A blob (`b`) nothing uses and nobody recorded since `?1`. The `+`s keep
/// the planner off the gc index, which would sort the whole candidate set
/// rather than scan the primary key from a cursor.
const DELETABLE_IN_KEY_ORDER: &str = "+b.gc_marked_at = 0 AND +b.touched_at < ?1 \
     AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest) \
     AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest) \
     AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.committing = b.digest)";

fn page(mut items: Vec<String>, n: usize) -> Page {
    let more = items.len() > n;
    items.truncate(n);
    Page { items, more }
}

fn sizes(v: Option<i64>) -> Option<u64> {
    v.map(|s| s as u64)
}

#[async_trait::async_trait]
impl MetaStore for SqliteMeta {
    async fn record_blob(
        &self,
        digest: &Digest,
        size: u64,
        now: i64,
        pin: Option<&str>,
    ) -> Result<(), MetaError> {
        let (digest, size) = (digest.to_string(), to_i64(size)?);
        let pin = pin.map(str::to_owned);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mark: Option<(i64, Option<String>)> = tx
                .prepare_cached("SELECT gc_marked_at, gc_owner FROM blobs WHERE digest = ?1")?
                .query_row([&digest], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((marked_at, owner)) = mark
                && marked_at > 0
            {
                if owner
                    .as_deref()
                    .is_some_and(|o| holds_lease(&tx, GC_LEASE, o, now).unwrap_or(true))
                {
                    return Err(MetaError::Conflict);
                }
                // Its collector is gone: whatever it deleted, the caller's
                // commit puts back.
                tx.prepare_cached(
                    "UPDATE blobs SET gc_marked_at = 0, gc_owner = NULL WHERE digest = ?1",
                )?
                .execute([&digest])?;
            }
            tx.prepare_cached(
                "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT(digest) DO UPDATE SET touched_at = excluded.touched_at",
            )?
            .execute(params![digest, size, now])?;
            if let Some(id) = pin {
                tx.prepare_cached("UPDATE uploads SET committing = ?2 WHERE id = ?1")?
                    .execute(params![id, digest])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        finished_upload: Option<&str>,
    ) -> Result<(), MetaError> {
        let (repo, digest_s) = (repo.to_string(), digest.to_string());
        let digest = digest.clone();
        let finished = finished_upload.map(str::to_owned);
        self.write(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let marked: Option<i64> = tx
                .prepare_cached("SELECT gc_marked_at FROM blobs WHERE digest = ?1")?
                .query_row([&digest_s], |r| r.get(0))
                .optional()?;
            if marked != Some(0) {
                return Err(MetaError::MissingBlob(digest));
            }
            let repo_id = repo_id_for_write(&tx, &repo)?;
            tx.prepare_cached(
                "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO UPDATE SET created_at = excluded.created_at",
            )?
            .execute(params![repo_id, digest_s, now])?;
            tx.prepare_cached("UPDATE blobs SET touched_at = ?2 WHERE digest = ?1")?
                .execute(params![digest_s, now])?;
            if let Some(id) = finished {
                tx.prepare_cached("DELETE FROM uploads WHERE id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            Ok(sizes(
                c.prepare_cached(
                    "SELECT b.size FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
                     JOIN blobs b ON b.digest = rb.digest WHERE r.name = ?1 AND rb.digest = ?2",
                )?
                .query_row([repo, digest], |r| r.get(0))
                .optional()?,
            ))
        })
        .await
    }

    async fn blob_known(&self, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let digest = digest.to_string();
        self.read(move |c| {
            Ok(sizes(
                c.prepare_cached(
                    "SELECT b.size FROM blobs b WHERE b.digest = ?1 \
                     AND EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)",
                )?
                .query_row([digest], |r| r.get(0))
                .optional()?,
            ))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.write(move |c| {
            Ok(c.prepare_cached(
                "DELETE FROM repo_blobs WHERE digest = ?1 \
                 AND repo_id = (SELECT id FROM repositories WHERE name = ?2)",
            )?
            .execute([digest, repo])?
                > 0)
        })
        .await
    }

    async fn put_manifest_checked(
        &self,
        repo: &RepoName,
        m: &ManifestRecord,
        refs: &ManifestRefs,
        tags: &[Tag],
        checks: &PutChecks,
    ) -> Result<(), MetaError> {
        let tagged = !tags.is_empty();
        let (repo_name, m, refs, tags, checks) = (
            repo.to_string(),
            m.clone(),
            refs.clone(),
            tags.iter().map(Tag::to_string).collect::<Vec<_>>(),
            checks.clone(),
        );
        let repo = repo_name.clone();
        let r = self.write(move |c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let repo_id = repo_id_for_write(&tx, &repo)?;
            for b in &refs.blobs {
                let found: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2")?
                    .query_row(params![repo_id, b.as_str()], |r| r.get(0))
                    .optional()?;
                if found.is_none() && !checks.sparse {
                    return Err(MetaError::MissingBlob(b.clone()));
                }
            }
            for ch in &refs.children {
                let found: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
                    .query_row(params![repo_id, ch.as_str()], |r| r.get(0))
                    .optional()?;
                if found.is_none() && !checks.sparse {
                    return Err(MetaError::MissingManifest(ch.clone()));
                }
            }
            // After the reference checks: the quota reads the blobs they vouch for.
            for tag in tags.iter().filter(|t| checks.immutable_tags.contains(t)) {
                let current: Option<String> = tx
                    .prepare_cached("SELECT manifest_digest FROM tags WHERE repo_id = ?1 AND name = ?2")?
                    .query_row(params![repo_id, tag], |r| r.get(0))
                    .optional()?;
                if current.is_some_and(|d| d != m.digest.as_str()) {
                    return Err(MetaError::Immutable(tag.clone()));
                }
            }
            if let Some((project, limit)) = &checks.quota {
                check_quota(&tx, project, *limit, repo_id, &m, &refs.blobs)?;
            }
            insert_manifest(&tx, repo_id, &m, refs.blobs.iter(), &refs.children, now)?;
            for tag in &tags {
                let previous: Option<String> = tx
                    .prepare_cached("SELECT manifest_digest FROM tags WHERE repo_id = ?1 AND name = ?2")?
                    .query_row(params![repo_id, tag], |r| r.get(0))
                    .optional()?;
                tx.prepare_cached(
                    "INSERT INTO tags (repo_id, name, manifest_digest, updated_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(repo_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
                )?
                .execute(params![repo_id, tag, m.digest.as_str(), now])?;
                tx.prepare_cached(
                    "UPDATE manifests SET untagged_at = NULL WHERE repo_id = ?1 AND digest = ?2",
                )?
                .execute(params![repo_id, m.digest.as_str()])?;
                if let Some(p) = previous.filter(|p| p != m.digest.as_str()) {
                    mark_if_untagged(&tx, repo_id, &p, now)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        if r.is_ok() && tagged {
            self.tags.invalidate(&repo_name);
        }
        r
    }

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT m.digest, m.media_type, m.content, m.artifact_type, m.subject, m.annotations \
                 FROM repositories r JOIN tags t ON t.repo_id = r.id \
                 JOIN manifests m ON m.repo_id = r.id AND m.digest = t.manifest_digest \
                 WHERE r.name = ?1 AND t.name = ?2",
            )?
            .query_row([repo, tag], raw_manifest)
            .optional()?
            .map(manifest_from_raw)
            .transpose()
        })
        .await
    }

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT m.digest, m.media_type, m.content, m.artifact_type, m.subject, m.annotations \
                 FROM repositories r JOIN manifests m ON m.repo_id = r.id \
                 WHERE r.name = ?1 AND m.digest = ?2",
            )?
            .query_row([repo, digest], raw_manifest)
            .optional()?
            .map(manifest_from_raw)
            .transpose()
        })
        .await
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        let (repo_name, digest) = (repo.to_string(), digest.to_string());
        let repo = repo_name.clone();
        // Tags and reference edges go with it through ON DELETE CASCADE.
        let changed = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let parent: Option<String> = tx
                    .prepare_cached(
                        "SELECT mc.manifest_digest FROM manifest_children mc \
                         JOIN repositories r ON r.id = mc.repo_id \
                         WHERE r.name = ?2 AND mc.child_digest = ?1 LIMIT 1",
                    )?
                    .query_row([&digest, &repo], |r| r.get(0))
                    .optional()?;
                if let Some(p) = parent {
                    return Err(MetaError::Referenced(parse_digest(&p)?));
                }
                let n = tx
                    .prepare_cached(
                        "DELETE FROM manifests WHERE digest = ?1 \
                         AND repo_id = (SELECT id FROM repositories WHERE name = ?2)",
                    )?
                    .execute([digest, repo])?;
                tx.commit()?;
                Ok(n > 0)
            })
            .await?;
        if changed {
            self.tags.invalidate(&repo_name);
        }
        Ok(changed)
    }

    async fn project_usage(&self, project: &str) -> Result<(u64, Vec<(String, u64)>), MetaError> {
        let project = project.to_owned();
        self.read(move |c| {
            let total = project_total(c, &project)?;
            let (filter, arg) = project_filter(&project);
            let per_repo: Vec<(String, i64)> = c
                .prepare_cached(&format!(
                    "SELECT r.name, \
                       (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN \
                          (SELECT mb.blob_digest FROM manifest_blobs mb WHERE mb.repo_id = r.id)) \
                     + (SELECT coalesce(sum(m.size), 0) FROM manifests m WHERE m.repo_id = r.id) \
                     FROM repositories r WHERE {filter} ORDER BY r.name"
                ))?
                .query_map([&arg], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok((
                total,
                per_repo.into_iter().map(|(n, b)| (n, b as u64)).collect(),
            ))
        })
        .await
    }

    async fn project_policy(&self, project: &str) -> Result<Option<ProjectPolicy>, MetaError> {
        let project = project.to_owned();
        let json: Option<String> = self
            .read(move |c| {
                Ok(
                    c.prepare_cached("SELECT policy FROM project_policies WHERE project = ?1")?
                        .query_row([&project], |r| r.get(0))
                        .optional()?,
                )
            })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(backend))
            .transpose()
    }

    async fn set_project_policy(
        &self,
        project: &str,
        policy: Option<&ProjectPolicy>,
    ) -> Result<(), MetaError> {
        let project = project.to_owned();
        let json = policy
            .map(|p| serde_json::to_string(p).map_err(backend))
            .transpose()?;
        self.write(move |c| {
            match json {
                Some(j) => c
                    .prepare_cached(
                        "INSERT INTO project_policies (project, policy, updated_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(project) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
                    )?
                    .execute(params![project, j, now_ms()])?,
                None => c
                    .prepare_cached("DELETE FROM project_policies WHERE project = ?1")?
                    .execute([project])?,
            };
            Ok(())
        })
        .await
    }

    async fn project_policies(&self) -> Result<Vec<(String, ProjectPolicy)>, MetaError> {
        let rows: Vec<(String, String)> = self
            .read(|c| {
                Ok(c.prepare_cached(
                    "SELECT project, policy FROM project_policies ORDER BY project",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(n, j)| Ok((n, serde_json::from_str(&j).map_err(backend)?)))
            .collect()
    }

    async fn project_tags(&self, project: &str) -> Result<Vec<TagInfo>, MetaError> {
        let project = project.to_owned();
        let rows: Vec<(String, String, String, i64, Option<i64>)> = self
            .read(move |c| {
                let (filter, arg) = project_filter(&project);
                Ok(c.prepare_cached(&format!(
                    "SELECT r.name, t.name, t.manifest_digest, t.updated_at, m.pulled_at \
                     FROM tags t JOIN repositories r ON r.id = t.repo_id \
                     JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.manifest_digest \
                     WHERE {filter} ORDER BY r.name, t.updated_at DESC, t.name"
                ))?
                .query_map([&arg], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(repo, tag, digest, pushed, pulled)| {
                Ok(TagInfo {
                    repo: repo.parse().map_err(backend)?,
                    tag,
                    digest: parse_digest(&digest)?,
                    pushed_at_ms: pushed,
                    pulled_at_ms: pulled,
                })
            })
            .collect()
    }

    async fn project_index_children(
        &self,
        project: &str,
    ) -> Result<Vec<(RepoName, Digest, Digest)>, MetaError> {
        let project = project.to_owned();
        let rows: Vec<(String, String, String)> = self
            .read(move |c| {
                let (filter, arg) = project_filter(&project);
                Ok(c.prepare_cached(&format!(
                    "SELECT r.name, mc.manifest_digest, mc.child_digest \
                     FROM manifest_children mc JOIN repositories r ON r.id = mc.repo_id \
                     WHERE {filter}"
                ))?
                .query_map([&arg], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(repo, index, child)| {
                Ok((
                    repo.parse().map_err(backend)?,
                    parse_digest(&index)?,
                    parse_digest(&child)?,
                ))
            })
            .collect()
    }

    async fn manifest_tags(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<String>, MetaError> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id \
                 WHERE r.name = ?1 AND t.manifest_digest = ?2 ORDER BY t.name",
            )?
            .query_map([repo, digest], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Digest, i64)]) -> Result<(), MetaError> {
        if pulls.is_empty() {
            return Ok(());
        }
        let pulls: Vec<(String, String, i64)> = pulls
            .iter()
            .map(|(r, d, t)| (r.to_string(), d.to_string(), *t))
            .collect();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE manifests SET pulled_at = ?3 WHERE digest = ?2 \
                     AND repo_id = (SELECT id FROM repositories WHERE name = ?1) \
                     AND (pulled_at IS NULL OR pulled_at < ?3)",
                )?;
                for (r, d, t) in &pulls {
                    st.execute(params![r, d, t])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_tag_and_untagged(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<(bool, bool), MetaError> {
        let (repo_name, tag, digest) = (repo.to_string(), tag.to_string(), digest.to_string());
        let repo = repo_name.clone();
        let out = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(repo_id): Option<i64> = tx
                    .prepare_cached("SELECT id FROM repositories WHERE name = ?1")?
                    .query_row([&repo], |r| r.get(0))
                    .optional()?
                else {
                    return Ok((false, false));
                };
                let n = tx
                    .prepare_cached(
                        "DELETE FROM tags WHERE repo_id = ?1 AND name = ?2 AND manifest_digest = ?3",
                    )?
                    .execute(params![repo_id, tag, digest])?;
                if n == 0 {
                    return Ok((false, false));
                }
                let m = tx
                    .prepare_cached(
                        "DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2 \
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = ?1 AND t.manifest_digest = ?2) \
                         AND NOT EXISTS (SELECT 1 FROM manifest_children mc WHERE mc.repo_id = ?1 AND mc.child_digest = ?2)",
                    )?
                    .execute(params![repo_id, digest])?;
                if m == 0 {
                    mark_if_untagged(&tx, repo_id, &digest, now_ms())?;
                }
                tx.commit()?;
                Ok((true, m > 0))
            })
            .await?;
        if out.0 {
            self.tags.invalidate(&repo_name);
        }
        Ok(out)
    }

    async fn delete_repository(&self, repo: &RepoName) -> Result<Option<Vec<String>>, MetaError> {
        let repo_name = repo.to_string();
        let repo = repo_name.clone();
        let out = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(id): Option<i64> = tx
                    .query_row(
                        "SELECT id FROM repositories WHERE name = ?1",
                        [&repo],
                        |r| r.get(0),
                    )
                    .optional()?
                else {
                    return Ok(None);
                };
                let uploads: Vec<String> = tx
                    .prepare("SELECT id FROM uploads WHERE repo_id = ?1")?
                    .query_map([id], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                // Tags and edges go with the manifests (ON DELETE CASCADE).
                tx.execute("DELETE FROM manifests WHERE repo_id = ?1", [id])?;
                tx.execute("DELETE FROM repo_blobs WHERE repo_id = ?1", [id])?;
                tx.execute("DELETE FROM uploads WHERE repo_id = ?1", [id])?;
                tx.execute("DELETE FROM repositories WHERE id = ?1", [id])?;
                tx.commit()?;
                Ok(Some(uploads))
            })
            .await?;
        self.tags.invalidate(&repo_name);
        Ok(out)
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError> {
        let (repo_name, tag) = (repo.to_string(), tag.to_string());
        let repo = repo_name.clone();
        let changed = self
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let found: Option<(i64, String)> = tx
                    .prepare_cached(
                        "SELECT t.repo_id, t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repo_id \
                         WHERE r.name = ?2 AND t.name = ?1",
                    )?
                    .query_row([&tag, &repo], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((repo_id, digest)) = found else {
                    return Ok(false);
                };
                tx.prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2")?
                    .execute(params![repo_id, tag])?;
                mark_if_untagged(&tx, repo_id, &digest, now_ms())?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if changed {
            self.tags.invalidate(&repo_name);
        }
        Ok(changed)
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Page>, MetaError> {
        enum Found {
            NoRepo,
            Cached(Arc<Vec<String>>),
            Fresh(i64, Vec<String>),
            TooMany,
        }
        let last = last.unwrap_or("").to_owned();
        let cached = self.tags.get(repo.as_str());
        let r = repo.to_string();
        let found = self
            .read(move |c| {
                // One snapshot for the version and the list.
                let tx = c.unchecked_transaction()?;
                let version: Option<i64> = tx
                    .prepare_cached("SELECT tags_version FROM repositories WHERE name = ?1")?
                    .query_row([&r], |row| row.get(0))
                    .optional()?;
                let Some(version) = version else {
                    return Ok(Found::NoRepo);
                };
                if let Some((v, list)) = cached
                    && v == version
                {
                    return Ok(Found::Cached(list));
                }
                let items = tx
                    .prepare_cached(
                        "SELECT t.name FROM repositories r JOIN tags t ON t.repo_id = r.id \
                         WHERE r.name = ?1 ORDER BY t.name LIMIT ?2",
                    )?
                    .query_map(params![r, limit(TAG_CACHE_MAX_LIST)], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                if items.is_empty() && !repo_has_manifests(&tx, &r)? {
                    return Ok(Found::NoRepo);
                }
                Ok(if items.len() <= TAG_CACHE_MAX_LIST {
                    Found::Fresh(version, items)
                } else {
                    Found::TooMany
                })
            })
            .await?;
        let all = match found {
            Found::NoRepo => return Ok(None),
            Found::Cached(list) => list,
            Found::Fresh(version, items) => {
                let list = Arc::new(items);
                self.tags.insert(repo.as_str(), version, list.clone());
                list
            }
            Found::TooMany => return self.list_tags_paged(repo, last, n).await,
        };
        let start = all.partition_point(|t| t.as_str() <= last.as_str());
        let items: Vec<String> = all[start..]
            .iter()
            .take(n.saturating_add(1))
            .cloned()
            .collect();
        Ok(Some(page(items, n)))
    }

    async fn list_repositories(&self, last: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let last = last.unwrap_or("").to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT r.name FROM repositories r WHERE r.name > ?1 \
                 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) \
                 ORDER BY r.name LIMIT ?2",
            )?;
            let items = st
                .query_map(params![last, limit(n)], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(page(items, n))
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetaError> {
        let (repo, subject, at) = (
            repo.to_string(),
            subject.to_string(),
            artifact_type.map(str::to_owned),
        );
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations \
                 FROM repositories r JOIN manifests m ON m.repo_id = r.id \
                 WHERE r.name = ?1 AND m.subject = ?2 AND (?3 IS NULL OR m.artifact_type = ?3) \
                 ORDER BY m.digest",
            )?;
            let rows = st
                .query_map(params![repo, subject, at], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(d, media_type, size, artifact_type, annotations)| {
                    Ok(Referrer {
                        digest: parse_digest(&d)?,
                        media_type,
                        size: size as u64,
                        artifact_type,
                        annotations,
                    })
                })
                .collect()
        })
        .await
    }

    async fn create_upload(&self, u: &Upload) -> Result<(), MetaError> {
        let u = u.clone();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let repo_id = repo_id_for_write(&tx, u.repo.as_str())?;
            tx.prepare_cached(
                "INSERT INTO uploads (id, repo_id, size, hash_state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![u.id, repo_id, to_i64(u.size)?, u.hash_state, u.created_at_ms, u.updated_at_ms])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<Upload>, MetaError> {
        let id = id.to_owned();
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT u.id, r.name, u.size, u.hash_state, u.created_at, u.updated_at \
                     FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = ?1",
                )?
                .query_row([id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .optional()?;
            let Some((id, name, size, hash_state, created_at_ms, updated_at_ms)) = row else {
                return Ok(None);
            };
            Ok(Some(Upload {
                id,
                repo: RepoName::from_str(&name)
                    .map_err(|_| MetaError::Backend(format!("stored name {name:?} is invalid")))?,
                size: size as u64,
                hash_state,
                created_at_ms,
                updated_at_ms,
            }))
        })
        .await
    }

    async fn advance_upload(
        &self,
        id: &str,
        from_size: u64,
        to_size: u64,
        hash_state: Option<&[u8]>,
        now: i64,
    ) -> Result<(), MetaError> {
        let (id, from, to, state) = (
            id.to_owned(),
            to_i64(from_size)?,
            to_i64(to_size)?,
            hash_state.map(<[u8]>::to_vec),
        );
        self.write(move |c| {
            let n = c
                .prepare_cached("UPDATE uploads SET size = ?1, hash_state = ?2, updated_at = ?3 WHERE id = ?4 AND size = ?5")?
                .execute(params![to, state, now, id, from])?;
            if n == 0 { Err(MetaError::Conflict) } else { Ok(()) }
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_owned();
        self.write(move |c| {
            Ok(c.prepare_cached("DELETE FROM uploads WHERE id = ?1")?
                .execute([id])?
                > 0)
        })
        .await
    }

    async fn stale_uploads(&self, before_ms: i64) -> Result<Vec<String>, MetaError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id FROM uploads WHERE updated_at < ?1 ORDER BY updated_at",
            )?;
            Ok(st
                .query_map([before_ms], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn import_repository(
        &self,
        repo: &RepoName,
        batch: &ImportBatch,
        now: i64,
    ) -> Result<(), MetaError> {
        let (repo_name, batch) = (repo.to_string(), batch.clone());
        let repo = repo_name.clone();
        let r = self
            .write_in_background(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let repo_id = repo_id_for_write(&tx, &repo)?;
                let blob = |tx: &rusqlite::Transaction<'_>, d: &Digest, size: u64| -> Result<(), MetaError> {
                    tx.prepare_cached(
                        "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES (?1, ?2, ?3, ?3) \
                         ON CONFLICT(digest) DO NOTHING",
                    )?
                    .execute(params![d.as_str(), to_i64(size)?, now])?;
                    Ok(())
                };
                for (d, size) in &batch.blobs {
                    blob(&tx, d, *size)?;
                    tx.prepare_cached(
                        "INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES (?1, ?2, ?3) \
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![repo_id, d.as_str(), now])?;
                }
                for (m, refs) in &batch.manifests {
                    // The manifest's own blob file, kept while it exists.
                    blob(&tx, &m.digest, m.content.len() as u64)?;
                    let own = std::iter::once(&m.digest);
                    insert_manifest(&tx, repo_id, m, refs.blobs.iter().chain(own), &refs.children, now)?;
                }
                for (tag, d) in &batch.tags {
                    let held: Option<i64> = tx
                        .prepare_cached("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
                        .query_row(params![repo_id, d.as_str()], |r| r.get(0))
                        .optional()?;
                    if held.is_none() {
                        continue;
                    }
                    let added = tx
                        .prepare_cached(
                            "INSERT INTO tags (repo_id, name, manifest_digest, updated_at) VALUES (?1, ?2, ?3, ?4) \
                             ON CONFLICT(repo_id, name) DO NOTHING",
                        )?
                        .execute(params![repo_id, tag.as_str(), d.as_str(), now])?;
                    if added > 0 {
                        tx.prepare_cached(
                            "UPDATE manifests SET untagged_at = NULL WHERE repo_id = ?1 AND digest = ?2",
                        )?
                        .execute(params![repo_id, d.as_str()])?;
                    }
                }
                tx.prepare_cached(
                    "INSERT INTO import_repos (name, imported_at) VALUES (?1, ?2) \
                     ON CONFLICT(name) DO UPDATE SET imported_at = excluded.imported_at",
                )?
                .execute(params![repo, now])?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.tags.invalidate(&repo_name);
        r
    }

    async fn imported_repositories(&self) -> Result<std::collections::HashSet<String>, MetaError> {
        self.read(|c| {
            let mut st = c.prepare_cached("SELECT name FROM import_repos")?;
            let names = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<std::collections::HashSet<String>, _>>()?;
            Ok(names)
        })
        .await
    }

    async fn import_state(&self) -> Result<Option<ImportState>, MetaError> {
        self.read(|c| {
            let v: Option<String> = c
                .prepare_cached("SELECT value FROM registry_state WHERE key = 'import'")?
                .query_row([], |r| r.get(0))
                .optional()?;
            Ok(match v.as_deref() {
                None => None,
                Some("complete") => Some(ImportState::Complete),
                Some(_) => Some(ImportState::Pending),
            })
        })
        .await
    }

    async fn set_import_state(&self, state: ImportState) -> Result<(), MetaError> {
        let v = match state {
            ImportState::Pending => "pending",
            ImportState::Complete => "complete",
        };
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO registry_state (key, value) VALUES ('import', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([v])?;
            Ok(())
        })
        .await
    }

    async fn lease_acquire(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<Lease, MetaError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO leases (name, owner, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, \
                   acquired_at = CASE WHEN leases.owner = excluded.owner THEN leases.acquired_at ELSE excluded.acquired_at END, \
                   expires_at = excluded.expires_at \
                 WHERE leases.owner = excluded.owner OR leases.expires_at <= ?3",
            )?
            .execute(params![name, owner, now, now.saturating_add(ttl_ms)])?;
            let held = tx
                .prepare_cached(
                    "SELECT owner, acquired_at, expires_at FROM leases WHERE name = ?1",
                )?
                .query_row([&name], |r| {
                    Ok(Lease {
                        owner: r.get(0)?,
                        acquired_at_ms: r.get(1)?,
                        expires_at_ms: r.get(2)?,
                    })
                })?;
            tx.commit()?;
            Ok(held)
        })
        .await
    }

    async fn lease_renew(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, MetaError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND owner = ?2",
            )?
            .execute(params![name, owner, now.saturating_add(ttl_ms)])?
                > 0)
        })
        .await
    }

    async fn lease_release(&self, name: &str, owner: &str) -> Result<(), MetaError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |c| {
            c.prepare_cached("DELETE FROM leases WHERE name = ?1 AND owner = ?2")?
                .execute(params![name, owner])?;
            Ok(())
        })
        .await
    }

    async fn lease_holder(&self, name: &str, now: i64) -> Result<Option<Lease>, MetaError> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT owner, acquired_at, expires_at FROM leases WHERE name = ?1 AND expires_at > ?2",
            )?
            .query_row(params![name, now], |r| {
                Ok(Lease {
                    owner: r.get(0)?,
                    acquired_at_ms: r.get(1)?,
                    expires_at_ms: r.get(2)?,
                })
            })
            .optional()?)
        })
        .await
    }

    async fn gc_drop_stale_links(&self, before_ms: i64) -> Result<u64, MetaError> {
        self.drop_stale_links_in_batches(before_ms, LINK_BATCH)
            .await
    }

    async fn gc_mark(
        &self,
        owner: &str,
        before_ms: i64,
        now: i64,
        limit: usize,
        after: Option<&Digest>,
    ) -> Result<Vec<(Digest, u64)>, MetaError> {
        let owner = owner.to_owned();
        let after = after.map(ToString::to_string).unwrap_or_default();
        let rows: Vec<(String, i64)> = self
            .write_in_background(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if !holds_lease(&tx, GC_LEASE, &owner, now)? {
                    return Err(MetaError::LeaseLost(GC_LEASE.into()));
                }
                // Marks of collectors that lost the lease, first (by the
                // index on gc_marked_at).
                let mut rows = tx
                    .prepare_cached(
                        "UPDATE blobs SET gc_marked_at = ?2, gc_owner = ?1 WHERE digest IN \
                         (SELECT digest FROM blobs WHERE gc_marked_at > 0 AND gc_owner IS NOT ?1 LIMIT ?3) \
                         RETURNING digest, size",
                    )?
                    .query_map(params![owner, now, limit as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<Vec<(String, i64)>, _>>()?;
                // Then deletable blobs in primary-key order from the cursor,
                // so each batch reads on from where the last stopped instead
                // of re-reading what was kept.
                let room = limit.saturating_sub(rows.len()) as i64;
                if room > 0 {
                    rows.extend(
                        tx.prepare_cached(&format!(
                            "UPDATE blobs SET gc_marked_at = ?3, gc_owner = ?4 WHERE digest IN \
                             (SELECT b.digest FROM blobs b WHERE b.digest > ?2 AND {DELETABLE_IN_KEY_ORDER} \
                              ORDER BY b.digest LIMIT ?5) \
                             RETURNING digest, size"
                        ))?
                        .query_map(params![before_ms, after, now, owner, room], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?
                        .collect::<Result<Vec<(String, i64)>, _>>()?,
                    );
                }
                rows.sort_unstable();
                tx.commit()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(d, size)| Ok((parse_digest(&d)?, size as u64)))
            .collect()
    }

    async fn gc_forget(&self, owner: &str, digests: &[Digest]) -> Result<(), MetaError> {
        let owner = owner.to_owned();
        let digests: Vec<String> = digests.iter().map(ToString::to_string).collect();
        self.write_in_background(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "DELETE FROM blobs WHERE digest = ?1 AND gc_owner = ?2 AND gc_marked_at > 0",
                )?;
                for d in &digests {
                    st.execute(params![d, owner])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn gc_estimate(&self, before_ms: i64) -> Result<(u64, u64, u64), MetaError> {
        self.read(move |c| {
            let links: i64 = c
                .prepare_cached(&format!("SELECT count(*) FROM repo_blobs WHERE {STALE_LINK}"))?
                .query_row([before_ms], |r| r.get(0))?;
            let (blobs, bytes): (i64, i64) = c
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(b.size), 0) FROM blobs b \
                     WHERE b.gc_marked_at = 0 AND b.touched_at < ?1 \
                     AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest) \
                     AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest AND rb.created_at >= ?1) \
                     AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.committing = b.digest)",
                )?
                .query_row([before_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((links as u64, blobs as u64, bytes as u64))
        })
        .await
    }

    async fn gc_untagged(
        &self,
        before_ms: i64,
        limit: usize,
        dry_run: bool,
    ) -> Result<Vec<(RepoName, Digest)>, MetaError> {
        let select = format!(
            "SELECT r.name, m.digest, m.repo_id FROM manifests m JOIN repositories r ON r.id = m.repo_id \
             WHERE {UNTAGGED_UNUSED} LIMIT ?2"
        );
        let rows: Vec<(String, String)> = if dry_run {
            self.read(move |c| {
                Ok(c.prepare_cached(&select)?
                    .query_map(params![before_ms, limit as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?)
            })
            .await?
        } else {
            self.write_in_background(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let found: Vec<(String, String, i64)> = tx
                    .prepare_cached(&select)?
                    .query_map(params![before_ms, limit as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                for (_, digest, repo_id) in &found {
                    tx.prepare_cached("DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
                        .execute(params![repo_id, digest])?;
                }
                tx.commit()?;
                Ok(found.into_iter().map(|(r, d, _)| (r, d)).collect())
            })
            .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (repo, digest) in rows {
            if !dry_run {
                self.tags.invalidate(&repo);
            }
            let name = repo.parse().map_err(|_| {
                MetaError::Backend(format!("stored repository name {repo:?} is invalid"))
            })?;
            out.push((name, parse_digest(&digest)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::testsuite::run_all(&meta).await;
    }

    #[tokio::test]
    async fn stale_links_go_batch_after_batch() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        let used = Digest::sha256_of(b"used");
        meta.record_blob(&used, 1, 1, None).await.unwrap();
        // Five repositories link `used` and four more blobs; two of them keep
        // `used` with a manifest, so 2 links stay and 23 are stale: batches
        // of 3 must walk past the kept links and on to the last stale one.
        let mut kept = Vec::new();
        for r in 0..5 {
            let repo: RepoName = format!("links/r{r}").parse().unwrap();
            meta.link_blob(&repo, &used, None).await.unwrap();
            for b in 0..4 {
                let d = Digest::sha256_of(format!("{r}-{b}").as_bytes());
                meta.record_blob(&d, 1, 1, None).await.unwrap();
                meta.link_blob(&repo, &d, None).await.unwrap();
            }
            if r % 2 == 1 {
                let body = format!("{{\"m\":{r}}}");
                let m = ManifestRecord {
                    digest: Digest::sha256_of(body.as_bytes()),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    content: body.into_bytes(),
                    artifact_type: None,
                    subject: None,
                    annotations: None,
                };
                let refs = ManifestRefs {
                    blobs: vec![used.clone()],
                    children: vec![],
                };
                meta.put_manifest(&repo, &m, &refs, None).await.unwrap();
                kept.push(repo);
            }
        }
        let far = i64::MAX / 2;
        assert_eq!(meta.drop_stale_links_in_batches(far, 3).await.unwrap(), 23);
        assert_eq!(meta.drop_stale_links_in_batches(far, 3).await.unwrap(), 0);
        for repo in &kept {
            assert_eq!(meta.blob_in_repo(repo, &used).await.unwrap(), Some(1));
        }
        let dropped: RepoName = "links/r0".parse().unwrap();
        assert_eq!(meta.blob_in_repo(&dropped, &used).await.unwrap(), None);
    }

    /// Another process writing tags to the same database (`wharf gc`,
    /// `wharf repo rm`, `wharf import`, another node) is seen at once: the
    /// tag cache checks the repository's version, not its own writes.
    #[tokio::test]
    async fn tag_cache_sees_other_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (one, two) = (
            SqliteMeta::open(&path).await.unwrap(),
            SqliteMeta::open(&path).await.unwrap(),
        );
        let repo: RepoName = "cache/app".parse().unwrap();
        let m = ManifestRecord {
            digest: Digest::sha256_of(b"{}"),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: b"{}".to_vec(),
            artifact_type: None,
            subject: None,
            annotations: None,
        };
        let refs = ManifestRefs::default();
        let tag = |t: &str| -> Tag { t.parse().unwrap() };
        async fn tags(meta: &SqliteMeta, repo: &RepoName) -> Vec<String> {
            meta.list_tags(repo, None, 100)
                .await
                .unwrap()
                .unwrap()
                .items
        }
        one.put_manifest(&repo, &m, &refs, Some(&tag("a")))
            .await
            .unwrap();
        assert_eq!(tags(&one, &repo).await, ["a"]);
        assert_eq!(tags(&two, &repo).await, ["a"]);
        two.put_manifest(&repo, &m, &refs, Some(&tag("b")))
            .await
            .unwrap();
        assert_eq!(tags(&one, &repo).await, ["a", "b"], "a tag added elsewhere");
        assert!(two.delete_tag(&repo, &tag("a")).await.unwrap());
        assert_eq!(tags(&one, &repo).await, ["b"], "a tag deleted elsewhere");
        // Unchanged: served from the cache (same list).
        assert_eq!(tags(&one, &repo).await, ["b"]);
    }

    #[tokio::test]
    async fn auth_contract() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        crate::testsuite::auth::run_all(&meta).await;
    }

    #[tokio::test]
    async fn reopens_and_keeps_data_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let name: RepoName = "a/b".parse().unwrap();
        let d = Digest::sha256_of(b"x");
        {
            let meta = SqliteMeta::open(&path).await.unwrap();
            meta.record_blob(&d, 1, 1, None).await.unwrap();
            meta.link_blob(&name, &d, None).await.unwrap();
        }
        let meta = SqliteMeta::open(&path).await.unwrap();
        assert_eq!(meta.blob_in_repo(&name, &d).await.unwrap(), Some(1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
