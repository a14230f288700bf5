-- seqlease PostgreSQL schema, version 2: recovery (claims on expired slots, the queue of
-- parked work).
--
-- A cleaner claims expired LEASED slots before it resolves them: the claim is a short lease
-- of its own (`claim_token`, `claimed_by`, `claim_expires_at`, store clock in microseconds)
-- and `attempts` counts how many times the slot was claimed. Claims are taken, and checked
-- at resolve, under the space row lock, like every other write of a space's slots.
--
-- The cleanup scan (`state = 0 AND expires_at <= now`, ascending seq) is served by the
-- partial index `slots_leased (space_id, seq) INCLUDE (expires_at, owner) WHERE state = 0`
-- of migration 1: it walks LEASED slots in seq order and filters on the included expiry.

ALTER TABLE slots
    ADD COLUMN claim_token      BYTEA,
    ADD COLUMN claimed_by       TEXT,
    ADD COLUMN claim_expires_at BIGINT,
    ADD COLUMN attempts         INTEGER NOT NULL DEFAULT 0;

-- Recorded work that recovery set aside instead of dropping it (I5), until it is
-- re-sequenced or an operator discards it. Rows are never deleted (the audit of what
-- happened to the work).
CREATE TABLE parked (
    id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space_id            BIGINT  NOT NULL REFERENCES spaces (id),
    original_seq        BIGINT  NOT NULL,       -- the slot the work was leased for (now a gap)
    operation_id        TEXT    NOT NULL,
    projection_type     TEXT    NOT NULL,
    partial             BYTEA,
    result_kind         TEXT,                   -- recorded result; NULL when none
    result_payload      BYTEA,
    result_source_event TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    state               TEXT    NOT NULL
        CHECK (state IN ('parked', 'manual', 'resequenced', 'discarded')),
    note                TEXT,
    parked_at           BIGINT  NOT NULL,
    resequenced_at_seq  BIGINT
);

-- The cleanup service and operators list open items (parked, manual) oldest first.
CREATE INDEX parked_open ON parked (state, id) WHERE state IN ('parked', 'manual');
