-- seqlease PostgreSQL schema, version 4: lease history.
--
-- The transitions a slot row cannot show (renewals, hand-overs to recovery, expiry and
-- claims, parking, re-sequencing, operator actions), one row each. Grants and resolutions
-- are derived from `slots` at query time and never written here. Rows older than the
-- cleanup service's retention are deleted (the only table seqlease deletes from).

CREATE TABLE slot_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space_id  BIGINT NOT NULL REFERENCES spaces (id),
    seq       BIGINT NOT NULL,
    at        BIGINT NOT NULL,                 -- store clock, microseconds
    kind      TEXT   NOT NULL,                 -- SlotEventKind::as_str
    actor     TEXT   NOT NULL,
    detail    TEXT
);

-- History of a slot (or a range of slots) in recorded order.
CREATE INDEX slot_events_slot ON slot_events (space_id, seq, id);
-- Pruning by age.
CREATE INDEX slot_events_at ON slot_events (at);
