-- session_by_request_id --
-- The Session an earlier CreateSession with the same idempotency key made.
SELECT name FROM sessions WHERE request_id = $1;

-- insert_session --
-- A new Session row; its nodes follow in one COPY (store/sessions.py: NODE_COLUMNS).
INSERT INTO sessions (name, session_template, parameters, labels, request_id, state,
                      node_count, open_nodes, trace_id, create_time, traceparent, tracestate,
                      priority, fairness_key)
VALUES ($1, $2, $3, $4, NULLIF($5, ''), 'pending', $6, $6, $7, $8, $9, $10, $11, $12)
RETURNING id;

-- insert_queues --
-- A new Session's queue at each Runner of its nodes (with how many are queued there, ready
-- now): a queue with work starts at the front of its level, else of the Runner
-- (dispatch_order.resumed).
INSERT INTO queues (runner, session_id, priority, fairness_key, queued, vtime)
SELECT x.runner, $1, $2, $3, x.queued,
       CASE WHEN x.queued = 0 THEN 0
            ELSE COALESCE((SELECT min(o.vtime) FROM queues AS o
                           WHERE o.runner = x.runner AND o.priority = $2 AND o.queued > 0),
                          (SELECT min(o.vtime) FROM queues AS o
                           WHERE o.runner = x.runner AND o.queued > 0),
                          0) END
FROM unnest($4::text[], $5::integer[]) AS x(runner, queued);

-- session_by_name --
-- One Session's own row.
SELECT * FROM sessions WHERE name = $1;

-- node_counts --
-- How many nodes of each Session are in each state.
SELECT session_id, state, count(*)::integer AS n
FROM nodes WHERE session_id = ANY($1::bigint[])
GROUP BY session_id, state;

-- session_nodes --
-- A Session's nodes in index (topological) order; upstream nodes by index.
SELECT idx, key, node_template, runner, config, state, attempt, outputs, error, ready_time,
       start_time, end_time, not_before, upstream, files
FROM nodes
WHERE session_id = $1
ORDER BY idx;

-- list_sessions --
-- A page of Sessions, newest first, after a (create_time, id) position, filtered.
SELECT * FROM sessions
WHERE ($1::timestamptz IS NULL OR (create_time, id) < ($1, $2))
  AND (cardinality($4::text[]) = 0 OR state = ANY($4))
  AND ($5::text = '' OR session_template = $5)
  AND ($6::timestamptz IS NULL OR create_time >= $6)
  AND ($7::timestamptz IS NULL OR create_time < $7)
ORDER BY create_time DESC, id DESC
LIMIT $3;

-- lock_sessions --
-- Lock Sessions in id order (after their nodes, as every writer does) for bookkeeping.
SELECT id, name, state, event_seq, open_nodes, failed_nodes, cancelled_nodes, start_time
FROM sessions WHERE id = ANY($1::bigint[])
ORDER BY id
FOR UPDATE;

-- update_sessions --
-- Write the bookkeeping computed for a batch of Sessions (locked), append their change logs and
-- move their queues, in one round trip; a settlement's verdicts ride along (its results rows,
-- remembered so a repeated post gets the same answer: inserted here, after the Session rows
-- are locked). A queue that fills again resumes at the front of its level, else of the Runner
-- (dispatch_order.resumed), before its turns are charged. The durations of the successful
-- nodes of the Sessions that end here are folded into their templates' latest $30 (newest
-- first).
WITH updated AS (
    UPDATE sessions AS s
    SET event_seq = x.event_seq, open_nodes = x.open_nodes, failed_nodes = x.failed_nodes,
        cancelled_nodes = x.cancelled_nodes, state = x.state,
        state_reason = COALESCE(x.state_reason, s.state_reason),
        start_time = x.start_time, end_time = x.end_time
    FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::integer[], $5::integer[],
                $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[])
         AS x(id, event_seq, open_nodes, failed_nodes, cancelled_nodes, state, state_reason,
              start_time, end_time)
    WHERE s.id = x.id
    RETURNING s.id, x.end_time IS NOT NULL AS ended
), remembered AS (
    INSERT INTO results (attempt_id, session_id, idx, attempt, status, message, post_time,
                         outcome)
    SELECT * FROM unnest($17::uuid[], $18::bigint[], $19::integer[], $20::integer[],
                         $21::text[], $22::text[], $23::timestamptz[], $24::text[])
    ON CONFLICT (attempt_id) DO NOTHING
), events AS (
    INSERT INTO session_events (session_id, seq, time, idx, state, attempt, detail)
    SELECT * FROM unnest($10::bigint[], $11::bigint[], $12::timestamptz[], $13::integer[],
                         $14::text[], $15::integer[], $16::jsonb[])
), moves AS (
    UPDATE queues AS q
    SET queued = greatest(q.queued + x.queued, 0),
        dispatched = q.dispatched + x.dispatched,
        vtime = x.turns + CASE
            -- (Also when a claim of this transaction took all it got: that claim saw it
            -- resumed, and counted its turns from there.)
            WHEN q.queued > 0 OR (x.queued <= 0 AND x.dispatched = 0) THEN q.vtime
            ELSE greatest(q.vtime, COALESCE(
                (SELECT min(o.vtime) FROM queues AS o
                 WHERE o.runner = q.runner AND o.priority = q.priority AND o.queued > 0),
                (SELECT min(o.vtime) FROM queues AS o
                 WHERE o.runner = q.runner AND o.queued > 0),
                q.vtime)) END
    FROM unnest($25::bigint[], $26::text[], $27::integer[], $28::integer[],
                $29::double precision[]) AS x(session_id, runner, queued, dispatched, turns)
    WHERE q.session_id = x.session_id AND q.runner = x.runner
), measured AS (
    SELECT n.node_template,
           (array_agg(extract(epoch FROM n.end_time - n.start_time) * 1000
                      ORDER BY n.end_time DESC))[1:$30] AS samples
    FROM (SELECT id FROM updated WHERE ended) AS u
    -- Only the Sessions that end here are read (OFFSET 0: an index scan for each of them).
    CROSS JOIN LATERAL (SELECT node_template, start_time, end_time FROM nodes
                        WHERE session_id = u.id AND state = 'succeeded'
                          AND start_time IS NOT NULL
                        OFFSET 0) AS n
    GROUP BY n.node_template
)
INSERT INTO template_durations AS d (node_template, samples_ms, update_time)
SELECT node_template, samples, $31::timestamptz FROM measured
-- In name order: concurrent Sessions ending lock the same rows in the same order.
ORDER BY node_template
ON CONFLICT (node_template) DO UPDATE
SET samples_ms = (excluded.samples_ms || d.samples_ms)[1:$30], update_time = excluded.update_time;

-- notify --
-- Wake listeners on other replicas (delivered at commit, so they see what we wrote); one
-- round trip for every channel and payload.
SELECT pg_notify(x.channel, x.payload) FROM unnest($1::text[], $2::text[]) AS x(channel, payload);

-- events_after --
-- A Session's changes after a sequence number, with the node's key.
SELECT e.seq, e.time, e.idx, e.state, e.attempt, e.detail, n.key, n.node_template, n.runner
FROM session_events AS e
LEFT JOIN nodes AS n ON n.session_id = e.session_id AND n.idx = e.idx
WHERE e.session_id = $1 AND e.seq > $2
ORDER BY e.seq
LIMIT $3;

-- cancel_nodes --
-- Cancel the given nodes (or all of a Session's when $2 is NULL) that are not final yet.
WITH target AS (
    SELECT session_id, idx FROM nodes
    WHERE session_id = $1 AND ($2::integer[] IS NULL OR idx = ANY($2))
      AND state IN ('waiting', 'queued', 'running', 'retry_wait')
    ORDER BY idx
    FOR UPDATE
), old AS (
    SELECT n.idx, n.state, n.attempt, n.attempt_id FROM nodes AS n
    JOIN target USING (session_id, idx)
)
UPDATE nodes AS n
SET state = $3, end_time = $4, lease_owner = NULL, lease_deadline = NULL
FROM old
WHERE n.session_id = $1 AND n.idx = old.idx
RETURNING n.idx, old.state AS old_state, n.attempt, old.attempt_id::text AS attempt_id,
          n.runner;

-- set_priority --
-- Move a Session to another level, and its queues with it: a queue with work goes to the
-- front of its new level, else of the Runner (dispatch_order.moved).
WITH moved AS (
    UPDATE sessions SET priority = $2 WHERE id = $1 AND priority <> $2 RETURNING id
)
UPDATE queues AS q
SET priority = $2,
    vtime = CASE WHEN q.queued = 0 THEN q.vtime
                 ELSE COALESCE((SELECT min(o.vtime) FROM queues AS o
                                WHERE o.runner = q.runner AND o.priority = $2
                                  AND o.queued > 0 AND o.session_id <> $1),
                               (SELECT min(o.vtime) FROM queues AS o
                                WHERE o.runner = q.runner AND o.queued > 0
                                  AND o.session_id <> $1),
                               q.vtime) END
FROM moved
WHERE q.session_id = moved.id;

-- descendants --
-- Every node downstream of the given ones (their whole subgraph), not yet final.
WITH RECURSIVE down(idx) AS (
    SELECT unnest(downstream) FROM nodes WHERE session_id = $1 AND idx = ANY($2::integer[])
    UNION
    SELECT unnest(n.downstream) FROM nodes AS n JOIN down ON n.session_id = $1 AND n.idx = down.idx
)
SELECT n.idx FROM nodes AS n JOIN down USING (idx)
WHERE n.session_id = $1 AND n.state IN ('waiting', 'queued', 'retry_wait')
ORDER BY n.idx;

-- node_index --
-- A node's index by key.
SELECT idx, state FROM nodes WHERE session_id = $1 AND key = $2;

-- count_sessions_by_state --
-- How many Sessions are in each state (for the metrics).
SELECT state, count(*)::integer AS n FROM sessions GROUP BY state;
