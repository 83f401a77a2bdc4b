//! Folder names as Dovecot spells them in a Maildir++ tree.
//!
//! Folder `A/B` is the directory `.A.B` under the root. Each level is
//! written as Dovecot writes it:
//!
//! - characters a level cannot hold as themselves (`.` and `/`, the escape
//!   character `\`, a `~` that starts the name, control characters) are
//!   escaped as `\` and two hex digits, as Dovecot's listescape plugin does
//!   (`a/b` is `.a\2fb`);
//! - then, by default, the level is modified UTF-7 (`Entwürfe` is
//!   `Entw&APw-rfe`, `&` is `&-`); with [`NameEncoding::Utf8`] (Dovecot's
//!   `UTF-8` layout option) it stays UTF-8.
//!
//! Reading is lenient where Dovecot is: a level that is not valid modified
//! UTF-7 (a raw UTF-8 name, a stray `&`) is taken as it is, a `%` is only a
//! `%`, and a `\` not followed by an escape is only a `\`.

use super::super::FolderPath;
use super::super::imap::wire::{decode_mutf7, encode_mutf7};

/// The escape character of Dovecot's listescape plugin.
const ESCAPE: char = '\\';

/// How folder levels are spelled in directory names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameEncoding {
    /// Modified UTF-7, Dovecot's default.
    #[default]
    Mutf7,
    /// Raw UTF-8 (Dovecot's `UTF-8` layout option).
    Utf8,
}

/// The directory name of a folder that is not the inbox: `.` before each
/// level. `None` when a level is empty (no directory can name it).
pub(super) fn dir_name(path: &FolderPath, encoding: NameEncoding) -> Option<String> {
    let mut name = String::new();
    for (index, level) in path.0.iter().enumerate() {
        if level.is_empty() {
            return None;
        }
        name.push('.');
        name.push_str(&encode_level(level, index == 0, encoding));
    }
    (!name.is_empty()).then_some(name)
}

/// The folder of a directory name under the root, or why it is not one.
pub(super) fn folder_of(dir_name: &str, encoding: NameEncoding) -> Result<FolderPath, String> {
    let Some(levels) = dir_name.strip_prefix('.') else {
        return Err("not a Maildir++ folder name (no leading '.')".to_owned());
    };
    let levels: Vec<String> = levels
        .split('.')
        .map(|level| decode_level(level, encoding))
        .collect();
    if levels.iter().any(String::is_empty) {
        return Err("a level of the folder name is empty".to_owned());
    }
    let path = FolderPath(levels);
    if path.is_inbox() {
        return Err("a folder directory named as the inbox".to_owned());
    }
    Ok(path)
}

/// One level as stored (see the module's documentation).
fn encode_level(level: &str, starts_name: bool, encoding: NameEncoding) -> String {
    let mut escaped = String::with_capacity(level.len());
    for (index, c) in level.char_indices() {
        let needs_escape = matches!(c, '.' | '/' | ESCAPE)
            || c.is_ascii_control()
            || (c == '~' && starts_name && index == 0);
        if needs_escape {
            escaped.push_str(&format!("{ESCAPE}{:02x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    match encoding {
        NameEncoding::Mutf7 => encode_mutf7(&escaped),
        NameEncoding::Utf8 => escaped,
    }
}

/// One stored level as a name.
fn decode_level(level: &str, encoding: NameEncoding) -> String {
    let unicode = match encoding {
        NameEncoding::Mutf7 if level.is_ascii() => {
            decode_mutf7(level).unwrap_or_else(|_| level.to_owned())
        }
        _ => level.to_owned(),
    };
    unescape(&unicode)
}

/// Undoes `\XX` escapes of ASCII characters; anything else stays.
fn unescape(level: &str) -> String {
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(at) = rest.find(ESCAPE) {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let code = escape
            .get(1..3)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(u8::is_ascii);
        match code {
            Some(code) => {
                out.push(char::from(code));
                rest = &escape[3..];
            }
            None => {
                out.push(ESCAPE);
                rest = &escape[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The name of a folder directory in Dovecot's `subscriptions` file: its
/// levels as stored, separated by tabs (`.A.B` is `A\tB`).
pub(super) fn subscription_name(dir_name: &str) -> Option<String> {
    let levels = dir_name.strip_prefix('.')?;
    Some(levels.replace('.', "\t"))
}

/// The folder directory of a name in the `subscriptions` file.
pub(super) fn dir_of_subscription(name: &str) -> String {
    format!(".{}", name.replace('\t', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(levels: &[&str]) -> FolderPath {
        FolderPath(levels.iter().map(|level| (*level).to_owned()).collect())
    }

    /// Directory names as Dovecot 2.3 (with listescape) made them for
    /// `doveadm mailbox create`, and the names it lists for them.
    const DOVECOT_NAMES: [(&str, &[&str]); 9] = [
        (".Priv&AOk-", &["Privé"]),
        (".Priv&AOk-.&ZeVnLIqe- &2D3c5w-", &["Privé", "日本語 📧"]),
        (".Clients.Acme &- Co", &["Clients", "Acme & Co"]),
        (
            ".Projecten.&ANw-berpr&APw-fung",
            &["Projecten", "Überprüfung"],
        ),
        (".100% done", &["100% done"]),
        (".50%off", &["50%off"]),
        (".a\\2fb", &["a/b"]),
        (".a\\5cb", &["a\\b"]),
        (".\\7ex", &["~x"]),
    ];

    #[test]
    fn reads_and_writes_names_as_dovecot_does() {
        for (dir, levels) in DOVECOT_NAMES {
            let folder = path(levels);
            assert_eq!(
                folder_of(dir, NameEncoding::Mutf7),
                Ok(folder.clone()),
                "{dir}"
            );
            assert_eq!(
                dir_name(&folder, NameEncoding::Mutf7).as_deref(),
                Some(dir),
                "{folder}"
            );
        }
    }

    #[test]
    fn utf8_layout_keeps_names_readable() {
        let folder = path(&["Privé", "Acme & Co", "a.b"]);
        let dir = dir_name(&folder, NameEncoding::Utf8).expect("a name");
        assert_eq!(dir, ".Privé.Acme & Co.a\\2eb");
        assert_eq!(folder_of(&dir, NameEncoding::Utf8), Ok(folder));
        // In the UTF-8 layout `&` is itself, not modified UTF-7.
        assert_eq!(
            folder_of(".Entw&APw-rfe", NameEncoding::Utf8),
            Ok(path(&["Entw&APw-rfe"]))
        );
    }

    #[test]
    fn odd_names_are_read_as_dovecot_lists_them() {
        for (dir, level) in [
            (".Entwürfe", "Entwürfe"),
            (".a&b", "a&b"),
            (".back\\slash", "back\\slash"),
            (".\\zz", "\\zz"),
            (".%41", "%41"),
        ] {
            assert_eq!(folder_of(dir, NameEncoding::Mutf7), Ok(path(&[level])));
        }
        assert!(folder_of(".a..b", NameEncoding::Mutf7).is_err());
        assert!(folder_of(".INBOX", NameEncoding::Mutf7).is_err());
        assert!(folder_of("plain", NameEncoding::Mutf7).is_err());
    }

    #[test]
    fn every_level_round_trips() {
        for levels in [
            &["a.b", "c"][..],
            &["..", "."],
            &["%", "%%41", "\\2f"],
            &["ü", "日本", "~home"],
            &["x\ny\u{7f}", "tab\there"],
            &["&", "&-", "&AOk-"],
        ] {
            let folder = path(levels);
            for encoding in [NameEncoding::Mutf7, NameEncoding::Utf8] {
                let dir = dir_name(&folder, encoding).expect("a name");
                assert_eq!(dir.matches('.').count(), levels.len(), "{dir}");
                assert!(!dir.contains(['/', '\n', '\t', '\u{7f}']), "{dir:?}");
                assert_eq!(folder_of(&dir, encoding), Ok(folder.clone()), "{dir}");
            }
        }
        assert_eq!(dir_name(&path(&["a", ""]), NameEncoding::Mutf7), None);
    }

    #[test]
    fn subscription_names_use_tabs_between_levels() {
        let dir = ".Priv&AOk-.&ZeVnLIqe- &2D3c5w-";
        let name = subscription_name(dir).expect("a folder");
        assert_eq!(name, "Priv&AOk-\t&ZeVnLIqe- &2D3c5w-");
        assert_eq!(dir_of_subscription(&name), dir);
    }
}
