//! Dovecot's `subscriptions` file at the root of a Maildir.
//!
//! Dovecot 2.3 writes version 2: a header line `V\t2`, an empty line, then
//! one folder a line, its levels as stored in directory names and separated
//! by tabs (`INBOX` for the inbox). Files without the header (version 1)
//! hold one name a line with `.` between levels. Dovecot replaces the file
//! under its dot-lock `subscriptions.lock`: the new contents are written
//! into the lock file, which is then renamed over the old file; mailwave
//! does the same, so neither loses the other's changes.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::INBOX_KEY;
use super::names::{dir_of_subscription, subscription_name};

/// The file's name at the root.
const FILE: &str = "subscriptions";
/// Dovecot's dot-lock of the file.
const LOCK: &str = "subscriptions.lock";
/// The header of version 2.
const HEADER: &str = "V\t2";
/// How long to wait for another writer's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A lock older than this was left behind by a writer that died.
const STALE_LOCK: Duration = Duration::from_secs(60);

/// The folder keys (`INBOX` or directory names) subscribed in the Maildir
/// at `root`; none when there is no file.
pub(super) fn read(root: &Path) -> io::Result<BTreeSet<String>> {
    Ok(read_names(root)?.iter().map(|name| key_of(name)).collect())
}

/// Adds folder `key` to the file (nothing when it is there already).
pub(super) fn add(root: &Path, key: &str) -> io::Result<()> {
    let name = if key == INBOX_KEY {
        INBOX_KEY.to_owned()
    } else {
        subscription_name(key).ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, format!("not a folder: {key:?}"))
        })?
    };
    let lock_path = root.join(LOCK);
    let mut lock = take_lock(&lock_path)?;
    let written = (|| {
        let mut names = read_names(root)?;
        if names.iter().any(|known| key_of(known) == key) {
            return Ok(false);
        }
        names.push(name);
        let mut text = format!("{HEADER}\n\n");
        for name in &names {
            text.push_str(name);
            text.push('\n');
        }
        lock.write_all(text.as_bytes())?;
        lock.sync_all()?;
        fs::rename(&lock_path, root.join(FILE))?;
        File::open(root)?.sync_all()?;
        Ok(true)
    })();
    if !matches!(written, Ok(true)) {
        let _ = fs::remove_file(&lock_path);
    }
    written.map(|_| ())
}

/// The names in the file as version 2 spells them, in order.
fn read_names(root: &Path) -> io::Result<Vec<String>> {
    let text = match fs::read(root.join(FILE)) {
        Ok(text) => String::from_utf8_lossy(&text).into_owned(),
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut lines = text.lines().peekable();
    let version_2 = lines.next_if_eq(&HEADER).is_some();
    Ok(lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            if version_2 || line.eq_ignore_ascii_case(INBOX_KEY) {
                line.to_owned()
            } else {
                line.replace('.', "\t")
            }
        })
        .collect())
}

/// The folder key of a version 2 name.
fn key_of(name: &str) -> String {
    if name.eq_ignore_ascii_case(INBOX_KEY) {
        return INBOX_KEY.to_owned();
    }
    dir_of_subscription(name)
}

/// Creates the dot-lock, waiting for another writer's and removing one
/// left behind.
fn take_lock(path: &Path) -> io::Result<File> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let error = match created {
            Ok(file) => return Ok(file),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => error,
            Err(error) => return Err(error),
        };
        let age = fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        if age.is_some_and(|age| age > STALE_LOCK) {
            let _ = fs::remove_file(path);
            continue;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                error.kind(),
                format!("{} is held by another writer", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_versions_and_adds_once() {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path();
        assert!(read(root).expect("no file").is_empty());
        // As Dovecot 2.3 wrote it.
        fs::write(
            root.join(FILE),
            "V\t2\n\nPriv&AOk-\nPriv&AOk-\t&ZeVnLIqe- &2D3c5w-\nINBOX\n",
        )
        .expect("write");
        let keys: Vec<String> = read(root).expect("read").into_iter().collect();
        assert_eq!(
            keys,
            [".Priv&AOk-", ".Priv&AOk-.&ZeVnLIqe- &2D3c5w-", "INBOX"]
        );

        add(root, ".Priv&AOk-").expect("known");
        add(root, ".Clients.Acme &- Co").expect("new");
        add(root, ".Clients.Acme &- Co").expect("again");
        assert_eq!(
            fs::read_to_string(root.join(FILE)).expect("read"),
            "V\t2\n\nPriv&AOk-\nPriv&AOk-\t&ZeVnLIqe- &2D3c5w-\nINBOX\nClients\tAcme &- Co\n"
        );
        assert!(!root.join(LOCK).exists());

        fs::write(root.join(FILE), "Work.Old\ninbox\n").expect("version 1");
        let keys: Vec<String> = read(root).expect("read").into_iter().collect();
        assert_eq!(keys, [".Work.Old", "INBOX"]);
    }

    #[test]
    fn waits_for_a_held_lock_and_breaks_a_stale_one() {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().to_path_buf();
        fs::write(root.join(LOCK), "").expect("lock");
        let releaser = {
            let root = root.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                fs::remove_file(root.join(LOCK)).expect("release");
            })
        };
        add(&root, ".A").expect("after the release");
        releaser.join().expect("releaser");
        assert!(read(&root).expect("read").contains(".A"));

        let stale = File::create(root.join(LOCK)).expect("lock");
        let old = SystemTime::now() - 2 * STALE_LOCK;
        stale
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .expect("age it");
        add(&root, ".B").expect("stale lock broken");
        assert!(read(&root).expect("read").contains(".B"));
    }
}
