-- seqlease PostgreSQL schema, version 6: no foreign key from slots to spaces.
--
-- Every slot insert fired the constraint's trigger (a FOR KEY SHARE lookup of the space
-- row): about a quarter of the time of a batch's write statement (auto_explain, batches of
-- 184 grants and 72 commits: 1.13 ms of ~4.7 ms). The batch inserts slots only with the id
-- of the space row it holds locked FOR UPDATE, and seqlease never deletes a space, so the
-- constraint could only ever catch a bug in that one statement. The other tables keep
-- theirs: they are written once per space, consumer or event, not once per slot.

ALTER TABLE slots DROP CONSTRAINT IF EXISTS slots_space_id_fkey;
