//! Integration-test fixtures for mailwave.
//!
//! * [`dovecot`]: throw-away Dovecot IMAP servers (own config, port, temp
//!   dir; TLS, master user, `.` or `/` separator, special-use folders).
//! * [`corpus`]: a seeded generator of realistic mailboxes and loaders
//!   (Maildir files or IMAP APPEND), plus delta helpers.
//! * [`verify`]: an exactness checker that reads both sides over IMAP (or a
//!   Maildir tree) with its own raw client and compares them as multisets.
//! * [`imap`], [`mutf7`]: the small independent IMAP client behind them.
//! * [`graph_emulator`]: an emulator of Microsoft Graph's mailbox
//!   import/export and mail APIs and of the identity platform's token
//!   endpoint, with Outlook's throttling rules and injected faults.

pub mod corpus;
pub mod dovecot;
pub mod fake_imap;
pub mod graph_emulator;
pub mod harness;
pub mod imap;
pub mod mutf7;
pub mod tenants;
pub mod verify;

pub use corpus::{Corpus, CorpusMessage, CorpusSpec, SizeProfile};
pub use dovecot::{DovecotOptions, DovecotServer, SpecialFolder, Tls};
pub use graph_emulator::{EmulatorConfig, GraphEmulator};
pub use imap::{Auth, Client, Endpoint, TlsMode};
pub use verify::{CompareOptions, Report, SourceFolderInfo};
