//! The mailwave control plane: turns a wave's mailbox list into per-mailbox
//! jobs, tracks their state in the store, and reports. It never talks to a
//! mail server; workers do.
//!
//! Distributed mode: [`api`] (the HTTP API), [`dispatcher`] (publishes jobs,
//! at most `max_concurrent_mailboxes` in flight per wave, idempotently),
//! [`reaper`] (re-queues the passes of lost workers), [`settings`] and
//! [`serve`] (the `mailwave coordinator serve` process), and [`client`]
//! (the API's client behind `mailwave wave …`).

pub mod api;
pub mod client;
pub mod dispatcher;
pub mod reaper;
pub mod report;
pub mod serve;
pub mod settings;
pub mod wave;
