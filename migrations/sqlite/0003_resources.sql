-- seqlease SQLite schema, version 3: resource leases and their audit history.
--
-- One row per resource ever acquired. The row is never deleted: it carries the epoch, the
-- fencing token that grows on every change of holder (I9), across release, expiry and
-- restarts. `holder` … `metadata` describe the current or last lease; `released` is 1 when
-- nobody holds it (released, expired and swept, force-released). Acquire, renew and release
-- are compare-and-swap steps on the row inside one `BEGIN IMMEDIATE` transaction on the
-- write connection; a batch that grants or commits a fenced sequence lease reads the row in
-- its own transaction and refuses the write when the epoch moved on.

CREATE TABLE resources (
    name          TEXT    PRIMARY KEY,
    epoch         INTEGER NOT NULL DEFAULT 0,     -- u64 stored bit for bit; only ever grows
    holder        TEXT,
    acquired_at   INTEGER,                        -- store clock, microseconds
    expires_at    INTEGER,
    renewals      INTEGER NOT NULL DEFAULT 0,
    max_renewals  INTEGER,                        -- NULL: unlimited
    metadata      TEXT,
    released      INTEGER NOT NULL DEFAULT 1 CHECK (released IN (0, 1))
) WITHOUT ROWID;

-- Live leases by holder (release all of an agent, list an agent's leases).
CREATE INDEX resources_held ON resources (holder) WHERE released = 0;

-- Audit history: one row per acquire, renew, release, expiry, force-release or conflict.
CREATE TABLE resource_events (
    id        INTEGER PRIMARY KEY,                -- insertion order
    resource  TEXT    NOT NULL,
    kind      TEXT    NOT NULL
        CHECK (kind IN ('acquired', 'renewed', 'released', 'expired', 'force_released', 'conflict')),
    agent     TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    epoch     INTEGER NOT NULL,
    at        INTEGER NOT NULL
);

CREATE INDEX resource_events_resource ON resource_events (resource, id);
