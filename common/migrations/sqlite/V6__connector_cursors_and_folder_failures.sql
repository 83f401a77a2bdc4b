-- Checkpoints keep each connector's own position, opaque to everyone else.
-- The source cursor replaces HIGHESTMODSEQ (IMAP) and the delta link
-- (Graph) in the forms those connectors write; an old target mark (IMAP
-- UIDNEXT, Graph milliseconds since the epoch, Maildir 0) is kept as the
-- bare number, which each target connector reads as its own older form.
ALTER TABLE folder_checkpoints ADD COLUMN source_cursor TEXT;
UPDATE folder_checkpoints SET source_cursor = CASE
    WHEN sync_state IS NOT NULL THEN json_object('delta_link', sync_state)
    WHEN highest_modseq IS NOT NULL THEN json_object('highest_modseq', highest_modseq)
END;
ALTER TABLE folder_checkpoints DROP COLUMN highest_modseq;
ALTER TABLE folder_checkpoints DROP COLUMN sync_state;
ALTER TABLE folder_checkpoints ADD COLUMN target_position TEXT NOT NULL DEFAULT '';
UPDATE folder_checkpoints SET target_position = CAST(target_mark AS TEXT);
ALTER TABLE folder_checkpoints DROP COLUMN target_mark;
ALTER TABLE folder_checkpoints RENAME COLUMN target_position TO target_mark;

-- A folder that could not be copied is its own record, no longer an item
-- failure with the item "*".
CREATE TABLE folder_failures (
    mailbox INTEGER NOT NULL,
    folder TEXT NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    pass INTEGER NOT NULL,
    PRIMARY KEY (mailbox, folder)
) WITHOUT ROWID;
INSERT INTO folder_failures (mailbox, folder, class, reason, pass)
    SELECT mailbox, folder, class, reason, pass FROM item_failures WHERE item = '*';
DELETE FROM item_failures WHERE item = '*';

-- An item's size may be unknown (NULL): 0 is the size of an empty message.
CREATE TABLE item_failures_sized (
    mailbox INTEGER NOT NULL,
    folder TEXT NOT NULL,
    item TEXT NOT NULL,
    size INTEGER,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    pass INTEGER NOT NULL,
    policy INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (mailbox, folder, item)
) WITHOUT ROWID;
INSERT INTO item_failures_sized (mailbox, folder, item, size, class, reason, pass, policy)
    SELECT mailbox, folder, item, size, class, reason, pass, policy FROM item_failures;
DROP TABLE item_failures;
ALTER TABLE item_failures_sized RENAME TO item_failures;
