-- insert_artifact --
-- A new artefact, 'writing' until its content is complete.
INSERT INTO artifacts (id, state, session_id, idx, attempt, filename, source, create_time,
                       expire_time)
VALUES ($1, 'writing', $2, $3, $4, $5, $6, $7, $8);

-- artifact_ready --
-- Its content is complete: record its size and digest, and when it expires.
WITH updated AS (
    UPDATE artifacts SET state = 'ready', size_bytes = $2, sha256 = $3, expire_time = $4
    WHERE id = $1 AND state = 'writing'
    RETURNING *
)
SELECT a.*, s.name AS session_name, s.end_time AS session_end_time, n.key AS node_key
FROM updated AS a
LEFT JOIN sessions AS s ON s.id = a.session_id
LEFT JOIN nodes AS n ON n.session_id = a.session_id AND n.idx = a.idx;

-- artifact_by_id --
-- One artefact, with its Session's name and end and its node's key.
SELECT a.*, s.name AS session_name, s.end_time AS session_end_time, n.key AS node_key
FROM artifacts AS a
LEFT JOIN sessions AS s ON s.id = a.session_id
LEFT JOIN nodes AS n ON n.session_id = a.session_id AND n.idx = a.idx
WHERE a.id = $1;

-- session_artifacts --
-- A page of a Session's ready artefacts, oldest first, after a (create_time, id) position.
SELECT a.*, s.name AS session_name, s.end_time AS session_end_time, n.key AS node_key
FROM artifacts AS a
JOIN sessions AS s ON s.id = a.session_id
LEFT JOIN nodes AS n ON n.session_id = a.session_id AND n.idx = a.idx
WHERE a.session_id = $1 AND a.state = 'ready'
  AND ($2::timestamptz IS NULL OR (a.create_time, a.id) > ($2, $3::text))
ORDER BY a.create_time, a.id
LIMIT $4;

-- artifact_owners --
-- The Session of each ready artefact named (NULL: an upload no Session uses yet).
SELECT id, session_id FROM artifacts WHERE id = ANY($1::text[]) AND state = 'ready';

-- attach_artifacts --
-- A new Session takes ready uploads that no Session uses; they no longer expire on their own.
UPDATE artifacts SET session_id = $2, expire_time = NULL
WHERE id = ANY($1::text[]) AND session_id IS NULL AND state = 'ready'
RETURNING id;

-- attempt_holder --
-- The node an attempt id names, and whether that attempt is the node's running one.
SELECT n.session_id, n.idx, n.attempt, n.attempt_id::text, n.runner,
       n.state = 'running' AS running
FROM nodes AS n WHERE n.attempt_id = $1::uuid;

-- stamp_ended_artifacts --
-- Artefacts of Sessions that ended get their deletion time: the end plus the retention.
WITH due AS (
    SELECT a.id, s.end_time FROM artifacts AS a
    JOIN sessions AS s ON s.id = a.session_id
    WHERE a.expire_time IS NULL AND a.session_id IS NOT NULL AND s.end_time IS NOT NULL
    ORDER BY a.id
    LIMIT $2
    FOR UPDATE OF a SKIP LOCKED
)
UPDATE artifacts AS a SET expire_time = due.end_time + $1::interval
FROM due WHERE a.id = due.id
RETURNING a.id;

-- due_artifacts --
-- Artefacts past their deletion time, locked; another replica's janitor skips them.
SELECT id FROM artifacts
WHERE expire_time <= $1
ORDER BY expire_time
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- delete_artifacts --
-- Forget artefacts whose content is gone.
DELETE FROM artifacts WHERE id = ANY($1::text[]);

-- next_artifact_expiry --
-- When the janitor must look again.
SELECT min(expire_time) AS at FROM artifacts WHERE expire_time IS NOT NULL;
