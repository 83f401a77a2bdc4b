-- Fencing: every lease taken on a mailbox gets a new token (the mailbox's
-- lease_epoch, raised), and every write of a pass checks it.
ALTER TABLE mailboxes ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0;

-- The target folder's UIDVALIDITY the ledger's target ids belong to, and
-- whether the copy was subscribed.
ALTER TABLE folder_checkpoints ADD COLUMN target_validity INTEGER;
ALTER TABLE folder_checkpoints ADD COLUMN subscribed INTEGER NOT NULL DEFAULT 0;

-- The message identity that survives a re-rendering target.
ALTER TABLE ledger ADD COLUMN identity TEXT NOT NULL DEFAULT '';

-- Write-ahead of the batch being appended: after a crash, exactly the
-- copies in doubt. Forgotten when the batch commits.
CREATE TABLE intents (
    mailbox INTEGER NOT NULL,
    folder TEXT NOT NULL,
    validity INTEGER NOT NULL,
    item TEXT NOT NULL,
    uid INTEGER NOT NULL,
    target_folder TEXT NOT NULL,
    target_id TEXT,
    size INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    identity TEXT NOT NULL,
    flags TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, validity, item)
) WITHOUT ROWID;

-- Items left out by the operator's policy are not errors.
ALTER TABLE item_failures ADD COLUMN policy INTEGER NOT NULL DEFAULT 0;
