//! A pool of job consumers: each takes a job from the queue, runs it, and
//! acknowledges it; a job that was interrupted, or whose outcome could not
//! be recorded, is handed back.

use std::sync::Arc;

use mailwave_common::queue::{JobQueue, QueueError};

use tokio_util::sync::CancellationToken;

use crate::job::{JobOutcome, WorkerContext, run_job};

/// Runs `concurrency` consumers until the queue is closed and drained, or
/// until `stop` is cancelled (then running jobs stop at their next
/// checkpoint and are handed back).
pub async fn serve(
    queue: Arc<dyn JobQueue>,
    ctx: Arc<WorkerContext>,
    concurrency: usize,
    stop: CancellationToken,
) -> Result<(), QueueError> {
    let consumers = (0..concurrency.max(1)).map(|_| {
        let queue = Arc::clone(&queue);
        let ctx = Arc::clone(&ctx);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = queue.next() => next?,
                    () = stop.cancelled() => return Ok::<(), QueueError>(()),
                };
                let Some(delivery) = next else {
                    return Ok(());
                };
                match run_job(&ctx, delivery.job(), &stop).await {
                    Ok(JobOutcome::Interrupted) => delivery.requeue().await?,
                    Ok(JobOutcome::Finished(_) | JobOutcome::Stale) => delivery.ack().await?,
                    Err(error) => {
                        tracing::error!(job = ?delivery.job(), %error,
                            "could not record the job's outcome; handing it back");
                        delivery.requeue().await?;
                    }
                }
            }
        })
    });
    for consumer in futures::future::join_all(consumers).await {
        consumer.map_err(|e| QueueError::Unavailable(format!("consumer task: {e}")))??;
    }
    Ok(())
}
