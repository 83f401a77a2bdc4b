-- The PostgreSQL store: the same tables as the SQLite one, plus job leases.
-- Unsigned values of the model (UIDVALIDITY, UIDs, sizes, modseqs) are kept
-- in BIGINT. Text keys use the "C" collation: byte order as in SQLite, and
-- cheaper comparisons in the big indexes. See the top of
-- common/src/store/postgres.rs for the plan of the ledger's partitions and
-- indexes.

CREATE TABLE waves (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE mailboxes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wave BIGINT NOT NULL REFERENCES waves(id),
    source TEXT COLLATE "C" NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'queued', 'running', 'completed', 'failed')),
    pass BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    stats JSONB NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (wave, source)
);

CREATE TABLE folder_checkpoints (
    mailbox BIGINT NOT NULL REFERENCES mailboxes(id),
    folder TEXT COLLATE "C" NOT NULL,
    target_folder TEXT NOT NULL,
    validity BIGINT NOT NULL,
    high_water_mark BIGINT NOT NULL,
    highest_modseq BIGINT,
    target_mark BIGINT NOT NULL,
    PRIMARY KEY (mailbox, folder)
);

-- The item ledger: one row per copied item, hundreds of millions of rows in
-- a large migration. Hash-partitioned by mailbox: every query names one
-- mailbox, so it touches one partition and that partition's primary key.
CREATE TABLE ledger (
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
    flags TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder, validity, item)
) PARTITION BY HASH (mailbox);

DO $$
BEGIN
    FOR remainder IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE ledger_p%s PARTITION OF ledger
                 FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            lpad(remainder::text, 2, '0'), remainder);
    END LOOP;
END
$$;

CREATE TABLE item_failures (
    mailbox BIGINT NOT NULL,
    folder TEXT COLLATE "C" NOT NULL,
    item TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    pass BIGINT NOT NULL,
    PRIMARY KEY (mailbox, folder, item)
);

-- Job ownership in distributed mode: a worker owns a mailbox pass through its
-- lease row (not through an unacked queue message) until it releases the
-- lease or lets it expire. Expiry is by the database's clock.
CREATE TABLE leases (
    mailbox BIGINT PRIMARY KEY REFERENCES mailboxes(id),
    pass BIGINT NOT NULL,
    worker TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
