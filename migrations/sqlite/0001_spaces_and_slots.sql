-- seqlease SQLite schema, version 1: spaces and their slots.
--
-- A space is an independent ordered log. Its counters live in one row that every write
-- transaction reads once and updates once. Slots reference the space by its integer id, so
-- the name is stored once, not in every slot row.

CREATE TABLE spaces (
    id          INTEGER PRIMARY KEY,            -- rowid alias; slots refer to it
    name        TEXT    NOT NULL UNIQUE,        -- validated: [A-Za-z0-9_.-]{1,128}
    last_seq    INTEGER NOT NULL DEFAULT 0,     -- highest allocated seq (0: none yet)
    watermark   INTEGER NOT NULL DEFAULT 0,     -- every slot 1..=watermark is resolved
    in_flight   INTEGER NOT NULL DEFAULT 0,     -- LEASED slots right now
    capacity    INTEGER NOT NULL CHECK (capacity > 0),
    created_at  INTEGER NOT NULL                -- microseconds since the UNIX epoch
);

-- One row per allocated seq. `state`: 0 = LEASED, 1 = COMMITTED, 2 = GAP (see `gap_reason`).
-- All timestamps are microseconds since the UNIX epoch (store clock).
CREATE TABLE slots (
    space_id            INTEGER NOT NULL REFERENCES spaces (id),
    seq                 INTEGER NOT NULL,
    state               INTEGER NOT NULL CHECK (state IN (0, 1, 2)),

    -- The lease as granted.
    token               BLOB    NOT NULL,       -- 16 random bytes
    operation_id        TEXT    NOT NULL,       -- the caller's idempotency key
    projection_type     TEXT    NOT NULL,
    owner               TEXT    NOT NULL,
    fence_resource      TEXT,                   -- set with fence_epoch when granted under a resource lease
    fence_epoch         INTEGER,                -- u64 stored bit-for-bit in an i64
    leased_at           INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    renewals            INTEGER NOT NULL DEFAULT 0,

    -- Work recorded under the lease while it is LEASED.
    partial             BLOB,                   -- partial work (checkpoint)
    result_kind         TEXT,                   -- completed result; NULL when none
    result_payload      BLOB,
    result_source_event TEXT,

    -- Resolution (NULL while LEASED).
    resolved_at         INTEGER,
    committed_op_id     TEXT,                   -- operation id of the committed operation
    op_kind             TEXT,
    op_payload          BLOB,
    op_source_event     TEXT,
    recovery            TEXT,                   -- JSON RecoveryInfo when recovery committed it
    gap_reason          TEXT,                   -- expired | released | superseded | manual
    superseded_by       INTEGER,
    gap_detail          TEXT,

    PRIMARY KEY (space_id, seq)
) WITHOUT ROWID;

-- Unresolved slots in seq order. Serves the watermark (MIN(seq) of the LEASED slots of a
-- space) and, through the covered expires_at, the ordered scan for expired slots (I8).
-- Partial: resolved slots, the vast majority, never enter it.
CREATE INDEX slots_leased ON slots (space_id, seq, expires_at) WHERE state = 0;

-- I6 at the database level: at most one committed operation per (space, operation id).
CREATE UNIQUE INDEX slots_committed_operation
    ON slots (space_id, committed_op_id) WHERE committed_op_id IS NOT NULL;
