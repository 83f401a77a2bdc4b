//! Exchange Online to Exchange Online (tenant to tenant) through the Graph
//! emulator: the real `mailwave run` with a Graph source and a Graph target,
//! checked item by item against the emulator's own state (folders with
//! their types, every item's export data, MIME, flags and dates). The
//! emulator serves from the test's runtime while `mailwave run` blocks one
//! of its threads: the tests run on a multi-threaded runtime.

use std::time::Duration;

use mailwave_tests::GraphEmulator;
use mailwave_tests::graph_emulator::{Faults, ItemSeed, ThrottleReason};
use mailwave_tests::harness::Migration;
use mailwave_tests::tenants::{
    FOLDERS_WITH_ITEMS, SECRET_A, SECRET_B, assert_exact, csv, endpoints, mime, source_user,
    target_user, two_tenants,
};

async fn emulator(users: usize, per_folder: usize) -> GraphEmulator {
    GraphEmulator::start(two_tenants(users, per_folder))
        .await
        .expect("the Graph emulator starts")
}

/// `mailwave run` from tenant A to tenant B, secrets in files.
fn migration(emu: &GraphEmulator, users: usize) -> Migration {
    let (source, target) = endpoints(emu, "a.secret", "b.secret");
    let migration = Migration::new(&source, &target, "", &csv(users)).unwrap();
    std::fs::write(migration.dir().join("a.secret"), SECRET_A).unwrap();
    std::fs::write(migration.dir().join("b.secret"), SECRET_B).unwrap();
    migration
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_to_tenant_is_exact_and_delta_passes_copy_only_what_is_new() {
    let users = 3;
    let emu = emulator(users, 4).await;
    let migration = migration(&emu, users);

    let first = migration.run_ok().unwrap();
    assert_eq!(
        first.total("items_copied"),
        (users * FOLDERS_WITH_ITEMS * 4) as u64
    );
    assert_exact(&emu, users);
    let target = emu.snapshot(&target_user(1)).unwrap();
    let calendar = target.folder(&["Calendar"]).expect("a calendar");
    assert_eq!(calendar.class, "IPF.Appointment");
    let nested = target
        .folder(&["Projects", "2026"])
        .expect("the nested folder");
    assert_eq!(nested.items.len(), 4);

    let again = migration.run_ok().unwrap();
    assert_eq!(
        again.total("items_copied"),
        0,
        "a delta pass with nothing new"
    );
    assert_exact(&emu, users);

    emu.add_item(
        &source_user(2),
        &ItemSeed::new("Calendar", "IPM.Appointment", b"a meeting added later"),
    )
    .unwrap();
    emu.add_item(
        &source_user(2),
        &ItemSeed::message("Inbox", &mime(2, "late", 1)),
    )
    .unwrap();
    let delta = migration.run_ok().unwrap();
    assert_eq!(delta.stat(&source_user(2), "items_copied"), 2);
    assert_eq!(delta.total("items_copied"), 2);
    assert_exact(&emu, users);

    // Every request asked for immutable ids.
    let stats = emu.stats(&source_user(1)).unwrap();
    assert_eq!(
        stats.immutable_id_requests, stats.requests_total,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_delta_link_resyncs_the_folder_without_duplicates() {
    let users = 1;
    let emu = emulator(users, 3).await;
    let migration = migration(&emu, users);
    migration.run_ok().unwrap();

    emu.reset_delta_tokens(&source_user(1)).unwrap();
    emu.add_item(
        &source_user(1),
        &ItemSeed::message("Inbox", &mime(1, "after reset", 1)),
    )
    .unwrap();
    let after = migration.run_ok().unwrap();
    assert_eq!(after.total("items_copied"), 1);
    assert_exact(&emu, users);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_server_errors_still_give_an_exact_copy() {
    let users = 2;
    let emu = emulator(users, 3).await;
    emu.set_faults(Faults {
        enabled: true,
        seed: 7,
        throttle_rate: 0.3,
        throttle_retry_after: Duration::from_secs(1),
        server_busy_rate: 0.05,
        empty_body_share: 0.5,
        gateway_timeout_rate: 0.05,
        ..Faults::default()
    });
    let migration = migration(&emu, users);
    let result = migration.run_ok().unwrap();
    assert_eq!(
        result.total("items_copied"),
        (users * FOLDERS_WITH_ITEMS * 3) as u64
    );
    emu.set_faults(Faults::default());
    assert_exact(&emu, users);

    let mut injected = 0;
    let mut in_window = 0;
    let mut server_errors = 0;
    for i in 1..=users {
        for user in [source_user(i), target_user(i)] {
            let stats = emu.stats(&user).unwrap();
            injected += stats.throttled_by(ThrottleReason::Injected);
            in_window += stats.throttled_by(ThrottleReason::RetryAfterWindow);
            server_errors += stats.server_busy_503 + stats.gateway_timeout_504;
        }
    }
    eprintln!(
        "{injected} injected 429s, {in_window} requests into open windows, {server_errors} 503/504"
    );
    assert!(injected > 10, "{injected} injected 429s");
    assert!(server_errors > 0, "{server_errors} 503/504");
    // The whole mailbox waits out a Retry-After: requests sent into an open
    // window are the few already in flight when the 429 came.
    assert!(
        in_window * 2 < injected,
        "{in_window} requests sent into a Retry-After window after {injected} throttles"
    );
}
