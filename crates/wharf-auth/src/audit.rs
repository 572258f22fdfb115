//! The audit log writer: requests hand records to a channel, one task writes
//! them in batches (one transaction each) and prunes old ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wharf_meta::{AuditEntry, AuthStore};

/// Records waiting to be written before producers wait: back-pressure rather
/// than silently dropping audit records.
const QUEUE: usize = 8192;
const BATCH: usize = 1024;

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEntry>,
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
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(QUEUE);
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(Duration::from_secs(3600));
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            break;
                        }
                        if let Err(e) = store.append_audit(&batch).await {
                            tracing::error!(error = %e, lost = batch.len(), "writing audit records failed");
                        }
                        metrics::counter!("wharf_audit_records_total").increment(batch.len() as u64);
                        batch.clear();
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

    pub async fn record(&self, entry: AuditEntry) {
        if self.tx.send(entry).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }
}
