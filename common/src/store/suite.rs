//! One behavioural test suite for every [`Store`] backend. A backend's tests
//! invoke [`store_suite!`] with a runner that gives each check a fresh,
//! empty store: one `#[test]` per check and backend, so that one failure
//! hides no other.

use std::sync::Arc;
use std::time::Duration;

use super::{PassOutcome, ReapOutcome, Store, StoreError, WaveAction};
use crate::ErrorClass;
use crate::config::Config;
use crate::model::{
    FailureScope, FolderCheckpoint, ItemFailure, Job, Lease, LedgerEntry, MailboxId, MailboxSpec,
    MailboxState, PassStats, SourceCursor, TargetMark, WaveCounts, WaveId, WaveState,
};
use crate::wave_config::WaveConfig;

/// A check of the suite, as a runner receives it.
pub type Check = for<'a> fn(&'a dyn Store) -> futures::future::BoxFuture<'a, ()>;

/// Defines one `#[tokio::test]` per check of the suite, each calling
/// `$runner(check).await` (an `async fn(Check)` that runs the check on a
/// fresh, empty store of the backend).
#[cfg(test)]
macro_rules! store_suite {
    ($runner:path) => {
        $crate::store::suite::store_suite!(
            @checks $runner;
            waves_and_mailboxes,
            pass_lifecycle,
            checkpoints_and_ledger,
            rekey_after_validity_change,
            failures_are_upserted,
            leases,
            fencing,
            intents,
            retargeting_after_the_target_folder_changed,
            wave_states_and_publishing,
            final_pass_completes_the_wave,
            a_later_run_takes_back_what_an_earlier_one_left,
            passes_with_errors_are_counted_apart,
            wave_counts_follow_every_change,
            reaping_expired_leases,
            handing_back
        );
    };
    (@checks $runner:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                $runner(|store| Box::pin($crate::store::suite::$check(store))).await;
            }
        )*
    };
}
#[cfg(test)]
pub(crate) use store_suite;

const LONG: Duration = Duration::from_secs(600);
const TINY: Duration = Duration::from_millis(1);

/// Takes the lease of `mailbox` for `pass`, which must be free.
async fn lease(store: &dyn Store, mailbox: MailboxId, pass: i64, worker: &str) -> Lease {
    store
        .acquire_lease(mailbox, pass, worker, LONG)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the lease of mailbox {mailbox} is taken"))
}

/// `mailwave run`'s way to the mailbox's next pass: asked for
/// ([`Store::request_passes`]), then marked and confirmed as the dispatcher
/// does in a running wave. The new pass number.
async fn queue_pass(store: &dyn Store, mailbox: MailboxId) -> i64 {
    let record = store.mailbox(mailbox).await.unwrap();
    store
        .transition_wave(
            record.wave,
            &[WaveState::Created, WaveState::Running],
            Some(WaveState::Running),
            WaveAction::None,
        )
        .await
        .unwrap();
    store.request_passes(&[mailbox]).await.unwrap();
    let job = Job {
        wave: record.wave,
        mailbox,
        pass: record.pass + 1,
    };
    let jobs = [job];
    assert_eq!(store.mark_published(&jobs).await.unwrap(), jobs);
    store.confirm_published(&jobs).await.unwrap();
    jobs[0].pass
}

fn spec(source: &str) -> MailboxSpec {
    MailboxSpec {
        source: source.into(),
        target: format!("{source}-new"),
    }
}

fn entry(mailbox: i64, folder: &str, validity: u32, uid: u32) -> LedgerEntry {
    LedgerEntry {
        mailbox,
        folder: folder.into(),
        validity,
        item: uid.to_string(),
        uid: Some(uid),
        target_folder: folder.into(),
        target_id: Some((uid + 100).to_string()),
        size: 1000 + u64::from(uid),
        content_hash: format!("c{uid}"),
        header_hash: format!("h{uid}"),
        flags: "\\Seen".into(),
        identity: format!("k{uid}:b{uid}"),
        source_version: Some(format!("s{uid}")),
        target_version: Some(format!("t{uid}")),
    }
}

fn checkpoint(mailbox: i64, folder: &str, validity: u32, hwm: u32) -> FolderCheckpoint {
    FolderCheckpoint {
        mailbox,
        folder: folder.into(),
        target_folder: folder.into(),
        validity,
        high_water_mark: hwm,
        source_cursor: Some(SourceCursor::new(r#"{"highest_modseq":7}"#.into())),
        target_mark: TargetMark::new(format!(r#"{{"uid_next":{}}}"#, hwm + 101)),
        target_validity: Some(77),
        subscribed: true,
    }
}

/// Adds mailboxes to `wave`; their ids, in the order given.
async fn add_mailboxes(store: &dyn Store, wave: WaveId, specs: &[MailboxSpec]) -> Vec<MailboxId> {
    store
        .add_mailboxes(wave, specs)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect()
}

/// A wave's configuration for the checks: Maildir to Maildir.
pub fn wave_config() -> Config {
    Config::from_remote_toml_str(
        "[source]\nkind = \"maildir\"\npath = \"/srv/old/{mailbox}\"\n\
         [target]\nkind = \"maildir\"\npath = \"/srv/new/{mailbox}\"\n",
    )
    .expect("a valid configuration")
}

pub async fn waves_and_mailboxes(store: &dyn Store) {
    let wave = store.ensure_wave("suite-a", &wave_config()).await.unwrap();
    assert_eq!(
        store.ensure_wave("suite-a", &wave_config()).await.unwrap(),
        wave
    );
    let other = store.ensure_wave("suite-b", &wave_config()).await.unwrap();
    assert_ne!(wave, other);

    let added = store
        .add_mailboxes(wave, &[spec("a@x"), spec("b@x")])
        .await
        .unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!(added[0].source, "a@x");
    assert_eq!(added[0].state, MailboxState::Pending);
    assert_eq!(added[0].pass, 0);

    // Adding again keeps the records (and their ids); new ones are appended.
    let again = store
        .add_mailboxes(wave, &[spec("b@x"), spec("c@x")])
        .await
        .unwrap();
    assert_eq!(again[0].id, added[1].id);
    let all = store.mailboxes(wave).await.unwrap();
    let sources: Vec<_> = all.iter().map(|m| m.source.as_str()).collect();
    assert_eq!(sources, ["a@x", "b@x", "c@x"]);
    assert!(store.mailboxes(other).await.unwrap().is_empty());

    let missing = store.mailbox(i64::MAX).await.unwrap_err();
    assert_eq!(crate::Classify::class(&missing), ErrorClass::Mailbox);
}

pub async fn pass_lifecycle(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-pass", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("p@x")]).await.unwrap()[0].id;
    let early = lease(store, id, 1, "w").await;

    assert!(
        !store.start_pass(&early).await.unwrap(),
        "not queued yet: a job for it is stale"
    );
    assert_eq!(queue_pass(store, id).await, 1);
    assert_eq!(store.mailbox(id).await.unwrap().state, MailboxState::Queued);
    let first = lease(store, id, 1, "w").await;
    assert!(store.start_pass(&first).await.unwrap());
    assert!(
        store.start_pass(&first).await.unwrap(),
        "a retry of the same pass"
    );
    let running = store.mailbox(id).await.unwrap();
    assert_eq!(running.state, MailboxState::Running);
    assert_eq!(running.attempts, 2);

    let stats = PassStats {
        folders: 3,
        items_copied: 10,
        bytes_copied: 12345,
        ..PassStats::default()
    };
    let outcome = PassOutcome {
        state: MailboxState::Completed,
        error: None,
        stats: stats.clone(),
    };
    store.finish_pass(&first, &outcome).await.unwrap();
    let done = store.mailbox(id).await.unwrap();
    assert_eq!(done.state, MailboxState::Completed);
    assert_eq!(done.stats, stats);
    assert!(
        !store.start_pass(&first).await.unwrap(),
        "a completed pass is not started again"
    );

    assert_eq!(queue_pass(store, id).await, 2);
    let failed = PassOutcome {
        state: MailboxState::Failed,
        error: Some("authentication failed".into()),
        stats: PassStats::default(),
    };
    // Asking for the next pass took the old lease back; a late report of
    // the old pass, even under a live lease, must not overwrite the new one.
    assert!(matches!(
        store.finish_pass(&first, &failed).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let late = lease(store, id, 1, "w").await;
    store.finish_pass(&late, &failed).await.unwrap();
    assert_eq!(store.mailbox(id).await.unwrap().state, MailboxState::Queued);
    store.release_lease(&late).await.unwrap();
    let second = lease(store, id, 2, "w").await;
    store.finish_pass(&second, &failed).await.unwrap();
    let record = store.mailbox(id).await.unwrap();
    assert_eq!(record.state, MailboxState::Failed);
    assert_eq!(record.last_error.as_deref(), Some("authentication failed"));
    assert_eq!(record.attempts, 0);
}

pub async fn checkpoints_and_ledger(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-ledger", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("l@x")]).await.unwrap()[0].id;
    let l = lease(store, id, 1, "w").await;
    assert!(store.checkpoints(id).await.unwrap().is_empty());

    store
        .save_checkpoint(&l, &checkpoint(id, "INBOX", 5, 0))
        .await
        .unwrap();
    let batch: Vec<_> = (1..=3).map(|uid| entry(id, "INBOX", 5, uid)).collect();
    store
        .commit_items(&l, &checkpoint(id, "INBOX", 5, 3), &batch)
        .await
        .unwrap();
    // Connectors' cursors and marks ride with the checkpoint as they are;
    // an item without a UID keeps none.
    let sent = FolderCheckpoint {
        source_cursor: Some(SourceCursor::new(
            r#"{"delta_link":"https://graph.example/delta?$deltatoken=a%2Fb"}"#.into(),
        )),
        target_mark: TargetMark::new("{}".into()),
        ..checkpoint(id, "Sent", 9, 1)
    };
    let without_uid = LedgerEntry {
        uid: None,
        ..entry(id, "Sent", 9, 1)
    };
    store
        .commit_items(&l, &sent, std::slice::from_ref(&without_uid))
        .await
        .unwrap();
    assert_eq!(store.ledger(id, "Sent", 9).await.unwrap(), [without_uid]);

    let checkpoints = store.checkpoints(id).await.unwrap();
    assert_eq!(checkpoints, [checkpoint(id, "INBOX", 5, 3), sent]);
    assert_eq!(store.ledger(id, "INBOX", 5).await.unwrap(), batch);
    assert!(store.ledger(id, "INBOX", 6).await.unwrap().is_empty());

    // Committing an entry again (a retried batch, an updated copy)
    // replaces it, never duplicates.
    let mut retried = entry(id, "INBOX", 5, 3);
    retried.target_id = Some("999".into());
    retried.source_version = Some("s3 changed".into());
    retried.target_version = None;
    store
        .commit_items(&l, &checkpoint(id, "INBOX", 5, 3), &[retried.clone()])
        .await
        .unwrap();
    let ledger = store.ledger(id, "INBOX", 5).await.unwrap();
    assert_eq!(ledger.len(), 3);
    assert_eq!(ledger[2], retried);

    store
        .update_flags(&l, "INBOX", 5, &[("2".into(), "\\Flagged \\Seen".into())])
        .await
        .unwrap();
    let ledger = store.ledger(id, "INBOX", 5).await.unwrap();
    assert_eq!(ledger[1].flags, "\\Flagged \\Seen");
    assert_eq!(ledger[0].flags, "\\Seen");

    // Entries of chosen items only, those that exist.
    let wanted = ["3".to_owned(), "1".to_owned(), "44".to_owned()];
    let found = store.ledger_entries(id, "INBOX", 5, &wanted).await.unwrap();
    let mut items: Vec<_> = found.iter().map(|e| e.item.as_str()).collect();
    items.sort_unstable();
    assert_eq!(items, ["1", "3"]);
    assert!(
        store
            .ledger_entries(id, "INBOX", 6, &wanted)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .ledger_entries(id, "INBOX", 5, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn rekey_after_validity_change(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-rekey", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("r@x")]).await.unwrap()[0].id;
    let l = lease(store, id, 1, "w").await;
    let old: Vec<_> = (1..=3).map(|uid| entry(id, "F", 1, uid)).collect();
    store
        .commit_items(&l, &checkpoint(id, "F", 1, 3), &old)
        .await
        .unwrap();

    let new_checkpoint = checkpoint(id, "F", 2, 12);
    store
        .rekey_folder(
            &l,
            &new_checkpoint,
            1,
            &[
                ("1".into(), "11".into(), Some(11)),
                ("3".into(), "12".into(), Some(12)),
            ],
        )
        .await
        .unwrap();
    let moved = store.ledger(id, "F", 2).await.unwrap();
    let keys: Vec<_> = moved.iter().map(|e| (e.item.as_str(), e.uid)).collect();
    assert_eq!(keys, [("11", Some(11)), ("12", Some(12))]);
    assert_eq!(moved[0].content_hash, "c1", "the entry itself moved");
    let left: Vec<_> = store.ledger(id, "F", 1).await.unwrap();
    assert_eq!(
        left.len(),
        1,
        "unmatched entries stay under the old validity"
    );
    assert_eq!(store.checkpoints(id).await.unwrap(), [new_checkpoint]);
}

pub async fn failures_are_upserted(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-failures", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("f@x")]).await.unwrap()[0].id;
    let l = lease(store, id, 1, "w").await;
    let mut failure = ItemFailure {
        mailbox: id,
        folder: "INBOX".into(),
        scope: FailureScope::Item {
            item: "42".into(),
            size: Some(30_000_000),
        },
        class: ErrorClass::Item,
        reason: "message too big".into(),
        pass: 1,
        policy: true,
    };
    store.record_failure(&l, &failure).await.unwrap();
    failure.pass = 2;
    failure.reason = "refused by target: too big".into();
    failure.policy = false;
    store.record_failure(&l, &failure).await.unwrap();
    assert_eq!(store.failures(id).await.unwrap(), [failure.clone()]);

    // A whole folder's failure is its own record, listed before its
    // items'; an empty message's size is 0, an unknown one none.
    let folder = ItemFailure {
        scope: FailureScope::Folder,
        reason: "folder name impossible in the target".into(),
        ..failure.clone()
    };
    let sized = |item: &str, size| ItemFailure {
        scope: FailureScope::Item {
            item: item.into(),
            size,
        },
        ..failure.clone()
    };
    for f in [&folder, &sized("43", Some(0)), &sized("44", None)] {
        store.record_failure(&l, f).await.unwrap();
    }
    assert_eq!(
        store.failures(id).await.unwrap(),
        [
            folder,
            failure.clone(),
            sized("43", Some(0)),
            sized("44", None)
        ]
    );
}

pub async fn leases(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-leases", &wave_config())
        .await
        .unwrap();
    let ids: Vec<_> = store
        .add_mailboxes(
            wave,
            &[spec("m1@x"), spec("m2@x"), spec("m3@x"), spec("m4@x")],
        )
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    let [m1, m2, m3, m4] = ids[..] else {
        panic!("four mailboxes expected, got {ids:?}")
    };
    for &id in &ids {
        assert_eq!(queue_pass(store, id).await, 1);
    }

    // A live lease belongs to one worker; its holder may take it again (a
    // restart under the same name: a new token) and renew it.
    let w1 = lease(store, m1, 1, "w1").await;
    assert_eq!((w1.mailbox, w1.pass, w1.worker.as_str()), (m1, 1, "w1"));
    assert!(store.start_pass(&w1).await.unwrap());
    assert_eq!(store.acquire_lease(m1, 1, "w2", LONG).await.unwrap(), None);
    let w1_again = lease(store, m1, 1, "w1").await;
    assert!(w1_again.token > w1.token, "{w1_again:?} after {w1:?}");
    assert!(store.renew_lease(&w1_again, LONG).await.unwrap());
    assert!(
        !store.renew_lease(&w1, LONG).await.unwrap(),
        "the earlier token is fenced"
    );
    assert!(store.expired_leases().await.unwrap().is_empty());
    let unknown = store.acquire_lease(m4 + 1000, 1, "w1", LONG).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );

    // Once expired, another worker takes it and the first one learns on renewal.
    let short = store
        .acquire_lease(m1, 1, "w1", TINY)
        .await
        .unwrap()
        .unwrap();
    until_expired(store, m1).await;
    assert_eq!(
        store.expired_leases().await.unwrap(),
        [(m1, 1, "w1".to_owned())]
    );
    assert!(
        !store.renew_lease(&short, LONG).await.unwrap(),
        "an expired lease is not renewed"
    );
    let w2 = lease(store, m1, 1, "w2").await;
    assert!(w2.token > short.token);
    assert!(store.expired_leases().await.unwrap().is_empty());

    // Releasing an earlier lease does nothing; releasing one's own frees it.
    store.release_lease(&short).await.unwrap();
    assert_eq!(store.acquire_lease(m1, 1, "w3", LONG).await.unwrap(), None);
    store.release_lease(&w2).await.unwrap();
    lease(store, m1, 1, "w3").await;

    // A newer pass supersedes the lease of the old one: its holder must stop.
    let old_pass = lease(store, m4, 1, "w4").await;
    assert_eq!(queue_pass(store, m4).await, 2);
    assert!(!store.renew_lease(&old_pass, LONG).await.unwrap());

    // Only expired leases of mailboxes still running that pass are listed.
    for (id, worker) in [(m2, "w1"), (m3, "w2")] {
        let held = store
            .acquire_lease(id, 1, worker, LONG)
            .await
            .unwrap()
            .unwrap();
        assert!(store.start_pass(&held).await.unwrap());
    }
    let m3_lease = lease(store, m3, 1, "w2").await;
    store
        .finish_pass(&m3_lease, &completed(0, 0))
        .await
        .unwrap();
    store
        .acquire_lease(m3, 1, "w2", TINY)
        .await
        .unwrap()
        .unwrap();
    let new_pass = lease(store, m4, 2, "w4").await;
    assert!(store.start_pass(&new_pass).await.unwrap());
    store
        .acquire_lease(m4, 1, "w4", TINY)
        .await
        .unwrap()
        .unwrap();
    // Taken last with the same TTL: once it expired, so did m3's and m4's.
    store
        .acquire_lease(m2, 1, "w1", TINY)
        .await
        .unwrap()
        .unwrap();
    until_expired(store, m2).await;
    assert_eq!(
        store.expired_leases().await.unwrap(),
        [(m2, 1, "w1".to_owned())],
        "m1 is live, m3 completed, m4 runs a newer pass"
    );
}

/// Every write of a pass is refused, and changes nothing, once its lease is
/// no longer the mailbox's: the worker that lost it was frozen past its TTL
/// and another one took the mailbox.
pub async fn fencing(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-fencing", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("fence@x")]).await.unwrap()[0].id;
    assert_eq!(queue_pass(store, id).await, 1);
    let frozen = store
        .acquire_lease(id, 1, "a", TINY)
        .await
        .unwrap()
        .unwrap();
    until_renewal_refused(store, &frozen).await;

    // Expired but not yet taken: still refused.
    let lost = |result: Result<(), StoreError>| {
        assert!(
            matches!(result, Err(StoreError::LeaseLost { mailbox }) if mailbox == id),
            "{result:?}"
        );
    };
    lost(store.start_pass(&frozen).await.map(drop));

    let successor = lease(store, id, 1, "b").await;
    assert!(store.start_pass(&successor).await.unwrap());
    let cp = checkpoint(id, "INBOX", 5, 2);
    let copied = [entry(id, "INBOX", 5, 1), entry(id, "INBOX", 5, 2)];
    store.commit_items(&successor, &cp, &copied).await.unwrap();
    store
        .record_intents(&successor, &[entry(id, "INBOX", 5, 3)])
        .await
        .unwrap();

    let stale_cp = checkpoint(id, "INBOX", 5, 9);
    let stale = [entry(id, "INBOX", 5, 9)];
    let failure = ItemFailure {
        mailbox: id,
        folder: "INBOX".into(),
        scope: FailureScope::Item {
            item: "9".into(),
            size: Some(1),
        },
        class: ErrorClass::Item,
        reason: "x".into(),
        pass: 1,
        policy: false,
    };
    lost(store.start_pass(&frozen).await.map(drop));
    lost(store.save_checkpoint(&frozen, &stale_cp).await);
    lost(store.commit_items(&frozen, &stale_cp, &stale).await);
    lost(store.record_intents(&frozen, &stale).await);
    lost(
        store
            .update_flags(&frozen, "INBOX", 5, &[("1".into(), "".into())])
            .await,
    );
    lost(
        store
            .rekey_folder(&frozen, &checkpoint(id, "INBOX", 6, 0), 5, &[])
            .await,
    );
    lost(
        store
            .retarget_folder(&frozen, &stale_cp, &[("1".into(), None)])
            .await,
    );
    lost(store.record_failure(&frozen, &failure).await);
    lost(store.finish_pass(&frozen, &completed(9, 9)).await);
    assert!(!store.renew_lease(&frozen, LONG).await.unwrap());
    assert!(!store.hand_back(&frozen).await.unwrap());
    store.release_lease(&frozen).await.unwrap();

    // Nothing of the frozen worker's reached the store.
    assert_eq!(store.checkpoints(id).await.unwrap(), [cp]);
    assert_eq!(store.ledger(id, "INBOX", 5).await.unwrap(), copied);
    assert_eq!(
        store.intents(id, "INBOX").await.unwrap(),
        [entry(id, "INBOX", 5, 3)]
    );
    assert!(store.failures(id).await.unwrap().is_empty());
    let record = store.mailbox(id).await.unwrap();
    assert_eq!((record.state, record.attempts), (MailboxState::Running, 1));
    assert!(
        store.renew_lease(&successor, LONG).await.unwrap(),
        "b still holds it"
    );
}

/// The write-ahead of a batch: replaced by the next batch's, forgotten when
/// the batch commits, per folder.
pub async fn intents(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-intents", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("i@x")]).await.unwrap()[0].id;
    let l = lease(store, id, 1, "w").await;
    let unsent = |uid| LedgerEntry {
        target_id: None,
        ..entry(id, "INBOX", 5, uid)
    };
    assert!(store.intents(id, "INBOX").await.unwrap().is_empty());
    store
        .record_intents(&l, &[unsent(1), unsent(2)])
        .await
        .unwrap();
    store
        .record_intents(
            &l,
            &[LedgerEntry {
                target_id: None,
                ..entry(id, "Sent", 1, 7)
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store.intents(id, "INBOX").await.unwrap(),
        [unsent(1), unsent(2)]
    );
    store.record_intents(&l, &[unsent(3)]).await.unwrap();
    assert_eq!(
        store.intents(id, "INBOX").await.unwrap(),
        [unsent(3)],
        "the next batch's replace them"
    );
    store
        .commit_items(
            &l,
            &checkpoint(id, "INBOX", 5, 3),
            &[entry(id, "INBOX", 5, 3)],
        )
        .await
        .unwrap();
    assert!(store.intents(id, "INBOX").await.unwrap().is_empty());
    assert_eq!(
        store.intents(id, "Sent").await.unwrap().len(),
        1,
        "other folders keep theirs"
    );
    store.record_intents(&l, &[]).await.unwrap();
}

/// The target folder was re-created: the copies' ids are replaced (or
/// cleared) with the checkpoint, atomically.
pub async fn retargeting_after_the_target_folder_changed(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-retarget", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("t@x")]).await.unwrap()[0].id;
    let l = lease(store, id, 1, "w").await;
    let copied: Vec<_> = (1..=3).map(|uid| entry(id, "INBOX", 5, uid)).collect();
    store
        .commit_items(&l, &checkpoint(id, "INBOX", 5, 3), &copied)
        .await
        .unwrap();
    let moved = FolderCheckpoint {
        target_validity: Some(78),
        target_mark: TargetMark::new(r#"{"uid_next":40}"#.into()),
        ..checkpoint(id, "INBOX", 5, 3)
    };
    store
        .retarget_folder(
            &l,
            &moved,
            &[("1".into(), Some("31".into())), ("3".into(), None)],
        )
        .await
        .unwrap();
    let ids: Vec<_> = store
        .ledger(id, "INBOX", 5)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.target_id)
        .collect();
    assert_eq!(ids, [Some("31".into()), Some("102".into()), None]);
    // The versions of the copies found again are not known.
    let versions: Vec<_> = store
        .ledger(id, "INBOX", 5)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.source_version, e.target_version))
        .collect();
    assert_eq!(
        versions,
        [
            (Some("s1".into()), None),
            (Some("s2".into()), Some("t2".into())),
            (Some("s3".into()), None)
        ]
    );
    assert_eq!(store.checkpoints(id).await.unwrap(), [moved]);
}

/// A pass that ended with failed items is neither completed nor failed.
pub async fn passes_with_errors_are_counted_apart(store: &dyn Store) {
    let wave = store
        .create_wave("suite-errors", &wave_config())
        .await
        .unwrap();
    let ids = add_mailboxes(store, wave, &[spec("e1@x"), spec("e2@x")]).await;
    for (id, state) in ids
        .iter()
        .zip([MailboxState::Completed, MailboxState::CompletedWithErrors])
    {
        queue_pass(store, *id).await;
        let l = lease(store, *id, 1, "w").await;
        assert!(store.start_pass(&l).await.unwrap());
        let outcome = PassOutcome {
            state,
            ..completed(1, 1)
        };
        store.finish_pass(&l, &outcome).await.unwrap();
        assert_eq!(store.mailbox(*id).await.unwrap().state, state);
    }
    let counts = store.wave_counts(wave).await.unwrap();
    assert_eq!(
        (
            counts.completed,
            counts.completed_with_errors,
            counts.total()
        ),
        (1, 1, 2)
    );
}

/// A wave's counts as the mailboxes themselves tell them.
async fn recount(store: &dyn Store, wave: i64) -> WaveCounts {
    let mut counts = WaveCounts::default();
    for mailbox in store.mailboxes(wave).await.unwrap() {
        counts.add_state(mailbox.state, 1);
        counts.items_copied += mailbox.stats.items_copied;
        counts.bytes_copied += mailbox.stats.bytes_copied;
        counts.items_skipped += mailbox.stats.items_skipped;
    }
    counts
}

pub async fn wave_counts_follow_every_change(store: &dyn Store) {
    let wave = store
        .create_wave("suite-counts", &wave_config())
        .await
        .unwrap();
    let other = store
        .create_wave("suite-counts-other", &wave_config())
        .await
        .unwrap();
    store.add_mailboxes(other, &[spec("o@x")]).await.unwrap();
    let specs: Vec<_> = (0..6).map(|i| spec(&format!("c{i}@x"))).collect();
    let ids: Vec<_> = store
        .add_mailboxes(wave, &specs)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    let check = |step: &'static str| async move {
        assert_eq!(
            store.wave_counts(wave).await.unwrap(),
            recount(store, wave).await,
            "{step}"
        );
        store.compact_wave_counts(wave).await.unwrap();
        assert_eq!(
            store.wave_counts(wave).await.unwrap(),
            recount(store, wave).await,
            "{step}, compacted"
        );
    };
    check("added").await;
    // Adding the same mailboxes again changes nothing.
    store.add_mailboxes(wave, &specs[..2]).await.unwrap();
    check("added again").await;
    store
        .transition_wave(
            wave,
            &[WaveState::Created],
            Some(WaveState::Running),
            WaveAction::RequestPass,
        )
        .await
        .unwrap();
    let next = store.next_to_publish(wave, 4).await.unwrap();
    let marked = store.mark_published(&next).await.unwrap();
    check("marked").await;
    store.confirm_published(&marked).await.unwrap();
    check("confirmed").await;
    assert_eq!(store.in_flight(wave).await.unwrap(), 4);
    for (i, &id) in ids[..4].iter().enumerate() {
        let l = lease(store, id, 1, "w").await;
        assert!(store.start_pass(&l).await.unwrap());
        let outcome = match i {
            0 => completed(10, 2000),
            1 => PassOutcome {
                state: MailboxState::CompletedWithErrors,
                ..completed(3, 300)
            },
            2 => PassOutcome {
                state: MailboxState::Failed,
                error: Some("no such mailbox".into()),
                stats: PassStats::default(),
            },
            _ => continue,
        };
        store.finish_pass(&l, &outcome).await.unwrap();
    }
    check("finished three, one running").await;
    assert_eq!(store.in_flight(wave).await.unwrap(), 1);
    // A second pass resets the first's totals.
    queue_pass(store, ids[0]).await;
    check("a delta pass queued").await;
    let counts = store.wave_counts(wave).await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.queued,
            counts.running,
            counts.completed_with_errors,
            counts.failed,
            counts.items_copied,
            counts.bytes_copied
        ),
        (2, 1, 1, 1, 1, 3, 300)
    );
    store
        .transition_wave(
            wave,
            &[WaveState::Running],
            Some(WaveState::Cancelled),
            WaveAction::ResetQueued,
        )
        .await
        .unwrap();
    check("cancelled").await;
    assert_eq!(store.wave_counts(other).await.unwrap().pending, 1);
}

fn completed(items: u64, bytes: u64) -> PassOutcome {
    PassOutcome {
        state: MailboxState::Completed,
        error: None,
        stats: PassStats {
            items_copied: items,
            bytes_copied: bytes,
            items_skipped: 1,
            ..PassStats::default()
        },
    }
}

fn job(wave: i64, mailbox: MailboxId, pass: i64) -> Job {
    Job {
        wave,
        mailbox,
        pass,
    }
}

/// Marks one job before publishing it; `true` when it was marked.
async fn mark(store: &dyn Store, mailbox: MailboxId, pass: i64) -> bool {
    let wave = store.mailbox(mailbox).await.unwrap().wave;
    let job = job(wave, mailbox, pass);
    let marked = store
        .mark_published(std::slice::from_ref(&job))
        .await
        .unwrap();
    assert!(marked.is_empty() || marked == [job.clone()], "{marked:?}");
    !marked.is_empty()
}

async fn confirm(store: &dyn Store, mailbox: MailboxId, pass: i64) {
    let wave = store.mailbox(mailbox).await.unwrap().wave;
    store
        .confirm_published(&[job(wave, mailbox, pass)])
        .await
        .unwrap();
}

pub async fn wave_states_and_publishing(store: &dyn Store) {
    use WaveState::{Cancelled, Created, Paused, Running};
    let mut config = wave_config();
    config.migration.max_concurrent_mailboxes = 2;
    let wave = store.create_wave("suite-dist", &config).await.unwrap();
    let taken = store.create_wave("suite-dist", &config).await.unwrap_err();
    assert!(matches!(taken, StoreError::Conflict(_)), "{taken}");
    let record = store.wave(wave).await.unwrap();
    assert_eq!(
        (record.name.as_str(), record.state, record.final_pass),
        ("suite-dist", Created, false)
    );
    assert_eq!(record.config, WaveConfig::Readable(Arc::new(config)));
    assert!(store.waves().await.unwrap().contains(&record));
    assert!(matches!(
        store.wave(i64::MAX).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store
            .transition_wave(i64::MAX, &[Created], Some(Running), WaveAction::None)
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));

    let ids = add_mailboxes(store, wave, &[spec("d1@x"), spec("d2@x"), spec("d3@x")]).await;
    let [m1, m2, m3] = ids[..] else {
        panic!("three mailboxes expected, got {ids:?}")
    };
    assert!(store.next_to_publish(wave, 10).await.unwrap().is_empty());
    assert!(
        !store
            .transition_wave(wave, &[Running], Some(Paused), WaveAction::None)
            .await
            .unwrap(),
        "a created wave cannot be paused"
    );
    assert_eq!(store.wave(wave).await.unwrap().state, Created);

    // Start asks every mailbox for pass 1.
    assert!(
        store
            .transition_wave(wave, &[Created], Some(Running), WaveAction::RequestPass)
            .await
            .unwrap()
    );
    assert_eq!(store.wave(wave).await.unwrap().state, Running);
    assert_eq!(
        store.next_to_publish(wave, 2).await.unwrap(),
        [job(wave, m1, 1), job(wave, m2, 1)]
    );

    // Marked before publishing, confirmed after; marked once only.
    assert!(mark(store, m1, 1).await);
    assert!(!mark(store, m1, 1).await);
    assert!(!mark(store, m2, 2).await, "not that pass");
    let marked = store.mailbox(m1).await.unwrap();
    assert_eq!((marked.state, marked.pass), (MailboxState::Queued, 1));
    assert_eq!(
        store.unpublished_jobs(wave).await.unwrap(),
        [job(wave, m1, 1)]
    );
    confirm(store, m1, 1).await;
    assert!(store.unpublished_jobs(wave).await.unwrap().is_empty());
    assert_eq!(store.in_flight(wave).await.unwrap(), 1);
    assert_eq!(
        store.next_to_publish(wave, 10).await.unwrap(),
        [job(wave, m2, 1), job(wave, m3, 1)]
    );

    let m1_lease = lease(store, m1, 1, "w").await;
    assert!(store.start_pass(&m1_lease).await.unwrap());
    assert_eq!(store.in_flight(wave).await.unwrap(), 1);
    store
        .finish_pass(&m1_lease, &completed(10, 2000))
        .await
        .unwrap();
    assert_eq!(store.in_flight(wave).await.unwrap(), 0);
    let counts = store.wave_counts(wave).await.unwrap();
    assert_eq!(
        (counts.pending, counts.completed, counts.total()),
        (2, 1, 3)
    );
    assert_eq!(
        (
            counts.items_copied,
            counts.bytes_copied,
            counts.items_skipped
        ),
        (10, 2000, 1)
    );

    // Sync asks each mailbox for the pass after its own, in one statement.
    assert!(
        store
            .transition_wave(wave, &[Running, Paused], None, WaveAction::RequestPass)
            .await
            .unwrap()
    );
    assert_eq!(store.wave(wave).await.unwrap().state, Running);
    assert_eq!(
        store.next_to_publish(wave, 10).await.unwrap(),
        [job(wave, m1, 2), job(wave, m2, 1), job(wave, m3, 1)]
    );

    // A paused wave publishes nothing.
    assert!(
        store
            .transition_wave(wave, &[Running], Some(Paused), WaveAction::None)
            .await
            .unwrap()
    );
    assert!(!mark(store, m2, 1).await);
    assert!(
        store
            .transition_wave(wave, &[Paused], Some(Running), WaveAction::None)
            .await
            .unwrap()
    );
    assert!(
        !store.complete_wave_if_done(wave).await.unwrap(),
        "no final pass asked"
    );

    // A batch marks what is waiting, in the order given, and leaves out the
    // rest; one confirmation covers the batch.
    let batch = [job(wave, m3, 1), job(wave, m1, 1), job(wave, m2, 1)];
    assert_eq!(
        store.mark_published(&batch).await.unwrap(),
        [job(wave, m3, 1), job(wave, m2, 1)]
    );
    assert_eq!(
        store.unpublished_jobs(wave).await.unwrap(),
        [job(wave, m2, 1), job(wave, m3, 1)]
    );
    store.confirm_published(&batch).await.unwrap();
    assert!(store.unpublished_jobs(wave).await.unwrap().is_empty());

    // Cancel puts queued mailboxes back to pending; their jobs go stale.
    assert!(
        store
            .transition_wave(
                wave,
                &[Created, Running, Paused],
                Some(Cancelled),
                WaveAction::ResetQueued
            )
            .await
            .unwrap()
    );
    assert_eq!(store.wave(wave).await.unwrap().state, Cancelled);
    assert_eq!(
        store.mailbox(m2).await.unwrap().state,
        MailboxState::Pending
    );
    let m2_lease = lease(store, m2, 1, "w").await;
    assert!(
        !store.start_pass(&m2_lease).await.unwrap(),
        "its job is stale"
    );
    assert!(!mark(store, m3, 1).await);
    assert_eq!(store.in_flight(wave).await.unwrap(), 0);
}

pub async fn final_pass_completes_the_wave(store: &dyn Store) {
    let wave = store
        .create_wave("suite-final", &wave_config())
        .await
        .unwrap();
    let id = store.add_mailboxes(wave, &[spec("fin@x")]).await.unwrap()[0].id;
    store
        .transition_wave(
            wave,
            &[WaveState::Created],
            Some(WaveState::Running),
            WaveAction::RequestPass,
        )
        .await
        .unwrap();
    assert!(mark(store, id, 1).await);
    let first = lease(store, id, 1, "w").await;
    assert!(store.start_pass(&first).await.unwrap());
    store.finish_pass(&first, &completed(1, 1)).await.unwrap();
    store.release_lease(&first).await.unwrap();
    assert!(!store.complete_wave_if_done(wave).await.unwrap());

    assert!(
        store
            .transition_wave(
                wave,
                &[WaveState::Running, WaveState::Paused],
                Some(WaveState::Running),
                WaveAction::RequestFinalPass
            )
            .await
            .unwrap()
    );
    assert!(store.wave(wave).await.unwrap().final_pass);
    assert!(
        !store.complete_wave_if_done(wave).await.unwrap(),
        "the final pass is wanted"
    );
    assert!(mark(store, id, 2).await);
    assert!(!store.complete_wave_if_done(wave).await.unwrap(), "queued");
    let last = lease(store, id, 2, "w").await;
    assert!(store.start_pass(&last).await.unwrap());
    assert!(!store.complete_wave_if_done(wave).await.unwrap(), "running");
    let failed = PassOutcome {
        state: MailboxState::Failed,
        error: Some("quota exceeded".into()),
        stats: PassStats::default(),
    };
    store.finish_pass(&last, &failed).await.unwrap();
    assert!(store.complete_wave_if_done(wave).await.unwrap());
    assert_eq!(store.wave(wave).await.unwrap().state, WaveState::Completed);
    let failed = store.failed_mailboxes(wave, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("quota exceeded"));
    assert!(store.failed_mailboxes(wave, 0).await.unwrap().is_empty());
}

/// Waits (by the store's clock) until `lease` has expired: renewing it
/// with a TTL of a millisecond is refused.
async fn until_renewal_refused(store: &dyn Store, lease: &Lease) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.renew_lease(lease, TINY).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease {lease:?} never expired"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (by the store's clock) until the lease of `mailbox` is listed as expired.
async fn until_expired(store: &dyn Store, mailbox: MailboxId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let expired = store.expired_leases().await.unwrap();
        if expired.iter().any(|(m, _, _)| *m == mailbox) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease of mailbox {mailbox} never expired"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn reaping_expired_leases(store: &dyn Store) {
    let wave = store
        .create_wave("suite-reap", &wave_config())
        .await
        .unwrap();
    let ids = add_mailboxes(store, wave, &[spec("r1@x"), spec("r2@x"), spec("r3@x")]).await;
    let [m1, m2, m3] = ids[..] else {
        panic!("three mailboxes expected, got {ids:?}")
    };
    store
        .transition_wave(
            wave,
            &[WaveState::Created],
            Some(WaveState::Running),
            WaveAction::RequestPass,
        )
        .await
        .unwrap();
    let mut leases = Vec::new();
    for (&id, (worker, ttl)) in ids.iter().zip([("w1", TINY), ("w2", TINY), ("w3", LONG)]) {
        assert!(mark(store, id, 1).await);
        confirm(store, id, 1).await;
        let held = store
            .acquire_lease(id, 1, worker, LONG)
            .await
            .unwrap()
            .unwrap();
        assert!(store.start_pass(&held).await.unwrap());
        if id == m2 {
            assert!(store.start_pass(&held).await.unwrap(), "m2: second attempt");
        }
        leases.push(
            store
                .acquire_lease(id, 1, worker, ttl)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    until_expired(store, m1).await;
    until_expired(store, m2).await;

    // Below the attempts: queued again, job to publish again, lease dropped.
    assert_eq!(
        store.reap_lease(m1, 1, "w1", 2).await.unwrap(),
        Some(ReapOutcome::Requeued)
    );
    let requeued = store.mailbox(m1).await.unwrap();
    assert_eq!(
        (requeued.state, requeued.pass, requeued.attempts),
        (MailboxState::Queued, 1, 1)
    );
    assert_eq!(
        store.unpublished_jobs(wave).await.unwrap(),
        [job(wave, m1, 1)]
    );
    assert_eq!(store.reap_lease(m1, 1, "w1", 2).await.unwrap(), None);
    assert!(
        !store.renew_lease(&leases[0], LONG).await.unwrap(),
        "w1 must stop"
    );
    // A live lease is not reaped.
    assert_eq!(store.reap_lease(m3, 1, "w3", 2).await.unwrap(), None);

    // At the attempts: failed with the reason.
    assert_eq!(
        store.reap_lease(m2, 1, "w2", 2).await.unwrap(),
        Some(ReapOutcome::Failed("worker lost 1 time".into()))
    );
    let failed = store.mailbox(m2).await.unwrap();
    assert_eq!(failed.state, MailboxState::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("worker lost 1 time"));

    // The re-queued pass is taken again and its worker lost again.
    confirm(store, m1, 1).await;
    let w4 = lease(store, m1, 1, "w4").await;
    assert!(store.start_pass(&w4).await.unwrap());
    store
        .acquire_lease(m1, 1, "w4", TINY)
        .await
        .unwrap()
        .unwrap();
    until_expired(store, m1).await;
    assert_eq!(
        store.reap_lease(m1, 1, "w4", 2).await.unwrap(),
        Some(ReapOutcome::Failed("worker lost 2 times".into()))
    );

    // In a cancelled wave the mailbox goes back to pending.
    store
        .acquire_lease(m3, 1, "w3", TINY)
        .await
        .unwrap()
        .unwrap();
    store
        .transition_wave(
            wave,
            &[WaveState::Running],
            Some(WaveState::Cancelled),
            WaveAction::ResetQueued,
        )
        .await
        .unwrap();
    until_expired(store, m3).await;
    assert_eq!(
        store.reap_lease(m3, 1, "w3", 2).await.unwrap(),
        Some(ReapOutcome::Released)
    );
    assert_eq!(
        store.mailbox(m3).await.unwrap().state,
        MailboxState::Pending
    );
    assert!(
        store.expired_leases().await.unwrap().is_empty() || {
            // Leases of other checks of the suite may be listed; none of ours.
            store
                .expired_leases()
                .await
                .unwrap()
                .iter()
                .all(|(m, _, _)| !ids.contains(m))
        }
    );
}

pub async fn handing_back(store: &dyn Store) {
    let wave = store
        .create_wave("suite-hand-back", &wave_config())
        .await
        .unwrap();
    let ids = add_mailboxes(store, wave, &[spec("h1@x"), spec("h2@x")]).await;
    let [m1, m2] = ids[..] else {
        panic!("two mailboxes expected, got {ids:?}")
    };
    store
        .transition_wave(
            wave,
            &[WaveState::Created],
            Some(WaveState::Running),
            WaveAction::RequestPass,
        )
        .await
        .unwrap();
    let mut leases = Vec::new();
    for &id in &ids {
        assert!(mark(store, id, 1).await);
        confirm(store, id, 1).await;
        let held = lease(store, id, 1, "w1").await;
        assert!(store.start_pass(&held).await.unwrap());
        leases.push(held);
    }

    // Only the lease holder of that pass hands back.
    let held = &leases[0];
    let other_worker = Lease {
        worker: "w2".into(),
        ..held.clone()
    };
    let other_pass = Lease {
        pass: 2,
        ..held.clone()
    };
    let earlier = Lease {
        token: held.token - 1,
        ..held.clone()
    };
    for wrong in [other_worker, other_pass, earlier] {
        assert!(!store.hand_back(&wrong).await.unwrap(), "{wrong:?}");
    }
    assert!(store.hand_back(held).await.unwrap());
    let back = store.mailbox(m1).await.unwrap();
    assert_eq!(
        (back.state, back.pass, back.attempts),
        (MailboxState::Queued, 1, 0),
        "queued again, the attempt not counted"
    );
    assert_eq!(
        store.unpublished_jobs(wave).await.unwrap(),
        [job(wave, m1, 1)]
    );
    assert!(!store.renew_lease(held, LONG).await.unwrap(), "lease gone");
    assert!(!store.hand_back(held).await.unwrap(), "only once");
    // Another worker takes it again.
    confirm(store, m1, 1).await;
    let again = lease(store, m1, 1, "w2").await;
    assert!(store.start_pass(&again).await.unwrap());

    // In a cancelled wave the mailbox goes back to pending.
    store
        .transition_wave(
            wave,
            &[WaveState::Running],
            Some(WaveState::Cancelled),
            WaveAction::ResetQueued,
        )
        .await
        .unwrap();
    assert!(store.hand_back(&leases[1]).await.unwrap());
    assert_eq!(
        store.mailbox(m2).await.unwrap().state,
        MailboxState::Pending
    );
    assert!(store.unpublished_jobs(wave).await.unwrap().is_empty());
}

/// Rows as stores wrote them before connectors owned their checkpoints'
/// cursors and folder failures were their own records, in SQL both
/// backends accept (their last schema before that change): an IMAP
/// checkpoint (UIDNEXT as the target mark, a HIGHESTMODSEQ), a Graph one
/// (milliseconds as the mark, a delta link), a folder failure as the item
/// `*`, and an item failure. The mailbox is the first one (id 1).
pub const ROWS_BEFORE_CURSORS: &str = r#"
    INSERT INTO waves (name) VALUES ('old');
    INSERT INTO mailboxes (wave, source, target) SELECT id, 'a@x', 'a@y' FROM waves;
    INSERT INTO folder_checkpoints (mailbox, folder, target_folder, validity, high_water_mark,
        highest_modseq, target_mark, sync_state, target_validity, subscribed)
    VALUES (1, 'INBOX', 'INBOX', 5, 3, 7, 104, NULL, 77, TRUE),
        (1, 'Sent', 'Sent', 1, 0, NULL, 1767225600000, 'https://graph.example/delta?a="b"',
         NULL, FALSE);
    INSERT INTO item_failures (mailbox, folder, item, size, class, reason, pass, policy)
    VALUES (1, 'Bad', '*', 0, 'item', 'folder Bad: impossible in the target', 1, FALSE),
        (1, 'INBOX', '4', 0, 'item', 'refused by the target', 1, FALSE);
"#;

/// Checks that the rows of [`ROWS_BEFORE_CURSORS`] read back, after the
/// store's migrations, as the connectors and the report expect them.
pub async fn rows_before_cursors_read_back(store: &dyn Store) {
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let checkpoints = store.checkpoints(1).await.unwrap();
    let [inbox, sent] = &checkpoints[..] else {
        panic!("two checkpoints expected, got {checkpoints:?}")
    };
    assert_eq!(
        (inbox.validity, inbox.high_water_mark, inbox.target_validity),
        (5, 3, Some(77))
    );
    assert!(inbox.subscribed);
    let cursor = inbox.source_cursor.as_ref().expect("IMAP cursor");
    assert_eq!(
        json(cursor.as_str()),
        serde_json::json!({"highest_modseq": 7})
    );
    assert_eq!(inbox.target_mark.as_str(), "104", "the bare UIDNEXT");
    let cursor = sent.source_cursor.as_ref().expect("Graph cursor");
    assert_eq!(
        json(cursor.as_str()),
        serde_json::json!({"delta_link": "https://graph.example/delta?a=\"b\""})
    );
    assert_eq!(sent.target_mark.as_str(), "1767225600000", "the bare time");

    let failures = store.failures(1).await.unwrap();
    let scopes: Vec<_> = failures
        .iter()
        .map(|f| (f.folder.as_str(), &f.scope))
        .collect();
    assert_eq!(
        scopes,
        [
            ("Bad", &FailureScope::Folder),
            (
                "INBOX",
                &FailureScope::Item {
                    item: "4".into(),
                    size: Some(0)
                }
            ),
        ]
    );
    assert_eq!(failures[0].reason, "folder Bad: impossible in the target");
}

/// `mailwave run` after one that was killed: the mailboxes it left queued
/// (job lost with the process) or running (lease not expired) are taken
/// back and their next pass is published like any other; a mailbox not
/// asked for is left alone.
pub async fn a_later_run_takes_back_what_an_earlier_one_left(store: &dyn Store) {
    let wave = store
        .ensure_wave("suite-take-back", &wave_config())
        .await
        .unwrap();
    let ids = add_mailboxes(store, wave, &[spec("t1@x"), spec("t2@x"), spec("t3@x")]).await;
    let [queued, running, other] = ids[..] else {
        panic!("three mailboxes expected, got {ids:?}")
    };
    for &id in &ids {
        assert_eq!(queue_pass(store, id).await, 1);
    }
    let held = lease(store, running, 1, "mailwave-run").await;
    assert!(store.start_pass(&held).await.unwrap());
    let other_lease = lease(store, other, 1, "mailwave-run").await;

    store.request_passes(&[queued, running]).await.unwrap();
    assert!(
        !store.renew_lease(&held, LONG).await.unwrap(),
        "the earlier run's lease is gone"
    );
    assert!(store.unpublished_jobs(wave).await.unwrap().is_empty());
    let next = store.next_to_publish(wave, 10).await.unwrap();
    let expected: Vec<_> = [queued, running]
        .map(|mailbox| Job {
            wave,
            mailbox,
            pass: 2,
        })
        .into();
    assert_eq!(next, expected);
    assert_eq!(store.mark_published(&next).await.unwrap(), next);
    for id in [queued, running] {
        let record = store.mailbox(id).await.unwrap();
        assert_eq!((record.state, record.pass), (MailboxState::Queued, 2));
    }
    assert!(store.renew_lease(&other_lease, LONG).await.unwrap());
    assert_eq!(
        store.mailbox(other).await.unwrap().state,
        MailboxState::Queued
    );
}
