-- The expected schema after every migration. A new migration changes this file too;
-- tests/migration checks that the two agree.


CREATE TABLE runners (
    id                    bigint      PRIMARY KEY CHECK (id > 0),
    name                  text        NOT NULL UNIQUE,
    description           text        NOT NULL DEFAULT '',
    container_image       text        NOT NULL,
    cpu_limit             text        NOT NULL,
    memory_limit          text        NOT NULL,
    feature_internal_name text        NOT NULL DEFAULT '',
    enabled               boolean     NOT NULL DEFAULT true,
    min_pods              integer     NOT NULL DEFAULT 0 CHECK (min_pods >= 0),
    max_pods              integer     NOT NULL CHECK (max_pods >= min_pods),
    tasks_per_pod         integer     NOT NULL CHECK (tasks_per_pod >= 1),
    idle_period_ms        bigint      NOT NULL CHECK (idle_period_ms >= 0),
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    -- a Kubernetes PodTemplateSpec merged into the Runner's pods; NULL: none
    pod_template          jsonb       CHECK (jsonb_typeof(pod_template) = 'object')
);

-- Ids given by the caller (HEAT's own ids) and ids drawn here share one space:
-- inserts bump the sequence past the largest id in use.
CREATE SEQUENCE runners_id_seq OWNED BY runners.id;

CREATE INDEX runners_feature_idx ON runners (feature_internal_name, name);

CREATE TABLE node_templates (
    name               text             PRIMARY KEY,
    runner             text             NOT NULL REFERENCES runners (name) ON DELETE RESTRICT,
    description        text             NOT NULL DEFAULT '',
    config_schema      jsonb,
    default_config     jsonb            NOT NULL DEFAULT '{}',
    multiple_inputs    boolean          NOT NULL DEFAULT false,
    max_attempts       integer          NOT NULL CHECK (max_attempts >= 1),
    initial_backoff_ms bigint           NOT NULL CHECK (initial_backoff_ms >= 0),
    max_backoff_ms     bigint           NOT NULL CHECK (max_backoff_ms >= 0),
    backoff_multiplier double precision NOT NULL CHECK (backoff_multiplier >= 1),
    attempt_timeout_ms bigint           NOT NULL CHECK (attempt_timeout_ms > 0),
    create_time        timestamptz      NOT NULL DEFAULT now(),
    update_time        timestamptz      NOT NULL DEFAULT now()
);

-- Answers "which templates does this Runner execute" (delete guard, list filter).
CREATE INDEX node_templates_runner_idx ON node_templates (runner, name);

CREATE TABLE session_templates (
    name               text        PRIMARY KEY,
    description        text        NOT NULL DEFAULT '',
    default_parameters jsonb       NOT NULL DEFAULT '{}',
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    -- 0: Sessions created from it take the scheduler's default level.
    default_priority   integer     NOT NULL DEFAULT 0 CHECK (default_priority BETWEEN 0 AND 9)
);

-- Nodes are rows, not a JSON blob, so the foreign key guards deleting a Node
-- Template that a Session Template still uses.
CREATE TABLE session_template_nodes (
    session_template text    NOT NULL REFERENCES session_templates (name) ON DELETE CASCADE,
    position         integer NOT NULL,
    key              text    NOT NULL,
    node_template    text    NOT NULL REFERENCES node_templates (name) ON DELETE RESTRICT,
    config           jsonb   NOT NULL DEFAULT '{}',
    depends_on       text[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (session_template, position),
    UNIQUE (session_template, key)
);

CREATE INDEX session_template_nodes_node_template_idx
    ON session_template_nodes (node_template, session_template);

CREATE TABLE runner_credentials (
    id          text        PRIMARY KEY,
    runner      text        NOT NULL REFERENCES runners (name) ON DELETE CASCADE,
    -- Only a digest is kept: a leaked database does not leak credentials.
    secret_hash bytea       NOT NULL UNIQUE,
    description text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    revoke_time timestamptz
);

CREATE INDEX runner_credentials_runner_idx ON runner_credentials (runner, create_time DESC);


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
    end_time         timestamptz,
    -- W3C trace context of the span that created the Session (CreateSession's server span, or
    -- the caller's): the parent of its nodes' dispatch spans. Empty when nothing traced it.
    traceparent      text        NOT NULL DEFAULT '',
    tracestate       text        NOT NULL DEFAULT '',
    -- Dispatch order: its level (higher first) and its fairness key (a label's value).
    priority         integer     NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 9),
    fairness_key     text        NOT NULL DEFAULT ''
);

CREATE INDEX sessions_create_time_idx ON sessions (create_time DESC, id DESC);
CREATE INDEX sessions_state_idx ON sessions (state, create_time DESC, id DESC);
CREATE INDEX sessions_template_idx ON sessions (session_template, create_time DESC, id DESC);

-- One row per node. A node whose state is 'queued' is a task waiting for its Runner; one in
-- 'running' holds a lease. The retry policy and runner are copied from the Node Template at
-- creation, so later template edits never reach a Session that exists.
CREATE TABLE nodes (
    -- Its Session (a statement-level check, below, not a foreign key: see migration 0010).
    session_id         bigint           NOT NULL,
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
    attempt_id         uuid,
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
    -- The encoded size of the outputs, as posted: what they add to a downstream task.
    outputs_bytes      bigint,
    -- The files given to a node, by input name ({"file": "artifacts/<id>"}); NULL for none.
    files              jsonb,
    -- The longest remaining path from this node to the end of the DAG (the critical path).
    rank               double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, idx),
    UNIQUE (session_id, key)
);

-- Attempt ids are unique; a node has one only once claimed.
CREATE UNIQUE INDEX nodes_attempt_id_idx ON nodes (attempt_id) WHERE attempt_id IS NOT NULL;

-- Nodes belong to an existing Session, checked once per statement over the rows it inserted
-- (a foreign key checks each row: a third of inserting a 100,000-node Session); deleting a
-- Session deletes its nodes.
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
-- The claim: a Session's queued tasks at a Runner, longest remaining path first.
CREATE INDEX nodes_queue_idx ON nodes (runner, session_id, rank DESC, idx) WHERE state = 'queued';
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
    post_time   timestamptz NOT NULL,
    -- The kind of outcome (success, failure) the verdict answered; another kind is refused.
    outcome     text
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


CREATE TABLE runner_status (
    runner           text        PRIMARY KEY REFERENCES runners (name) ON DELETE CASCADE,
    desired          integer     NOT NULL DEFAULT 0,
    observed         integer     NOT NULL DEFAULT 0,
    ready            integer     NOT NULL DEFAULT 0,
    last_error       text        NOT NULL DEFAULT '',
    last_error_time  timestamptz,
    update_time      timestamptz NOT NULL
);

-- An instance told to drain. A replica may drain one of its idle instances only while the
-- Runner keeps more live instances than it wants, counting the ones already draining; the
-- row lock on runner_status makes that check and the insert one step.
CREATE TABLE drains (
    instance_id text        PRIMARY KEY,
    runner      text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    drain_time  timestamptz NOT NULL
);

CREATE INDEX drains_runner_idx ON drains (runner);

-- Which instance holds which running task (to requeue a failed instance's work at once).
CREATE INDEX nodes_lease_owner_idx ON nodes (lease_owner) WHERE state = 'running';

CREATE TABLE access_tokens (
    id          text        PRIMARY KEY,
    role        text        NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    -- Only a digest is kept: a leaked database does not leak tokens.
    secret_hash bytea       NOT NULL UNIQUE,
    description text        NOT NULL DEFAULT '',
    created_by  text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz,
    revoke_time timestamptz
);

CREATE INDEX access_tokens_create_time_idx ON access_tokens (create_time DESC, id);

-- Who changed what: one row per resource a change touched, written in its transaction.
CREATE TABLE audit_events (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time          timestamptz NOT NULL DEFAULT now(),
    actor_kind    text        NOT NULL,
    actor_subject text        NOT NULL,
    actor_role    text        NOT NULL,
    action        text        NOT NULL,
    resource      text        NOT NULL,
    name          text        NOT NULL,
    detail        jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_subject_idx ON audit_events (actor_subject, id DESC);
CREATE INDEX audit_events_resource_idx ON audit_events (resource, name, id DESC);

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

-- A Session's queue at one Runner: how many of its tasks are queued there, and the share of
-- the Runner it has had (dispatches, and virtual time: turns, each worth 1 / its share). The
-- rows of a Session are written only under its row lock (after its nodes, like everything).
CREATE TABLE queues (
    runner       text             NOT NULL,
    session_id   bigint           NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    priority     integer          NOT NULL,
    fairness_key text             NOT NULL,
    queued       integer          NOT NULL DEFAULT 0,
    dispatched   bigint           NOT NULL DEFAULT 0,
    vtime        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, runner)
);

-- The claim reads a Runner's non-empty queues; a queue that fills again looks up the front of
-- its level.
CREATE INDEX queues_ready_idx ON queues (runner, priority, vtime) WHERE queued > 0;

-- The latest successful attempts' durations of each Node Template, newest first (folded in
-- when a Session ends; dropped with the template).
CREATE TABLE template_durations (
    node_template text               PRIMARY KEY,
    samples_ms    double precision[] NOT NULL,
    update_time   timestamptz        NOT NULL
);
