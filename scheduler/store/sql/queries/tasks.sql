-- claim --
-- Lease up to $2 of a Runner's queued tasks to the instances in $3 (one entry per task), in
-- dispatch order (scheduler/domain/dispatch_order.py, whose ``grants`` this applies):
--   shares:  the Runner's non-empty queues (one per Session) and what a turn costs each in
--            virtual time, from its level ($11 strict, else $12 ratio per level), its fairness
--            key's weight ($9 keys, $10 weights; 1 otherwise) and the Sessions in its key; a
--            queue counts as at most one turn of its level's slowest ahead of its furthest
--            behind;
--   chosen:  the $2 earliest tasks (a queue's j-th turn, from 1, of up to $13 tasks ends at
--            vtime + j * $13 * stride; at most 2 * ceil($2 * share / shares) + $13 tasks a
--            queue while that leaves enough), counted per Session;
--   fair:    that many of each Session's queued nodes, longest remaining path first;
--   rest:    when nodes were skipped (locked by another claimer, or of templates the
--            instances do not take), the batch is filled from any Session, so it never comes
--            back short while work it may take is queued.
-- SKIP LOCKED, so concurrent claimers never get the same task; the picked rows are updated
-- by their row address. Inputs are looked up by primary key, one per upstream node, and left
-- out (NULL) when they weigh more than $8 bytes: that task cannot be sent. The attempt's time
-- is at most $7 ms, whatever the row says, so no stored timeout can overflow the deadline.
-- Each row returns what it costs its queue in virtual time (``turns``): the bookkeeping
-- charges it.
-- $14..$16 (Session, Runner, tasks that joined or left): the queue moves of this
-- transaction's own changes, which the bookkeeping writes only after the claim (a
-- settlement's children made ready, its retries, what it marked as never to run). The claim
-- sees the queues as they will be (dispatch_order.pending): a queue that was empty and fills
-- again resumes at the front of its level, else of the Runner, as the bookkeeping will resume
-- it.
WITH pending AS (
    SELECT p.session_id, sum(p.queued)::integer AS queued
    FROM unnest($14::bigint[], $15::text[], $16::integer[]) AS p(session_id, runner, queued)
    WHERE p.runner = $1
    GROUP BY p.session_id
), queued_now AS (
    SELECT q.session_id, q.priority, q.fairness_key, q.dispatched, q.vtime,
           q.queued + COALESCE(p.queued, 0) AS queued
    FROM queues AS q LEFT JOIN pending AS p USING (session_id)
    WHERE q.runner = $1 AND q.queued > 0
    UNION ALL
    SELECT q.session_id, q.priority, q.fairness_key, q.dispatched,
           greatest(q.vtime, COALESCE(
               (SELECT min(o.vtime) FROM queues AS o
                WHERE o.runner = $1 AND o.priority = q.priority AND o.queued > 0),
               (SELECT min(o.vtime) FROM queues AS o WHERE o.runner = $1 AND o.queued > 0),
               q.vtime)) AS vtime,
           p.queued
    FROM pending AS p JOIN queues AS q ON q.session_id = p.session_id AND q.runner = $1
    WHERE q.queued = 0 AND p.queued > 0
), flows AS (
    SELECT q.session_id, q.priority, q.vtime, q.queued, q.dispatched,
           COALESCE(($10::float8[])[array_position($9::text[], q.fairness_key)], 1.0) AS weight,
           count(*) OVER key AS sessions, row_number() OVER key AS nth
    FROM queued_now AS q
    WHERE q.queued > 0
      -- A disabled Runner gets no new work.
      AND EXISTS (SELECT 1 FROM runners AS r WHERE r.name = $1 AND r.enabled)
      -- Instances that take only some of the Runner's templates: Sessions with such work
      -- (one index probe each; a scalar subquery, so it is never planned as a scan of them all).
      AND ($6::text[] IS NULL
           OR NOT EXISTS (SELECT 1 FROM node_templates AS t
                          WHERE t.runner = $1 AND t.name <> ALL($6))
           OR (SELECT true FROM nodes AS n
               WHERE n.runner = $1 AND n.state = 'queued'
                 AND n.session_id = q.session_id AND n.node_template = ANY($6)
               LIMIT 1))
    WINDOW key AS (PARTITION BY q.priority, q.fairness_key)
), shares AS (
    -- A level's weight is the sum of its keys' weights (each counted once: nth = 1).
    SELECT session_id, priority, queued, dispatched, stride, vtime AS stored,
           LEAST(vtime, front + $13::integer * max(stride) OVER (PARTITION BY priority))
               AS vtime
    FROM (SELECT f.*, min(f.vtime) OVER level AS front,
                 sum(f.weight) FILTER (WHERE f.nth = 1) OVER level * f.sessions / f.weight
                 * CASE WHEN $11 THEN 1
                        ELSE power($12::float8, (SELECT max(priority) FROM flows) - f.priority)
                   END AS stride
          FROM flows AS f
          WINDOW level AS (PARTITION BY f.priority)) AS s
), firsts AS (
    -- Only the $2 queues with the earliest first turns can have any of the $2 turns.
    SELECT * FROM shares
    ORDER BY CASE WHEN $11 THEN priority END DESC, vtime + $13::integer * stride, dispatched, session_id
    LIMIT $2
), bounded AS (
    SELECT f.*, LEAST(f.queued, $2, 2 * ceil($2 * (1.0 / f.stride) / sum(1.0 / f.stride) OVER (
               PARTITION BY CASE WHEN $11 THEN f.priority END ORDER BY f.session_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) + $13::integer)::integer
               AS bound
    FROM firsts AS f
), capped AS (
    -- The bounds hold only while they leave the batch enough turns.
    SELECT b.*, CASE WHEN sum(b.bound) OVER () >= $2 THEN b.bound
                     ELSE LEAST(b.queued, $2) END AS most
    FROM bounded AS b
), chosen AS (
    SELECT t.session_id, count(*) AS tasks,
           min(t.stride) + (min(t.vtime) - min(t.stored)) / count(*) AS turns
    FROM (SELECT c.session_id, c.stride, c.vtime, c.stored FROM capped AS c
          CROSS JOIN LATERAL generate_series(1, c.most) AS i
          ORDER BY CASE WHEN $11 THEN c.priority END DESC,
                   c.vtime + ((i - 1) / $13::integer + 1) * $13::integer * c.stride,
                   c.dispatched, c.session_id
          LIMIT $2) AS t
    GROUP BY t.session_id
), fair AS (
    SELECT n.tid, n.session_id, n.idx, n.upstream, c.turns FROM chosen AS c
    CROSS JOIN LATERAL (
        SELECT ctid AS tid, session_id, idx, upstream FROM nodes
        WHERE runner = $1 AND state = 'queued' AND session_id = c.session_id
          AND ($6::text[] IS NULL OR node_template = ANY($6))
        ORDER BY rank DESC, idx
        LIMIT c.tasks
        FOR UPDATE SKIP LOCKED
    ) AS n
), rest AS (
    SELECT r.tid, r.session_id, r.idx, r.upstream, s.stride AS turns
    FROM (SELECT ctid AS tid, session_id, idx, upstream FROM nodes
          WHERE runner = $1 AND state = 'queued'
            AND ($6::text[] IS NULL OR node_template = ANY($6))
            AND EXISTS (SELECT 1 FROM runners AS r WHERE r.name = $1 AND r.enabled)
            AND ctid <> ALL (ARRAY(SELECT tid FROM fair))
          ORDER BY session_id, rank DESC, idx
          LIMIT $2 - (SELECT count(*) FROM fair)
          FOR UPDATE SKIP LOCKED) AS r
    LEFT JOIN shares AS s USING (session_id)
), picked AS (
    SELECT * FROM fair UNION ALL SELECT * FROM rest
    LIMIT $2
), numbered AS (
    SELECT tid, session_id, idx, upstream, turns,
           row_number() OVER (ORDER BY session_id, idx) AS rn
    FROM picked
)
UPDATE nodes AS n
SET state = 'running', attempt = n.attempt + 1, attempt_id = gen_random_uuid(),
    lease_owner = ($3::text[])[numbered.rn], lease_deadline = $4::timestamptz,
    start_time = $5::timestamptz,
    attempt_deadline = $5::timestamptz
        + LEAST(GREATEST(n.attempt_timeout_ms, 1), $7::bigint) * interval '1 millisecond',
    not_before = NULL
FROM numbered
CROSS JOIN LATERAL (SELECT name, parameters, traceparent, tracestate FROM sessions
                    WHERE id = numbered.session_id LIMIT 1) AS s
-- Each upstream node by primary key (the LIMIT keeps it a lookup whatever the estimates).
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(COALESCE(u.outputs_bytes, octet_length(u.outputs::text))), 0)
               AS inputs_bytes
    FROM unnest(numbered.upstream) AS up(idx)
    CROSS JOIN LATERAL (SELECT outputs_bytes, outputs FROM nodes
                        WHERE session_id = numbered.session_id AND idx = up.idx LIMIT 1) AS u
) AS sizes
-- By address (a TID scan), whatever the planner guesses of the batch's size.
WHERE n.ctid = ANY (ARRAY(SELECT tid FROM picked)) AND n.ctid = numbered.tid
RETURNING n.session_id, n.idx, n.key, n.node_template, n.attempt, n.attempt_id::text,
          n.lease_owner, n.lease_deadline, n.attempt_deadline, n.config,
          n.ready_time, s.name AS session_name, s.parameters, s.traceparent, s.tracestate, n.files,
          COALESCE(numbered.turns, 1) AS turns,
          sizes.inputs_bytes,
          CASE WHEN cardinality(n.upstream) = 0 THEN '{}'::jsonb
               WHEN sizes.inputs_bytes > $8::bigint THEN NULL
               ELSE (SELECT jsonb_object_agg(u.key, u.outputs)
                     FROM unnest(n.upstream) AS up(idx)
                     CROSS JOIN LATERAL (SELECT key, outputs FROM nodes
                                         WHERE session_id = n.session_id AND idx = up.idx
                                         LIMIT 1) AS u)
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
-- Nodes that will never run because something upstream failed or was cancelled, with the
-- state each had.
WITH target AS (
    SELECT n.session_id, n.idx, n.state FROM nodes AS n
    JOIN unnest($1::bigint[], $2::integer[]) AS x(session_id, idx) USING (session_id, idx)
    WHERE n.state IN ('waiting', 'queued', 'retry_wait')
    ORDER BY n.session_id, n.idx
    FOR UPDATE OF n
)
UPDATE nodes AS n
SET state = 'upstream_failed', end_time = $3
FROM target
WHERE n.session_id = target.session_id AND n.idx = target.idx
RETURNING n.session_id, n.idx, target.state AS old_state, n.runner;

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
