//! Where each source folder lands in the target. Folders with a role
//! (SPECIAL-USE, or recognised by a well-known localised name on servers
//! without SPECIAL-USE) land in the target's folder of that role, whatever
//! either side calls it; every other folder keeps its path.

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

/// The role a well-known folder name stands for. Only top-level folders
/// (or direct children of the inbox, as on servers that put every folder
/// under `INBOX.`) count: `Projects/Sent` is an ordinary folder.
pub fn role_from_name(path: &FolderPath) -> Option<SpecialUse> {
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

/// Decides the role of every source folder: one source folder per role,
/// SPECIAL-USE attributes first, well-known names only for roles that no
/// attribute claimed. Returns the role by source folder key.
pub fn source_roles(folders: &[SourceFolder]) -> HashMap<String, SpecialUse> {
    let mut roles: HashMap<String, SpecialUse> = HashMap::new();
    for folder in folders {
        if let Some(role) = folder.special
            && !roles.values().any(|&r| r == role)
        {
            roles.insert(folder.key.clone(), role);
        }
    }
    for folder in folders {
        if roles.contains_key(&folder.key) || folder.special.is_some() {
            continue;
        }
        if let Some(role) = role_from_name(&folder.path)
            && !roles.values().any(|&r| r == role)
        {
            roles.insert(folder.key.clone(), role);
        }
    }
    roles
}

/// The target folder for a source folder with `role` (or none): the
/// target's folder of that role when it has one, else the source's path.
pub fn target_path(
    source: &SourceFolder,
    role: Option<SpecialUse>,
    target_folders: &[TargetFolder],
) -> FolderPath {
    if source.path.is_inbox() {
        return FolderPath::inbox();
    }
    let Some(role) = role else {
        return source.path.clone();
    };
    let by_attribute = target_folders.iter().find(|t| t.special == Some(role));
    let by_name = || {
        target_folders
            .iter()
            .find(|t| role_from_name(&t.path) == Some(role))
    };
    by_attribute
        .or_else(by_name)
        .map_or_else(|| source.path.clone(), |t| t.path.clone())
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
        ];
        let roles = source_roles(&folders);
        assert_eq!(roles.get("Sent Items"), Some(&SpecialUse::Sent));
        assert_eq!(roles.get("Sent"), None, "the attribute claimed \\Sent");
        assert_eq!(roles.get("Papierkorb"), Some(&SpecialUse::Trash));
        assert_eq!(roles.get("Trash"), None, "only one folder per role");
    }

    #[test]
    fn special_folders_land_in_the_targets_folder_of_that_role() {
        let targets = [
            target(&["INBOX"], None),
            target(&["Sent Items"], Some(SpecialUse::Sent)),
            target(&["Deleted Items"], None),
        ];
        let sent = source("Verzonden items", &["Verzonden items"], None);
        assert_eq!(
            target_path(&sent, Some(SpecialUse::Sent), &targets),
            path(&["Sent Items"])
        );
        let trash = source("Prullenbak", &["Prullenbak"], None);
        assert_eq!(
            target_path(&trash, Some(SpecialUse::Trash), &targets),
            path(&["Deleted Items"])
        );
        let drafts = source("Concepten", &["Concepten"], None);
        assert_eq!(
            target_path(&drafts, Some(SpecialUse::Drafts), &targets),
            path(&["Concepten"]),
            "no drafts folder in the target yet: keep the source's name"
        );
        let plain = source("Projecten.Überprüfung", &["Projecten", "Überprüfung"], None);
        assert_eq!(
            target_path(&plain, None, &targets),
            path(&["Projecten", "Überprüfung"])
        );
        let inbox = source("inbox", &["inbox"], None);
        assert_eq!(target_path(&inbox, None, &targets), FolderPath::inbox());
    }
}
