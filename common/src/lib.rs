//! What the mailwave coordinator and workers share: the domain model, the
//! configuration, the error taxonomy, and the store and queue interfaces with
//! their backends.

pub mod config;
pub mod error;
pub mod mailboxes;
pub mod model;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod text;
pub mod wave_config;

pub use error::{Classify, ErrorClass};
