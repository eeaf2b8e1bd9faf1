-- What the provisioner wants and sees per Runner, and the instances told to drain.

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
