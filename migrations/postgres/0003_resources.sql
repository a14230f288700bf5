-- seqlease PostgreSQL schema, version 3: resource leases and their audit history.
--
-- One row per resource ever acquired. The row is never deleted: it carries the epoch, the
-- fencing token that grows on every change of holder (I9), across release, expiry and
-- restarts. `holder` … `metadata` describe the current or last lease; `released` is true
-- when nobody holds it (never held, released, expired and swept, force-released).
-- Acquire, renew and release are compare-and-swap steps on the row (SELECT … FOR UPDATE).
-- A batch that commits a fenced sequence lease reads the row FOR SHARE in its own
-- transaction and refuses the commit when the epoch moved on.

CREATE TABLE resources (
    name          TEXT    PRIMARY KEY,
    epoch         BIGINT  NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    holder        TEXT,
    acquired_at   BIGINT,
    expires_at    BIGINT,
    renewals      INTEGER NOT NULL DEFAULT 0,
    max_renewals  INTEGER,                       -- NULL: unlimited
    metadata      TEXT,
    released      BOOLEAN NOT NULL DEFAULT TRUE
);

-- Live leases by holder (release all of an agent, list an agent's leases).
CREATE INDEX resources_held ON resources (holder) WHERE NOT released;

-- Audit history: one row per acquire, renew, release, expiry, force-release or conflict.
CREATE TABLE resource_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resource  TEXT   NOT NULL,
    kind      TEXT   NOT NULL
        CHECK (kind IN ('acquired', 'renewed', 'released', 'expired', 'force_released', 'conflict')),
    agent     TEXT   NOT NULL,
    actor     TEXT   NOT NULL,
    epoch     BIGINT NOT NULL,
    at        BIGINT NOT NULL
);

CREATE INDEX resource_events_resource ON resource_events (resource, id);
