-- Files of Sessions (artefacts). The content lives in the artefact store (a folder or an S3
-- bucket) under the id; a row is 'writing' until the content is complete, then 'ready'.
CREATE TABLE artifacts (
    id          text        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('writing', 'ready')),
    -- NULL: an upload that no Session uses yet. A Session is never deleted with artefacts
    -- left: their content would stay in the store with nothing naming it.
    session_id  bigint      REFERENCES sessions (id) ON DELETE RESTRICT,
    -- The node and attempt that returned it; NULL for a file given to the Session.
    idx         integer,
    attempt     integer,
    filename    text        NOT NULL DEFAULT '',
    source      text        NOT NULL,
    size_bytes  bigint      NOT NULL DEFAULT 0,
    sha256      text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL,
    -- When the janitor deletes it (the content, then the row): an unused upload's or an
    -- unfinished write's deadline, or its Session's end plus the retention, stamped after the
    -- Session ended. NULL while its Session runs.
    expire_time timestamptz
);

CREATE INDEX artifacts_session_idx ON artifacts (session_id, create_time, id);
CREATE INDEX artifacts_expire_idx ON artifacts (expire_time) WHERE expire_time IS NOT NULL;
-- Artefacts of Sessions not known to have ended: the few the janitor looks at to stamp.
CREATE INDEX artifacts_unstamped_idx ON artifacts (session_id)
    WHERE expire_time IS NULL AND session_id IS NOT NULL;

-- The files given to a node, by input name ({"file": "artifacts/<id>"}); NULL for none.
ALTER TABLE nodes ADD COLUMN files jsonb;
