-- Job ownership in distributed mode: a worker owns a mailbox pass through its
-- lease row (not through an unacked queue message) until it releases the
-- lease or lets it expire.
CREATE TABLE leases (
    mailbox INTEGER PRIMARY KEY REFERENCES mailboxes(id),
    pass INTEGER NOT NULL,
    worker TEXT NOT NULL,
    -- Milliseconds since the Unix epoch, by SQLite's clock.
    expires_at INTEGER NOT NULL
);
