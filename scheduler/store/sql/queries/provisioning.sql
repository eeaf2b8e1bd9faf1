-- work_by_runner --
-- Queued and running tasks per Runner.
SELECT runner,
       count(*) FILTER (WHERE state = 'queued')::integer AS queued,
       count(*) FILTER (WHERE state = 'running')::integer AS running
FROM nodes
WHERE state IN ('queued', 'running')
GROUP BY runner;

-- save_runner_status --
-- Record what the reconciler wants and sees; an error keeps its first time while it lasts,
-- and an empty one clears it.
INSERT INTO runner_status (runner, desired, observed, ready, last_error, last_error_time,
                           update_time)
SELECT x.runner, x.desired, x.observed, x.ready, COALESCE(x.last_error, ''), x.last_error_time,
       $7::timestamptz
FROM unnest($1::text[], $2::integer[], $3::integer[], $4::integer[], $5::text[],
            $6::timestamptz[])
     AS x(runner, desired, observed, ready, last_error, last_error_time)
WHERE EXISTS (SELECT 1 FROM runners AS r WHERE r.name = x.runner)
ON CONFLICT (runner) DO UPDATE
SET desired = excluded.desired, observed = excluded.observed, ready = excluded.ready,
    last_error = excluded.last_error,
    last_error_time = CASE WHEN excluded.last_error = '' THEN NULL
                           WHEN excluded.last_error = runner_status.last_error
                               THEN runner_status.last_error_time
                           ELSE excluded.last_error_time END,
    update_time = excluded.update_time;

-- runner_status --
-- The recorded status of the given Runners, with their live task counts.
SELECT r.name AS runner, COALESCE(s.desired, 0) AS desired, COALESCE(s.observed, 0) AS observed,
       COALESCE(s.ready, 0) AS ready, COALESCE(s.last_error, '') AS last_error,
       s.last_error_time,
       (SELECT count(*) FROM nodes AS n WHERE n.runner = r.name AND n.state = 'queued') AS queued,
       (SELECT count(*) FROM nodes AS n WHERE n.runner = r.name AND n.state = 'running')
           AS running
FROM runners AS r LEFT JOIN runner_status AS s ON s.runner = r.name
WHERE r.name = ANY($1::text[]);

-- claim_drain --
-- Take one drain from the Runner's budget (live - desired - already draining), or nothing.
WITH status AS (
    SELECT runner, observed, desired FROM runner_status WHERE runner = $2 FOR UPDATE
)
INSERT INTO drains (instance_id, runner, reason, drain_time)
SELECT $1, $2, $3, $4 FROM status
WHERE status.observed - status.desired
      > (SELECT count(*) FROM drains AS d WHERE d.runner = $2)
ON CONFLICT (instance_id) DO NOTHING
RETURNING instance_id;

-- forget_drains --
-- Drains of instances that are gone.
DELETE FROM drains WHERE instance_id = ANY($1::text[]);
