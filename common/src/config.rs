//! Configuration: a TOML file, every key overridable by an environment
//! variable `MAILWAVE__SECTION__KEY` (e.g. `MAILWAVE__SOURCE__HOST`).
//! Secrets are never literal: they are named by `*_env` or `*_file` keys.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of a migration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: EndpointConfig,
    pub target: EndpointConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub folders: FolderFilter,
}

/// A mail system that mailboxes are read from or written to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EndpointConfig {
    Imap(ImapEndpoint),
    Maildir(MaildirEndpoint),
}

/// An IMAP server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImapEndpoint {
    pub host: String,
    /// Defaults to 993 for implicit TLS, 143 otherwise.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra trusted roots (PEM), e.g. a private CA. The public web roots are
    /// always trusted; certificate verification cannot be switched off.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: AuthMechanism,
    /// Log in as this administrator on behalf of every mailbox.
    pub admin_user: Option<String>,
    /// How the administrator acts as the mailbox; only with `admin_user`.
    #[serde(default)]
    pub impersonation: Impersonation,
    /// Login name for `impersonation = "template"`, e.g. `"{mailbox}*{admin}"`
    /// (Dovecot master users).
    pub login_template: Option<String>,
    /// The password (of the admin, or shared by all mailboxes when the CSV has
    /// no per-user passwords): name of an environment variable…
    pub password_env: Option<String>,
    /// …or a file holding it.
    pub password_file: Option<PathBuf>,
    /// XOAUTH2: a file holding the access token, re-read at every connect.
    pub oauth2_token_file: Option<PathBuf>,
    /// XOAUTH2: a command printing the access token, run at every connect.
    pub oauth2_token_command: Option<String>,
    /// Seconds any single network operation may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_timeout_secs() -> u64 {
    120
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (port 993).
    #[default]
    Implicit,
    /// Plain connection upgraded with STARTTLS; refuses to go on without it.
    Starttls,
    /// No encryption at all; only when explicitly asked.
    None,
}

/// How a login is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    /// SASL PLAIN (supports an authorization identity for impersonation).
    #[default]
    Plain,
    /// The IMAP LOGIN command.
    Login,
    /// OAuth 2 bearer token (Exchange Online, Gmail).
    Xoauth2,
}

/// How an administrator acts on behalf of a mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Impersonation {
    /// SASL PLAIN with authzid = mailbox, authcid = admin.
    #[default]
    Authzid,
    /// A login name built from `login_template`, with the admin's password.
    Template,
}

/// A local Maildir tree per mailbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirEndpoint {
    /// Path of each mailbox's Maildir; `{mailbox}` is replaced by the
    /// mailbox's name from the CSV (made safe for use as one path component).
    pub path: String,
}

/// How hard to push.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Name of the wave in the state store; defaults to the CSV file's stem.
    pub wave: Option<String>,
    /// Mailboxes copied at the same time (Exchange Online batches use 20).
    pub max_concurrent_mailboxes: usize,
    /// Connections per mailbox and side; folders are copied in parallel over them.
    pub connections_per_mailbox: usize,
    /// Most messages fetched and appended in one batch (and one checkpoint).
    pub batch_messages: usize,
    /// Most bytes in one batch.
    pub batch_bytes: u64,
    /// Bytes of message bodies held in memory at once, across all mailboxes.
    pub memory_budget_bytes: u64,
    /// Messages larger than this are skipped and recorded (0 = no limit).
    pub max_message_bytes: u64,
    /// Attempts of a mailbox pass after transient failures before it fails.
    pub max_attempts: u32,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            wave: None,
            max_concurrent_mailboxes: 20,
            connections_per_mailbox: 2,
            batch_messages: 200,
            batch_bytes: 16 * 1024 * 1024,
            memory_budget_bytes: 96 * 1024 * 1024,
            max_message_bytes: 0,
            max_attempts: 5,
        }
    }
}

/// Which source folders to copy. Patterns match the folder's path with `/`
/// between levels; `*` matches any run of characters (also `/`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FolderFilter {
    /// When not empty, only folders matching one of these are copied.
    pub include: Vec<String>,
    /// Folders matching one of these are never copied.
    pub exclude: Vec<String>,
}

impl FolderFilter {
    /// Whether the folder with this path is to be copied.
    pub fn allows(&self, path: &str) -> bool {
        let included =
            self.include.is_empty() || self.include.iter().any(|p| wildcard_match(p, path));
        included && !self.exclude.iter().any(|p| wildcard_match(p, path))
    }
}

/// `*` matches any run of characters; everything else matches itself,
/// ignoring case (folder names are compared as people read them).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A configuration that could not be loaded, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration {path}: {source}")]
    Load {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("secret {what}: {reason}")]
    Secret { what: String, reason: String },
}

impl Config {
    /// Reads the TOML file, then applies `MAILWAVE__…` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, None)
    }

    /// Parses a configuration given as TOML text (a wave's configuration
    /// sent to the coordinator), without environment overrides: the text is
    /// the whole configuration.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Load {
                path: PathBuf::from("<text>"),
                source,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] with the environment given as a map (`None`: the
    /// process environment).
    fn load_with_env(
        path: &Path,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let load_error = |source| ConfigError::Load {
            path: path.to_owned(),
            source,
        };
        let config: Config = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("MAILWAVE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("folders.include")
                    .with_list_parse_key("folders.exclude")
                    .source(env),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(load_error)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.migration;
        if m.max_concurrent_mailboxes == 0 || m.connections_per_mailbox == 0 {
            return Err(ConfigError::Invalid(
                "migration.max_concurrent_mailboxes and migration.connections_per_mailbox must be at least 1".into(),
            ));
        }
        if m.batch_messages == 0 || m.batch_bytes == 0 || m.memory_budget_bytes == 0 {
            return Err(ConfigError::Invalid(
                "migration.batch_messages, batch_bytes and memory_budget_bytes must be positive"
                    .into(),
            ));
        }
        for (side, endpoint) in [("source", &self.source), ("target", &self.target)] {
            let EndpointConfig::Imap(imap) = endpoint else {
                continue;
            };
            if imap.password_env.is_some() && imap.password_file.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{side}: give password_env or password_file, not both"
                )));
            }
            if imap.admin_user.is_some()
                && imap.impersonation == Impersonation::Template
                && imap.login_template.is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "{side}: impersonation = \"template\" needs login_template, e.g. \"{{mailbox}}*{{admin}}\""
                )));
            }
            if imap.auth == AuthMechanism::Xoauth2
                && imap.oauth2_token_file.is_none()
                && imap.oauth2_token_command.is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "{side}: auth = \"xoauth2\" needs oauth2_token_file or oauth2_token_command"
                )));
            }
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// The server (or Maildir tree) this endpoint reaches, e.g.
    /// `imap://mail.example.com:993`: waves with the same source and target
    /// servers share one budget of mailboxes in flight.
    pub fn server(&self) -> String {
        match self {
            EndpointConfig::Imap(imap) => {
                format!("imap://{}:{}", imap.host.to_ascii_lowercase(), imap.port())
            }
            EndpointConfig::Maildir(maildir) => format!("maildir:{}", maildir.path),
        }
    }
}

impl ImapEndpoint {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            _ => 143,
        })
    }

    /// The configured password (admin's or shared), if any is configured.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| ConfigError::Secret {
                    what: format!("password_env {var}"),
                    reason: "environment variable is not set".into(),
                });
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        read_secret_file(path).map(Some)
    }
}

/// Reads the table `[section]` of a settings file, then the overrides
/// `MAILWAVE__SECTION__KEY` of that section only (one environment may carry
/// a coordinator's, a worker's and a migration's). `env`: the environment as
/// a map, `None` for the process's.
pub fn load_section<T: serde::de::DeserializeOwned>(
    path: &Path,
    section: &str,
    env: Option<std::collections::HashMap<String, String>>,
) -> Result<T, ConfigError> {
    let prefix = format!("MAILWAVE__{}__", section.to_ascii_uppercase());
    let env: std::collections::HashMap<String, String> = env
        .unwrap_or_else(|| std::env::vars().collect())
        .into_iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .collect();
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("MAILWAVE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .and_then(|c| c.get::<T>(section))
        .map_err(|source| ConfigError::Load {
            path: path.to_owned(),
            source,
        })
}

/// Reads a secret from a file, without its trailing newline.
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| ConfigError::Secret {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_folder_paths() {
        assert!(wildcard_match("Archive/*", "archive/2024/Q1"));
        assert!(wildcard_match("*Junk*", "INBOX/Junk E-mail"));
        assert!(wildcard_match("Trash", "TRASH"));
        assert!(!wildcard_match("Trash", "Trash/old"));
        assert!(!wildcard_match("a*c", "abd"));
        assert!(wildcard_match("a*b*c", "axxbyybzc"));
    }

    #[test]
    fn filter_applies_include_then_exclude() {
        let filter = FolderFilter {
            include: vec!["INBOX*".into(), "Sent".into()],
            exclude: vec!["INBOX/Spam*".into()],
        };
        assert!(filter.allows("INBOX"));
        assert!(filter.allows("Sent"));
        assert!(!filter.allows("INBOX/Spam"));
        assert!(!filter.allows("Drafts"));
        assert!(FolderFilter::default().allows("anything/at all"));
    }

    #[test]
    fn parses_toml_text_and_survives_a_json_round_trip() {
        let text = "[source]\nkind = \"imap\"\nhost = \"old\"\nadmin_user = \"admin\"\n\
                    password_env = \"SRC_PW\"\n[target]\nkind = \"maildir\"\npath = \"/b/{mailbox}\"\n\
                    [migration]\nmax_concurrent_mailboxes = 3\n[folders]\nexclude = [\"Junk\"]\n";
        let config = Config::from_toml_str(text).unwrap();
        assert_eq!(config.migration.max_concurrent_mailboxes, 3);
        let json = serde_json::to_value(&config).unwrap();
        let back: Config = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        let EndpointConfig::Imap(source) = &back.source else {
            panic!("source is imap")
        };
        assert_eq!(source.password_env.as_deref(), Some("SRC_PW"));
        assert!(Config::from_toml_str("[source]\nkind = \"imap\"\n").is_err());
    }

    #[test]
    fn loads_toml_with_environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
[source]
kind = "imap"
host = "old.example.org"
tls = "starttls"
admin_user = "admin"
password_env = "SRC_PW"

[target]
kind = "maildir"
path = "/backup/{mailbox}"

[migration]
max_concurrent_mailboxes = 5
"#,
        )
        .unwrap();
        let env = [("MAILWAVE__MIGRATION__BATCH_MESSAGES", "7")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let config = Config::load_with_env(&path, Some(env)).unwrap();
        let EndpointConfig::Imap(source) = &config.source else {
            panic!("source is imap")
        };
        assert_eq!(source.port(), 143);
        assert_eq!(source.tls, TlsMode::Starttls);
        assert_eq!(config.migration.max_concurrent_mailboxes, 5);
        assert_eq!(config.migration.batch_messages, 7);
        assert_eq!(config.migration.connections_per_mailbox, 2);
    }

    #[test]
    fn rejects_unknown_keys_and_missing_template() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[source]\nkind = \"maildir\"\npath = \"a\"\nhots = \"x\"\n[target]\nkind = \"maildir\"\npath = \"b\"\n",
        )
        .unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("hots"), "{error}");

        std::fs::write(
            &path,
            "[source]\nkind = \"imap\"\nhost = \"h\"\nadmin_user = \"a\"\nimpersonation = \"template\"\n[target]\nkind = \"maildir\"\npath = \"b\"\n",
        )
        .unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("login_template"), "{error}");
    }
}
