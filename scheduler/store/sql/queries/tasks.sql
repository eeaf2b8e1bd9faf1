-- claim --
-- Lease up to $2 of a Runner's queued tasks, oldest first, to the instances in $3 (one
-- entry per task); SKIP LOCKED so concurrent claimers never get the same task. Inputs are
-- looked up by primary key, one per upstream node, and left out (NULL) when they weigh more
-- than $8 bytes: that task cannot be sent. The attempt's time is at most $7 ms, whatever the
-- row says, so no stored timeout can overflow the deadline.
WITH picked AS (
    SELECT session_id, idx FROM nodes
    WHERE runner = $1 AND state = 'queued'
      AND ($6::text[] IS NULL OR node_template = ANY($6))
      -- A disabled Runner gets no new work.
      AND EXISTS (SELECT 1 FROM runners AS r WHERE r.name = $1 AND r.enabled)
    ORDER BY ready_time, session_id, idx
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT session_id, idx, row_number() OVER (ORDER BY session_id, idx) AS rn FROM picked
)
UPDATE nodes AS n
SET state = 'running', attempt = n.attempt + 1, attempt_id = gen_random_uuid(),
    lease_owner = ($3::text[])[numbered.rn], lease_deadline = $4::timestamptz,
    start_time = $5::timestamptz,
    attempt_deadline = $5::timestamptz
        + LEAST(GREATEST(n.attempt_timeout_ms, 1), $7::bigint) * interval '1 millisecond',
    not_before = NULL
FROM numbered JOIN sessions AS s ON s.id = numbered.session_id
     CROSS JOIN LATERAL (
         SELECT COALESCE(sum(COALESCE(u.outputs_bytes, octet_length(u.outputs::text))), 0)
                    AS inputs_bytes
         FROM nodes AS me
         CROSS JOIN unnest(me.upstream) AS up(idx)
         JOIN nodes AS u ON u.session_id = me.session_id AND u.idx = up.idx
         WHERE me.session_id = numbered.session_id AND me.idx = numbered.idx
     ) AS sizes
WHERE n.session_id = numbered.session_id AND n.idx = numbered.idx
RETURNING n.session_id, n.idx, n.key, n.node_template, n.attempt, n.attempt_id::text,
          n.lease_owner, n.lease_deadline, n.attempt_deadline, n.config,
          n.ready_time, s.name AS session_name, s.parameters, s.traceparent, s.tracestate, n.files,
          sizes.inputs_bytes,
          CASE WHEN cardinality(n.upstream) = 0 THEN '{}'::jsonb
               WHEN sizes.inputs_bytes > $8::bigint THEN NULL
               ELSE (SELECT jsonb_object_agg(u.key, u.outputs)
                     FROM unnest(n.upstream) AS up(idx)
                     JOIN nodes AS u ON u.session_id = n.session_id AND u.idx = up.idx)
          END AS inputs;

-- held_nodes --
-- Lock the nodes that the posted attempts name, in lock order.
SELECT session_id, idx, runner, state, attempt, attempt_id::text, max_attempts,
       initial_backoff_ms, max_backoff_ms, backoff_multiplier, downstream, start_time,
       (SELECT s.traceparent FROM sessions AS s WHERE s.id = nodes.session_id) AS traceparent
FROM nodes WHERE attempt_id = ANY($1::uuid[])
ORDER BY session_id, idx
FOR UPDATE;

-- earlier_verdicts --
-- Verdicts already given to the posted attempts.
SELECT attempt_id::text, status, message, outcome FROM results
WHERE attempt_id = ANY($1::uuid[]);

-- insert_verdicts --
-- Remember the verdicts, so a repeated post gets the same answer.
INSERT INTO results (attempt_id, session_id, idx, attempt, status, message, post_time, outcome)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::integer[], $4::integer[], $5::text[],
                     $6::text[], $7::timestamptz[], $8::text[])
ON CONFLICT (attempt_id) DO NOTHING;

-- settle_nodes --
-- Move a batch of held nodes to their new states; a release gives the attempt back.
UPDATE nodes AS n
SET state = x.state,
    attempt = CASE WHEN x.state = 'queued' THEN n.attempt - 1 ELSE n.attempt END,
    outputs = CASE WHEN x.state = 'succeeded' THEN x.outputs::jsonb ELSE n.outputs END,
    outputs_bytes = CASE WHEN x.state = 'succeeded' THEN x.outputs_bytes
                         ELSE n.outputs_bytes END,
    error = COALESCE(x.error, n.error),
    not_before = x.not_before,
    ready_time = CASE WHEN x.state = 'queued' THEN $8::timestamptz ELSE n.ready_time END,
    end_time = CASE WHEN x.state IN ('succeeded', 'failed') THEN $8::timestamptz END,
    lease_owner = NULL, lease_deadline = NULL, attempt_deadline = NULL
-- Outputs arrive as JSON text: a JSON array would read as another array dimension.
FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::jsonb[],
            $6::timestamptz[], $7::uuid[], $9::bigint[])
     AS x(session_id, idx, state, outputs, error, not_before, attempt_id, outputs_bytes)
WHERE n.session_id = x.session_id AND n.idx = x.idx AND n.attempt_id = x.attempt_id;

-- release_upstream --
-- Count one more succeeded upstream for each child; children with none left are queued.
WITH delta AS (
    SELECT session_id, idx, count(*)::integer AS n
    FROM unnest($1::bigint[], $2::integer[]) AS c(session_id, idx)
    GROUP BY session_id, idx
), locked AS (
    SELECT n.session_id, n.idx FROM nodes AS n
    JOIN delta USING (session_id, idx)
    WHERE n.state = 'waiting'
    ORDER BY n.session_id, n.idx
    FOR UPDATE OF n
)
UPDATE nodes AS n
SET waiting_on = n.waiting_on - d.n,
    state = CASE WHEN n.waiting_on - d.n = 0 THEN 'queued' ELSE n.state END,
    ready_time = CASE WHEN n.waiting_on - d.n = 0 THEN $3::timestamptz ELSE n.ready_time END
FROM delta AS d JOIN locked USING (session_id, idx)
WHERE n.session_id = d.session_id AND n.idx = d.idx
RETURNING n.session_id, n.idx, n.state, n.runner;

-- mark_upstream_failed --
-- Nodes that will never run because something upstream failed or was cancelled.
UPDATE nodes AS n
SET state = 'upstream_failed', end_time = $3
FROM unnest($1::bigint[], $2::integer[]) AS x(session_id, idx)
WHERE n.session_id = x.session_id AND n.idx = x.idx
  AND n.state IN ('waiting', 'queued', 'retry_wait')
RETURNING n.session_id, n.idx;

-- extend_leases --
-- Push the lease deadline of attempts still running; the ones not returned are gone. A lease
-- (or an attempt's time) that already ran out is never extended: the timekeeper fails it.
UPDATE nodes SET lease_deadline = $2
WHERE attempt_id = ANY($1::uuid[]) AND state = 'running' AND lease_deadline < $2
  AND lease_deadline > $4 AND attempt_deadline > $4
  AND runner = $3
RETURNING attempt_id::text;

-- attempt_states --
-- Where the named attempts stand (for heartbeats naming attempts we did not extend).
SELECT attempt_id::text, state, lease_deadline, runner FROM nodes
WHERE attempt_id = ANY($1::uuid[]);

-- expired_attempts --
-- Running attempts whose lease or per-attempt time ran out, in lock order.
SELECT attempt_id::text,
       CASE WHEN attempt_deadline <= $1 THEN 'timeout' ELSE 'lease' END AS why,
       attempt_timeout_ms
FROM nodes
WHERE state = 'running' AND (lease_deadline <= $1 OR attempt_deadline <= $1)
ORDER BY session_id, idx
LIMIT $2;

-- due_retries --
-- Retries whose backoff has passed go back to the queue.
WITH due AS (
    SELECT session_id, idx FROM nodes
    WHERE state = 'retry_wait' AND not_before <= $1
    ORDER BY session_id, idx
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE nodes AS n SET state = 'queued', ready_time = $1, not_before = NULL
FROM due WHERE n.session_id = due.session_id AND n.idx = due.idx
RETURNING n.session_id, n.idx, n.attempt, n.runner;

-- next_deadline --
-- When the timekeeper must look again: the earliest lease, attempt deadline or retry.
SELECT LEAST(
    (SELECT min(lease_deadline) FROM nodes WHERE state = 'running'),
    (SELECT min(attempt_deadline) FROM nodes WHERE state = 'running'),
    (SELECT min(not_before) FROM nodes WHERE state = 'retry_wait')
) AS at;

-- expire_leases_of --
-- The tasks of instances that died: their leases end now, so the timekeeper requeues them.
WITH expired AS (
    UPDATE nodes SET lease_deadline = $2
    WHERE state = 'running' AND lease_owner = ANY($1::text[]) AND lease_deadline > $2
    RETURNING 1
)
SELECT count(*)::integer AS n FROM expired;
