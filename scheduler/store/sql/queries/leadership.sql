-- leader_of --
-- The duty's current term, and the database's now (its clock is the only one that counts).
SELECT epoch, holder, holder_pid, start_time, expire_time, clock_timestamp() AS now
FROM leadership WHERE duty = $1;

-- take_lead --
-- Begin the next term of the duty for holder $2, if its lease ran out, or if the caller holds
-- the duty's advisory lock ($3, its backend) which the holder's connection held (so that
-- connection ended). Waits for the fenced transactions of the term it ends (they hold the row
-- FOR KEY SHARE; the epoch is a key column). Keeps the last 1000 terms of each duty.
WITH taken AS (
    INSERT INTO leadership AS l (duty, epoch, holder, holder_pid, start_time, expire_time)
    VALUES ($1, 1, $2, $3, clock_timestamp(), clock_timestamp() + $4 * interval '1 millisecond')
    ON CONFLICT (duty) DO UPDATE
    SET epoch = l.epoch + 1, holder = excluded.holder, holder_pid = excluded.holder_pid,
        start_time = excluded.start_time, expire_time = excluded.expire_time
    WHERE l.expire_time <= clock_timestamp()
       OR ($3::integer IS NOT NULL AND l.holder_pid IS NOT NULL)
    RETURNING epoch, start_time, expire_time
), recorded AS (
    INSERT INTO leader_terms (duty, epoch, holder, start_time)
    SELECT $1, epoch, $2, start_time FROM taken
), pruned AS (
    DELETE FROM leader_terms
    WHERE duty = $1 AND epoch <= (SELECT epoch FROM taken) - 1000
)
SELECT epoch, start_time, expire_time FROM taken;

-- renew_lead --
-- Extend the caller's term by $3 ms from now, if it is still current and has not run out; $4
-- is the backend of its connection if that holds the duty's advisory lock.
UPDATE leadership
SET expire_time = clock_timestamp() + $3 * interval '1 millisecond', holder_pid = $4
WHERE duty = $1 AND epoch = $2 AND expire_time > clock_timestamp()
RETURNING expire_time;

-- step_down --
-- End the caller's term now, if it is still current: another replica may take over at once.
UPDATE leadership SET expire_time = clock_timestamp(), holder_pid = NULL
WHERE duty = $1 AND epoch = $2 AND expire_time > clock_timestamp()
RETURNING epoch;

-- fence --
-- The first statement of a leader's transaction: go on only if term $2 is the duty's current
-- one and has not run out, and keep it so until this transaction ends (FOR KEY SHARE: a
-- renewal goes on, a takeover waits). The transaction may idle at most $3 (the database then
-- ends it). Counts the write against the term.
UPDATE leader_terms AS t SET writes = t.writes + 1, last_write_time = clock_timestamp()
FROM (
    SELECT duty, epoch FROM leadership
    WHERE duty = $1 AND epoch = $2 AND expire_time > clock_timestamp()
    FOR KEY SHARE
) AS l, set_config('idle_in_transaction_session_timeout', $3, true) AS idle
WHERE t.duty = l.duty AND t.epoch = l.epoch
RETURNING t.epoch;

-- set_lock_timeout --
-- How long this connection's statements wait for a lock ('0' waits for ever).
SELECT set_config('lock_timeout', $1, false);

-- try_lock --
-- Take the duty's advisory lock if nobody holds it (held until the connection ends).
SELECT pg_try_advisory_lock($1) AS locked;

-- wait_lock --
-- Take the duty's advisory lock, waiting for its holder's connection to end (or lock_timeout).
SELECT pg_advisory_lock($1);

-- unlock_all --
-- Give up the advisory locks this connection holds.
SELECT pg_advisory_unlock_all();
