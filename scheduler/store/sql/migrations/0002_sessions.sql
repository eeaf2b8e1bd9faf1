-- Sessions, their nodes (which double as the task queue) and the per-Session change log.

CREATE TABLE sessions (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text        NOT NULL UNIQUE,
    session_template text        NOT NULL DEFAULT '',
    parameters       jsonb       NOT NULL DEFAULT '{}',
    labels           jsonb       NOT NULL DEFAULT '{}',
    -- Idempotency key of CreateSession; NULL when the caller gave none.
    request_id       text        UNIQUE,
    state            text        NOT NULL CHECK (state IN
                                     ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    state_reason     text        NOT NULL DEFAULT '',
    node_count       integer     NOT NULL CHECK (node_count > 0),
    -- Nodes not yet in a final state: the Session ends when this reaches zero.
    open_nodes       integer     NOT NULL CHECK (open_nodes >= 0),
    failed_nodes     integer     NOT NULL DEFAULT 0,
    cancelled_nodes  integer     NOT NULL DEFAULT 0,
    -- Last sequence number of the change log; bumped under this row's lock, so a Session's
    -- changes commit in sequence order and a Watch cursor never skips one.
    event_seq        bigint      NOT NULL DEFAULT 0,
    trace_id         text        NOT NULL DEFAULT '',
    create_time      timestamptz NOT NULL,
    start_time       timestamptz,
    end_time         timestamptz
);

CREATE INDEX sessions_create_time_idx ON sessions (create_time DESC, id DESC);
CREATE INDEX sessions_state_idx ON sessions (state, create_time DESC, id DESC);
CREATE INDEX sessions_template_idx ON sessions (session_template, create_time DESC, id DESC);

-- One row per node. A node whose state is 'queued' is a task waiting for its Runner; one in
-- 'running' holds a lease. The retry policy and runner are copied from the Node Template at
-- creation, so later template edits never reach a Session that exists.
CREATE TABLE nodes (
    session_id         bigint           NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    idx                integer          NOT NULL,
    key                text             NOT NULL,
    node_template      text             NOT NULL,
    runner             text             NOT NULL,
    config             jsonb            NOT NULL,
    upstream           integer[]        NOT NULL,
    downstream         integer[]        NOT NULL,
    -- Upstream nodes that have not succeeded yet; the node is ready at zero.
    waiting_on         integer          NOT NULL CHECK (waiting_on >= 0),
    state              text             NOT NULL CHECK (state IN
                                            ('waiting', 'queued', 'running', 'retry_wait',
                                             'succeeded', 'failed', 'cancelled',
                                             'upstream_failed')),
    attempt            integer          NOT NULL DEFAULT 0,
    -- Fencing token of the current (or last) attempt.
    attempt_id         uuid             UNIQUE,
    lease_owner        text,
    lease_deadline     timestamptz,
    attempt_deadline   timestamptz,
    not_before         timestamptz,
    max_attempts       integer          NOT NULL,
    initial_backoff_ms bigint           NOT NULL,
    max_backoff_ms     bigint           NOT NULL,
    backoff_multiplier double precision NOT NULL,
    attempt_timeout_ms bigint           NOT NULL,
    outputs            jsonb,
    error              jsonb,
    ready_time         timestamptz,
    start_time         timestamptz,
    end_time           timestamptz,
    PRIMARY KEY (session_id, idx),
    UNIQUE (session_id, key)
);

-- The claim: a Runner's queued tasks, oldest first.
CREATE INDEX nodes_queue_idx ON nodes (runner, ready_time, session_id, idx) WHERE state = 'queued';
-- The timekeeper: leases and attempts that run out, retries that come due.
CREATE INDEX nodes_lease_idx ON nodes (lease_deadline) WHERE state = 'running';
CREATE INDEX nodes_attempt_deadline_idx ON nodes (attempt_deadline) WHERE state = 'running';
CREATE INDEX nodes_retry_idx ON nodes (not_before) WHERE state = 'retry_wait';

-- Verdicts on posted results, so that posting the same result again gets the same answer.
CREATE TABLE results (
    attempt_id  uuid        PRIMARY KEY,
    session_id  bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    idx         integer     NOT NULL,
    attempt     integer     NOT NULL,
    status      text        NOT NULL,
    message     text        NOT NULL DEFAULT '',
    post_time   timestamptz NOT NULL
);

CREATE INDEX results_node_idx ON results (session_id, idx);

-- The change log a Watch streams from; seq is per Session, in commit order.
CREATE TABLE session_events (
    session_id bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    time       timestamptz NOT NULL,
    -- NULL for a change of the Session's own state.
    idx        integer,
    state      text        NOT NULL,
    attempt    integer     NOT NULL DEFAULT 0,
    -- The failure of a failed attempt, or why a Session ended.
    detail     jsonb,
    PRIMARY KEY (session_id, seq)
);
