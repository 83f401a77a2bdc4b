//! The job queue: the coordinator publishes one [`Job`] per mailbox pass,
//! workers take them. The in-process backend serves `mailwave run`; the
//! RabbitMQ backend serves distributed mode. Both give at-least-once
//! delivery: a job taken and never acknowledged comes back.

mod memory;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

use async_trait::async_trait;

pub use memory::MemoryQueue;
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::{QueueNames, RabbitOptions, RabbitQueue};

use crate::error::{Classify, ErrorClass};
use crate::model::Job;

/// A failure of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue unavailable: {0}")]
    Unavailable(String),
    #[error("job queue: malformed job: {0}")]
    Malformed(String),
}

impl Classify for QueueError {
    fn class(&self) -> ErrorClass {
        match self {
            QueueError::Unavailable(_) => ErrorClass::Transient,
            QueueError::Malformed(_) => ErrorClass::Item,
        }
    }
}

/// Where jobs wait for workers.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Publishes the jobs; returns once the queue has every one durably
    /// (some perhaps twice, after a connection loss: delivery is at least
    /// once).
    async fn publish(&self, jobs: &[Job]) -> Result<(), QueueError>;

    /// Waits for the next job; `None` once the queue is closed and drained.
    async fn next(&self) -> Result<Option<Box<dyn Delivery>>, QueueError>;
}

/// A job taken from the queue. Dropping it without [`Delivery::ack`] hands it
/// back, as a broker does when a consumer dies.
#[async_trait]
pub trait Delivery: Send {
    fn job(&self) -> &Job;

    /// The job is done (whatever its outcome, which is in the store).
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;

    /// Hands the job back for another worker (graceful shutdown).
    async fn requeue(self: Box<Self>) -> Result<(), QueueError>;

    /// Refuses the job for good: no worker could ever run it (a poison
    /// job). A broker moves it to the dead-letter queue for an operator.
    async fn reject(self: Box<Self>) -> Result<(), QueueError>;
}
