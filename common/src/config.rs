//! Configuration: a TOML file, every key overridable by an environment
//! variable `MAILWAVE__SECTION__KEY` (e.g. `MAILWAVE__SOURCE__HOST`).
//! Secrets are never literal: they are named by `*_env` or `*_file` keys,
//! or by a `credential = "NAME"` referring to a `[credentials.NAME]` table.
//!
//! Two kinds of configuration text: a local file (`mailwave run`, the
//! operator's own), which may name commands, files and environment
//! variables, and a wave sent through the API
//! ([`Config::from_remote_toml_str`]), which may not: there credentials are
//! names only, resolved by each worker from its own settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of a migration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Config {
    pub source: EndpointConfig,
    pub target: EndpointConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub folders: FolderFilter,
    /// Named credentials of a local file (`[credentials.NAME]`), bound into
    /// the endpoints that refer to them when the file is loaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, NamedCredential>,
}

/// `[credentials.NAME]`: where one secret is found, on the machine that
/// uses it. An endpoint refers to it with `credential = "NAME"`: an IMAP
/// endpoint for its password (`password_*`) or its XOAUTH2 access token
/// (`token_*`), an `oauth2` table for its client secret (`client_secret_*`)
/// or certificate (`certificate_file` with `private_key_file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedCredential {
    /// The hosts the secret may be sent to (the IMAP server, the identity
    /// platform, Graph). Required in a worker's settings, where the wave
    /// (and so the host) comes from the API; optional in a local file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub token_command: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
}

/// What an endpoint uses a named credential for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialUse {
    Password,
    AccessToken,
    ClientSecret,
}

impl CredentialUse {
    fn keys(self) -> &'static str {
        match self {
            CredentialUse::Password => "password_env or password_file",
            CredentialUse::AccessToken => "token_file or token_command",
            CredentialUse::ClientSecret => {
                "client_secret_env, client_secret_file, or certificate_file with private_key_file"
            }
        }
    }
}

impl NamedCredential {
    /// The keys given, by name.
    fn given(&self) -> Vec<&'static str> {
        [
            ("password_env", self.password_env.is_some()),
            ("password_file", self.password_file.is_some()),
            ("token_file", self.token_file.is_some()),
            ("token_command", self.token_command.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("certificate_file", self.certificate_file.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect()
    }

    /// Checks that the credential holds exactly one secret of the kind
    /// `usage` needs.
    fn check_use(&self, name: &str, usage: CredentialUse) -> Result<(), ConfigError> {
        let given = self.given();
        let fits = match usage {
            CredentialUse::Password => given == ["password_env"] || given == ["password_file"],
            CredentialUse::AccessToken => given == ["token_file"] || given == ["token_command"],
            CredentialUse::ClientSecret => {
                given == ["client_secret_env"]
                    || given == ["client_secret_file"]
                    || given == ["certificate_file", "private_key_file"]
            }
        };
        if fits {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "credentials.{name}: used here it must hold exactly {} (it holds {})",
            usage.keys(),
            if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(", ")
            }
        )))
    }

    /// Checks that every host in `hosts` is one this credential may be sent
    /// to; with `require_hosts` an empty list allows none.
    fn check_hosts(
        &self,
        name: &str,
        hosts: &[String],
        require_hosts: bool,
    ) -> Result<(), ConfigError> {
        if self.hosts.is_empty() && !require_hosts {
            return Ok(());
        }
        let refused = hosts.iter().find(|host| {
            !self
                .hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
        });
        match refused {
            None => Ok(()),
            Some(host) => Err(ConfigError::Invalid(format!(
                "credentials.{name} may not be sent to {host}: it is not in the credential's hosts ({})",
                if self.hosts.is_empty() {
                    "none given".to_owned()
                } else {
                    self.hosts.join(", ")
                }
            ))),
        }
    }
}

/// Where named credentials come from and how strict their binding is.
#[derive(Debug, Clone, Copy)]
pub struct CredentialSource<'a> {
    pub credentials: &'a BTreeMap<String, NamedCredential>,
    /// Each credential must list the hosts it may be sent to (a worker's
    /// settings: the endpoints come from the API).
    pub require_hosts: bool,
    /// Where the tables are, for messages (e.g. "the worker's settings").
    pub defined_in: &'a str,
}

impl CredentialSource<'_> {
    /// The credential `name`, checked for `usage` and for being sent to
    /// `hosts`.
    fn get(
        &self,
        side: &str,
        name: &str,
        usage: CredentialUse,
        hosts: &[String],
    ) -> Result<&NamedCredential, ConfigError> {
        let Some(named) = self.credentials.get(name) else {
            return Err(ConfigError::Invalid(format!(
                "{side}: credential {name:?} is not defined (no [credentials.{name}] in {})",
                self.defined_in
            )));
        };
        named.check_use(name, usage)?;
        named.check_hosts(name, hosts, self.require_hosts)?;
        Ok(named)
    }
}

/// A mail system that mailboxes are read from or written to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EndpointConfig {
    Imap(ImapEndpoint),
    Maildir(MaildirEndpoint),
    Graph(GraphEndpoint),
}

/// An IMAP server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// The password, or with `auth = "xoauth2"` and no `oauth2` table the
    /// access token: the name of a `[credentials.NAME]` table (of the local
    /// file, or of each worker's settings in distributed mode).
    pub credential: Option<String>,
    /// The password (of the admin, or shared by all mailboxes when the CSV has
    /// no per-user passwords): name of an environment variable…
    pub password_env: Option<String>,
    /// …or a file holding it.
    pub password_file: Option<PathBuf>,
    /// XOAUTH2: a file holding the access token, re-read at every connect.
    pub oauth2_token_file: Option<PathBuf>,
    /// XOAUTH2: a command printing the access token, run at every connect.
    pub oauth2_token_command: Option<String>,
    /// XOAUTH2: app-only tokens from the identity platform (client
    /// credentials grant), fetched, cached and refreshed by mailwave.
    pub oauth2: Option<OAuth2ClientCredentials>,
    /// Seconds any single network operation may take.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_timeout_secs() -> u64 {
    120
}

/// Microsoft's global identity platform, the default authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The scope of app-only tokens for Exchange Online's IMAP side, the
/// default scope.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

/// The OAuth 2 client credentials grant of Microsoft's identity platform:
/// an app registration of a tenant gets app-only tokens with a client
/// secret or a certificate assertion. Secrets are named, never literal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OAuth2ClientCredentials {
    /// The tenant: its id (a GUID) or one of its domain names.
    pub tenant: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The client secret or certificate: the name of a `[credentials.NAME]`
    /// table (of the local file, or of each worker's settings).
    pub credential: Option<String>,
    /// The client secret: name of an environment variable holding it…
    pub client_secret_env: Option<String>,
    /// …or a file holding it.
    pub client_secret_file: Option<PathBuf>,
    /// A certificate assertion instead of a secret: the certificate
    /// registered on the app (PEM)…
    pub certificate_file: Option<PathBuf>,
    /// …and its RSA private key (PEM, PKCS#8 or PKCS#1).
    pub private_key_file: Option<PathBuf>,
    /// How a certificate assertion is signed: `PS256` (the identity
    /// platform's current form) or `RS256` (older registrations).
    #[serde(default)]
    pub assertion_algorithm: AssertionAlgorithm,
    /// The identity platform's host, e.g. `https://login.microsoftonline.us`
    /// for a national cloud; `http://` only on loopback (test emulators).
    #[serde(default = "default_authority")]
    pub authority: String,
    /// What the tokens are for.
    #[serde(default = "default_oauth2_scope")]
    pub scope: String,
}

fn default_authority() -> String {
    DEFAULT_AUTHORITY.to_owned()
}

fn default_oauth2_scope() -> String {
    OUTLOOK_SCOPE.to_owned()
}

/// The signature of a certificate client assertion, with the header that
/// names the certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, the certificate named by its SHA-256
    /// thumbprint (`x5t#S256`), with an `iat` claim.
    #[default]
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, the certificate named by its SHA-1
    /// thumbprint (`x5t`).
    #[serde(rename = "RS256")]
    Rs256,
}

/// How an app proves who it is at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredential<'a> {
    /// A client secret, read from where the configuration names it.
    Secret(String),
    /// A client assertion signed with the key of a registered certificate.
    Certificate {
        certificate_file: &'a Path,
        private_key_file: &'a Path,
        algorithm: AssertionAlgorithm,
    },
}

impl OAuth2ClientCredentials {
    /// The tenant's v2.0 token endpoint; also the audience of a client
    /// assertion.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority.trim_end_matches('/'),
            self.tenant
        )
    }

    /// The credential to present, with the secret read now (from the
    /// environment or its file).
    pub fn credential(&self) -> Result<ClientCredential<'_>, ConfigError> {
        if let (Some(certificate_file), Some(private_key_file)) =
            (&self.certificate_file, &self.private_key_file)
        {
            return Ok(ClientCredential::Certificate {
                certificate_file,
                private_key_file,
                algorithm: self.assertion_algorithm,
            });
        }
        if let Some(path) = &self.client_secret_file {
            return read_secret_file(path).map(ClientCredential::Secret);
        }
        let Some(var) = &self.client_secret_env else {
            return Err(ConfigError::Invalid(format!(
                "oauth2 of client {} needs client_secret_env, client_secret_file or certificate_file with private_key_file",
                self.client_id
            )));
        };
        std::env::var(var)
            .map(ClientCredential::Secret)
            .map_err(|_| ConfigError::Secret {
                what: format!("client_secret_env {var}"),
                reason: "environment variable is not set".into(),
            })
    }

    /// Checks the table `[{side}.oauth2]`.
    fn validate(&self, side: &str) -> Result<(), ConfigError> {
        let invalid =
            |reason: String| Err(ConfigError::Invalid(format!("{side}.oauth2: {reason}")));
        let is_name = |value: &str| {
            !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        };
        if !is_name(&self.tenant) {
            return invalid(format!(
                "tenant {:?} must be a tenant id or domain name",
                self.tenant
            ));
        }
        if self.client_id.trim().is_empty() {
            return invalid("client_id must not be empty".into());
        }
        if self.scope.trim().is_empty() {
            return invalid("scope must not be empty".into());
        }
        if !self.authority.starts_with("https://") && !is_loopback_http(&self.authority) {
            return invalid(format!(
                "authority {:?} must be an https:// URL (http:// only on loopback)",
                self.authority
            ));
        }
        if self.certificate_file.is_some() != self.private_key_file.is_some() {
            return invalid("certificate_file and private_key_file go together".into());
        }
        let credentials = [
            self.credential.is_some(),
            self.client_secret_env.is_some(),
            self.client_secret_file.is_some(),
            self.certificate_file.is_some(),
        ];
        if credentials.iter().filter(|given| **given).count() != 1 {
            return invalid(
                "give exactly one of credential, client_secret_env, client_secret_file, or certificate_file with private_key_file".into(),
            );
        }
        Ok(())
    }

    /// Keys naming files or environment variables, given.
    fn local_only_keys(&self) -> Vec<&'static str> {
        [
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("certificate_file", self.certificate_file.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect()
    }

    /// Replaces `credential = "NAME"` by the secret's location.
    fn bind_credential(
        &mut self,
        side: &str,
        from: CredentialSource<'_>,
        hosts: &[String],
    ) -> Result<(), ConfigError> {
        let Some(name) = self.credential.take() else {
            return Ok(());
        };
        if !self.local_only_keys().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{side}.oauth2: credential and {} exclude each other",
                self.local_only_keys().join(", ")
            )));
        }
        let named = from.get(side, &name, CredentialUse::ClientSecret, hosts)?;
        self.client_secret_env = named.client_secret_env.clone();
        self.client_secret_file = named.client_secret_file.clone();
        self.certificate_file = named.certificate_file.clone();
        self.private_key_file = named.private_key_file.clone();
        Ok(())
    }
}

/// Whether `url` is a plain-HTTP URL of this machine (`localhost`,
/// `127.x.x.x`, `[::1]`), where no secret crosses a network.
fn is_loopback_http(url: &str) -> bool {
    url.starts_with("http://") && url_host(url).is_some_and(is_loopback_host)
}

/// The host of an `http://` or `https://` URL, without brackets or port;
/// `None` for other schemes and for URLs with user information.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    Some(host)
}

/// Whether `host` (a name or an address, IPv6 without brackets) is this
/// machine: `localhost`, `127.x.x.x` or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MaildirEndpoint {
    /// Path of each mailbox's Maildir; `{mailbox}` is replaced by the
    /// mailbox's name from the CSV (made safe for use as one path component).
    pub path: String,
    /// Folder directory names in raw UTF-8 (Dovecot's `UTF-8` layout
    /// option) instead of Dovecot's default modified UTF-7.
    #[serde(default)]
    pub utf8_names: bool,
}

/// Exchange Online through Microsoft Graph, with app-only tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct GraphEndpoint {
    /// Graph's root: `https://graph.microsoft.com`, or a national cloud's.
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// The app registration and how it proves itself. Its `scope` defaults
    /// to Graph's (`{graph_url}/.default`) here.
    pub oauth2: OAuth2ClientCredentials,
    /// Requests in flight at most, in the `concurrency_scope` (Outlook
    /// allows 4); the scheduler adapts below it to the server's answers.
    #[serde(default = "default_graph_concurrency")]
    pub max_concurrent_requests: usize,
    /// What `max_concurrent_requests` counts: the requests of one mailbox,
    /// or of the app across all its mailboxes (the default, as the current
    /// throttling-limits page reads).
    #[serde(default)]
    pub concurrency_scope: ConcurrencyScope,
    /// The server's request budget per app and mailbox: this many
    /// requests…
    #[serde(default = "default_requests_per_window")]
    pub requests_per_window: u64,
    /// …per this many seconds (Exchange Online: 10,000 per 10 minutes).
    #[serde(default = "default_request_window_secs")]
    pub request_window_secs: u64,
    /// An optional steady limit of requests per second for the endpoint.
    pub requests_per_second: Option<f64>,
    /// The server's upload budget per mailbox: this many bytes…
    #[serde(default = "default_upload_bytes_per_window")]
    pub upload_bytes_per_window: u64,
    /// …per this many seconds (Exchange Online: 150 MB per 5 minutes).
    #[serde(default = "default_upload_window_secs")]
    pub upload_window_secs: u64,
    /// Well-known folders (`wellKnownName`) of a source not copied, nor
    /// anything below them: by default Outlook's and Exchange's system
    /// folders. Search folders are never copied.
    #[serde(default = "default_skip_folders")]
    pub skip_folders: Vec<String>,
}

/// Exchange's system folders: the Outbox, Outlook's Sync Issues (and its
/// Conflicts, Local Failures and Server Failures), Skype's Conversation
/// History, the Recoverable Items folders, and the hidden contact folders
/// Exchange keeps for itself.
pub const DEFAULT_SKIP_FOLDERS: [&str; 16] = [
    "outbox",
    "syncissues",
    "conflicts",
    "localfailures",
    "serverfailures",
    "conversationhistory",
    "recoverableitemsroot",
    "recoverableitemsdeletions",
    "recoverableitemsversions",
    "recoverableitemspurges",
    "recoverableitemsdiscoveryholds",
    "recipientcache",
    "quickcontacts",
    "imcontactlist",
    "personmetadata",
    "adminauditlogs",
];

fn default_skip_folders() -> Vec<String> {
    DEFAULT_SKIP_FOLDERS.map(str::to_owned).to_vec()
}

/// Graph's national clouds (US Government L4 and L5, China operated by
/// 21Vianet): the mailbox import/export API is not deployed in them.
const NATIONAL_CLOUD_HOSTS: [&str; 3] = [
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
];

/// The scope of Outlook's limit of concurrent requests: the revisions of
/// Microsoft's throttling-limits page disagree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyScope {
    /// Per app and mailbox: each mailbox may have that many in flight.
    Mailbox,
    /// Per app, across its mailboxes ("regardless of whether the requests
    /// all access the same mailbox"), as the current page says.
    #[default]
    App,
}

fn default_requests_per_window() -> u64 {
    10_000
}

fn default_request_window_secs() -> u64 {
    600
}

fn default_upload_bytes_per_window() -> u64 {
    150 * 1024 * 1024
}

fn default_upload_window_secs() -> u64 {
    300
}

fn default_graph_url() -> String {
    "https://graph.microsoft.com".to_owned()
}

fn default_graph_concurrency() -> usize {
    4
}

impl GraphEndpoint {
    /// The versioned API root, e.g. `https://graph.microsoft.com/v1.0`.
    pub fn api_url(&self) -> String {
        format!("{}/v1.0", self.graph_url.trim_end_matches('/'))
    }

    /// The credentials, asking for Graph's scope unless another was set.
    pub fn credentials(&self) -> OAuth2ClientCredentials {
        let mut credentials = self.oauth2.clone();
        if credentials.scope == OUTLOOK_SCOPE {
            credentials.scope = format!("{}/.default", self.graph_url.trim_end_matches('/'));
        }
        credentials
    }

    /// Whether `graph_url` is a national cloud's.
    pub fn is_national_cloud(&self) -> bool {
        url_host(&self.graph_url).is_some_and(|host| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            NATIONAL_CLOUD_HOSTS.contains(&host.as_str())
        })
    }

    fn validate(&self, side: &str) -> Result<(), ConfigError> {
        if !self.graph_url.starts_with("https://") && !is_loopback_http(&self.graph_url) {
            return Err(ConfigError::Invalid(format!(
                "{side}: graph_url {:?} must be an https:// URL (http:// only on loopback)",
                self.graph_url
            )));
        }
        if !(1..=64).contains(&self.max_concurrent_requests) {
            return Err(ConfigError::Invalid(format!(
                "{side}: max_concurrent_requests must be between 1 and 64"
            )));
        }
        if self
            .requests_per_second
            .is_some_and(|r| !r.is_finite() || r <= 0.0)
        {
            return Err(ConfigError::Invalid(format!(
                "{side}: requests_per_second must be positive"
            )));
        }
        if self.requests_per_window == 0 || self.request_window_secs == 0 {
            return Err(ConfigError::Invalid(format!(
                "{side}: requests_per_window and request_window_secs must be positive"
            )));
        }
        if self.upload_bytes_per_window == 0 || self.upload_window_secs == 0 {
            return Err(ConfigError::Invalid(format!(
                "{side}: upload_bytes_per_window and upload_window_secs must be positive"
            )));
        }
        self.oauth2.validate(side)
    }
}

/// How hard to push.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
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
    /// The longest wait a server may ask for (`Retry-After`, IMAP's
    /// `Suggested Backoff Time`): a longer hint fails the mailbox at once,
    /// quoting the server, instead of waiting.
    pub max_retry_after_secs: u64,
    /// The most time one pass of a mailbox may spend paused by a server's
    /// throttles, all pauses together (unset: no bound); past it the
    /// mailbox fails, quoting the server.
    pub max_pass_wait_secs: Option<u64>,
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
            max_retry_after_secs: 15 * 60,
            max_pass_wait_secs: None,
        }
    }
}

/// Which source folders to copy. Patterns match the folder's path with `/`
/// between levels; `*` matches any run of characters (also `/`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
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

    /// Parses a local configuration given as TOML text, without
    /// environment overrides: the text is the whole configuration.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::parse_toml_str(text)?;
        config.bind_own_credentials("this configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a wave's configuration sent to the coordinator: it may not
    /// name a command, a file or an environment variable, nor define
    /// credentials; its endpoints refer to credentials by name only, and
    /// each worker resolves them from its own settings.
    pub fn from_remote_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse_toml_str(text)?;
        config.refuse_local_only_keys()?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses a configuration that names a command, a file or an
    /// environment variable, or defines credentials: what only the
    /// operator's own local file may do.
    pub fn refuse_local_only_keys(&self) -> Result<(), ConfigError> {
        let mut keys: Vec<String> = Vec::new();
        for (side, endpoint) in [("source", &self.source), ("target", &self.target)] {
            keys.extend(
                endpoint
                    .local_only_keys()
                    .into_iter()
                    .map(|key| format!("{side}.{key}")),
            );
        }
        if !self.credentials.is_empty() {
            keys.push("credentials".into());
        }
        if keys.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "{} not accepted in a wave for the coordinator: it may not name commands, files or \
             environment variables; refer to credentials by name (credential = \"NAME\") and \
             define [credentials.NAME] in each worker's settings",
            keys.join(", ")
        )))
    }

    /// Replaces every `credential = "NAME"` of the endpoints by the
    /// location of the secret it names in `from`.
    pub fn bind_credentials(&mut self, from: CredentialSource<'_>) -> Result<(), ConfigError> {
        self.source.bind_credentials("source", from)?;
        self.target.bind_credentials("target", from)
    }

    /// Binds the endpoints' credentials to this configuration's own
    /// `[credentials.NAME]` tables (a local file), then drops the tables.
    fn bind_own_credentials(&mut self, defined_in: &str) -> Result<(), ConfigError> {
        let credentials = std::mem::take(&mut self.credentials);
        self.bind_credentials(CredentialSource {
            credentials: &credentials,
            require_hosts: false,
            defined_in,
        })
    }

    fn parse_toml_str(text: &str) -> Result<Config, ConfigError> {
        let layers = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|source| ConfigError::Load {
                path: PathBuf::from("<text>"),
                source,
            })?;
        Config::strictly_from(layers, "<text>")
    }

    /// The operator's configuration, refusing keys it does not know (a typo
    /// must not silently fall back to a default). The types themselves
    /// ignore unknown keys, so that a wave's stored configuration survives a
    /// rolling upgrade (`wave_config`); this check compares the keys given
    /// with the keys of what was understood. An empty table or list sets
    /// nothing and is let through.
    fn strictly_from(layers: config::Config, origin: &str) -> Result<Config, ConfigError> {
        let load_error = |source| ConfigError::Load {
            path: PathBuf::from(origin),
            source,
        };
        let given: serde_json::Value = layers.clone().try_deserialize().map_err(load_error)?;
        let config: Config = layers.try_deserialize().map_err(load_error)?;
        let understood = serde_json::to_value(&config)
            .map_err(|e| ConfigError::Invalid(format!("{origin}: {e}")))?;
        let mut unknown = Vec::new();
        unknown_keys(&given, &understood, "", &mut unknown);
        if unknown.is_empty() {
            return Ok(config);
        }
        Err(ConfigError::Invalid(format!(
            "{origin}: unknown key{} {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", ")
        )))
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
        let layers = config::Config::builder()
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
            .map_err(load_error)?;
        let mut config = Config::strictly_from(layers, &path.display().to_string())?;
        config.bind_own_credentials(&format!("{}", path.display()))?;
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
        // A Graph source goes anywhere (export data to a Graph target, MIME
        // elsewhere); a Graph target imports only what a Graph source exports.
        if matches!(self.target, EndpointConfig::Graph(_))
            && !matches!(self.source, EndpointConfig::Graph(_))
        {
            return Err(ConfigError::Invalid(
                "target: a Graph target takes items from a Graph source (tenant to tenant); \
                 for mail from other systems use an IMAP target with auth = \"xoauth2\""
                    .into(),
            ));
        }
        for (side, endpoint) in [("source", &self.source), ("target", &self.target)] {
            if let EndpointConfig::Graph(graph) = endpoint {
                graph.validate(side)?;
            }
            // Tenant to tenant is the import/export API: global service only.
            if let (EndpointConfig::Graph(graph), EndpointConfig::Graph(_)) =
                (endpoint, &self.target)
                && graph.is_national_cloud()
            {
                return Err(ConfigError::Invalid(format!(
                    "{side}.graph_url {:?} is a national cloud, where Graph's mailbox \
                     import/export API (exportItems, importItem) does not exist: a Graph \
                     target and its Graph source must be in the global service \
                     (https://graph.microsoft.com); from a national cloud, copy to an IMAP \
                     or Maildir target",
                    graph.graph_url
                )));
            }
            let EndpointConfig::Imap(imap) = endpoint else {
                continue;
            };
            let passwords = [
                imap.credential.is_some() && imap.auth != AuthMechanism::Xoauth2,
                imap.password_env.is_some(),
                imap.password_file.is_some(),
            ];
            if passwords.iter().filter(|given| **given).count() > 1 {
                return Err(ConfigError::Invalid(format!(
                    "{side}: give one of credential, password_env and password_file"
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
            imap.validate_token_source(side)?;
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// The hosts this endpoint sends credentials to: the IMAP server or
    /// Graph, and the identity platform of its `oauth2` table.
    pub fn credential_hosts(&self) -> Vec<String> {
        let authority = |oauth2: &OAuth2ClientCredentials| {
            url_host(&oauth2.authority).unwrap_or_default().to_owned()
        };
        match self {
            EndpointConfig::Imap(imap) => std::iter::once(imap.host.clone())
                .chain(imap.oauth2.as_ref().map(authority))
                .collect(),
            EndpointConfig::Graph(graph) => vec![
                url_host(&graph.graph_url).unwrap_or_default().to_owned(),
                authority(&graph.oauth2),
            ],
            EndpointConfig::Maildir(_) => Vec::new(),
        }
    }

    /// The keys of this endpoint that name a command, a file or an
    /// environment variable, e.g. `oauth2.client_secret_file`.
    fn local_only_keys(&self) -> Vec<String> {
        let oauth2_keys = |oauth2: &OAuth2ClientCredentials| {
            oauth2
                .local_only_keys()
                .into_iter()
                .map(|key| format!("oauth2.{key}"))
                .collect::<Vec<_>>()
        };
        match self {
            EndpointConfig::Imap(imap) => [
                ("password_env", imap.password_env.is_some()),
                ("password_file", imap.password_file.is_some()),
                ("oauth2_token_file", imap.oauth2_token_file.is_some()),
                ("oauth2_token_command", imap.oauth2_token_command.is_some()),
                ("ca_file", imap.ca_file.is_some()),
            ]
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(key, _)| key.to_owned())
            .chain(imap.oauth2.iter().flat_map(oauth2_keys))
            .collect(),
            EndpointConfig::Graph(graph) => oauth2_keys(&graph.oauth2),
            // Its path is checked by each worker against its roots.
            EndpointConfig::Maildir(_) => Vec::new(),
        }
    }

    /// Replaces every `credential = "NAME"` of this endpoint by the
    /// secret's location from `from`.
    fn bind_credentials(
        &mut self,
        side: &str,
        from: CredentialSource<'_>,
    ) -> Result<(), ConfigError> {
        let hosts = self.credential_hosts();
        match self {
            EndpointConfig::Imap(imap) => {
                imap.bind_credential(side, from, &hosts)?;
                match &mut imap.oauth2 {
                    Some(oauth2) => oauth2.bind_credential(side, from, &hosts),
                    None => Ok(()),
                }
            }
            EndpointConfig::Graph(graph) => graph.oauth2.bind_credential(side, from, &hosts),
            EndpointConfig::Maildir(_) => Ok(()),
        }
    }

    /// The server (or Maildir tree) this endpoint reaches, e.g.
    /// `imap://mail.example.com:993`: waves with the same source and target
    /// servers share one budget of mailboxes in flight.
    pub fn server(&self) -> String {
        match self {
            EndpointConfig::Imap(imap) => {
                format!("imap://{}:{}", imap.host.to_ascii_lowercase(), imap.port())
            }
            EndpointConfig::Maildir(maildir) => format!("maildir:{}", maildir.path),
            EndpointConfig::Graph(graph) => {
                format!("graph:{}/{}", graph.graph_url, graph.oauth2.tenant)
            }
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

    /// Replaces `credential = "NAME"` by the location of the password, or
    /// with `auth = "xoauth2"` of the access token.
    fn bind_credential(
        &mut self,
        side: &str,
        from: CredentialSource<'_>,
        hosts: &[String],
    ) -> Result<(), ConfigError> {
        let Some(name) = self.credential.take() else {
            return Ok(());
        };
        let inline: Vec<String> = EndpointConfig::Imap(self.clone())
            .local_only_keys()
            .into_iter()
            .filter(|key| key != "ca_file" && !key.starts_with("oauth2."))
            .collect();
        if !inline.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{side}: credential and {} exclude each other",
                inline.join(", ")
            )));
        }
        if self.auth == AuthMechanism::Xoauth2 {
            if self.oauth2.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "{side}: with a [{side}.oauth2] table, give its credential there"
                )));
            }
            let named = from.get(side, &name, CredentialUse::AccessToken, hosts)?;
            self.oauth2_token_file = named.token_file.clone();
            self.oauth2_token_command = named.token_command.clone();
        } else {
            let named = from.get(side, &name, CredentialUse::Password, hosts)?;
            self.password_env = named.password_env.clone();
            self.password_file = named.password_file.clone();
        }
        Ok(())
    }

    /// With `auth = "xoauth2"`, exactly one of `credential`,
    /// `oauth2_token_file`, `oauth2_token_command` and `[{side}.oauth2]`;
    /// none of the last three otherwise.
    fn validate_token_source(&self, side: &str) -> Result<(), ConfigError> {
        let xoauth2 = self.auth == AuthMechanism::Xoauth2;
        let given: Vec<&str> = [
            ("credential", xoauth2 && self.credential.is_some()),
            ("oauth2_token_file", self.oauth2_token_file.is_some()),
            ("oauth2_token_command", self.oauth2_token_command.is_some()),
            ("oauth2", self.oauth2.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect();
        if self.auth != AuthMechanism::Xoauth2 {
            if given.is_empty() {
                return Ok(());
            }
            return Err(ConfigError::Invalid(format!(
                "{side}: {} given, but auth is not \"xoauth2\"",
                given.join(", ")
            )));
        }
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(" and ")
            };
            return Err(ConfigError::Invalid(format!(
                "{side}: auth = \"xoauth2\" needs exactly one token source: credential, oauth2_token_file, oauth2_token_command or a [{side}.oauth2] table (found {found})"
            )));
        }
        match &self.oauth2 {
            Some(oauth2) => oauth2.validate(side),
            None => Ok(()),
        }
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

/// Appends to `unknown` the dotted paths of the keys of `given` that
/// `understood` (the same configuration, parsed and serialized again) lacks.
fn unknown_keys(
    given: &serde_json::Value,
    understood: &serde_json::Value,
    prefix: &str,
    unknown: &mut Vec<String>,
) {
    let (serde_json::Value::Object(given), serde_json::Value::Object(understood)) =
        (given, understood)
    else {
        return;
    };
    for (key, value) in given {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match understood.get(key) {
            Some(known) => unknown_keys(value, known, &path, unknown),
            None if is_empty(value) => {}
            None => unknown.push(path),
        }
    }
}

fn is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => map.is_empty(),
        serde_json::Value::Array(list) => list.is_empty(),
        _ => false,
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

/// Reads the `[credentials.NAME]` tables of a settings file (none when it
/// has none), with the overrides `MAILWAVE__CREDENTIALS__NAME__KEY`.
pub fn load_credentials(
    path: &Path,
    env: Option<std::collections::HashMap<String, String>>,
) -> Result<BTreeMap<String, NamedCredential>, ConfigError> {
    match load_section(path, "credentials", env) {
        Err(ConfigError::Load {
            source: config::ConfigError::NotFound(_),
            ..
        }) => Ok(BTreeMap::new()),
        loaded => loaded,
    }
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
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn graph_endpoints_have_graphs_scope_and_a_graph_target_needs_a_graph_source() {
        let graph = |tenant: &str| {
            format!(
                "kind = \"graph\"\n[oauth2]\ntenant = \"{tenant}\"\nclient_id = \"app\"\n\
                 client_secret_env = \"SECRET\"\n"
            )
        };
        let parse = |source: &str, target: &str| {
            // Sub-tables of `[source]` and `[target]`.
            let source = source.replace("[oauth2]", "[source.oauth2]");
            let target = target.replace("[oauth2]", "[target.oauth2]");
            Config::from_toml_str(&format!("[source]\n{source}[target]\n{target}"))
        };
        let config = parse(&graph("a.example"), &graph("b.example")).unwrap();
        let EndpointConfig::Graph(target) = &config.target else {
            panic!("a Graph target: {config:?}");
        };
        assert_eq!(target.api_url(), "https://graph.microsoft.com/v1.0");
        assert_eq!(
            target.credentials().scope,
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(target.max_concurrent_requests, 4);
        assert_eq!(
            config.target.server(),
            "graph:https://graph.microsoft.com/b.example"
        );

        let maildir = "kind = \"maildir\"\npath = \"/m/{mailbox}\"\n";
        let error = parse(maildir, &graph("b.example")).unwrap_err();
        assert!(error.to_string().contains("xoauth2"), "{error}");
        // Exchange to a backup: the Graph source reads MIME.
        let backup = parse(&graph("a.example"), maildir).unwrap();
        assert!(matches!(backup.source, EndpointConfig::Graph(_)));
        assert!(matches!(backup.target, EndpointConfig::Maildir(_)));
    }

    /// The import/export API is in the global service only: a national
    /// cloud's Graph on either side of a tenant-to-tenant move is refused,
    /// naming the key; reading MIME from one (to a backup) is not.
    #[test]
    fn a_national_cloud_is_refused_for_import_and_export() {
        let graph = |side: &str, url: &str| {
            format!(
                "[{side}]\nkind = \"graph\"\ngraph_url = \"{url}\"\n[{side}.oauth2]\n\
                 tenant = \"t.example\"\nclient_id = \"app\"\nclient_secret_env = \"SECRET\"\n"
            )
        };
        let global = "https://graph.microsoft.com";
        for cloud in [
            "https://graph.microsoft.us",
            "https://dod-graph.microsoft.us/",
            "https://MicrosoftGraph.ChinaCloudApi.cn",
        ] {
            for (side, source, target) in [("source", cloud, global), ("target", global, cloud)] {
                let text = format!("{}{}", graph("source", source), graph("target", target));
                let error = Config::from_toml_str(&text).unwrap_err().to_string();
                assert!(
                    error.contains(&format!("{side}.graph_url"))
                        && error.contains("national cloud"),
                    "{error}"
                );
            }
            let backup = format!(
                "{}[target]\nkind = \"maildir\"\npath = \"/m/{{mailbox}}\"\n",
                graph("source", cloud)
            );
            Config::from_toml_str(&backup).unwrap();
        }
        let text = format!("{}{}", graph("source", global), graph("target", global));
        let config = Config::from_toml_str(&text).unwrap();
        let EndpointConfig::Graph(source) = &config.source else {
            panic!("a Graph source: {config:?}");
        };
        assert_eq!(source.skip_folders, DEFAULT_SKIP_FOLDERS);
    }

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

    const MAILDIR_SOURCE: &str = "[source]\nkind = \"maildir\"\npath = \"a\"\n";

    fn xoauth2_target(table: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!(
            "{MAILDIR_SOURCE}[target]\nkind = \"imap\"\nhost = \"outlook.office365.com\"\nauth = \"xoauth2\"\n{table}"
        ))
    }

    #[test]
    fn client_credentials_take_defaults_and_name_their_token_endpoint() {
        let config = xoauth2_target(
            "[target.oauth2]\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"app-1\"\nclient_secret_file = \"/run/secrets/exo\"\n",
        )
        .unwrap();
        let EndpointConfig::Imap(target) = &config.target else {
            panic!("target is imap")
        };
        let oauth2 = target.oauth2.as_ref().unwrap();
        assert_eq!(oauth2.authority, DEFAULT_AUTHORITY);
        assert_eq!(oauth2.scope, OUTLOOK_SCOPE);
        assert_eq!(
            oauth2.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );

        let national = xoauth2_target(
            "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\ncertificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"\nauthority = \"https://login.microsoftonline.us/\"\nscope = \"https://outlook.office365.us/.default\"\n",
        )
        .unwrap();
        let EndpointConfig::Imap(target) = &national.target else {
            panic!("target is imap")
        };
        let oauth2 = target.oauth2.as_ref().unwrap();
        assert_eq!(
            oauth2.token_url(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            oauth2.credential().unwrap(),
            ClientCredential::Certificate {
                certificate_file: Path::new("c.pem"),
                private_key_file: Path::new("k.pem"),
                algorithm: AssertionAlgorithm::Ps256,
            }
        );

        let older = xoauth2_target(
            "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\ncertificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"\nassertion_algorithm = \"RS256\"\n",
        )
        .unwrap();
        let EndpointConfig::Imap(target) = &older.target else {
            panic!("target is imap")
        };
        assert_eq!(
            target.oauth2.as_ref().unwrap().assertion_algorithm,
            AssertionAlgorithm::Rs256
        );
        let unknown = xoauth2_target(
            "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\ncertificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"\nassertion_algorithm = \"HS256\"\n",
        );
        assert!(unknown.is_err(), "{unknown:?}");
    }

    #[test]
    fn xoauth2_needs_exactly_one_token_source() {
        let table =
            "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\n";
        let cases = [
            ("", "found none"),
            (
                &format!("oauth2_token_file = \"/t\"\n{table}") as &str,
                "found oauth2_token_file and oauth2",
            ),
            (
                "oauth2_token_file = \"/t\"\noauth2_token_command = \"x\"\n",
                "found oauth2_token_file and oauth2_token_command",
            ),
        ];
        for (keys, expected) in cases {
            let error = xoauth2_target(keys).unwrap_err().to_string();
            assert!(error.contains("target: auth = \"xoauth2\""), "{error}");
            assert!(error.contains(expected), "{error}");
        }
        let error = Config::from_toml_str(&format!(
            "{MAILDIR_SOURCE}[target]\nkind = \"imap\"\nhost = \"h\"\n{table}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("target: oauth2 given, but auth is not \"xoauth2\""),
            "{error}"
        );
    }

    #[test]
    fn client_credentials_are_checked() {
        let table = |body: &str| {
            xoauth2_target(&format!(
                "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\n{body}"
            ))
            .map(drop)
            .map_err(|e| e.to_string())
        };
        assert!(table("client_secret_env = \"S\"\n").is_ok());
        assert!(
            table("client_secret_env = \"S\"\nauthority = \"http://127.0.0.1:8080\"\n").is_ok()
        );
        assert!(table("client_secret_env = \"S\"\nauthority = \"http://[::1]:80/\"\n").is_ok());
        let refused = [
            ("", "exactly one of credential, client_secret_env"),
            (
                "client_secret_env = \"S\"\nclient_secret_file = \"f\"\n",
                "exactly one of credential, client_secret_env",
            ),
            ("certificate_file = \"c.pem\"\n", "go together"),
            (
                "client_secret_env = \"S\"\nauthority = \"http://login.example\"\n",
                "https://",
            ),
            (
                "client_secret_env = \"S\"\nauthority = \"http://127.0.0.1@evil.example\"\n",
                "https://",
            ),
            ("client_secret = \"literal\"\n", "client_secret"),
        ];
        for (body, expected) in refused {
            let error = table(body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
        let error = xoauth2_target(
            "[target.oauth2]\ntenant = \"a/b\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("target.oauth2: tenant"), "{error}");
    }

    const IMAP_SOURCE: &str =
        "[source]\nkind = \"imap\"\nhost = \"old.example.org\"\nadmin_user = \"admin\"\n";
    const MAILDIR_TARGET: &str = "[target]\nkind = \"maildir\"\npath = \"/srv/mail/{mailbox}\"\n";

    #[test]
    fn a_remote_wave_names_no_command_file_or_environment_variable() {
        let oauth2 = "[target.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\n";
        let xoauth2 =
            "[target]\nkind = \"imap\"\nhost = \"outlook.office365.com\"\nauth = \"xoauth2\"\n";
        let graph = "[target]\nkind = \"graph\"\n";
        let graph_source = "[source]\nkind = \"graph\"\n[source.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\ncredential = \"app\"\n";
        let refused: Vec<(String, &str)> = vec![
            (
                format!("{IMAP_SOURCE}password_env = \"PW\"\n{MAILDIR_TARGET}"),
                "source.password_env",
            ),
            (
                format!("{IMAP_SOURCE}password_file = \"/etc/shadow\"\n{MAILDIR_TARGET}"),
                "source.password_file",
            ),
            (
                format!("{IMAP_SOURCE}credential = \"c\"\nca_file = \"/ca.pem\"\n{MAILDIR_TARGET}"),
                "source.ca_file",
            ),
            (
                format!("{MAILDIR_SOURCE}{xoauth2}oauth2_token_command = \"id > /tmp/owned\"\n"),
                "target.oauth2_token_command",
            ),
            (
                format!("{MAILDIR_SOURCE}{xoauth2}oauth2_token_file = \"/root/token\"\n"),
                "target.oauth2_token_file",
            ),
            (
                format!("{MAILDIR_SOURCE}{xoauth2}{oauth2}client_secret_env = \"S\"\n"),
                "target.oauth2.client_secret_env",
            ),
            (
                format!("{MAILDIR_SOURCE}{xoauth2}{oauth2}client_secret_file = \"/s\"\n"),
                "target.oauth2.client_secret_file",
            ),
            (
                format!(
                    "{MAILDIR_SOURCE}{xoauth2}{oauth2}certificate_file = \"/c\"\nprivate_key_file = \"/k\"\n"
                ),
                "target.oauth2.certificate_file, target.oauth2.private_key_file",
            ),
            (
                format!("{graph_source}{graph}{oauth2}client_secret_file = \"/s\"\n"),
                "target.oauth2.client_secret_file",
            ),
            (
                format!(
                    "{IMAP_SOURCE}credential = \"c\"\n{MAILDIR_TARGET}[credentials.c]\npassword_env = \"PW\"\n"
                ),
                "credentials",
            ),
        ];
        for (text, key) in refused {
            let error = Config::from_remote_toml_str(&text).unwrap_err().to_string();
            assert!(
                error.contains(&format!("{key} not accepted")),
                "{key}: {error}"
            );
            assert!(error.contains("credential = \"NAME\""), "{error}");
        }
        let named = Config::from_remote_toml_str(&format!(
            "{IMAP_SOURCE}credential = \"src-admin\"\n{MAILDIR_SOURCE_FREE}",
            MAILDIR_SOURCE_FREE = MAILDIR_TARGET
        ))
        .unwrap();
        let EndpointConfig::Imap(source) = &named.source else {
            panic!("source is imap")
        };
        assert_eq!(source.credential.as_deref(), Some("src-admin"));
        assert!(source.password_env.is_none() && source.password_file.is_none());
    }

    #[test]
    fn a_local_file_binds_its_named_credentials() {
        let config = Config::from_toml_str(&format!(
            "{IMAP_SOURCE}credential = \"src-admin\"\n{MAILDIR_TARGET}\
             [credentials.src-admin]\npassword_env = \"SRC_PW\"\n"
        ))
        .unwrap();
        let EndpointConfig::Imap(source) = &config.source else {
            panic!("source is imap")
        };
        assert_eq!(source.password_env.as_deref(), Some("SRC_PW"));
        assert!(source.credential.is_none());
        assert!(config.credentials.is_empty());

        let error = Config::from_toml_str(&format!(
            "{IMAP_SOURCE}credential = \"nope\"\n{MAILDIR_TARGET}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("credential \"nope\" is not defined"),
            "{error}"
        );
        let error = Config::from_toml_str(&format!(
            "{IMAP_SOURCE}credential = \"t\"\n{MAILDIR_TARGET}[credentials.t]\ntoken_command = \"x\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("password_env or password_file"), "{error}");
        let error = Config::from_toml_str(&format!(
            "{IMAP_SOURCE}credential = \"c\"\npassword_env = \"X\"\n{MAILDIR_TARGET}[credentials.c]\npassword_env = \"Y\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("exclude each other"), "{error}");
    }

    #[test]
    fn a_credential_goes_only_to_its_hosts_when_they_are_required() {
        let named: BTreeMap<String, NamedCredential> = [(
            "src-admin".to_owned(),
            NamedCredential {
                hosts: vec!["old.example.org".into()],
                password_file: Some("/run/secrets/src".into()),
                ..NamedCredential::default()
            },
        )]
        .into_iter()
        .collect();
        let from = CredentialSource {
            credentials: &named,
            require_hosts: true,
            defined_in: "the worker's settings",
        };
        let wave = |host: &str| {
            Config::from_remote_toml_str(&format!(
                "[source]\nkind = \"imap\"\nhost = \"{host}\"\nadmin_user = \"a\"\ncredential = \"src-admin\"\n{MAILDIR_TARGET}"
            ))
            .unwrap()
        };
        let mut config = wave("OLD.example.org");
        config.bind_credentials(from).unwrap();
        let EndpointConfig::Imap(source) = &config.source else {
            panic!("source is imap")
        };
        assert_eq!(
            source.password_file.as_deref(),
            Some(Path::new("/run/secrets/src"))
        );
        let error = wave("evil.example")
            .bind_credentials(from)
            .unwrap_err()
            .to_string();
        assert!(error.contains("may not be sent to evil.example"), "{error}");
        let unrestricted: BTreeMap<String, NamedCredential> = [(
            "src-admin".to_owned(),
            NamedCredential {
                password_env: Some("PW".into()),
                ..NamedCredential::default()
            },
        )]
        .into_iter()
        .collect();
        let error = wave("old.example.org")
            .bind_credentials(CredentialSource {
                credentials: &unrestricted,
                ..from
            })
            .unwrap_err()
            .to_string();
        assert!(error.contains("none given"), "{error}");
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

    /// The types read a stored wave leniently (`wave_config`); the
    /// operator's own text is still checked key by key, at every depth and
    /// from every layer.
    #[test]
    fn the_operators_text_is_strict_at_every_depth() {
        let graph = "[source]\nkind = \"graph\"\n[source.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\n\
                     credential = \"app\"\ncleint_secret = \"typo\"\n\
                     [target]\nkind = \"maildir\"\npath = \"b\"\n\
                     [migration]\nmax_concurent_mailboxes = 4\n[folders]\nexlude = [\"Junk\"]\n\
                     [schedule]\nwindow = \"nights\"\n";
        let error = Config::from_remote_toml_str(graph).unwrap_err().to_string();
        for key in [
            "source.oauth2.cleint_secret",
            "migration.max_concurent_mailboxes",
            "folders.exlude",
            "schedule",
        ] {
            assert!(error.contains(key), "{key} not named: {error}");
        }
        assert!(!error.contains("source.oauth2.tenant"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let fine = "[source]\nkind = \"maildir\"\npath = \"a\"\n[target]\nkind = \"maildir\"\npath = \"b\"\n\
                    [folders]\ninclude = []\n";
        std::fs::write(&path, fine).unwrap();
        Config::load_with_env(&path, Some(HashMap::new())).expect("an empty list sets nothing");
        let env = HashMap::from([("MAILWAVE__TARGET__UTF8_NAMEZ".to_owned(), "true".to_owned())]);
        let error = Config::load_with_env(&path, Some(env))
            .unwrap_err()
            .to_string();
        assert!(error.contains("target.utf8_namez"), "{error}");
    }
}
