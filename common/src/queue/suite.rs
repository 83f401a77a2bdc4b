//! One behavioural test suite for every [`JobQueue`] backend. Each backend's
//! tests call [`run_all`] on a fresh, empty queue that nobody else consumes.

use std::time::Duration;

use super::{Delivery, JobQueue};
use crate::model::Job;

/// How long a job that should be there may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(15);
/// How long to watch for a job that should not come.
const QUIET: Duration = Duration::from_millis(500);

/// Runs every check of the suite against `queue`. `consumer_death` must
/// simulate the death of the consumer holding the delivery it is given (for a
/// broker: the loss of the consumer's channel), after which the job is due
/// back.
pub async fn run_all(queue: &dyn JobQueue, consumer_death: impl AsyncFn(Box<dyn Delivery>)) {
    delivers_in_publish_order(queue).await;
    waiting_consumer_wakes_on_publish(queue).await;
    requeue_redelivers(queue).await;
    dropped_delivery_comes_back(queue).await;
    consumer_death_hands_the_job_back(queue, consumer_death).await;
}

fn job(mailbox: i64) -> Job {
    Job {
        wave: 1,
        mailbox,
        pass: 1,
    }
}

/// The next delivery, which must come within [`ARRIVAL`].
async fn take(queue: &dyn JobQueue) -> Box<dyn Delivery> {
    tokio::time::timeout(ARRIVAL, queue.next())
        .await
        .expect("a job within the arrival time")
        .expect("the queue works")
        .expect("the queue is open")
}

/// Asserts that no job is waiting (every earlier one was acknowledged).
async fn assert_empty(queue: &dyn JobQueue) {
    if let Ok(delivery) = tokio::time::timeout(QUIET, queue.next()).await {
        let delivery = delivery.expect("the queue works");
        panic!(
            "expected no job, got {:?}",
            delivery.map(|d| d.job().clone())
        );
    }
}

async fn delivers_in_publish_order(queue: &dyn JobQueue) {
    queue.publish(&[job(1), job(2)]).await.unwrap();
    queue.publish(&[job(3)]).await.unwrap();
    for mailbox in 1..=3 {
        let delivery = take(queue).await;
        assert_eq!(delivery.job(), &job(mailbox));
        delivery.ack().await.unwrap();
    }
    assert_empty(queue).await;
}

async fn waiting_consumer_wakes_on_publish(queue: &dyn JobQueue) {
    let (delivery, published) = tokio::join!(take(queue), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        queue.publish(&[job(10)]).await
    });
    published.unwrap();
    assert_eq!(delivery.job(), &job(10));
    delivery.ack().await.unwrap();
    assert_empty(queue).await;
}

async fn requeue_redelivers(queue: &dyn JobQueue) {
    queue.publish(&[job(20)]).await.unwrap();
    take(queue).await.requeue().await.unwrap();
    let again = take(queue).await;
    assert_eq!(again.job(), &job(20));
    again.ack().await.unwrap();
    assert_empty(queue).await;
}

async fn dropped_delivery_comes_back(queue: &dyn JobQueue) {
    queue.publish(&[job(30)]).await.unwrap();
    drop(take(queue).await);
    let again = take(queue).await;
    assert_eq!(again.job(), &job(30));
    again.ack().await.unwrap();
    assert_empty(queue).await;
}

async fn consumer_death_hands_the_job_back(
    queue: &dyn JobQueue,
    consumer_death: impl AsyncFn(Box<dyn Delivery>),
) {
    queue.publish(&[job(40)]).await.unwrap();
    queue.publish(&[job(41)]).await.unwrap();
    // Either may come first: the previous check's `next`, dropped when its
    // quiet time ran out, may still have held job 40 for a moment before
    // its cancelled consumer handed it back behind 41.
    let first = take(queue).await;
    assert!(
        [job(40), job(41)].contains(first.job()),
        "{:?}",
        first.job()
    );
    consumer_death(first).await;

    // Both jobs come back, in whatever order the backend redelivers them.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let delivery = take(queue).await;
        seen.push(delivery.job().mailbox);
        delivery.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, [40, 41]);
    assert_empty(queue).await;
}
