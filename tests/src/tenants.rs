//! Two seeded Exchange Online tenants in the Graph emulator, for migrations
//! from tenant A to tenant B: `user{i}@a.example` with mail, calendar,
//! contact and task items, `user{i}@b.example` empty, and the checks that a
//! migration between them is exact.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::GraphEmulator;
use crate::graph_emulator::{
    AppSeed, EmulatorConfig, FolderSnapshot, ItemSeed, ItemSnapshot, Language, MailboxSnapshot,
    TenantSeed, UserSeed,
};
use crate::verify::is_users_folder;

pub const TENANT_A: &str = "tenant-a";
pub const TENANT_B: &str = "tenant-b";
pub const APP_A: &str = "app-a";
pub const APP_B: &str = "app-b";
pub const SECRET_A: &str = "secret-of-tenant-a";
pub const SECRET_B: &str = "secret-of-tenant-b";

/// Folders of a source mailbox with items, each with `per_folder` of them.
pub const FOLDERS_WITH_ITEMS: usize = 6;

pub fn source_user(i: usize) -> String {
    format!("user{i}@a.example")
}

pub fn target_user(i: usize) -> String {
    format!("user{i}@b.example")
}

/// A message with a body unique to its user, folder and number.
pub fn mime(user: usize, folder: &str, n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@a.example\r\nTo: user{user}@a.example\r\nSubject: {folder} {n}\r\n\
         Message-ID: <{user}.{n}.{}@a.example>\r\n\r\nBody {n} of {folder} for user {user}.\r\n",
        folder.replace(['/', ' '], "-")
    )
    .into_bytes()
}

/// Tenant A: `users` mailboxes with mail in several folders (one nested,
/// one the user made), appointments, contacts and tasks, `per_folder` items
/// in each of [`FOLDERS_WITH_ITEMS`] folders.
pub fn tenant_a(users: usize, per_folder: usize) -> TenantSeed {
    let mut tenant = TenantSeed::new(TENANT_A).app(AppSeed::with_secret(APP_A, SECRET_A));
    for i in 1..=users {
        let mut user = UserSeed::new(&source_user(i))
            .folder("Projects", "IPF.Note")
            .folder("Projects/2026", "IPF.Note");
        for n in 1..=per_folder {
            for folder in ["Inbox", "Sent Items", "Projects/2026"] {
                user = user.item(ItemSeed::message(folder, &mime(i, folder, n)).read(n % 2 == 0));
            }
            let payload = |kind: &str| format!("{kind} {n} of user {i}").into_bytes();
            user = user
                .item(ItemSeed::new(
                    "Calendar",
                    "IPM.Appointment",
                    &payload("meeting"),
                ))
                .item(ItemSeed::new(
                    "Contacts",
                    "IPM.Contact",
                    &payload("contact"),
                ))
                .item(ItemSeed::new("Tasks", "IPM.Task", &payload("task")));
        }
        tenant = tenant.user(user);
    }
    tenant
}

/// Tenant B: the same users with empty mailboxes.
pub fn tenant_b(users: usize) -> TenantSeed {
    tenant_b_in(Language::English, users)
}

/// Tenant B with its mailboxes set up in `language`, empty.
pub fn tenant_b_in(language: Language, users: usize) -> TenantSeed {
    let mut tenant = TenantSeed::new(TENANT_B).app(AppSeed::with_secret(APP_B, SECRET_B));
    for i in 1..=users {
        tenant = tenant.user(UserSeed::new(&target_user(i)).language(language));
    }
    tenant
}

/// The mail folders of [`tenant_a_in`] with items: well-known folders
/// (by their well-known names, whatever the language), folders below the
/// inbox and one the user made.
pub const LOCALISED_MAIL_FOLDERS: [&str; 9] = [
    "inbox",
    "inbox/Projects",
    "inbox/Projects/2026",
    "sentitems",
    "drafts",
    "deleteditems",
    "junkemail",
    "archive",
    "Clients",
];

/// Tenant A with its mailboxes set up in `language`: `per_folder` items in
/// each of [`LOCALISED_MAIL_FOLDERS`], in the calendar and a calendar
/// below it, in the contacts and the tasks.
pub fn tenant_a_in(language: Language, users: usize, per_folder: usize) -> TenantSeed {
    let mut tenant = TenantSeed::new(TENANT_A).app(AppSeed::with_secret(APP_A, SECRET_A));
    for i in 1..=users {
        let mut user = UserSeed::new(&source_user(i))
            .language(language)
            .folder("inbox/Projects/2026", "IPF.Note")
            .folder("Clients", "IPF.Note")
            .folder("calendar/Holidays", "IPF.Appointment");
        for n in 1..=per_folder {
            for folder in LOCALISED_MAIL_FOLDERS {
                user = user.item(ItemSeed::message(folder, &mime(i, folder, n)).read(n % 2 == 0));
            }
            let payload = |kind: &str| format!("{kind} {n} of user {i}").into_bytes();
            for (folder, class, kind) in [
                ("calendar", "IPM.Appointment", "meeting"),
                ("calendar/Holidays", "IPM.Appointment", "holiday"),
                ("contacts", "IPM.Contact", "contact"),
                ("tasks", "IPM.Task", "task"),
            ] {
                user = user.item(ItemSeed::new(folder, class, &payload(kind)));
            }
        }
        tenant = tenant.user(user);
    }
    tenant
}

/// A mailbox's folders of the user's (see [`is_users_folder`]), each by
/// its place below the nearest well-known folder (`inbox/Projects`,
/// whether the inbox is called `Inbox` or `Postvak IN`; a folder below no
/// well-known folder by its path), with its type and its items' contents
/// ([`ItemSnapshot::content`]), ordered.
pub fn folders_by_role(mailbox: &MailboxSnapshot) -> Vec<(Vec<String>, String, Vec<String>)> {
    let well_known: Vec<&FolderSnapshot> = mailbox
        .folders
        .iter()
        .filter(|f| f.well_known.is_some())
        .collect();
    let mut folders: Vec<_> = mailbox
        .folders
        .iter()
        .filter(|f| is_users_folder(f))
        .map(|folder| {
            let nearest = well_known
                .iter()
                .filter(|k| folder.path.starts_with(&k.path))
                .max_by_key(|k| k.path.len());
            let place = match nearest {
                Some(known) => std::iter::once(known.well_known.clone().unwrap_or_default())
                    .chain(folder.path[known.path.len()..].iter().cloned())
                    .collect(),
                None => folder.path.clone(),
            };
            let mut items: Vec<String> = folder.items.iter().map(ItemSnapshot::content).collect();
            items.sort();
            (place, folder.class.clone(), items)
        })
        .collect();
    folders.sort_by(|a, b| a.0.cmp(&b.0));
    folders
}

/// Every folder of the user's of every source mailbox is in the target at
/// the same place relative to its well-known folders, whatever either side
/// calls them, with the same type and exactly the same items; the target
/// has no other folder of the user's (none made next to a localised one).
pub fn assert_exact_by_role(emu: &GraphEmulator, users: usize) {
    for i in 1..=users {
        let source = folders_by_role(&emu.snapshot(&source_user(i)).unwrap());
        let target = folders_by_role(&emu.snapshot(&target_user(i)).unwrap());
        assert_eq!(source, target, "mailbox {i}: target differs from source");
        let items: usize = source.iter().map(|(_, _, items)| items.len()).sum();
        assert!(items > 0, "mailbox {i} has items");
    }
}

/// The emulator with both tenants.
pub fn two_tenants(users: usize, per_folder: usize) -> EmulatorConfig {
    EmulatorConfig::default()
        .tenant(tenant_a(users, per_folder))
        .tenant(tenant_b(users))
}

/// `[source]` and `[target]` bodies (with their `oauth2` tables) for a
/// migration from tenant A to tenant B, the secrets in `secret_a` and
/// `secret_b`. The emulator serves Graph at its own address but, like the
/// real service, issues tokens for Graph's scope only: the scope is set.
pub fn endpoints(emu: &GraphEmulator, secret_a: &str, secret_b: &str) -> (String, String) {
    (
        graph_endpoint(
            emu,
            "source",
            TENANT_A,
            APP_A,
            &format!("client_secret_file = \"{secret_a}\""),
        ),
        graph_endpoint(
            emu,
            "target",
            TENANT_B,
            APP_B,
            &format!("client_secret_file = \"{secret_b}\""),
        ),
    )
}

/// [`endpoints`] for a wave sent to the coordinator: the client secrets
/// named by `credential_a` and `credential_b` (`[credentials.NAME]` of the
/// workers' settings, for the emulator's host).
pub fn named_endpoints(
    emu: &GraphEmulator,
    credential_a: &str,
    credential_b: &str,
) -> (String, String) {
    (
        graph_endpoint(
            emu,
            "source",
            TENANT_A,
            APP_A,
            &format!("credential = \"{credential_a}\""),
        ),
        graph_endpoint(
            emu,
            "target",
            TENANT_B,
            APP_B,
            &format!("credential = \"{credential_b}\""),
        ),
    )
}

fn graph_endpoint(
    emu: &GraphEmulator,
    side: &str,
    tenant: &str,
    app: &str,
    secret: &str,
) -> String {
    format!(
        "kind = \"graph\"\ngraph_url = \"{graph}\"\n\
         [{side}.oauth2]\ntenant = \"{tenant}\"\nclient_id = \"{app}\"\n\
         {secret}\nauthority = \"{authority}\"\n\
         scope = \"https://graph.microsoft.com/.default\"\n",
        graph = emu.base_url(),
        authority = emu.authority_url(),
    )
}

/// The mailboxes CSV of `users` pairs.
pub fn csv(users: usize) -> String {
    let mut csv = String::from("source,target\n");
    for i in 1..=users {
        csv.push_str(&format!("{},{}\n", source_user(i), target_user(i)));
    }
    csv
}

/// Every folder of every source mailbox is in the target with the same
/// type and exactly the same items (content, MIME, flags, dates, search
/// key: [`crate::graph_emulator::MailboxSnapshot::differences`]; a copy's export bytes are its
/// store's own), and nothing else was added.
pub fn assert_exact(emu: &GraphEmulator, users: usize) {
    for i in 1..=users {
        let source = emu.snapshot(&source_user(i)).unwrap();
        let target = emu.snapshot(&target_user(i)).unwrap();
        let differences = source.differences(&target);
        assert!(
            differences.is_empty(),
            "mailbox {i}: target differs from source:\n{}",
            differences.join("\n")
        );
        let items: usize = source.folders.iter().map(|f| f.items.len()).sum();
        assert!(items > 0, "mailbox {i} has items");
    }
}

/// A certificate an app registers, and its RSA key, made with `openssl`
/// in `dir` as `{name}.pem` and `{name}.key`: `(certificate, key)`.
pub fn app_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl made a key and a certificate");
    (cert, key)
}
