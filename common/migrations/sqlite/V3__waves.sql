-- Distributed mode: a wave has a stored configuration (the endpoints'
-- settings as JSON, secrets only by name) and a state; each mailbox knows
-- the pass asked for (`wanted_pass`) and whether the job of its current
-- pass is known to be on the queue (`job_published`).
ALTER TABLE waves ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
ALTER TABLE waves ADD COLUMN state TEXT NOT NULL DEFAULT 'created';
-- Set by `complete`: the passes asked for are the final ones.
ALTER TABLE waves ADD COLUMN final_pass INTEGER NOT NULL DEFAULT 0;

-- A pass is wanted when wanted_pass > pass.
ALTER TABLE mailboxes ADD COLUMN wanted_pass INTEGER NOT NULL DEFAULT 0;
-- 0 between the dispatcher marking the mailbox queued and the queue
-- confirming the job (or after the reaper re-queued it): such a job is
-- published (again) by the dispatcher.
ALTER TABLE mailboxes ADD COLUMN job_published INTEGER NOT NULL DEFAULT 1;
-- How many times a worker holding the mailbox was lost (lease expired).
ALTER TABLE mailboxes ADD COLUMN workers_lost INTEGER NOT NULL DEFAULT 0;

-- The dispatcher's question: which mailboxes of the wave need their next pass.
CREATE INDEX mailboxes_to_publish ON mailboxes (wave, id)
    WHERE wanted_pass > pass AND state NOT IN ('queued', 'running');
-- In flight (the cap) and not yet published.
CREATE INDEX mailboxes_by_state ON mailboxes (wave, state);
