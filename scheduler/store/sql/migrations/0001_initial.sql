-- The registry: Runners, Node Templates, Session Templates and runner credentials.

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
    update_time           timestamptz NOT NULL DEFAULT now()
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
    update_time        timestamptz NOT NULL DEFAULT now()
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
