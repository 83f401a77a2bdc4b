//! A wave's configuration as the store keeps it, read once at the store
//! boundary into a [`WaveConfig`]: the dispatcher, the reaper and the
//! workers all see the same value and treat an unreadable one the same way
//! (nothing of the wave runs; the reason is shown).
//!
//! # Stored form and rolling upgrades
//! `{"version": 1, "config": {…}}`, the [`Config`] as JSON (secrets by name
//! only). Reading is lenient where the operator's TOML is strict: a key this
//! version does not know (written by a newer coordinator) is ignored, so
//! that older workers keep running a wave while the fleet is upgraded. Rows
//! written before the version existed hold the bare configuration (or `{}`
//! for a wave of `mailwave run`) and read as version 1.

use std::sync::Arc;

use serde_json::Value;

use crate::config::{Config, MigrationConfig};

/// The version of the stored form this build writes (and reads at most).
pub const VERSION: u64 = 1;

/// A wave's configuration, as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum WaveConfig {
    /// None stored: a wave of `mailwave run`, whose process brings its own.
    Unset,
    Readable(Arc<Config>),
    /// Stored, but not readable by this build: why.
    Unreadable(String),
}

/// A wave's stored configuration that this build cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the wave's stored configuration cannot be read by this mailwave: {0}")]
pub struct UnreadableConfig(pub String);

impl WaveConfig {
    /// The stored form of `config`.
    pub fn to_stored(config: &Config) -> Value {
        serde_json::json!({ "version": VERSION, "config": config })
    }

    /// Reads a stored form (see the module's docs); never fails, an
    /// unreadable value is [`WaveConfig::Unreadable`] with the reason.
    pub fn from_stored(stored: &str) -> WaveConfig {
        let value: Value = match serde_json::from_str(stored) {
            Ok(value) => value,
            Err(error) => return WaveConfig::Unreadable(format!("not JSON: {error}")),
        };
        let Value::Object(mut fields) = value else {
            return match value {
                Value::Null => WaveConfig::Unset,
                other => WaveConfig::Unreadable(format!("not an object: {other}")),
            };
        };
        if fields.is_empty() {
            return WaveConfig::Unset;
        }
        let (version, config) = match fields.remove("version") {
            None => (1, Value::Object(fields)),
            Some(version) => {
                let Some(version) = version.as_u64() else {
                    return WaveConfig::Unreadable(format!("version {version} is not a number"));
                };
                (version, fields.remove("config").unwrap_or(Value::Null))
            }
        };
        match serde_path_to_error::deserialize::<_, Config>(config) {
            Ok(config) => WaveConfig::Readable(Arc::new(config)),
            Err(error) if version > VERSION => WaveConfig::Unreadable(format!(
                "written by a newer coordinator (version {version}; this build reads up to \
                 {VERSION}): {error}"
            )),
            Err(error) => WaveConfig::Unreadable(error.to_string()),
        }
    }

    /// The configuration, `None` when the wave has none of its own.
    pub fn config(&self) -> Result<Option<&Arc<Config>>, UnreadableConfig> {
        match self {
            WaveConfig::Unset => Ok(None),
            WaveConfig::Readable(config) => Ok(Some(config)),
            WaveConfig::Unreadable(reason) => Err(UnreadableConfig(reason.clone())),
        }
    }

    /// The `[migration]` settings; the defaults for a wave without a
    /// configuration.
    pub fn migration(&self) -> Result<MigrationConfig, UnreadableConfig> {
        Ok(self
            .config()?
            .map(|config| config.migration.clone())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_remote_toml_str(
            "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\n\
             [target]\nkind = \"imap\"\nhost = \"imap.new.example\"\n\
             [migration]\nmax_concurrent_mailboxes = 3\n",
        )
        .unwrap()
    }

    #[test]
    fn a_stored_configuration_reads_back_as_written() {
        let stored = WaveConfig::to_stored(&config()).to_string();
        let read = WaveConfig::from_stored(&stored);
        assert_eq!(read, WaveConfig::Readable(Arc::new(config())));
        assert_eq!(read.migration().unwrap().max_concurrent_mailboxes, 3);
    }

    #[test]
    fn keys_of_a_newer_coordinator_are_ignored() {
        let mut stored = WaveConfig::to_stored(&config());
        stored["version"] = 2.into();
        stored["config"]["migration"]["priority_lanes"] = 4.into();
        stored["config"]["source"]["compression"] = "deflate".into();
        stored["config"]["schedule"] = serde_json::json!({"window": "22:00-06:00"});
        let read = WaveConfig::from_stored(&stored.to_string());
        assert_eq!(read.migration().unwrap().max_concurrent_mailboxes, 3);
    }

    #[test]
    fn rows_written_before_the_version_still_read() {
        let bare = serde_json::to_string(&config()).unwrap();
        assert_eq!(
            WaveConfig::from_stored(&bare),
            WaveConfig::Readable(Arc::new(config()))
        );
        assert_eq!(WaveConfig::from_stored("{}"), WaveConfig::Unset);
        assert_eq!(WaveConfig::from_stored("null"), WaveConfig::Unset);
        assert_eq!(
            WaveConfig::Unset
                .migration()
                .unwrap()
                .max_concurrent_mailboxes,
            MigrationConfig::default().max_concurrent_mailboxes
        );
    }

    #[test]
    fn what_cannot_be_read_says_why_instead_of_falling_back_to_defaults() {
        let mut stored = WaveConfig::to_stored(&config());
        stored["config"]["migration"]["max_concurrent_mailboxes"] = "many".into();
        let read = WaveConfig::from_stored(&stored.to_string());
        let error = read.migration().unwrap_err();
        assert!(
            error
                .to_string()
                .contains("migration.max_concurrent_mailboxes"),
            "names where: {error}"
        );

        stored["version"] = 7.into();
        let error = WaveConfig::from_stored(&stored.to_string())
            .migration()
            .unwrap_err();
        assert!(
            error.to_string().contains("newer coordinator (version 7"),
            "{error}"
        );

        for garbage in ["not json", "[1, 2]", r#"{"version": "one"}"#] {
            assert!(
                matches!(WaveConfig::from_stored(garbage), WaveConfig::Unreadable(_)),
                "{garbage}"
            );
        }
    }
}
