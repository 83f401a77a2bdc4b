-- Checkpoints keep each connector's own position, opaque to everyone else.
-- The source cursor replaces HIGHESTMODSEQ (IMAP) and the delta link
-- (Graph) in the forms those connectors write; an old target mark (IMAP
-- UIDNEXT, Graph milliseconds since the epoch, Maildir 0) is kept as the
-- bare number, which each target connector reads as its own older form.
ALTER TABLE folder_checkpoints ADD COLUMN source_cursor TEXT;
UPDATE folder_checkpoints SET source_cursor = CASE
    WHEN sync_state IS NOT NULL THEN json_build_object('delta_link', sync_state)::text
    WHEN highest_modseq IS NOT NULL THEN json_build_object('highest_modseq', highest_modseq)::text
END;
ALTER TABLE folder_checkpoints
    DROP COLUMN highest_modseq,
    DROP COLUMN sync_state,
    ALTER COLUMN target_mark TYPE TEXT USING target_mark::text;

-- A folder that could not be copied is its own record, no longer an item
-- failure with the item "*".
CREATE TABLE folder_failures (
    mailbox BIGINT NOT NULL,
    folder TEXT COLLATE "C" NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    pass BIGINT NOT NULL,
    PRIMARY KEY (mailbox, folder)
);
INSERT INTO folder_failures (mailbox, folder, class, reason, pass)
    SELECT mailbox, folder, class, reason, pass FROM item_failures WHERE item = '*';
DELETE FROM item_failures WHERE item = '*';

-- An item's size may be unknown (NULL): 0 is the size of an empty message.
ALTER TABLE item_failures ALTER COLUMN size DROP NOT NULL;
