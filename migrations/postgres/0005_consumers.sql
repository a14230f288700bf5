-- seqlease PostgreSQL schema, version 5: consumers (checkpoints) and the retention audit.
--
-- A consumer is a named reader of one space; `checkpoint` is the last seq it applied
-- (0: none). A checkpoint moves by compare-and-swap on its row (`SELECT ... FOR UPDATE`);
-- an application whose read model lives in this database updates it in the same
-- transaction (exactly-once apply). `retain` holds back pruning: entries above its
-- checkpoint are never deleted. A prune locks every consumer row of its space first, so a
-- concurrent reset or checkpoint cannot slip below it.

CREATE TABLE consumers (
    space_id    BIGINT  NOT NULL REFERENCES spaces (id),
    name        TEXT    NOT NULL,               -- validated: [A-Za-z0-9_.-]{1,128}
    checkpoint  BIGINT  NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    retain      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  BIGINT  NOT NULL,               -- store clock, microseconds
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (space_id, name)
);

-- Every prune, consumer reset and consumer removal, with who asked and when. Never deleted.
-- The newest `pruned` row of a space says which entries are gone (1..=to_seq): reads below
-- it fail with a typed error that names the actor and the time.
CREATE TABLE retention_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space_id    BIGINT NOT NULL REFERENCES spaces (id),
    kind        TEXT   NOT NULL,                -- pruned | consumer_reset | consumer_removed
    consumer    TEXT,
    from_seq    BIGINT NOT NULL,
    to_seq      BIGINT NOT NULL,
    entries     BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    at          BIGINT NOT NULL
);

CREATE INDEX retention_events_space ON retention_events (space_id, kind, id);
