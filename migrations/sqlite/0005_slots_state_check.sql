-- seqlease SQLite schema, version 5: the slots table's state check without an IN list.
--
-- Migration 1 declared `CHECK (state IN (0, 1, 2))`. SQLite evaluates an IN list in a
-- CHECK by building a temporary B-tree of the list, so every INSERT and every UPDATE of a
-- slot opened and tore one down: about 5 % of the write thread's profile in
-- `seqlease bench --db sqlite`, and the interleaved A/B in docs/benchmarks.md. The check
-- below accepts exactly the same values with plain comparisons.
--
-- SQLite cannot alter a CHECK constraint in place, so the table is rebuilt (the documented
-- create-copy-drop-rename procedure), with the same columns in the same order and the same
-- indexes. Upgrading a file copies every slot once; nothing references `slots`, so the
-- drop touches no other table.

CREATE TABLE slots_v5 (
    space_id            INTEGER NOT NULL REFERENCES spaces (id),
    seq                 INTEGER NOT NULL,
    state               INTEGER NOT NULL CHECK (state = 0 OR state = 1 OR state = 2),

    token               BLOB    NOT NULL,
    operation_id        TEXT    NOT NULL,
    projection_type     TEXT    NOT NULL,
    owner               TEXT    NOT NULL,
    fence_resource      TEXT,
    fence_epoch         INTEGER,
    leased_at           INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    renewals            INTEGER NOT NULL DEFAULT 0,

    partial             BLOB,
    result_kind         TEXT,
    result_payload      BLOB,
    result_source_event TEXT,

    resolved_at         INTEGER,
    committed_op_id     TEXT,
    op_kind             TEXT,
    op_payload          BLOB,
    op_source_event     TEXT,
    recovery            TEXT,
    gap_reason          TEXT,
    superseded_by       INTEGER,
    gap_detail          TEXT,

    -- Added by migration 2 (recovery claims).
    claim_token         BLOB,
    claimed_by          TEXT,
    claim_expires_at    INTEGER,
    attempts            INTEGER NOT NULL DEFAULT 0,

    PRIMARY KEY (space_id, seq)
) WITHOUT ROWID;

INSERT INTO slots_v5 (
    space_id, seq, state, token, operation_id, projection_type, owner, fence_resource,
    fence_epoch, leased_at, expires_at, renewals, partial, result_kind, result_payload,
    result_source_event, resolved_at, committed_op_id, op_kind, op_payload, op_source_event,
    recovery, gap_reason, superseded_by, gap_detail, claim_token, claimed_by,
    claim_expires_at, attempts)
SELECT
    space_id, seq, state, token, operation_id, projection_type, owner, fence_resource,
    fence_epoch, leased_at, expires_at, renewals, partial, result_kind, result_payload,
    result_source_event, resolved_at, committed_op_id, op_kind, op_payload, op_source_event,
    recovery, gap_reason, superseded_by, gap_detail, claim_token, claimed_by,
    claim_expires_at, attempts
FROM slots;

DROP TABLE slots;
ALTER TABLE slots_v5 RENAME TO slots;

-- The indexes of migration 1, unchanged.
CREATE INDEX slots_leased ON slots (space_id, seq, expires_at) WHERE state = 0;
CREATE UNIQUE INDEX slots_committed_operation
    ON slots (space_id, committed_op_id) WHERE committed_op_id IS NOT NULL;
