-- seqlease SQLite schema, version 4: consumers (checkpoints) and the retention audit.
--
-- A consumer is a named reader of one space; `checkpoint` is the last seq it applied
-- (0: none). Checkpoints move by compare-and-swap inside `BEGIN IMMEDIATE` transactions on
-- the write connection; an application whose read model lives in this file updates it in
-- the same transaction (exactly-once apply). `retain = 1` holds back pruning: entries above
-- its checkpoint are never deleted.

CREATE TABLE consumers (
    space_id    INTEGER NOT NULL REFERENCES spaces (id),
    name        TEXT    NOT NULL,               -- validated: [A-Za-z0-9_.-]{1,128}
    checkpoint  INTEGER NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    retain      INTEGER NOT NULL DEFAULT 1 CHECK (retain IN (0, 1)),
    created_at  INTEGER NOT NULL,               -- store clock, microseconds
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (space_id, name)
) WITHOUT ROWID;

-- Every prune, consumer reset and consumer removal, with who asked and when. Never deleted.
-- The newest `pruned` row of a space says which entries are gone (1..=to_seq): reads below
-- it fail with a typed error that names the actor and the time.
CREATE TABLE retention_events (
    id          INTEGER PRIMARY KEY,            -- rowid alias: insertion order
    space_id    INTEGER NOT NULL REFERENCES spaces (id),
    kind        TEXT    NOT NULL,               -- pruned | consumer_reset | consumer_removed
    consumer    TEXT,
    from_seq    INTEGER NOT NULL,
    to_seq      INTEGER NOT NULL,
    entries     INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    at          INTEGER NOT NULL
);

CREATE INDEX retention_events_space ON retention_events (space_id, kind, id);
