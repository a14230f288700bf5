-- seqlease PostgreSQL schema, version 7: the refusal that lets a batch run as one statement.
--
-- A batch of plain grants and commits of one space can be written by a single
-- autocommitted statement that checks, as it writes, what the client assumed about the
-- slots (see crates/seqlease-postgres/src/one_statement.rs). When a check fails after some
-- rows were written, the statement must fail as a whole so that nothing of it commits; SQL
-- has no expression that raises, so this function does. Its SQLSTATE (SL001) tells the
-- client to run the batch again on the general path, which decides it from the rows.

CREATE FUNCTION seqlease_refuse_batch(detail TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SL001', MESSAGE = detail;
END
$$;
