//! Online garbage collection of blobs.
//!
//! Reachability lives in the metadata store, so a collection is a few queries
//! and deletions while clients keep pushing and pulling:
//!
//! 1. Links (repository → blob) older than the grace period that no manifest
//!    of that repository uses are dropped: blobs uploaded or mounted for a
//!    push whose manifest never came.
//! 2. Blobs that no manifest uses, no repository links, and nobody recorded
//!    within the grace period are marked in batches (the store re-checks all
//!    of that atomically), their bytes deleted, their records forgotten.
//!
//! An upload that commits a blob first refreshes its record (`record_blob`),
//! which a collection that has not marked it yet then leaves alone; one that
//! has marked it makes the upload wait until the bytes are gone and the
//! record forgotten. So a collection never deletes bytes that an upload, a
//! mount or a manifest is about to rely on, and a push that completes within
//! the grace period never loses a blob it uploaded or mounted.

use std::time::{Duration, Instant};

use wharf_oci::{Digest, RepoName};

use crate::{CoreError, Registry, now_ms};

/// Blobs marked per transaction.
const BATCH: usize = 2000;
/// Blob deletions in flight at once.
const PARALLEL_DELETES: usize = 16;
/// Marks older than this are taken over: their collector died.
const STALE_MARK: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// What is younger than this is kept, whatever references it.
    pub grace: Duration,
    pub dry_run: bool,
    /// The caller knows that no other collection is running (it holds an
    /// exclusive lock that dies with its process), so every existing mark is
    /// left over from a collection that crashed: take them all over now
    /// rather than after they grow stale.
    pub sole_collector: bool,
    /// Also delete manifests untagged for longer than this (and not listed by
    /// an index, nor referrers of a manifest still there) before collecting.
    pub untagged_age: Option<Duration>,
}

/// Told what a collection deletes that a user could have deleted, so the
/// caller can put it in the audit log (this crate knows none).
#[async_trait::async_trait]
pub trait GcEvents: Send + Sync {
    /// Manifests the untagged policy has just deleted (never on a dry run).
    async fn untagged_deleted(&self, manifests: &[(RepoName, Digest)]);
}

/// Nobody listens.
#[async_trait::async_trait]
impl GcEvents for () {
    async fn untagged_deleted(&self, _: &[(RepoName, Digest)]) {}
}

/// What a collection freed, or would free (`dry_run`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Untagged manifests deleted (a dry run counts the first round only:
    /// deleting an index frees its children for the next).
    pub manifests: u64,
    /// Repository → blob links dropped.
    pub links: u64,
    /// Blobs deleted.
    pub blobs: u64,
    /// Bytes freed.
    pub bytes: u64,
    pub seconds: f64,
}

impl Registry {
    /// Deletes manifests untagged for longer than `age`, round after round.
    async fn delete_untagged(
        &self,
        age: Duration,
        dry_run: bool,
        events: &dyn GcEvents,
    ) -> Result<u64, CoreError> {
        let before = now_ms() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let mut n = 0;
        loop {
            let gone = self.meta.gc_untagged(before, 1000, dry_run).await?;
            n += gone.len() as u64;
            for (repo, digest) in &gone {
                tracing::debug!(%repo, %digest, dry_run, "untagged manifest removed");
            }
            if gone.is_empty() || dry_run {
                break;
            }
            events.untagged_deleted(&gone).await;
        }
        metrics::counter!("wharf_gc_untagged_manifests_deleted_total").increment(if dry_run {
            0
        } else {
            n
        });
        Ok(n)
    }

    /// Runs one collection, telling `events` what it deletes. Only one runs
    /// at a time in a process; `Busy` if one is already running.
    pub async fn gc(&self, opts: GcOptions, events: &dyn GcEvents) -> Result<GcReport, CoreError> {
        let Ok(_running) = self.gc_lock.try_lock() else {
            return Err(CoreError::Busy(
                "a garbage collection is already running".into(),
            ));
        };
        let started = Instant::now();
        let cutoff = now_ms() - i64::try_from(opts.grace.as_millis()).unwrap_or(i64::MAX);
        let manifests = match opts.untagged_age {
            Some(age) => self.delete_untagged(age, opts.dry_run, events).await?,
            None => 0,
        };
        if opts.dry_run {
            let (links, blobs, bytes) = self.meta.gc_estimate(cutoff).await?;
            return Ok(GcReport {
                dry_run: true,
                manifests,
                links,
                blobs,
                bytes,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let owner = uuid::Uuid::new_v4().to_string();
        tracing::info!(grace_s = opts.grace.as_secs(), "garbage collection started");
        let mut report = GcReport {
            manifests,
            links: self.meta.gc_drop_stale_links(cutoff).await?,
            ..GcReport::default()
        };
        let mut cursor: Option<Digest> = None;
        loop {
            let now = now_ms();
            let stale = if opts.sole_collector {
                now + 1
            } else {
                now - STALE_MARK.as_millis() as i64
            };
            let t_mark = Instant::now();
            let marked = self
                .meta
                .gc_mark(&owner, cutoff, stale, now, BATCH, cursor.as_ref())
                .await?;
            if marked.is_empty() {
                break;
            }
            cursor = marked.last().map(|(d, _)| d.clone());
            let t_delete = Instant::now();
            // Deletions are independent system calls: several runs at once,
            // each working through its share of the batch.
            let chunk = marked.len().div_ceil(PARALLEL_DELETES).max(1);
            let results: Vec<(Digest, u64, Result<bool, wharf_store::StoreError>)> =
                futures::future::join_all(marked.chunks(chunk).map(|part| async move {
                    let digests: Vec<Digest> = part.iter().map(|(d, _)| d.clone()).collect();
                    let rs = self.blobs.delete_many(&digests).await;
                    part.iter()
                        .cloned()
                        .zip(rs)
                        .map(|((d, size), r)| (d, size, r))
                        .collect::<Vec<_>>()
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
            let mut done = Vec::with_capacity(results.len());
            for (digest, size, r) in results {
                match r {
                    Ok(_) => {
                        report.blobs += 1;
                        report.bytes += size;
                        done.push(digest);
                    }
                    // The mark stays: the next collection takes it over.
                    Err(e) => tracing::error!(%digest, error = %e, "deleting a blob failed"),
                }
            }
            let t_forget = Instant::now();
            self.meta.gc_forget(&owner, &done).await?;
            tracing::debug!(
                mark_ms = (t_delete - t_mark).as_millis() as u64,
                delete_ms = (t_forget - t_delete).as_millis() as u64,
                forget_ms = t_forget.elapsed().as_millis() as u64,
                "garbage collection batch"
            );
            metrics::counter!("wharf_gc_blobs_deleted_total").increment(done.len() as u64);
            tracing::info!(
                blobs = report.blobs,
                bytes = report.bytes,
                "garbage collection progress"
            );
            if done.is_empty() {
                // Every delete in the batch failed: stop rather than spin.
                break;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        metrics::counter!("wharf_gc_runs_total").increment(1);
        metrics::counter!("wharf_gc_bytes_freed_total").increment(report.bytes);
        metrics::counter!("wharf_gc_links_dropped_total").increment(report.links);
        metrics::gauge!("wharf_gc_last_duration_seconds").set(report.seconds);
        metrics::gauge!("wharf_gc_last_success_timestamp_seconds").set(now_ms() as f64 / 1000.0);
        tracing::info!(
            manifests = report.manifests,
            links = report.links,
            blobs = report.blobs,
            bytes = report.bytes,
            seconds = report.seconds,
            "garbage collection finished"
        );
        Ok(report)
    }
}
