-- Distributed mode: a wave has a stored configuration (the endpoints'
-- settings as JSON, secrets only by name) and a state; each mailbox knows
-- the pass asked for (`wanted_pass`) and whether the job of its current
-- pass is known to be on the queue (`job_published`).
ALTER TABLE waves
    ADD COLUMN config JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN state TEXT NOT NULL DEFAULT 'created'
        CHECK (state IN ('created', 'running', 'paused', 'completed', 'cancelled')),
    -- Set by `complete`: the passes asked for are the final ones.
    ADD COLUMN final_pass BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE mailboxes
    -- A pass is wanted when wanted_pass > pass.
    ADD COLUMN wanted_pass BIGINT NOT NULL DEFAULT 0,
    -- false between the dispatcher marking the mailbox queued and the queue
    -- confirming the job (or after the reaper re-queued it): such a job is
    -- published (again) by the dispatcher.
    ADD COLUMN job_published BOOLEAN NOT NULL DEFAULT true,
    -- How many times a worker holding the mailbox was lost (lease expired).
    ADD COLUMN workers_lost BIGINT NOT NULL DEFAULT 0;

-- The dispatcher's question: which mailboxes of the wave need their next pass.
CREATE INDEX mailboxes_to_publish ON mailboxes (wave, id)
    WHERE wanted_pass > pass AND state NOT IN ('queued', 'running');
-- In flight (the cap), not yet published, status counts.
CREATE INDEX mailboxes_by_state ON mailboxes (wave, state);
