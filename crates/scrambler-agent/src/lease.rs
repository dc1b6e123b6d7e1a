//! The registration lease: granted with a TTL, kept alive at a third of it.
//!
//! While etcd is unreachable the keeper retries; when etcd answers that the lease is gone
//! (TTL 0: it expired while we were away), the agent is told, grants a new one and
//! registers again — with the same claims (they have no lease) and the same epoch.

use crate::store::{etcd_error, Store};
use scrambler_core::Result;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// Grants a lease of `ttl` seconds.
pub async fn grant(store: &Store, ttl: i64) -> Result<i64> {
    let r = store
        .client()
        .lease_grant(ttl, None)
        .await
        .map_err(|e| etcd_error(format!("grant a {ttl}s lease"), e))?;
    Ok(r.id())
}

/// Keeps lease `id` alive until the task is aborted; sends `id` on `lost` once etcd says
/// the lease has expired.
pub fn keep_alive(store: &Store, id: i64, ttl: i64, lost: UnboundedSender<i64>) -> JoinHandle<()> {
    let mut client = store.client();
    let every = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    tokio::spawn(async move {
        loop {
            if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(id).await {
                loop {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(every * 2, stream.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Ok(Some(_))) => {
                            tracing::warn!(lease = id, "the registration lease expired");
                            let _ = lost.send(id);
                            return;
                        }
                        _ => break,
                    }
                    tokio::time::sleep(every).await;
                }
            }
            tokio::time::sleep(every.min(Duration::from_secs(1))).await;
        }
    })
}
