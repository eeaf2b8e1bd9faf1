-- Dispatch order (issue 17): priorities, fairness keys, a queue per Session and Runner that
-- the claim shares the Runner by, the critical path within a Session, and the measured
-- durations of Node Templates that weigh it.

ALTER TABLE session_templates
    ADD COLUMN default_priority integer NOT NULL DEFAULT 0
        CHECK (default_priority BETWEEN 0 AND 9);

ALTER TABLE sessions
    ADD COLUMN priority integer NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 9),
    ADD COLUMN fairness_key text NOT NULL DEFAULT '';

ALTER TABLE nodes ADD COLUMN rank double precision NOT NULL DEFAULT 0;

-- The claim takes a Session's queued nodes longest remaining path first.
DROP INDEX nodes_queue_idx;
CREATE INDEX nodes_queue_idx ON nodes (runner, session_id, rank DESC, idx) WHERE state = 'queued';

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

-- The queues of the Sessions that exist (all on the same footing: no service counted yet).
INSERT INTO queues (runner, session_id, priority, fairness_key, queued)
SELECT n.runner, n.session_id, 5, '', count(*) FILTER (WHERE n.state = 'queued')
FROM nodes AS n
GROUP BY n.runner, n.session_id;
