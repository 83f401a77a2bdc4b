//! A lean async IMAP client for byte-exact, fast mailbox migration:
//! pipelining, LITERAL+/LITERAL-, MULTIAPPEND, UIDPLUS, CONDSTORE and
//! zero-copy message bodies.

mod command;
mod connection;
mod error;
mod framing;
mod mutf7;
mod types;

pub use command::uid_set;
pub use connection::ImapConnection;
pub use error::ImapError;
pub use mutf7::{Mutf7Error, decode_mutf7, encode_mutf7};
pub use types::{
    AppendMessage, AppendOutcome, ConnectOptions, FetchedMessage, ListEntry, MailboxStatus,
    MessageMeta, Namespace, SelectedInfo, TlsMode,
};
