//! The embedded SQLite backend.
//!
//! WAL mode with `synchronous=FULL` (an acknowledged push survives power loss),
//! one writer connection (SQLite allows one writer at a time; queueing in the
//! pool beats retrying on SQLITE_BUSY) and a pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use wharf_oci::{Digest, RepoName, Tag};

use crate::{ManifestRecord, ManifestRefs, MetaError, MetaStore, Page, Referrer, Upload};

/// Schema migrations, applied in order; `PRAGMA user_version` records the last.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/sqlite/0001_core.sql")];

pub struct SqliteMeta {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl From<sqlx::Error> for MetaError {
    fn from(e: sqlx::Error) -> Self {
        MetaError::Backend(e.to_string())
    }
}

fn parse_digest(s: &str) -> Result<Digest, MetaError> {
    s.parse()
        .map_err(|e| MetaError::Backend(format!("stored digest {s:?} is invalid: {e}")))
}

fn to_i64(n: u64) -> Result<i64, MetaError> {
    i64::try_from(n).map_err(|_| MetaError::Backend(format!("{n} does not fit the database")))
}

fn manifest_from_row(row: &SqliteRow) -> Result<ManifestRecord, MetaError> {
    let subject: Option<String> = row.try_get("subject")?;
    Ok(ManifestRecord {
        digest: parse_digest(row.try_get("digest")?)?,
        media_type: row.try_get("media_type")?,
        content: row.try_get("content")?,
        artifact_type: row.try_get("artifact_type")?,
        subject: subject.as_deref().map(parse_digest).transpose()?,
        annotations: row.try_get("annotations")?,
    })
}

impl SqliteMeta {
    /// Opens (creating and migrating if needed) the database at `path`. The
    /// file is created with mode 0600.
    pub async fn open(path: &Path) -> Result<SqliteMeta, MetaError> {
        if !path.exists() {
            create_private_file(path)
                .map_err(|e| MetaError::Backend(format!("creating {}: {e}", path.display())))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteMeta { writer, reader })
    }
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
}

#[cfg(not(unix))]
fn create_private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

async fn migrate(pool: &SqlitePool) -> Result<(), MetaError> {
    let current: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(pool)
        .await?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        return Err(MetaError::Backend(format!(
            "database schema version {current} is newer than this Wharf ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let mut tx = pool.begin().await?;
        // Migrations are compiled in; the version is a number we format.
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            i + 1
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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

async fn repo_id_for_write(
    tx: &mut Transaction<'_, Sqlite>,
    repo: &RepoName,
) -> Result<i64, MetaError> {
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
    )
    .bind(repo.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?")
            .bind(repo.as_str())
            .fetch_one(&mut **tx)
            .await?,
    )
}

fn page(mut items: Vec<String>, n: usize) -> Page {
    let more = items.len() > n;
    items.truncate(n);
    Page { items, more }
}

#[async_trait::async_trait]
impl MetaStore for SqliteMeta {
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), MetaError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let repo_id = repo_id_for_write(&mut tx, repo).await?;
        sqlx::query("INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) ON CONFLICT(digest) DO NOTHING")
            .bind(digest.as_str())
            .bind(to_i64(size)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO repo_blobs (repo_id, digest, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(repo_id)
            .bind(digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, MetaError> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id \
             JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn blob_known(&self, digest: &Digest) -> Result<Option<u64>, MetaError> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM blobs b WHERE b.digest = ? \
             AND EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)",
        )
        .bind(digest.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(size.map(|s| s as u64))
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        let r = sqlx::query(
            "DELETE FROM repo_blobs WHERE digest = ? \
             AND repo_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(digest.as_str())
        .bind(repo.as_str())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        m: &ManifestRecord,
        refs: &ManifestRefs,
        tag: Option<&Tag>,
    ) -> Result<(), MetaError> {
        let now = now_ms();
        let mut tx = self.writer.begin().await?;
        let repo_id = repo_id_for_write(&mut tx, repo).await?;
        for b in &refs.blobs {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM repo_blobs WHERE repo_id = ? AND digest = ?")
                    .bind(repo_id)
                    .bind(b.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(MetaError::MissingBlob(b.clone()));
            }
        }
        for c in &refs.children {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM manifests WHERE repo_id = ? AND digest = ?")
                    .bind(repo_id)
                    .bind(c.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Err(MetaError::MissingManifest(c.clone()));
            }
        }
        sqlx::query(
            "INSERT INTO manifests (repo_id, digest, media_type, size, content, artifact_type, subject, annotations, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.content.len() as i64)
        .bind(&m.content)
        .bind(&m.artifact_type)
        .bind(m.subject.as_ref().map(|s| s.as_str()))
        .bind(&m.annotations)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for b in &refs.blobs {
            sqlx::query("INSERT INTO manifest_blobs (repo_id, manifest_digest, blob_digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(b.as_str())
                .execute(&mut *tx)
                .await?;
        }
        for c in &refs.children {
            sqlx::query("INSERT INTO manifest_children (repo_id, manifest_digest, child_digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(c.as_str())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(tag) = tag {
            sqlx::query(
                "INSERT INTO tags (repo_id, name, manifest_digest, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(repo_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
            )
            .bind(repo_id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content, m.artifact_type, m.subject, m.annotations \
             FROM repositories r JOIN tags t ON t.repo_id = r.id \
             JOIN manifests m ON m.repo_id = r.id AND m.digest = t.manifest_digest \
             WHERE r.name = ? AND t.name = ?",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(manifest_from_row).transpose()
    }

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, MetaError> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content, m.artifact_type, m.subject, m.annotations \
             FROM repositories r JOIN manifests m ON m.repo_id = r.id \
             WHERE r.name = ? AND m.digest = ?",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(manifest_from_row).transpose()
    }

    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError> {
        // Tags and reference edges go with it through ON DELETE CASCADE.
        let r = sqlx::query(
            "DELETE FROM manifests WHERE digest = ? \
             AND repo_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(digest.as_str())
        .bind(repo.as_str())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError> {
        let r = sqlx::query(
            "DELETE FROM tags WHERE name = ? \
             AND repo_id = (SELECT id FROM repositories WHERE name = ?)",
        )
        .bind(tag.as_str())
        .bind(repo.as_str())
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Page>, MetaError> {
        let mut conn = self.reader.acquire().await?;
        let repo_id: Option<i64> = sqlx::query_scalar(
            "SELECT r.id FROM repositories r WHERE r.name = ? \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
        )
        .bind(repo.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(repo_id) = repo_id else {
            return Ok(None);
        };
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repo_id = ? AND name > ? ORDER BY name LIMIT ?",
        )
        .bind(repo_id)
        .bind(last.unwrap_or(""))
        .bind(n.saturating_add(1).min(i64::MAX as usize) as i64)
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(page(items, n)))
    }

    async fn list_repositories(&self, last: Option<&str>, n: usize) -> Result<Page, MetaError> {
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT r.name FROM repositories r WHERE r.name > ? \
             AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id) \
             ORDER BY r.name LIMIT ?",
        )
        .bind(last.unwrap_or(""))
        .bind(n.saturating_add(1).min(i64::MAX as usize) as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(page(items, n))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetaError> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations \
             FROM repositories r JOIN manifests m ON m.repo_id = r.id \
             WHERE r.name = ? AND m.subject = ? AND (? IS NULL OR m.artifact_type = ?) \
             ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .bind(artifact_type)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let size: i64 = row.try_get("size")?;
                Ok(Referrer {
                    digest: parse_digest(row.try_get("digest")?)?,
                    media_type: row.try_get("media_type")?,
                    size: size as u64,
                    artifact_type: row.try_get("artifact_type")?,
                    annotations: row.try_get("annotations")?,
                })
            })
            .collect()
    }

    async fn create_upload(&self, u: &Upload) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let repo_id = repo_id_for_write(&mut tx, &u.repo).await?;
        sqlx::query(
            "INSERT INTO uploads (id, repo_id, size, hash_state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(repo_id)
        .bind(to_i64(u.size)?)
        .bind(&u.hash_state)
        .bind(u.created_at_ms)
        .bind(u.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_upload(&self, id: &str) -> Result<Option<Upload>, MetaError> {
        let row = sqlx::query(
            "SELECT u.id, r.name, u.size, u.hash_state, u.created_at, u.updated_at \
             FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let name: String = row.try_get("name")?;
        let size: i64 = row.try_get("size")?;
        Ok(Some(Upload {
            id: row.try_get("id")?,
            repo: RepoName::from_str(&name)
                .map_err(|_| MetaError::Backend(format!("stored name {name:?} is invalid")))?,
            size: size as u64,
            hash_state: row.try_get("hash_state")?,
            created_at_ms: row.try_get("created_at")?,
            updated_at_ms: row.try_get("updated_at")?,
        }))
    }

    async fn advance_upload(
        &self,
        id: &str,
        from_size: u64,
        to_size: u64,
        hash_state: Option<&[u8]>,
        now: i64,
    ) -> Result<(), MetaError> {
        let r = sqlx::query(
            "UPDATE uploads SET size = ?, hash_state = ?, updated_at = ? WHERE id = ? AND size = ?",
        )
        .bind(to_i64(to_size)?)
        .bind(hash_state)
        .bind(now)
        .bind(id)
        .bind(to_i64(from_size)?)
        .execute(&self.writer)
        .await?;
        if r.rows_affected() == 0 {
            return Err(MetaError::Conflict);
        }
        Ok(())
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, MetaError> {
        let r = sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn stale_uploads(&self, before_ms: i64) -> Result<Vec<String>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM uploads WHERE updated_at < ? ORDER BY updated_at")
                .bind(before_ms)
                .fetch_all(&self.reader)
                .await?,
        )
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
    async fn reopens_and_keeps_data_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let name: RepoName = "a/b".parse().unwrap();
        let d = Digest::sha256_of(b"x");
        {
            let meta = SqliteMeta::open(&path).await.unwrap();
            meta.link_blob(&name, &d, 1).await.unwrap();
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
