//! Where each source folder lands in the target. Folders with a role (the
//! inbox, SPECIAL-USE, Exchange's well-known folders, or recognised by a
//! well-known localised name on servers without SPECIAL-USE) land in the
//! target's folder of that role, whatever either side calls it, and the
//! folders below them below it (`Inbox/Projects` into `Postvak
//! IN/Projects`); every other folder keeps its path.

use std::collections::HashMap;

use crate::connector::{FolderPath, SourceFolder, SpecialUse, TargetFolder};

/// Well-known names of special folders, lower-case, as mail clients and
/// servers create them in the languages our customers use most.
const LOCALISED_NAMES: &[(SpecialUse, &[&str])] = &[
    (
        SpecialUse::Sent,
        &[
            "sent",
            "sent items",
            "sent messages",
            "sent mail",
            "verzonden items",
            "verzonden",
            "gesendete elemente",
            "gesendete objekte",
            "gesendet",
            "éléments envoyés",
            "envoyés",
            "messages envoyés",
            "elementos enviados",
            "enviados",
            "posta inviata",
            "inviati",
            "itens enviados",
            "skickat",
            "skickade objekt",
            "sendt",
            "sendte elementer",
            "lähetetyt",
            "elementy wysłane",
            "wysłane",
            "odeslaná pošta",
            "отправленные",
        ],
    ),
    (
        SpecialUse::Drafts,
        &[
            "drafts",
            "draft",
            "concepten",
            "entwürfe",
            "brouillons",
            "borradores",
            "bozze",
            "rascunhos",
            "utkast",
            "kladder",
            "luonnokset",
            "wersje robocze",
            "koncepty",
            "черновики",
        ],
    ),
    (
        SpecialUse::Trash,
        &[
            "trash",
            "deleted items",
            "deleted messages",
            "bin",
            "verwijderde items",
            "prullenbak",
            "gelöschte elemente",
            "gelöschte objekte",
            "papierkorb",
            "éléments supprimés",
            "corbeille",
            "elementos eliminados",
            "papelera",
            "posta eliminata",
            "cestino",
            "itens excluídos",
            "lixeira",
            "borttagna objekt",
            "papperskorgen",
            "slettede elementer",
            "poistetut",
            "elementy usunięte",
            "kosz",
            "koš",
            "удаленные",
            "корзина",
        ],
    ),
    (
        SpecialUse::Junk,
        &[
            "junk",
            "junk e-mail",
            "junk email",
            "junk mail",
            "spam",
            "ongewenste e-mail",
            "junk-e-mail",
            "spam-verdacht",
            "courrier indésirable",
            "pourriel",
            "correo no deseado",
            "posta indesiderata",
            "lixo eletrônico",
            "skräppost",
            "søppelpost",
            "uønsket e-mail",
            "roskaposti",
            "wiadomości-śmieci",
            "nevyžádaná pošta",
            "нежелательная почта",
            "спам",
        ],
    ),
    (
        SpecialUse::Archive,
        &[
            "archive",
            "archives",
            "archief",
            "archiv",
            "archives locales",
            "archivio",
            "archivo",
            "arquivo",
            "arkiv",
            "arkisto",
            "archiwum",
            "архив",
        ],
    ),
];

/// The role a well-known folder name stands for: the inbox, or, at the
/// top level only (or directly below the inbox, as on servers that put
/// every folder under `INBOX.`), a localised name: `Projects/Sent` is an
/// ordinary folder.
pub fn role_from_name(path: &FolderPath) -> Option<SpecialUse> {
    if path.is_inbox() {
        return Some(SpecialUse::Inbox);
    }
    let name = match path.0.as_slice() {
        [name] => name,
        [inbox, name] if inbox.eq_ignore_ascii_case("INBOX") => name,
        _ => return None,
    };
    let name = name.to_lowercase();
    LOCALISED_NAMES
        .iter()
        .find(|(_, names)| names.contains(&name.as_str()))
        .map(|(role, _)| *role)
}

/// The roles of a mailbox's source folders, one source folder per role.
#[derive(Debug, Default)]
pub struct SourceRoles {
    by_key: HashMap<String, SpecialUse>,
    /// The path of each folder with a role.
    paths: Vec<(FolderPath, SpecialUse)>,
}

impl SourceRoles {
    /// The role of the source folder with this key.
    pub fn of(&self, key: &str) -> Option<SpecialUse> {
        self.by_key.get(key).copied()
    }

    /// The folders with a role at or above `path`, nearest first: the
    /// number of levels of each, and its role.
    fn above<'a>(&'a self, path: &'a FolderPath) -> impl Iterator<Item = (usize, SpecialUse)> + 'a {
        (1..=path.0.len()).rev().filter_map(move |depth| {
            self.paths
                .iter()
                .find(|(p, _)| p.0[..] == path.0[..depth])
                .map(|&(_, role)| (depth, role))
        })
    }

    fn claim(&mut self, folder: &SourceFolder, role: SpecialUse) {
        if self.by_key.contains_key(&folder.key) || self.by_key.values().any(|&r| r == role) {
            return;
        }
        self.by_key.insert(folder.key.clone(), role);
        self.paths.push((folder.path.clone(), role));
    }
}

/// Decides the role of every source folder: one source folder per role,
/// the source's own roles (SPECIAL-USE, Exchange's well-known names) first,
/// well-known names only for roles that none claimed.
pub fn source_roles(folders: &[SourceFolder]) -> SourceRoles {
    let mut roles = SourceRoles::default();
    for folder in folders {
        if let Some(role) = folder.special {
            roles.claim(folder, role);
        }
    }
    for folder in folders {
        if folder.special.is_some() {
            continue;
        }
        if let Some(role) = role_from_name(&folder.path) {
            roles.claim(folder, role);
        }
    }
    roles
}

/// The target's folder of `role`: by its own role first, then by a
/// well-known name; the inbox is `INBOX` where the target names none.
fn target_of_role(role: SpecialUse, target_folders: &[TargetFolder]) -> Option<FolderPath> {
    let by_attribute = target_folders.iter().find(|t| t.special == Some(role));
    let by_name = || {
        target_folders
            .iter()
            .find(|t| role_from_name(&t.path) == Some(role))
    };
    let found = by_attribute.or_else(by_name).map(|t| t.path.clone());
    found.or_else(|| (role == SpecialUse::Inbox).then(FolderPath::inbox))
}

/// The target folder for a source folder: below the target's folder of the
/// role of the nearest folder at or above it that has one the target has
/// too, else the source's path.
pub fn target_path(
    source: &SourceFolder,
    roles: &SourceRoles,
    target_folders: &[TargetFolder],
) -> FolderPath {
    roles
        .above(&source.path)
        .find_map(|(depth, role)| {
            let mut path = target_of_role(role, target_folders)?;
            path.0.extend_from_slice(&source.path.0[depth..]);
            Some(path)
        })
        .unwrap_or_else(|| source.path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(levels: &[&str]) -> FolderPath {
        FolderPath(levels.iter().map(|l| l.to_string()).collect())
    }

    fn source(key: &str, levels: &[&str], special: Option<SpecialUse>) -> SourceFolder {
        SourceFolder {
            key: key.into(),
            path: path(levels),
            special,
            class: None,
            subscribed: false,
        }
    }

    fn target(levels: &[&str], special: Option<SpecialUse>) -> TargetFolder {
        TargetFolder {
            name: levels.join("/"),
            path: path(levels),
            special,
        }
    }

    #[test]
    fn localised_names_are_recognised_at_top_level_only() {
        assert_eq!(
            role_from_name(&path(&["Verzonden items"])),
            Some(SpecialUse::Sent)
        );
        assert_eq!(
            role_from_name(&path(&["Gesendete Elemente"])),
            Some(SpecialUse::Sent)
        );
        assert_eq!(
            role_from_name(&path(&["Éléments envoyés"])),
            Some(SpecialUse::Sent)
        );
        assert_eq!(
            role_from_name(&path(&["INBOX", "Deleted Items"])),
            Some(SpecialUse::Trash)
        );
        assert_eq!(role_from_name(&path(&["Projects", "Sent"])), None);
        assert_eq!(role_from_name(&path(&["Sentinel"])), None);
    }

    #[test]
    fn attribute_roles_win_over_names_and_each_role_is_taken_once() {
        let folders = [
            source("Sent", &["Sent"], None),
            source("Sent Items", &["Sent Items"], Some(SpecialUse::Sent)),
            source("Papierkorb", &["Papierkorb"], None),
            source("Trash", &["Trash"], None),
            source("INBOX", &["INBOX"], None),
        ];
        let roles = source_roles(&folders);
        assert_eq!(roles.of("Sent Items"), Some(SpecialUse::Sent));
        assert_eq!(roles.of("Sent"), None, "the attribute claimed \\Sent");
        assert_eq!(roles.of("Papierkorb"), Some(SpecialUse::Trash));
        assert_eq!(roles.of("Trash"), None, "only one folder per role");
        assert_eq!(roles.of("INBOX"), Some(SpecialUse::Inbox));
    }

    #[test]
    fn special_folders_land_in_the_targets_folder_of_that_role() {
        let targets = [
            target(&["INBOX"], None),
            target(&["Sent Items"], Some(SpecialUse::Sent)),
            target(&["Deleted Items"], None),
        ];
        let folders = [
            source("Verzonden items", &["Verzonden items"], None),
            source("Prullenbak", &["Prullenbak"], None),
            source("Concepten", &["Concepten"], None),
            source("Projecten.Überprüfung", &["Projecten", "Überprüfung"], None),
            source("inbox", &["inbox"], None),
        ];
        let roles = source_roles(&folders);
        let landing = |i: usize| target_path(&folders[i], &roles, &targets);
        assert_eq!(landing(0), path(&["Sent Items"]));
        assert_eq!(landing(1), path(&["Deleted Items"]));
        assert_eq!(
            landing(2),
            path(&["Concepten"]),
            "no drafts folder in the target yet: keep the source's name"
        );
        assert_eq!(landing(3), path(&["Projecten", "Überprüfung"]));
        assert_eq!(landing(4), path(&["INBOX"]));
    }

    /// An English Exchange mailbox into a Dutch one: every well-known
    /// folder and what is below it lands in the target's localised folder.
    #[test]
    fn well_known_folders_and_their_subfolders_land_in_the_localised_ones() {
        let targets = [
            target(&["Postvak IN"], Some(SpecialUse::Inbox)),
            target(&["Agenda"], Some(SpecialUse::Calendar)),
            target(&["Contactpersonen"], Some(SpecialUse::Contacts)),
            target(&["Verzonden items"], Some(SpecialUse::Sent)),
        ];
        let folders = [
            source("i", &["Inbox"], Some(SpecialUse::Inbox)),
            source("p", &["Inbox", "Projects"], None),
            source("p26", &["Inbox", "Projects", "2026"], None),
            source("c", &["Calendar"], Some(SpecialUse::Calendar)),
            source("h", &["Calendar", "Holidays"], None),
            source("k", &["Contacts"], Some(SpecialUse::Contacts)),
            source("t", &["Tasks"], Some(SpecialUse::Tasks)),
            source("s", &["Sent Items"], Some(SpecialUse::Sent)),
            source("o", &["Other"], None),
        ];
        let roles = source_roles(&folders);
        let landings: Vec<FolderPath> = folders
            .iter()
            .map(|f| target_path(f, &roles, &targets))
            .collect();
        assert_eq!(
            landings,
            [
                path(&["Postvak IN"]),
                path(&["Postvak IN", "Projects"]),
                path(&["Postvak IN", "Projects", "2026"]),
                path(&["Agenda"]),
                path(&["Agenda", "Holidays"]),
                path(&["Contactpersonen"]),
                path(&["Tasks"]),
                path(&["Verzonden items"]),
                path(&["Other"]),
            ],
            "a role the target lacks (Tasks) keeps the source's path"
        );
        // Into IMAP: the inbox is INBOX, its sub-folders below it.
        let imap = [target(&["INBOX"], None)];
        assert_eq!(
            target_path(&folders[1], &roles, &imap),
            path(&["INBOX", "Projects"])
        );
    }
}
