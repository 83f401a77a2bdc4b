//! A worker's hold on the mailbox pass it runs.
//!
//! The lease lives in the store ([`LeaseStore::acquire_lease`]) and carries a
//! fencing token that every write of the pass is checked against
//! ([`PassStore`]). A [`LeaseKeeper`] renews it in the background and also
//! keeps the lease by the worker's **own monotonic clock**: the lease is
//! taken to end at the time the last successful renewal was *sent* plus the
//! TTL less a margin, which is never later than the store's expiry. Past
//! that moment the keeper declares the lease lost by itself — whether the
//! store is unreachable, the renewals are refused, or the process was frozen
//! (SIGSTOP, a paused VM) — so a worker stops appending before any other
//! worker can take the mailbox over. [`LeaseKeeper::guard`] makes a future
//! (an append) fail at its next poll once that moment has passed, so that
//! nothing more is sent after a freeze.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use mailwave_common::model::{FolderCheckpoint, ItemFailure, Lease, LedgerEntry, MailboxId};
use mailwave_common::store::{LeaseStore, LedgerStore, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connector::ConnectorError;

/// How long before the store's expiry the worker gives its lease up: a
/// fifth of the TTL, so that a renewal every third of it has two tries left.
fn margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// Holds one lease: renews it, and says when it is lost.
pub struct LeaseKeeper {
    lease: Lease,
    /// By the worker's clock, when the lease must be taken as lost.
    deadline: Mutex<Instant>,
    lost: CancellationToken,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LeaseKeeper {
    /// Starts keeping `lease`, just acquired (at `acquired`, by the worker's
    /// clock, taken before the request was sent) with `ttl`.
    pub fn start(
        store: Arc<dyn LeaseStore>,
        lease: Lease,
        ttl: Duration,
        acquired: Instant,
    ) -> Arc<LeaseKeeper> {
        let keeper = Arc::new(LeaseKeeper {
            lease,
            deadline: Mutex::new(acquired + ttl.saturating_sub(margin(ttl))),
            lost: CancellationToken::new(),
            heartbeat: Mutex::new(None),
        });
        let heartbeat = tokio::spawn(Arc::clone(&keeper).heartbeat(store, ttl));
        *keeper.heartbeat.lock().expect("lock") = Some(heartbeat);
        keeper
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether the lease is lost (refused, or past its deadline).
    pub fn is_lost(&self) -> bool {
        if self.lost.is_cancelled() {
            return true;
        }
        if Instant::now() >= *self.deadline.lock().expect("lock") {
            self.declare_lost("not renewed in time by this worker's clock");
            return true;
        }
        false
    }

    /// Completes once the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// `Ok` while the lease holds; the error to stop the pass with otherwise.
    pub fn check(&self) -> Result<(), ConnectorError> {
        if self.is_lost() {
            return Err(self.lost_error());
        }
        Ok(())
    }

    /// Runs `work`, failing it (dropping it unfinished) at the first poll
    /// after the lease is lost: an append cut off this way sends nothing
    /// more, and its copies are in doubt for whoever takes the mailbox.
    pub async fn guard<T>(
        &self,
        work: impl Future<Output = Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        let mut work = pin!(work);
        let checked = std::future::poll_fn(|cx| {
            if self.is_lost() {
                return Poll::Ready(Err(self.lost_error()));
            }
            work.as_mut().poll(cx)
        });
        tokio::select! {
            biased;
            () = self.lost.cancelled() => Err(self.lost_error()),
            result = checked => result,
        }
    }

    /// Stops renewing (the pass is over); the lease itself is released or
    /// handed back by the caller.
    pub fn stop(&self) {
        if let Some(heartbeat) = self.heartbeat.lock().expect("lock").take() {
            heartbeat.abort();
        }
    }

    /// What a store answer means for the lease: `LeaseLost` declares it lost.
    pub fn observe(&self, error: StoreError) -> ConnectorError {
        if matches!(error, StoreError::LeaseLost { .. }) {
            self.declare_lost("the store refused a write");
            return self.lost_error();
        }
        ConnectorError::from(error)
    }

    fn lost_error(&self) -> ConnectorError {
        ConnectorError::mailbox(format!(
            "the lease of mailbox {} is no longer this worker's",
            self.lease.mailbox
        ))
    }

    fn declare_lost(&self, why: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(
                mailbox = self.lease.mailbox,
                pass = self.lease.pass,
                why,
                "lease lost; stopping this mailbox"
            );
            self.lost.cancel();
        }
    }

    async fn heartbeat(self: Arc<Self>, store: Arc<dyn LeaseStore>, ttl: Duration) {
        let every = ttl / 3;
        let retry = (ttl / 10).min(Duration::from_secs(1));
        let mut next = Instant::now() + every;
        loop {
            let deadline = *self.deadline.lock().expect("lock");
            tokio::select! {
                () = tokio::time::sleep_until(next.min(deadline)) => {}
                () = self.lost.cancelled() => return,
            }
            if self.is_lost() {
                return;
            }
            let sent = Instant::now();
            match store.renew_lease(&self.lease, ttl).await {
                Ok(true) => {
                    let mut deadline = self.deadline.lock().expect("lock");
                    *deadline = (*deadline).max(sent + ttl.saturating_sub(margin(ttl)));
                    next = sent + every;
                }
                Ok(false) => {
                    self.declare_lost("the store refused the renewal (taken or expired)");
                    return;
                }
                Err(error) => {
                    tracing::warn!(mailbox = self.lease.mailbox, %error,
                        "renewing the lease failed; retrying");
                    next = Instant::now() + retry;
                }
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The store as one pass sees it: the ledger's reads as they are, and every
/// write carrying the pass's lease, checked by the worker's clock first and
/// by the store in the write's own transaction. The engine sees nothing
/// else of the store.
#[derive(Clone, Copy)]
pub struct PassStore<'a> {
    store: &'a dyn LedgerStore,
    keeper: &'a LeaseKeeper,
}

impl<'a> PassStore<'a> {
    pub fn new(store: &'a dyn LedgerStore, keeper: &'a LeaseKeeper) -> PassStore<'a> {
        PassStore { store, keeper }
    }

    pub fn keeper(&self) -> &'a LeaseKeeper {
        self.keeper
    }

    pub fn mailbox(&self) -> MailboxId {
        self.keeper.lease.mailbox
    }

    async fn write<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ConnectorError> {
        self.keeper.check()?;
        write.await.map_err(|e| self.keeper.observe(e))
    }

    pub async fn checkpoints(&self) -> Result<Vec<FolderCheckpoint>, ConnectorError> {
        Ok(self.store.checkpoints(self.mailbox()).await?)
    }

    pub async fn ledger(
        &self,
        folder: &str,
        validity: u32,
    ) -> Result<Vec<LedgerEntry>, ConnectorError> {
        Ok(self.store.ledger(self.mailbox(), folder, validity).await?)
    }

    pub async fn ledger_entries(
        &self,
        folder: &str,
        validity: u32,
        items: &[String],
    ) -> Result<Vec<LedgerEntry>, ConnectorError> {
        Ok(self
            .store
            .ledger_entries(self.mailbox(), folder, validity, items)
            .await?)
    }

    pub async fn intents(&self, folder: &str) -> Result<Vec<LedgerEntry>, ConnectorError> {
        Ok(self.store.intents(self.mailbox(), folder).await?)
    }

    pub async fn save_checkpoint(
        &self,
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.save_checkpoint(lease, checkpoint))
            .await
    }

    pub async fn commit_items(
        &self,
        checkpoint: &FolderCheckpoint,
        entries: &[LedgerEntry],
    ) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.commit_items(lease, checkpoint, entries))
            .await
    }

    pub async fn record_intents(&self, entries: &[LedgerEntry]) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.record_intents(lease, entries)).await
    }

    pub async fn update_flags(
        &self,
        folder: &str,
        validity: u32,
        flags: &[(String, String)],
    ) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.update_flags(lease, folder, validity, flags))
            .await
    }

    pub async fn rekey_folder(
        &self,
        checkpoint: &FolderCheckpoint,
        old_validity: u32,
        rekeys: &[(String, String, u32)],
    ) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(
            self.store
                .rekey_folder(lease, checkpoint, old_validity, rekeys),
        )
        .await
    }

    pub async fn retarget_folder(
        &self,
        checkpoint: &FolderCheckpoint,
        target_ids: &[(String, Option<String>)],
    ) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.retarget_folder(lease, checkpoint, target_ids))
            .await
    }

    pub async fn record_failure(&self, failure: &ItemFailure) -> Result<(), ConnectorError> {
        let lease = &self.keeper.lease;
        self.write(self.store.record_failure(lease, failure)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailwave_common::model::MailboxSpec;
    use mailwave_common::store::{SqliteStore, WaveStore};

    async fn leased(ttl: Duration) -> (Arc<SqliteStore>, Arc<LeaseKeeper>) {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let wave = store.ensure_wave("w").await.unwrap();
        let spec = MailboxSpec {
            source: "a".into(),
            target: "b".into(),
        };
        let id = store.add_mailboxes(wave, &[spec]).await.unwrap()[0].id;
        store.queue_pass(id).await.unwrap();
        let acquired = Instant::now();
        let lease = store.acquire_lease(id, 1, "w", ttl).await.unwrap().unwrap();
        let keeper = LeaseKeeper::start(store.clone(), lease, ttl, acquired);
        (store, keeper)
    }

    #[tokio::test]
    async fn a_renewed_lease_holds_past_its_first_ttl() {
        let (_store, keeper) = leased(Duration::from_millis(600)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(keeper.check().is_ok(), "renewed every third of the TTL");
    }

    #[tokio::test]
    async fn a_lease_taken_by_another_worker_is_lost_and_fences_writes() {
        let ttl = Duration::from_millis(300);
        let (store, keeper) = leased(ttl).await;
        keeper.stop();
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        let mailbox = keeper.lease().mailbox;
        store
            .acquire_lease(mailbox, 1, "other", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("expired: another worker takes it");
        assert!(keeper.is_lost(), "past its own deadline");
        let writes = PassStore::new(store.as_ref(), &keeper);
        assert!(writes.record_intents(&[]).await.is_err());
    }

    #[tokio::test]
    async fn the_store_refusing_a_write_declares_the_lease_lost() {
        let (store, keeper) = leased(Duration::from_secs(60)).await;
        let mailbox = keeper.lease().mailbox;
        // Another process of the same worker name took it again: a new token.
        store
            .acquire_lease(mailbox, 1, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let writes = PassStore::new(store.as_ref(), &keeper);
        let checkpoint = FolderCheckpoint {
            mailbox,
            folder: "INBOX".into(),
            target_folder: "INBOX".into(),
            validity: 1,
            high_water_mark: 0,
            highest_modseq: None,
            target_mark: 1,
            target_validity: None,
            subscribed: false,
            sync_state: None,
        };
        assert!(writes.save_checkpoint(&checkpoint).await.is_err());
        assert!(keeper.is_lost());
        assert!(store.checkpoints(mailbox).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_cannot_renew_stops_by_its_own_clock() {
        // No renewal gets through (the heartbeat is stopped, as when the
        // store is unreachable): the lease ends by the worker's clock.
        let ttl = Duration::from_secs(30);
        let (_store, keeper) = leased(ttl).await;
        keeper.stop();
        let mut guarded =
            Box::pin(keeper.guard(std::future::pending::<Result<(), ConnectorError>>()));
        tokio::select! {
            result = &mut guarded => panic!("ended early: {result:?}"),
            () = tokio::time::sleep(ttl - margin(ttl) - Duration::from_secs(1)) => {}
        }
        assert!(keeper.check().is_ok());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(keeper.check().is_err(), "the deadline passed");
        let result = tokio::time::timeout(Duration::from_millis(10), guarded).await;
        assert!(
            matches!(result, Ok(Err(_))),
            "a guarded append fails at its next poll"
        );
    }
}
