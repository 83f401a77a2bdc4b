//! A pool of job consumers (`mailwave run`): each takes a job from the
//! queue, leases its mailbox in the store like a distributed worker does
//! (same fencing, same heartbeat), runs it, and acknowledges it; a job that
//! was interrupted, or whose outcome could not be recorded, is handed back.

use std::sync::Arc;
use std::time::Duration;

use mailwave_common::queue::{Delivery, JobQueue, QueueError};

use tokio_util::sync::CancellationToken;

use crate::job::{JobOutcome, WorkerContext, run_job};
use crate::lease::LeaseKeeper;

/// The name `mailwave run` leases mailboxes under: one process at a time
/// holds the state file, so a lease of this name left by an earlier run that
/// died is simply taken over (with a new token).
const WORKER: &str = "mailwave-run";
const LEASE_TTL: Duration = Duration::from_secs(60);

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
                take(&ctx, delivery, &stop).await?;
            }
        })
    });
    for consumer in futures::future::join_all(consumers).await {
        consumer.map_err(|e| QueueError::Unavailable(format!("consumer task: {e}")))??;
    }
    Ok(())
}

/// One delivery: the lease, the job, the lease's end, the ack.
async fn take(
    ctx: &WorkerContext,
    delivery: Box<dyn Delivery>,
    stop: &CancellationToken,
) -> Result<(), QueueError> {
    let job = delivery.job().clone();
    let acquired = tokio::time::Instant::now();
    let lease = match ctx
        .store
        .acquire_lease(job.mailbox, job.pass, WORKER, LEASE_TTL)
        .await
    {
        Ok(Some(lease)) => lease,
        outcome => {
            tracing::warn!(
                ?job,
                ?outcome,
                "could not lease the mailbox; trying again shortly"
            );
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => {}
            }
            return delivery.requeue().await;
        }
    };
    let keeper = LeaseKeeper::start(ctx.store.clone(), lease, LEASE_TTL, acquired);
    let outcome = run_job(ctx, &job, &keeper, stop).await;
    keeper.stop();
    match outcome {
        Ok(JobOutcome::Finished(_) | JobOutcome::Stale) => {
            release(ctx, &keeper).await;
            delivery.ack().await
        }
        Ok(JobOutcome::Interrupted) => {
            release(ctx, &keeper).await;
            delivery.requeue().await
        }
        Ok(JobOutcome::LeaseLost) => delivery.requeue().await,
        Err(error) => {
            tracing::error!(?job, %error, "could not record the job's outcome; handing it back");
            release(ctx, &keeper).await;
            delivery.requeue().await
        }
    }
}

async fn release(ctx: &WorkerContext, keeper: &LeaseKeeper) {
    if let Err(error) = ctx.store.release_lease(keeper.lease()).await {
        tracing::warn!(mailbox = keeper.lease().mailbox, %error, "releasing the lease failed (it will expire)");
    }
}
