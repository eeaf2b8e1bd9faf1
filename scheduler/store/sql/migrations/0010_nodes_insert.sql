-- Inserting a new Session's nodes (up to 100,000 in one COPY) costs a fraction of what it did:
--
-- 1. A node has an attempt id only once claimed: the unique index on it keeps only those, so
--    new nodes add no entry to it (a fifth of their COPY). Every query naming an attempt id
--    (= ANY) uses the partial index.
-- 2. The foreign key to sessions checked each node on its own (a third of the COPY, and more
--    under load); one check per statement over the rows it inserted keeps the same promise
--    (no node of a missing Session), and deleting a Session deletes its nodes as the
--    cascade did. Nodes are written only with their Session, in its transaction: no other
--    transaction can delete a Session whose nodes are being inserted.

ALTER TABLE nodes DROP CONSTRAINT nodes_attempt_id_key;
CREATE UNIQUE INDEX nodes_attempt_id_idx ON nodes (attempt_id) WHERE attempt_id IS NOT NULL;

ALTER TABLE nodes DROP CONSTRAINT nodes_session_id_fkey;

CREATE FUNCTION nodes_have_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added AS a
               WHERE NOT EXISTS (SELECT 1 FROM sessions AS s WHERE s.id = a.session_id)) THEN
        RAISE foreign_key_violation USING MESSAGE = 'nodes must belong to an existing session';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER nodes_have_sessions AFTER INSERT ON nodes
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION nodes_have_sessions();

CREATE FUNCTION sessions_take_their_nodes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM nodes WHERE session_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_take_their_nodes AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION sessions_take_their_nodes();
