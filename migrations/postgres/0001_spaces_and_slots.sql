-- seqlease PostgreSQL schema, version 1: spaces, slots, and the registry of live owners.
--
-- A space is an independent ordered log. Its counters live in one row that every write
-- batch locks (SELECT ... FOR UPDATE) before it touches the space's slots: that row lock is
-- what makes grants, commits and resolutions compare-and-swap steps across processes and
-- machines. Slots reference the space by its integer id, so the name is stored once.
--
-- All timestamps are BIGINT microseconds since the UNIX epoch, read from the database clock
-- (now()), never from a client.

CREATE TABLE spaces (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,        -- validated: [A-Za-z0-9_.-]{1,128}
    last_seq    BIGINT  NOT NULL DEFAULT 0,     -- highest allocated seq (0: none yet)
    watermark   BIGINT  NOT NULL DEFAULT 0,     -- every slot 1..=watermark is resolved
    in_flight   BIGINT  NOT NULL DEFAULT 0,     -- LEASED slots right now
    capacity    BIGINT  NOT NULL CHECK (capacity > 0),
    created_at  BIGINT  NOT NULL
);

-- One row per allocated seq. `state`: 0 = LEASED, 1 = COMMITTED, 2 = GAP (see `gap_reason`).
CREATE TABLE slots (
    space_id            BIGINT   NOT NULL REFERENCES spaces (id),
    seq                 BIGINT   NOT NULL,
    state               SMALLINT NOT NULL CHECK (state IN (0, 1, 2)),

    -- The lease as granted.
    token               BYTEA    NOT NULL,      -- 16 random bytes
    operation_id        TEXT     NOT NULL,      -- the caller's idempotency key
    projection_type     TEXT     NOT NULL,
    owner               TEXT     NOT NULL,
    fence_resource      TEXT,
    fence_epoch         BIGINT,                 -- u64 stored bit-for-bit in an i64
    leased_at           BIGINT   NOT NULL,
    expires_at          BIGINT   NOT NULL,
    renewals            INTEGER  NOT NULL DEFAULT 0,

    -- Work recorded under the lease while it is LEASED.
    partial             BYTEA,
    result_kind         TEXT,                   -- completed result; NULL when none
    result_payload      BYTEA,
    result_source_event TEXT,

    -- Resolution (NULL while LEASED).
    resolved_at         BIGINT,
    committed_op_id     TEXT,
    op_kind             TEXT,
    op_payload          BYTEA,
    op_source_event     TEXT,
    recovery            TEXT,                   -- JSON RecoveryInfo when recovery committed it
    gap_reason          TEXT,                   -- expired | released | superseded | manual
    superseded_by       BIGINT,
    gap_detail          TEXT,

    PRIMARY KEY (space_id, seq)
);

-- Unresolved slots in seq order: the watermark is MIN(seq) over it, and the cleanup scan for
-- expired slots (ascending, I8) and the dead-owner probe read it. Resolved slots, the vast
-- majority, never enter it.
CREATE INDEX slots_leased ON slots (space_id, seq) INCLUDE (expires_at, owner) WHERE state = 0;

-- I6 at the database level: at most one committed operation per (space, operation id).
CREATE UNIQUE INDEX slots_committed_operation
    ON slots (space_id, committed_op_id) WHERE committed_op_id IS NOT NULL;

-- Engine owners that hold a session-level advisory lock while their process lives (crash
-- detection sooner than the TTL, see docs/postgres.md). `lock_key` is the second key of the
-- two-key advisory lock; the first key is the constant 0x5E9_1EA5 (99_163_813).
CREATE TABLE owners (
    owner          TEXT   PRIMARY KEY,
    lock_key       INTEGER NOT NULL,
    registered_at  BIGINT NOT NULL
);
