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
//! An upload that commits a blob first records and pins it (`record_blob`),
//! which a collection that has not marked it yet then leaves alone, at any
//! grace period, until the upload links it; one that has marked it makes the
//! upload wait until the bytes are gone and the record forgotten. So a
//! collection never deletes bytes that an upload, a mount or a manifest is
//! about to rely on, and a push that completes within the grace period never
//! loses a blob it uploaded or mounted.
//!
//! One collection runs at a time across every process and node on the
//! database: a collector holds the [`GC_LEASE`] lease in the metadata store,
//! renewed while it works. A collector that dies lets it expire (after a
//! minute), and the next one takes over its marks; on the machine where it
//! ran, its death is seen at once (its pid, pid namespace and start time no
//! longer match a running process). One that finds it has lost the lease
//! (it was paused past its expiry) stops before deleting anything more, and
//! checks before every few dozen deletions that its last renewal is recent
//! enough for the lease to still be its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wharf_meta::{GC_LEASE, MetaError, MetaStore};
use wharf_oci::{Digest, RepoName};

use crate::{CoreError, Registry, now_ms};

/// Blobs marked per transaction.
const BATCH: usize = 2000;
/// Blob deletions in flight at once.
const PARALLEL_DELETES: usize = 16;
/// How long a collector's lease lasts without being renewed.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a working collector renews it.
const LEASE_RENEW: Duration = Duration::from_secs(15);
/// A collector deletes only while its last renewal is younger than the TTL
/// less this margin, so that after a pause (SIGSTOP, a frozen VM) it stops
/// before another collector can have taken the lease.
const LEASE_MARGIN: Duration = Duration::from_secs(20);
/// Blob deletions between two checks of the lease's deadline.
const DELETE_STEP: usize = 64;

/// This process, as lease holders are named: host, process id, pid
/// namespace, the process's start time and a random part (two collectors in
/// one process are two owners): `host:pid:pidns:start:random`.
fn owner_id() -> String {
    let me = ProcessId::this();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}:{}:{}:{}:{}",
        hostname(),
        me.pid,
        me.pidns,
        me.start,
        &rand[..8]
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A process as Linux names it without ambiguity: its pid, the pid
/// namespace that pid is in, and its start time (pids are reused).
#[derive(Debug, PartialEq, Eq)]
struct ProcessId {
    pid: u32,
    pidns: u64,
    start: u64,
}

impl ProcessId {
    fn this() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            pidns: pid_namespace().unwrap_or(0),
            start: start_time(pid).unwrap_or(0),
        }
    }
}

fn pid_namespace() -> Option<u64> {
    // "pid:[4026531836]"
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let s = link.to_str()?;
    s.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks
/// after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether lease holder `owner` is a process of this machine and pid
/// namespace that no longer runs (it was killed): then its lease need not
/// run out before the next collector takes it. A holder elsewhere (another
/// node, another container) is never judged dead here.
fn holder_is_dead_here(owner: &str) -> bool {
    let parts: Vec<&str> = owner.rsplitn(5, ':').collect();
    let [_, start, pidns, pid, host] = parts[..] else {
        return false;
    };
    let (Ok(pid), Ok(pidns), Ok(start)) = (
        pid.parse::<u32>(),
        pidns.parse::<u64>(),
        start.parse::<u64>(),
    ) else {
        return false;
    };
    let me = ProcessId::this();
    if host != hostname() || pidns == 0 || pidns != me.pidns || start == 0 {
        return false;
    }
    // Gone, or the pid now names a later process.
    start_time(pid) != Some(start)
}

/// The garbage-collection lease while this process holds it: renewed in
/// the background; `lost` once a renewal fails.
struct HeldLease {
    meta: Arc<dyn MetaStore>,
    owner: String,
    lost: Arc<AtomicBool>,
    /// Milliseconds after `base` until which the lease is surely ours.
    valid_until: Arc<AtomicU64>,
    base: Instant,
    renewer: tokio::task::JoinHandle<()>,
}

impl HeldLease {
    async fn acquire(meta: Arc<dyn MetaStore>) -> Result<HeldLease, CoreError> {
        let owner = owner_id();
        let ttl = LEASE_TTL.as_millis() as i64;
        let now = now_ms();
        let mut held = meta.lease_acquire(GC_LEASE, &owner, now, ttl).await?;
        if held.owner != owner && holder_is_dead_here(&held.owner) {
            tracing::warn!(holder = %held.owner, "the last garbage collection on this machine died holding its lease; taking over");
            // Releases only if that dead holder still has it.
            meta.lease_release(GC_LEASE, &held.owner).await?;
            held = meta.lease_acquire(GC_LEASE, &owner, now, ttl).await?;
        }
        if held.owner != owner {
            return Err(CoreError::Busy(format!(
                "a garbage collection is already running ({}, for {} s)",
                held.owner,
                (now - held.acquired_at_ms).max(0) / 1000
            )));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let safe = (LEASE_TTL - LEASE_MARGIN).as_millis() as u64;
        let valid_until = Arc::new(AtomicU64::new(safe));
        let renewer = {
            let (meta, owner, lost, valid) = (
                meta.clone(),
                owner.clone(),
                lost.clone(),
                valid_until.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW).await;
                    let asked = base.elapsed().as_millis() as u64;
                    match meta.lease_renew(GC_LEASE, &owner, now_ms(), ttl).await {
                        Ok(true) => valid.store(asked + safe, Ordering::SeqCst),
                        Ok(false) => {
                            tracing::error!(
                                "garbage collection lost its lease to another collector"
                            );
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "renewing the garbage collection lease failed");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        };
        Ok(HeldLease {
            meta,
            owner,
            lost,
            valid_until,
            base,
            renewer,
        })
    }

    /// `Err` once the lease may have gone to another collector: a renewal
    /// failed, or the last one is too old (this process was paused).
    fn check(&self) -> Result<(), CoreError> {
        let late =
            self.base.elapsed().as_millis() as u64 >= self.valid_until.load(Ordering::SeqCst);
        if late {
            self.lost.store(true, Ordering::SeqCst);
        }
        if self.lost.load(Ordering::SeqCst) {
            Err(CoreError::Busy(
                "the garbage collection lost its lease and stopped; the next one takes over".into(),
            ))
        } else {
            Ok(())
        }
    }

    async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.meta.lease_release(GC_LEASE, &self.owner).await {
            tracing::warn!(error = %e, "releasing the garbage collection lease failed; it expires on its own");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_dead_only_if_it_ran_here_and_is_gone() {
        let me = owner_id();
        assert!(!holder_is_dead_here(&me), "this process runs");
        let p = ProcessId::this();
        let host = hostname();
        // Same pid, another start time: the pid was reused.
        assert!(holder_is_dead_here(&format!(
            "{host}:{}:{}:{}:abcd",
            p.pid,
            p.pidns,
            p.start + 1
        )));
        // A pid that runs nothing.
        assert!(holder_is_dead_here(&format!(
            "{host}:{}:{}:{}:abcd",
            u32::MAX - 1,
            p.pidns,
            p.start
        )));
        // Elsewhere: another host or pid namespace is never judged.
        assert!(!holder_is_dead_here(&format!(
            "other-host:{}:{}:{}:abcd",
            u32::MAX - 1,
            p.pidns,
            p.start
        )));
        assert!(!holder_is_dead_here(&format!(
            "{host}:{}:{}:{}:abcd",
            u32::MAX - 1,
            p.pidns + 1,
            p.start
        )));
        // Unparsable names are not judged either.
        assert!(!holder_is_dead_here("gc-1"));
        assert!(!holder_is_dead_here("a:b:c:d:e"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// What is younger than this is kept, whatever references it.
    pub grace: Duration,
    pub dry_run: bool,
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
    /// Blobs nothing references that were kept because they are younger
    /// than the grace period (or an upload is committing them), and their
    /// bytes: why a collection may free less than expected.
    pub kept_blobs: u64,
    pub kept_bytes: u64,
    /// Links to blobs that no manifest uses yet, kept for the grace period.
    pub kept_links: u64,
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

    /// Runs one collection, telling `events` what it deletes. One runs at a
    /// time across every process on the metadata store (see the module doc);
    /// `Busy` if another is running.
    pub async fn gc(&self, opts: GcOptions, events: &dyn GcEvents) -> Result<GcReport, CoreError> {
        let started = Instant::now();
        let cutoff = now_ms() - i64::try_from(opts.grace.as_millis()).unwrap_or(i64::MAX);
        if opts.dry_run {
            let manifests = match opts.untagged_age {
                Some(age) => self.delete_untagged(age, true, events).await?,
                None => 0,
            };
            let (links, blobs, bytes) = self.meta.gc_estimate(cutoff).await?;
            let mut report = GcReport {
                dry_run: true,
                manifests,
                links,
                blobs,
                bytes,
                ..GcReport::default()
            };
            self.kept(&mut report).await?;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        if self.meta.import_state().await? == Some(wharf_meta::ImportState::Pending) {
            return Err(CoreError::Busy(
                "a distribution root in the data directory is not fully imported yet \
                 (wharf import, or wharf serve in the background): collections delete \
                 nothing until it is"
                    .into(),
            ));
        }
        let lease = HeldLease::acquire(self.meta.clone()).await?;
        let result = self.collect(&lease, &opts, cutoff, events).await;
        lease.release().await;
        let mut report = result?;
        self.kept(&mut report).await?;
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
            kept_blobs = report.kept_blobs,
            kept_bytes = report.kept_bytes,
            seconds = report.seconds,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// What the grace period keeps now (what a collection with no grace
    /// would take besides what this one did).
    async fn kept(&self, report: &mut GcReport) -> Result<(), CoreError> {
        let (links, blobs, bytes) = self.meta.gc_estimate(now_ms()).await?;
        report.kept_links = links.saturating_sub(if report.dry_run { report.links } else { 0 });
        report.kept_blobs = blobs.saturating_sub(if report.dry_run { report.blobs } else { 0 });
        report.kept_bytes = bytes.saturating_sub(if report.dry_run { report.bytes } else { 0 });
        Ok(())
    }

    async fn collect(
        &self,
        lease: &HeldLease,
        opts: &GcOptions,
        cutoff: i64,
        events: &dyn GcEvents,
    ) -> Result<GcReport, CoreError> {
        let manifests = match opts.untagged_age {
            Some(age) => self.delete_untagged(age, false, events).await?,
            None => 0,
        };
        lease.check()?;
        tracing::info!(grace_s = opts.grace.as_secs(), "garbage collection started");
        let mut report = GcReport {
            manifests,
            links: self.meta.gc_drop_stale_links(cutoff).await?,
            ..GcReport::default()
        };
        let mut cursor: Option<Digest> = None;
        loop {
            lease.check()?;
            let now = now_ms();
            let t_mark = Instant::now();
            let marked = match self
                .meta
                .gc_mark(&lease.owner, cutoff, now, BATCH, cursor.as_ref())
                .await
            {
                Ok(m) => m,
                Err(MetaError::LeaseLost(_)) => {
                    lease.lost.store(true, Ordering::SeqCst);
                    lease.check()?;
                    unreachable!("check fails once lost is set")
                }
                Err(e) => return Err(e.into()),
            };
            if marked.is_empty() {
                break;
            }
            cursor = marked.last().map(|(d, _)| d.clone());
            let t_delete = Instant::now();
            // Deletions are independent system calls: several runs at once,
            // each working through its share of the batch in small steps.
            // Before each step the lease must still be surely ours: deleting
            // what another collector took over would race its uploads.
            let chunk = marked.len().div_ceil(PARALLEL_DELETES).max(1);
            let results: Vec<(Digest, u64, Result<bool, wharf_store::StoreError>)> =
                futures::future::join_all(marked.chunks(chunk).map(|part| async move {
                    let mut out = Vec::with_capacity(part.len());
                    for step in part.chunks(DELETE_STEP) {
                        if lease.check().is_err() {
                            break;
                        }
                        let digests: Vec<Digest> = step.iter().map(|(d, _)| d.clone()).collect();
                        let rs = self.blobs.delete_many(&digests).await;
                        out.extend(
                            step.iter()
                                .cloned()
                                .zip(rs)
                                .map(|((d, size), r)| (d, size, r)),
                        );
                    }
                    out
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
            self.meta.gc_forget(&lease.owner, &done).await?;
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
        Ok(report)
    }

    /// Who is collecting now, if anyone: the lease holder and since when.
    pub async fn gc_running(&self) -> Result<Option<wharf_meta::Lease>, CoreError> {
        Ok(self.meta.lease_holder(GC_LEASE, now_ms()).await?)
    }
}
