//! The audit log writer: requests hand records to a channel, one task writes
//! them in batches (one transaction each) and prunes old ones.
//!
//! A batch is written at most once a second (sooner when it fills up), so a
//! busy registry commits audit records once a second rather than once per
//! request; a crash can lose at most that last second of records. Identical
//! records within a batch (same actor, address, action, resource and outcome:
//! a client pulling the same manifest in a loop) become one row whose detail
//! says how many times it happened.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use wharf_meta::{AuditEntry, AuthStore};

/// Records waiting to be written before producers wait: back-pressure rather
/// than silently dropping audit records.
const QUEUE: usize = 8192;
const BATCH: usize = 4096;
/// How long records may wait to be written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

enum Msg {
    Record(AuditEntry),
    /// Write everything queued before this now, then answer.
    Flush(oneshot::Sender<()>),
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AuditLog {
    /// Starts the writer. Records older than `retention` are pruned hourly.
    pub fn spawn(store: Arc<dyn AuthStore>, retention: Duration) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(Duration::from_secs(3600));
            let mut msgs = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut msgs, BATCH) => {
                        if n == 0 {
                            break;
                        }
                        // Gather what arrives within the flush window, unless
                        // somebody waits for it to be written.
                        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
                        while msgs.len() < BATCH && !msgs.iter().any(|m| matches!(m, Msg::Flush(_))) {
                            let room = BATCH - msgs.len();
                            match tokio::time::timeout_at(deadline, rx.recv_many(&mut msgs, room)).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                        let mut batch = Vec::with_capacity(msgs.len());
                        let mut waiting = Vec::new();
                        for m in msgs.drain(..) {
                            match m {
                                Msg::Record(e) => batch.push(e),
                                Msg::Flush(done) => waiting.push(done),
                            }
                        }
                        let n = batch.len() as u64;
                        if n > 0 {
                            let rows = coalesce(batch);
                            if let Err(e) = store.append_audit(&rows).await {
                                tracing::error!(error = %e, lost = n, "writing audit records failed");
                            }
                            metrics::counter!("wharf_audit_records_total").increment(n);
                        }
                        for done in waiting {
                            let _ = done.send(());
                        }
                    }
                    _ = prune.tick() => {
                        let before = now_ms() - retention.as_millis() as i64;
                        match store.prune_audit(before).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(records = n, "pruned old audit records"),
                            Err(e) => tracing::error!(error = %e, "pruning audit records failed"),
                        }
                    }
                }
            }
        });
        AuditLog { tx }
    }

    /// Queues a record. It is written within about a second.
    pub async fn record(&self, entry: AuditEntry) {
        if self.tx.send(Msg::Record(entry)).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }

    /// Queues a record of something done now, without details.
    pub async fn record_now(
        &self,
        actor: impl Into<String>,
        addr: Option<IpAddr>,
        action: &str,
        resource: impl Into<String>,
        outcome: &str,
    ) {
        self.record(AuditEntry {
            at_ms: now_ms(),
            actor: actor.into(),
            addr: addr.map(|a| a.to_string()).unwrap_or_default(),
            action: action.to_owned(),
            resource: resource.into(),
            outcome: outcome.to_owned(),
            detail: None,
        })
        .await;
    }

    /// Returns once every record queued before the call is written (or its
    /// write failed and was logged): before a process exits.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_err() || written.await.is_err() {
            tracing::error!("audit writer has stopped; records queued may be lost");
        }
    }
}

/// Merges identical records of one batch into the first of them, with the
/// count in `detail` (records with a detail of their own are kept as they are).
fn coalesce(batch: Vec<AuditEntry>) -> Vec<AuditEntry> {
    use std::collections::HashMap;
    let mut out: Vec<AuditEntry> = Vec::with_capacity(batch.len());
    /// actor, address, action, resource, outcome
    type Key = (String, String, String, String, String);
    let mut seen: HashMap<Key, (usize, u64)> = HashMap::new();
    for e in batch {
        if e.detail.is_some() {
            out.push(e);
            continue;
        }
        let key = (
            e.actor.clone(),
            e.addr.clone(),
            e.action.clone(),
            e.resource.clone(),
            e.outcome.clone(),
        );
        match seen.get_mut(&key) {
            Some((i, n)) => {
                *n += 1;
                out[*i].detail = Some(format!("{n} times within a second"));
            }
            None => {
                seen.insert(key, (out.len(), 1));
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(actor: &str, resource: &str) -> AuditEntry {
        AuditEntry {
            at_ms: 1,
            actor: actor.into(),
            addr: "a".into(),
            action: "pull".into(),
            resource: resource.into(),
            outcome: "ok".into(),
            detail: None,
        }
    }

    /// `flush` returns once what was queued is in the database, not up to a
    /// second later.
    #[tokio::test]
    async fn flush_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn AuthStore> = Arc::new(
            wharf_meta::sqlite::SqliteMeta::open(&dir.path().join("meta.db"))
                .await
                .unwrap(),
        );
        let log = AuditLog::spawn(store.clone(), Duration::from_secs(3600));
        log.record_now("someone", None, "delete", "team/app:v1", "ok")
            .await;
        log.flush().await;
        let rows = store
            .audit(&wharf_meta::AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].1.actor.as_str(), rows[0].1.resource.as_str()),
            ("someone", "team/app:v1")
        );
        // Flushing with nothing queued returns too.
        log.flush().await;
    }

    #[test]
    fn identical_records_are_counted_once() {
        let rows = coalesce(vec![
            e("x", "r"),
            e("y", "r"),
            e("x", "r"),
            e("x", "r"),
            e("x", "s"),
        ]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].detail.as_deref(), Some("3 times within a second"));
        assert_eq!(rows[1].detail, None);
        assert_eq!(
            (rows[2].actor.as_str(), rows[2].resource.as_str()),
            ("x", "s")
        );
    }
}
