//! The mailwave data plane: connectors to mail systems (IMAP, Maildir,
//! Exchange Online through Microsoft Graph) and the copy engine that moves a
//! mailbox exactly once. Workers run jobs; they keep no state of their own —
//! everything that must survive is in the store.

pub mod connector;
pub mod credentials;
pub mod distributed;
pub mod engine;
pub mod job;
pub mod lease;
pub mod oauth;
pub mod pool;
pub mod throttle;
