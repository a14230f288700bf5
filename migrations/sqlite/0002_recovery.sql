-- seqlease SQLite schema, version 2: recovery (claims on expired slots, the queue of parked
-- work) and the recorded part of the lease history.
--
-- A cleaner claims expired LEASED slots before it resolves them: the claim is a short lease
-- of its own (`claim_token`, `claimed_by`, `claim_expires_at`, store clock in microseconds)
-- and `attempts` counts how many times the slot was claimed. Claims are taken and checked
-- inside `BEGIN IMMEDIATE` transactions on the write connection, like every other write.
--
-- The cleanup scan (`state = 0 AND expires_at <= now`, ascending seq) walks the partial
-- index `slots_leased (space_id, seq, expires_at) WHERE state = 0` of migration 1.

ALTER TABLE slots ADD COLUMN claim_token      BLOB;     -- 16 random bytes while claimed
ALTER TABLE slots ADD COLUMN claimed_by       TEXT;
ALTER TABLE slots ADD COLUMN claim_expires_at INTEGER;
ALTER TABLE slots ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0;

-- Recorded work that recovery set aside instead of dropping it (I5), until it is
-- re-sequenced or an operator discards it. Rows are never deleted (the audit of what
-- happened to the work).
CREATE TABLE parked (
    id                  INTEGER PRIMARY KEY,    -- rowid alias: the queue id
    space_id            INTEGER NOT NULL REFERENCES spaces (id),
    original_seq        INTEGER NOT NULL,       -- the slot the work was leased for (now a gap)
    operation_id        TEXT    NOT NULL,
    projection_type     TEXT    NOT NULL,
    partial             BLOB,
    result_kind         TEXT,                   -- recorded result; NULL when none
    result_payload      BLOB,
    result_source_event TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    state               TEXT    NOT NULL
        CHECK (state IN ('parked', 'manual', 'resequenced', 'discarded')),
    note                TEXT,
    parked_at           INTEGER NOT NULL,
    resequenced_at_seq  INTEGER
);

-- The cleanup service and operators list open items (parked, manual) oldest first.
CREATE INDEX parked_open ON parked (state, id) WHERE state IN ('parked', 'manual');

-- Lease history: only the transitions a slot row cannot show (renewed, handed_to_recovery,
-- expired, claimed, recovered by re-sequencing, parked, manual). Grants and resolutions are
-- derived from the slot rows when the history is read. Pruned by age.
CREATE TABLE slot_events (
    id        INTEGER PRIMARY KEY,              -- insertion order
    space_id  INTEGER NOT NULL REFERENCES spaces (id),
    seq       INTEGER NOT NULL,
    at        INTEGER NOT NULL,                 -- store clock, microseconds
    kind      TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    detail    TEXT
);

CREATE INDEX slot_events_slot ON slot_events (space_id, seq);
CREATE INDEX slot_events_at ON slot_events (at);
