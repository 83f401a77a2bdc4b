CREATE TABLE waves (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    wave INTEGER NOT NULL REFERENCES waves(id),
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    pass INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    stats TEXT NOT NULL DEFAULT '{}',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    UNIQUE (wave, source)
);

CREATE TABLE folder_checkpoints (
    mailbox INTEGER NOT NULL REFERENCES mailboxes(id),
    folder TEXT NOT NULL,
    target_folder TEXT NOT NULL,
    validity INTEGER NOT NULL,
    high_water_mark INTEGER NOT NULL,
    highest_modseq INTEGER,
    target_mark INTEGER NOT NULL,
    PRIMARY KEY (mailbox, folder)
) WITHOUT ROWID;

-- The item ledger: one row per copied item. Keyed for resume (by folder and
-- item) and read folder by folder for delta passes and verification.
CREATE TABLE ledger (
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
    flags TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, validity, item)
) WITHOUT ROWID;

CREATE TABLE item_failures (
    mailbox INTEGER NOT NULL,
    folder TEXT NOT NULL,
    item TEXT NOT NULL,
    size INTEGER NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    pass INTEGER NOT NULL,
    PRIMARY KEY (mailbox, folder, item)
) WITHOUT ROWID;
