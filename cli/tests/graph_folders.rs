//! Exchange Online's real folder tree through the Graph emulator with the
//! real `mailwave run`: mailboxes set up in other languages (their
//! well-known folders named `Postvak IN`, `Posteingang`, …), system and
//! search folders, and a server that lists folders twice. Checked against
//! the emulator's own state. The emulator serves from the test's runtime
//! while `mailwave run` blocks one of its threads: the tests run on a
//! multi-threaded runtime.

use mailwave_tests::GraphEmulator;
use mailwave_tests::graph_emulator::{
    EmulatorConfig, Faults, ItemSeed, Language, TenantSeed, UserSeed,
};
use mailwave_tests::harness::Migration;
use mailwave_tests::tenants::{
    LOCALISED_MAIL_FOLDERS, SECRET_A, SECRET_B, assert_exact_by_role, csv, endpoints, mime,
    source_user, target_user, tenant_a_in, tenant_b_in,
};
use mailwave_tests::verify::{self, CompareOptions};

/// Items of each kind per folder in these tests.
const PER_FOLDER: usize = 2;
/// Folders of a [`tenant_a_in`] mailbox with items: the mail folders, two
/// calendars, the contacts and the tasks.
const FOLDERS_WITH_ITEMS: usize = LOCALISED_MAIL_FOLDERS.len() + 4;

async fn start(config: EmulatorConfig) -> GraphEmulator {
    GraphEmulator::start(config)
        .await
        .expect("the Graph emulator starts")
}

/// `mailwave run` from tenant A to tenant B of the pairs of `csv`, with
/// `source_extra` in the `[source]` table.
fn migration(emu: &GraphEmulator, csv: &str, source_extra: &str) -> Migration {
    let (source, target) = endpoints(emu, "a.secret", "b.secret");
    let source = source.replacen(
        "[source.oauth2]",
        &format!("{source_extra}\n[source.oauth2]"),
        1,
    );
    let migration = Migration::new(&source, &target, "", csv).unwrap();
    std::fs::write(migration.dir().join("a.secret"), SECRET_A).unwrap();
    std::fs::write(migration.dir().join("b.secret"), SECRET_B).unwrap();
    migration
}

/// The top-level folders of a mailbox, by display name.
fn top_level(emu: &GraphEmulator, user: &str) -> Vec<String> {
    let mailbox = emu.snapshot(user).unwrap();
    let mut names: Vec<String> = mailbox
        .folders
        .iter()
        .filter(|f| f.path.len() == 1)
        .map(|f| f.path[0].clone())
        .collect();
    names.sort();
    names
}

/// From `from` into `to`: every item lands in the target's own well-known
/// folders (and below them), and the target gets no top-level folder but
/// the one the user made.
async fn localised_tenant_to_tenant(from: Language, to: Language) {
    let users = 2;
    let config = EmulatorConfig::default()
        .tenant(tenant_a_in(from, users, PER_FOLDER))
        .tenant(tenant_b_in(to, users));
    let emu = start(config).await;
    let before = top_level(&emu, &target_user(1));

    let first = migration(&emu, &csv(users), "").run_ok().unwrap();
    assert_eq!(
        first.total("items_copied"),
        (users * FOLDERS_WITH_ITEMS * PER_FOLDER) as u64
    );
    assert_exact_by_role(&emu, users);
    let mut expected = before;
    expected.push("Clients".to_owned());
    expected.sort();
    for i in 1..=users {
        assert_eq!(
            top_level(&emu, &target_user(i)),
            expected,
            "mailbox {i}: no top-level folder beside the localised ones"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_english_mailbox_lands_in_a_dutch_tenants_localised_folders() {
    localised_tenant_to_tenant(Language::English, Language::Dutch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_german_mailbox_lands_in_an_english_tenants_folders() {
    localised_tenant_to_tenant(Language::German, Language::English).await;
}

/// Tenant A's one mailbox with items in the user's inbox, in system
/// folders (Outbox, Sync Issues and its Conflicts, Conversation History)
/// and in a search folder.
fn tenant_with_system_folders() -> TenantSeed {
    let mut user = UserSeed::new(&source_user(1)).search_folder("Unread Mail");
    for n in 1..=PER_FOLDER {
        for folder in [
            "inbox",
            "outbox",
            "syncissues",
            "conflicts",
            "conversationhistory",
            "Unread Mail",
        ] {
            user = user.item(ItemSeed::message(folder, &mime(1, folder, n)));
        }
    }
    let mut tenant = tenant_a_in(Language::English, 0, 0);
    tenant.users.push(user);
    tenant
}

/// The item counts of the target's folders with items, by path.
fn filled_folders(emu: &GraphEmulator, user: &str) -> Vec<(String, usize)> {
    let mailbox = emu.snapshot(user).unwrap();
    mailbox
        .folders
        .iter()
        .filter(|f| !f.items.is_empty())
        .map(|f| (f.path.join("/"), f.items.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_and_search_folders_are_skipped_and_folders_listed_twice_copied_once() {
    let config = EmulatorConfig::default()
        .tenant(tenant_with_system_folders())
        .tenant(tenant_b_in(Language::Dutch, 2));
    let emu = start(config).await;
    emu.set_faults(Faults {
        repeat_folders: true,
        ..Faults::default()
    });

    // The default: only the inbox is copied, once.
    let default = migration(&emu, &csv(1), "");
    let first = default.run_ok().unwrap();
    assert_eq!(first.total("items_copied"), PER_FOLDER as u64);
    assert_eq!(
        filled_folders(&emu, &target_user(1)),
        [("Postvak IN".to_owned(), PER_FOLDER)]
    );
    let again = default.run_ok().unwrap();
    assert_eq!(again.total("items_copied"), 0);
    assert_eq!(
        filled_folders(&emu, &target_user(1)),
        [("Postvak IN".to_owned(), PER_FOLDER)]
    );

    // Configured to skip only the Outbox (into another mailbox): the Sync
    // Issues and the conversations land in the target's own (Dutch)
    // folders; a search folder is never copied.
    let pair = format!("source,target\n{},{}\n", source_user(1), target_user(2));
    let configured = migration(&emu, &pair, "skip_folders = [\"outbox\"]")
        .run_ok()
        .unwrap();
    assert_eq!(configured.total("items_copied"), 4 * PER_FOLDER as u64);
    let mut filled = filled_folders(&emu, &target_user(2));
    filled.sort();
    assert_eq!(
        filled,
        [
            ("Gespreksgeschiedenis".to_owned(), PER_FOLDER),
            ("Postvak IN".to_owned(), PER_FOLDER),
            ("Synchronisatieproblemen".to_owned(), PER_FOLDER),
            ("Synchronisatieproblemen/Conflicten".to_owned(), PER_FOLDER),
        ]
    );
    let target = emu.snapshot(&target_user(2)).unwrap();
    assert!(target.folder(&["Unread Mail"]).is_none());
}

/// `mailwave run` from tenant A into a Maildir backup (`out/user{i}`).
fn backup(emu: &GraphEmulator, users: usize) -> Migration {
    let (source, _) = endpoints(emu, "a.secret", "b.secret");
    let target = "kind = \"maildir\"\npath = \"out/{mailbox}\"\n";
    let mut csv = String::from("source,target\n");
    for i in 1..=users {
        csv.push_str(&format!("{},user{i}\n", source_user(i)));
    }
    let migration = Migration::new(&source, target, "", &csv).unwrap();
    std::fs::write(migration.dir().join("a.secret"), SECRET_A).unwrap();
    migration
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dutch_mailbox_backs_up_with_its_inbox_as_inbox_and_no_system_folders() {
    let mut tenant = tenant_a_in(Language::Dutch, 1, PER_FOLDER);
    let mut user = tenant.users.remove(0).search_folder("Ongelezen");
    for folder in ["syncissues", "conversationhistory", "Ongelezen"] {
        user = user.item(ItemSeed::message(folder, &mime(1, folder, 1)));
    }
    tenant.users.push(user);
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    emu.set_faults(Faults {
        repeat_folders: true,
        ..Faults::default()
    });
    let migration = backup(&emu, 1);
    let run = migration.run_ok().unwrap();
    assert_eq!(
        run.total("items_copied"),
        (LOCALISED_MAIL_FOLDERS.len() * PER_FOLDER) as u64
    );

    let options = CompareOptions::default();
    let mailbox = emu.snapshot(&source_user(1)).unwrap();
    let source = verify::snapshot_graph_mail(&mailbox, &options);
    let root = migration.dir().join("out/user1");
    let backup = verify::snapshot_maildir(&root, verify::maildir_folder, &options).unwrap();
    assert_eq!(
        backup.folder_names(),
        [
            "Archief",
            "Clients",
            "Concepten",
            "INBOX",
            "INBOX/Projects",
            "INBOX/Projects/2026",
            "Ongewenste e-mail",
            "Verwijderde items",
            "Verzonden items",
        ],
        "the inbox is INBOX; no system or search folder"
    );
    assert_eq!(source.folder_names(), backup.folder_names());
    verify::compare_snapshots(&source, &backup, verify::same_name, &options).assert_exact();
}
