-- Leadership by lease (scheduler/domain/leadership.py): one row per duty for the current term,
-- and the terms that were, with how many leader-only writes each made.

-- The current term of each duty. Times are the database's (clock_timestamp()), so the replicas'
-- clocks never matter. A fenced transaction holds this row FOR KEY SHARE: renewals (which
-- change expire_time only) go on, while a takeover (which changes epoch, a key column through
-- the unique constraint) waits for it to end.
CREATE TABLE leadership (
    duty        text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    holder      text        NOT NULL,
    -- The backend of the holder's leadership connection while it holds the duty's advisory
    -- lock: when that connection ends (the holder died), a waiting replica takes over at once.
    holder_pid  integer,
    start_time  timestamptz NOT NULL,
    expire_time timestamptz NOT NULL,
    CONSTRAINT leadership_epoch_key UNIQUE (duty, epoch)
);

-- Every term, and the leader-only writes it made (counted by the fence, in the same
-- transaction as each write): the last of a term's writes precedes the start of the next.
CREATE TABLE leader_terms (
    duty            text        NOT NULL,
    epoch           bigint      NOT NULL,
    holder          text        NOT NULL,
    start_time      timestamptz NOT NULL,
    writes          bigint      NOT NULL DEFAULT 0,
    last_write_time timestamptz,
    PRIMARY KEY (duty, epoch)
);
