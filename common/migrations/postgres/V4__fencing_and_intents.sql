-- Fencing: every lease taken on a mailbox gets a new token (the mailbox's
-- lease_epoch, raised), and every write of a pass checks it.
ALTER TABLE mailboxes ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN token BIGINT NOT NULL DEFAULT 0;

-- A pass may end with failed items.
ALTER TABLE mailboxes DROP CONSTRAINT mailboxes_state_check;
ALTER TABLE mailboxes ADD CONSTRAINT mailboxes_state_check
    CHECK (state IN ('pending', 'queued', 'running', 'completed', 'completed_with_errors', 'failed'));

-- The target folder's UIDVALIDITY the ledger's target ids belong to, and
-- whether the copy was subscribed.
ALTER TABLE folder_checkpoints
    ADD COLUMN target_validity BIGINT,
    ADD COLUMN subscribed BOOLEAN NOT NULL DEFAULT false;

-- The message identity that survives a re-rendering target.
ALTER TABLE ledger ADD COLUMN identity TEXT NOT NULL DEFAULT '';

-- Write-ahead of the batch being appended: after a crash, exactly the
-- copies in doubt. Forgotten when the batch commits. Small (one batch per
-- folder being copied), so not partitioned.
CREATE TABLE intents (
    mailbox BIGINT NOT NULL,
    folder TEXT COLLATE "C" NOT NULL,
    validity BIGINT NOT NULL,
    item TEXT COLLATE "C" NOT NULL,
    uid BIGINT NOT NULL,
    target_folder TEXT NOT NULL,
    target_id TEXT,
    size BIGINT NOT NULL,
    content_hash TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    identity TEXT NOT NULL,
    flags TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, validity, item)
);

-- Items left out by the operator's policy are not errors.
ALTER TABLE item_failures ADD COLUMN policy BOOLEAN NOT NULL DEFAULT false;
