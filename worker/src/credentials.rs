//! What a worker of distributed mode makes of a wave's configuration. The
//! configuration came through the API, so it is trusted for nothing a
//! worker could be made to do on its own machine: it names no command, file
//! or environment variable (refused again here, whatever the store holds),
//! its credentials are names resolved from this worker's own
//! `[credentials.NAME]` tables (each sent only to the hosts it lists), and a
//! Maildir path must lie under one of the worker's `maildir_roots`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use mailwave_common::config::{Config, CredentialSource, EndpointConfig, NamedCredential};

/// The worker's own rules for the waves it runs.
#[derive(Debug, Clone, Default)]
pub struct WavePolicy {
    /// `[credentials.NAME]` of the worker's settings.
    pub credentials: BTreeMap<String, NamedCredential>,
    /// Directories Maildir endpoints may be in (none: no Maildir at all).
    pub maildir_roots: Vec<PathBuf>,
}

impl WavePolicy {
    /// The wave's configuration made runnable on this worker: its named
    /// credentials resolved and its Maildir paths checked (and written in
    /// their normalised form); an error says what the wave asked for that
    /// this worker refuses.
    pub fn prepare(&self, mut config: Config) -> Result<Config, String> {
        config.refuse_local_only_keys().map_err(|e| e.to_string())?;
        config
            .bind_credentials(CredentialSource {
                credentials: &self.credentials,
                require_hosts: true,
                defined_in: "the worker's settings",
            })
            .map_err(|e| e.to_string())?;
        for (side, endpoint) in [
            ("source", &mut config.source),
            ("target", &mut config.target),
        ] {
            if let EndpointConfig::Maildir(maildir) = endpoint {
                maildir.path = self
                    .maildir_template(&maildir.path)
                    .map_err(|e| format!("{side}: {e}"))?;
            }
        }
        Ok(config)
    }

    /// The path template `template` (with or without `{mailbox}`, which
    /// becomes one safe path component) normalised — `.` and `..` resolved,
    /// symbolic links of the part that exists followed — if it lies under
    /// one of the roots.
    fn maildir_template(&self, template: &str) -> Result<String, String> {
        let template = if template.contains("{mailbox}") {
            PathBuf::from(template)
        } else {
            Path::new(template).join("{mailbox}")
        };
        let refused = |why: &str| {
            Err(format!(
                "Maildir path {} refused: {why} (this worker's maildir_roots: {})",
                template.display(),
                if self.maildir_roots.is_empty() {
                    "none".to_owned()
                } else {
                    self.maildir_roots
                        .iter()
                        .map(|root| root.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        };
        if !template.is_absolute() {
            return refused("it is not absolute");
        }
        let resolved =
            resolve(&template).map_err(|e| format!("Maildir path {}: {e}", template.display()))?;
        let inside = self.maildir_roots.iter().any(|root| {
            resolve(root).is_ok_and(|root| resolved.starts_with(&root) && resolved != root)
        });
        if !inside {
            return refused("it is not under a Maildir root");
        }
        resolved
            .into_os_string()
            .into_string()
            .or_else(|_| refused("it is not UTF-8"))
    }
}

/// `path` (absolute) with `.` and `..` resolved and the symbolic links of
/// its longest existing prefix followed; the rest, which does not exist
/// yet, is appended as written.
fn resolve(path: &Path) -> Result<PathBuf, std::io::Error> {
    let mut resolved = PathBuf::from("/");
    let mut existing = true;
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                resolved.push(name);
                if !existing {
                    continue;
                }
                match std::fs::canonicalize(&resolved) {
                    Ok(canonical) => resolved = canonical,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => existing = false,
                    Err(error) => return Err(error),
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(toml: &str) -> Config {
        Config::from_remote_toml_str(toml).expect("a valid remote wave")
    }

    fn policy(maildir_roots: Vec<PathBuf>) -> WavePolicy {
        let credential = NamedCredential {
            hosts: vec!["old.example.org".into()],
            password_env: Some("WORKER_SRC_PW".into()),
            ..NamedCredential::default()
        };
        WavePolicy {
            credentials: [("src-admin".to_owned(), credential)].into_iter().collect(),
            maildir_roots,
        }
    }

    #[test]
    fn a_named_credential_is_resolved_from_the_worker_settings_never_from_the_wave() {
        let root = tempfile::tempdir().unwrap();
        let target = format!(
            "[target]\nkind = \"maildir\"\npath = \"{}/{{mailbox}}\"\n",
            root.path().display()
        );
        let policy = policy(vec![root.path().to_owned()]);
        let config = policy
            .prepare(wave(&format!(
                "[source]\nkind = \"imap\"\nhost = \"old.example.org\"\nadmin_user = \"admin\"\n\
                 credential = \"src-admin\"\n{target}"
            )))
            .unwrap();
        let EndpointConfig::Imap(source) = &config.source else {
            panic!("source is imap")
        };
        assert_eq!(source.password_env.as_deref(), Some("WORKER_SRC_PW"));
        assert!(source.password_file.is_none() && source.credential.is_none());

        // The same wave with its own secret's location, as a store written
        // by an older coordinator could hold it: refused, not used.
        let mut smuggled = wave(&format!(
            "[source]\nkind = \"imap\"\nhost = \"old.example.org\"\nadmin_user = \"admin\"\n\
             credential = \"src-admin\"\n{target}"
        ));
        let EndpointConfig::Imap(source) = &mut smuggled.source else {
            panic!("source is imap")
        };
        source.credential = None;
        source.password_file = Some("/etc/shadow".into());
        let error = policy.prepare(smuggled).unwrap_err();
        assert!(
            error.contains("source.password_file not accepted"),
            "{error}"
        );

        let mut command = wave(&format!(
            "[source]\nkind = \"imap\"\nhost = \"outlook.office365.com\"\nauth = \"xoauth2\"\n\
             credential = \"src-admin\"\n{target}"
        ));
        let EndpointConfig::Imap(source) = &mut command.source else {
            panic!("source is imap")
        };
        source.credential = None;
        source.oauth2_token_command = Some("id > /tmp/owned".into());
        let error = policy.prepare(command).unwrap_err();
        assert!(
            error.contains("source.oauth2_token_command not accepted"),
            "{error}"
        );

        let error = policy
            .prepare(wave(&format!(
                "[source]\nkind = \"imap\"\nhost = \"old.example.org\"\nadmin_user = \"admin\"\n\
                 credential = \"unknown\"\n{target}"
            )))
            .unwrap_err();
        assert!(
            error.contains("no [credentials.unknown] in the worker's settings"),
            "{error}"
        );
        let error = policy
            .prepare(wave(&format!(
                "[source]\nkind = \"imap\"\nhost = \"attacker.example\"\nadmin_user = \"admin\"\n\
                 credential = \"src-admin\"\n{target}"
            )))
            .unwrap_err();
        assert!(
            error.contains("may not be sent to attacker.example"),
            "{error}"
        );
    }

    #[test]
    fn a_maildir_path_outside_the_roots_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("maildirs");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(base.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(base.path().join("elsewhere"), root.join("link")).unwrap();
        let policy = policy(vec![root.clone()]);
        let root_text = root.display().to_string();
        let source = "[source]\nkind = \"maildir\"\npath = \"PATH\"\n";
        let target =
            format!("[target]\nkind = \"maildir\"\npath = \"{root_text}/backup/{{mailbox}}\"\n");
        let prepare =
            |path: &str| policy.prepare(wave(&format!("{}{target}", source.replace("PATH", path))));

        let inside = prepare(&format!("{root_text}/a/./b/../{{mailbox}}")).unwrap();
        let EndpointConfig::Maildir(maildir) = &inside.source else {
            panic!("source is maildir")
        };
        let canonical_root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(
            maildir.path,
            format!("{}/a/{{mailbox}}", canonical_root.display())
        );
        let without_placeholder = prepare(&root_text).unwrap();
        let EndpointConfig::Maildir(maildir) = &without_placeholder.source else {
            panic!("source is maildir")
        };
        assert_eq!(
            maildir.path,
            format!("{}/{{mailbox}}", canonical_root.display())
        );

        for outside in [
            format!("{root_text}/../elsewhere/{{mailbox}}"),
            format!("{root_text}/a/../../{{mailbox}}"),
            format!("{root_text}/link/{{mailbox}}"),
            "/etc/{mailbox}".to_owned(),
            "relative/{mailbox}".to_owned(),
            format!("{root_text}/{{mailbox}}/../../x"),
        ] {
            let error = prepare(&outside).unwrap_err();
            assert!(
                error.starts_with("source: Maildir path"),
                "{outside}: {error}"
            );
            assert!(error.contains("refused"), "{outside}: {error}");
        }
        let error = WavePolicy::default()
            .prepare(wave(&format!(
                "{}{target}",
                source.replace("PATH", &root_text)
            )))
            .unwrap_err();
        assert!(error.contains("maildir_roots: none"), "{error}");
    }
}
