//! The in-process queue of `mailwave run`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Delivery, JobQueue, QueueError};
use crate::model::Job;

#[derive(Default)]
struct Inner {
    jobs: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Job>,
    closed: bool,
}

/// A [`JobQueue`] in memory, shared by cloning.
#[derive(Clone, Default)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    /// No more jobs will be published: consumers get `None` once it is empty.
    pub fn close(&self) {
        self.state().closed = true;
        self.inner.changed.notify_waiters();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (every critical section is a single push or pop), so poisoning is
        // safe to ignore.
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push_front(&self, job: Job) {
        self.state().ready.push_front(job);
        self.inner.changed.notify_one();
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn publish(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.state().ready.extend(jobs.iter().cloned());
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn next(&self) -> Result<Option<Box<dyn Delivery>>, QueueError> {
        loop {
            let notified = self.inner.changed.notified();
            {
                let mut state = self.state();
                if let Some(job) = state.ready.pop_front() {
                    return Ok(Some(Box::new(MemoryDelivery {
                        job: Some(job),
                        queue: self.clone(),
                    })));
                }
                if state.closed {
                    return Ok(None);
                }
            }
            notified.await;
        }
    }
}

struct MemoryDelivery {
    /// `None` once acknowledged or handed back.
    job: Option<Job>,
    queue: MemoryQueue,
}

impl MemoryDelivery {
    fn job_ref(&self) -> &Job {
        self.job
            .as_ref()
            .expect("a delivery holds its job until it is settled")
    }
}

#[async_trait]
impl Delivery for MemoryDelivery {
    fn job(&self) -> &Job {
        self.job_ref()
    }

    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.job = None;
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), QueueError> {
        if let Some(job) = self.job.take() {
            self.queue.push_front(job);
        }
        Ok(())
    }

    /// The in-process queue has no dead letters: the job is dropped (the
    /// caller logs why).
    async fn reject(mut self: Box<Self>) -> Result<(), QueueError> {
        self.job = None;
        Ok(())
    }
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.queue.push_front(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(mailbox: i64) -> Job {
        Job {
            wave: 1,
            mailbox,
            pass: 1,
        }
    }

    #[tokio::test]
    async fn memory_queue_passes_the_queue_suite() {
        let queue = MemoryQueue::new();
        // Nothing but the delivery dies with an in-process consumer.
        crate::queue::suite::run_all(&queue, async |delivery| drop(delivery)).await;
    }

    #[tokio::test]
    async fn delivers_in_order_and_redelivers_unacked_jobs() {
        let queue = MemoryQueue::new();
        queue.publish(&[job(1)]).await.unwrap();
        queue.publish(&[job(2)]).await.unwrap();

        let first = queue.next().await.unwrap().unwrap();
        assert_eq!(first.job().mailbox, 1);
        drop(first); // a worker that died
        let again = queue.next().await.unwrap().unwrap();
        assert_eq!(again.job().mailbox, 1);
        again.ack().await.unwrap();

        let second = queue.next().await.unwrap().unwrap();
        second.requeue().await.unwrap();
        let second = queue.next().await.unwrap().unwrap();
        assert_eq!(second.job().mailbox, 2);
        second.ack().await.unwrap();

        queue.close();
        assert!(queue.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn waiting_consumer_wakes_on_publish_and_on_close() {
        let queue = MemoryQueue::new();
        let consumer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let delivery = queue.next().await.unwrap().unwrap();
                let job = delivery.job().clone();
                delivery.ack().await.unwrap();
                job
            })
        };
        tokio::task::yield_now().await;
        queue.publish(&[job(7)]).await.unwrap();
        assert_eq!(consumer.await.unwrap(), job(7));

        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await.unwrap().is_none() })
        };
        tokio::task::yield_now().await;
        queue.close();
        assert!(waiting.await.unwrap());
    }
}
