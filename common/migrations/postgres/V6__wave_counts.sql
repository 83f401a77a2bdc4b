-- A wave's status without reading its mailboxes: every statement that
-- inserts, updates or deletes mailboxes appends, in its own transaction,
-- what it changed per wave and state (mailboxes, and the items, bytes and
-- skipped items of their current passes) as rows of `wave_count_deltas`.
-- A wave's counts are the sums of its rows: as exact as counting the
-- mailboxes, at the cost of a few rows instead of the whole wave. Rows are
-- only ever inserted, never updated, so concurrent writers never wait for
-- each other here; `compact_wave_counts` folds a wave's rows into one per
-- state (the dispatcher calls it every round).
CREATE TABLE wave_count_deltas (
    wave BIGINT NOT NULL,
    state TEXT NOT NULL,
    mailboxes BIGINT NOT NULL,
    items_copied BIGINT NOT NULL,
    bytes_copied BIGINT NOT NULL,
    items_skipped BIGINT NOT NULL
);
CREATE INDEX wave_count_deltas_by_wave ON wave_count_deltas (wave);

CREATE FUNCTION count_mailbox_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO wave_count_deltas
        SELECT wave, state, count(*),
               coalesce(sum((stats->>'items_copied')::bigint), 0),
               coalesce(sum((stats->>'bytes_copied')::bigint), 0),
               coalesce(sum((stats->>'items_skipped')::bigint), 0)
        FROM new_rows GROUP BY wave, state;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO wave_count_deltas
        SELECT wave, state, -count(*),
               -coalesce(sum((stats->>'items_copied')::bigint), 0),
               -coalesce(sum((stats->>'bytes_copied')::bigint), 0),
               -coalesce(sum((stats->>'items_skipped')::bigint), 0)
        FROM old_rows GROUP BY wave, state;
    ELSE
        -- What the rows were taken off, what they are now: rows whose
        -- state and counters did not change (e.g. confirming published
        -- jobs) cancel out and add nothing.
        INSERT INTO wave_count_deltas
        SELECT wave, state, sum(n), sum(items), sum(bytes), sum(skipped)
        FROM (
            SELECT wave, state, 1 AS n,
                   coalesce((stats->>'items_copied')::bigint, 0) AS items,
                   coalesce((stats->>'bytes_copied')::bigint, 0) AS bytes,
                   coalesce((stats->>'items_skipped')::bigint, 0) AS skipped
            FROM new_rows
            UNION ALL
            SELECT wave, state, -1,
                   -coalesce((stats->>'items_copied')::bigint, 0),
                   -coalesce((stats->>'bytes_copied')::bigint, 0),
                   -coalesce((stats->>'items_skipped')::bigint, 0)
            FROM old_rows
        ) AS changes
        GROUP BY wave, state
        HAVING sum(n) <> 0 OR sum(items) <> 0 OR sum(bytes) <> 0 OR sum(skipped) <> 0;
    END IF;
    RETURN NULL;
END
$$;

-- Created before the counts below are taken: the triggers' lock on
-- mailboxes keeps writers out until this migration commits.
CREATE TRIGGER mailboxes_counted_insert AFTER INSERT ON mailboxes
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_mailbox_changes();
CREATE TRIGGER mailboxes_counted_update AFTER UPDATE ON mailboxes
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_mailbox_changes();
CREATE TRIGGER mailboxes_counted_delete AFTER DELETE ON mailboxes
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_mailbox_changes();

INSERT INTO wave_count_deltas
SELECT wave, state, count(*),
       coalesce(sum((stats->>'items_copied')::bigint), 0),
       coalesce(sum((stats->>'bytes_copied')::bigint), 0),
       coalesce(sum((stats->>'items_skipped')::bigint), 0)
FROM mailboxes GROUP BY wave, state;

-- Folds a wave's rows into one per state. Only rows this statement sees
-- are removed, and what they held is inserted again in the same statement:
-- rows of transactions still running are left for the next time, and two
-- compactions at once never count a row twice (the second one skips the
-- rows the first removed).
CREATE FUNCTION compact_wave_counts(of_wave BIGINT) RETURNS void
LANGUAGE sql AS $$
    WITH folded AS (
        DELETE FROM wave_count_deltas WHERE wave = of_wave RETURNING *
    )
    INSERT INTO wave_count_deltas
    SELECT wave, state, sum(mailboxes), sum(items_copied), sum(bytes_copied), sum(items_skipped)
    FROM folded
    GROUP BY wave, state
    HAVING sum(mailboxes) <> 0 OR sum(items_copied) <> 0 OR sum(bytes_copied) <> 0
        OR sum(items_skipped) <> 0;
$$;

-- Keeping published jobs' marks (`job_published`, a column no index
-- covers) is then a heap-only update in the row's own page, without new
-- index entries: room for it.
ALTER TABLE mailboxes SET (fillfactor = 70);
