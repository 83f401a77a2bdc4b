//! `mailwave-worker check` against the Graph emulator with apps granted
//! only some of the application permissions a migration needs: the check
//! tries each kind of request of its direction, names every permission
//! missing and exits non-zero, before any wave starts; with every
//! permission it passes.

use std::process::{Command, Output};

use mailwave_tests::GraphEmulator;
use mailwave_tests::graph_emulator::EmulatorConfig;
use mailwave_tests::harness::{Migration, binary};
use mailwave_tests::tenants::{
    SECRET_A, SECRET_B, csv, endpoints, source_user, target_user, tenant_a, tenant_b,
};

/// Tenant A's app granted `source_roles`, tenant B's `target_roles`
/// (`None`: every permission).
async fn emulator(source_roles: Option<&[&str]>, target_roles: Option<&[&str]>) -> GraphEmulator {
    let mut a = tenant_a(1, 2);
    let mut b = tenant_b(1);
    if let Some(roles) = source_roles {
        a.apps[0] = a.apps[0].clone().roles(roles);
    }
    if let Some(roles) = target_roles {
        b.apps[0] = b.apps[0].clone().roles(roles);
    }
    GraphEmulator::start(EmulatorConfig::default().tenant(a).tenant(b))
        .await
        .expect("the Graph emulator starts")
}

/// The configuration of a migration from tenant A to `target` (`None`:
/// tenant B), the secrets in place.
fn configuration(emu: &GraphEmulator, target: Option<&str>) -> Migration {
    let (source, tenant_b) = endpoints(emu, "a.secret", "b.secret");
    let migration = Migration::new(&source, target.unwrap_or(&tenant_b), "", &csv(1)).unwrap();
    std::fs::write(migration.dir().join("a.secret"), SECRET_A).unwrap();
    std::fs::write(migration.dir().join("b.secret"), SECRET_B).unwrap();
    migration
}

/// `mailwave-worker check` of user 1's pair; the emulator serves from the
/// test's runtime meanwhile.
async fn check(migration: &Migration) -> Output {
    let mut command = Command::new(binary("mailwave-worker"));
    command
        .arg("check")
        .arg("--config")
        .arg(migration.dir().join("mailwave.toml"))
        .arg("--source")
        .arg(source_user(1))
        .arg("--target")
        .arg(target_user(1))
        .current_dir(migration.dir());
    tokio::task::spawn_blocking(move || command.output().expect("mailwave-worker runs"))
        .await
        .unwrap()
}

/// The lines of `output`'s stdout reporting a missing permission.
fn missing(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.trim_start().starts_with("MISSING"))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_permission_missing_in_each_direction_and_fails() {
    let emu = emulator(
        Some(&["User.Read.All", "MailboxFolder.Read.All"]),
        Some(&[
            "User.Read.All",
            "MailboxFolder.Read.All",
            "MailboxItem.ImportExport.All",
        ]),
    )
    .await;
    let migration = configuration(&emu, None);
    let output = check(&migration).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let missing = missing(&output);
    assert_eq!(
        missing.len(),
        4,
        "item delta and export on the source, folder creation and item listing on the target:\n{stdout}"
    );
    let source = stdout.split("target ").next().unwrap();
    for operation in ["GET folders/inbox/items/delta", "POST exportItems"] {
        assert!(
            source.contains(&format!("MISSING  {operation}")),
            "{operation} on the source:\n{stdout}"
        );
    }
    for permission in [
        "MailboxItem.Read.All",
        "MailboxItem.Export.All or MailboxItem.ImportExport.All",
        "MailboxFolder.ReadWrite.All",
    ] {
        assert!(
            stderr.contains(&format!("missing application permission {permission}")),
            "{permission} named:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("target {}", target_user(1))),
        "{stderr}"
    );
    // Nothing was imported.
    let target = emu.snapshot(&target_user(1)).unwrap();
    assert!(target.folders.iter().all(|f| f.items.is_empty()));

    // Without the directory permission nothing past the user is tried.
    let emu = emulator(Some(&["MailboxFolder.Read.All"]), None).await;
    let output = check(&configuration(&emu, None)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("MISSING  GET users/{id}/settings/exchange"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("untried").count(),
        3,
        "the mailbox probes need its id:\n{stdout}"
    );
}

/// Folders of `user`'s mailbox as the emulator has them.
fn tenant_folders(emu: &GraphEmulator, user: &str) -> usize {
    emu.snapshot(user).unwrap().folders.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_of_a_mime_source_needs_mail_read() {
    let maildir = "kind = \"maildir\"\npath = \"out/{mailbox}\"\n";
    let emu = emulator(Some(&["User.Read.All", "MailboxItem.Export.All"]), None).await;
    let output = check(&configuration(&emu, Some(maildir))).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(missing(&output).len(), 3, "{stdout}");
    assert!(
        missing(&output)
            .iter()
            .all(|line| line.contains("Mail.Read or Mail.ReadWrite")),
        "{stdout}"
    );

    let emu = emulator(Some(&["Mail.Read"]), None).await;
    let output = check(&configuration(&emu, Some(maildir))).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_the_documented_permissions_of_each_direction() {
    let emu = emulator(
        Some(&[
            "User.Read.All",
            "MailboxFolder.Read.All",
            "MailboxItem.Read.All",
            "MailboxItem.Export.All",
        ]),
        Some(&[
            "User.Read.All",
            "MailboxFolder.ReadWrite.All",
            "MailboxItem.Read.All",
            "MailboxItem.ImportExport.All",
        ]),
    )
    .await;
    let before = tenant_folders(&emu, &target_user(1));
    let output = check(&configuration(&emu, None)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(missing(&output).is_empty(), "{stdout}");
    assert_eq!(stdout.matches("  ok ").count(), 9, "{stdout}");
    assert_eq!(
        tenant_folders(&emu, &target_user(1)),
        before,
        "the folder creation probe created nothing"
    );
}
