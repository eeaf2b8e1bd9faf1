-- lock_runners --
-- Lock Runner rows, in name order so that two writers cannot deadlock.
SELECT name FROM runners WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE;

-- runners_by_name --
-- The Runners with the given names.
SELECT * FROM runners WHERE name = ANY($1::text[]);

-- runner_ids_taken --
-- Which of the given ids are in use, and by whom.
SELECT id, name FROM runners WHERE id = ANY($1::bigint[]);

-- bump_runner_id_sequence --
-- Move the id sequence past $1 and past every id in use, so drawn ids never collide
-- with ids that callers chose.
SELECT setval('runners_id_seq', s.top)
FROM (SELECT GREATEST(COALESCE(max(id), 0), $1::bigint) AS top FROM runners) AS s,
     runners_id_seq AS q
WHERE s.top > 0 AND s.top > q.last_value - CASE WHEN q.is_called THEN 0 ELSE 1 END;

-- insert_runners --
-- Insert a batch of Runners; id 0 draws the next id.
INSERT INTO runners (id, name, description, container_image, cpu_limit, memory_limit,
                     feature_internal_name, enabled, min_pods, max_pods, tasks_per_pod,
                     idle_period_ms, pod_template)
SELECT COALESCE(NULLIF(x.id, 0), nextval('runners_id_seq')), x.name, x.description,
       x.container_image, x.cpu_limit, x.memory_limit, x.feature_internal_name, x.enabled,
       x.min_pods, x.max_pods, x.tasks_per_pod, x.idle_period_ms, NULLIF(x.pod_template, 'null')
FROM jsonb_to_recordset($1::jsonb) AS x(id bigint, name text, description text,
     container_image text, cpu_limit text, memory_limit text, feature_internal_name text,
     enabled boolean, min_pods integer, max_pods integer, tasks_per_pod integer,
     idle_period_ms bigint, pod_template jsonb)
RETURNING *;

-- update_runners --
-- Overwrite the updatable fields of a batch of Runners, matched by name.
UPDATE runners AS r
SET description = x.description, container_image = x.container_image,
    cpu_limit = x.cpu_limit, memory_limit = x.memory_limit,
    feature_internal_name = x.feature_internal_name, enabled = x.enabled,
    min_pods = x.min_pods, max_pods = x.max_pods, tasks_per_pod = x.tasks_per_pod,
    idle_period_ms = x.idle_period_ms, pod_template = NULLIF(x.pod_template, 'null'),
    update_time = now()
FROM jsonb_to_recordset($1::jsonb) AS x(name text, description text, container_image text,
     cpu_limit text, memory_limit text, feature_internal_name text, enabled boolean,
     min_pods integer, max_pods integer, tasks_per_pod integer, idle_period_ms bigint,
     pod_template jsonb)
WHERE r.name = x.name
RETURNING r.*;

-- delete_runner --
-- Delete one Runner (its credentials go with it).
DELETE FROM runners WHERE name = $1 RETURNING name;

-- list_runners --
-- A page of Runners after a name, optionally filtered.
SELECT * FROM runners
WHERE name > $1
  AND ($3::boolean IS NULL OR enabled = $3)
  AND ($4::text = '' OR feature_internal_name = $4)
ORDER BY name
LIMIT $2;

-- lock_node_templates --
-- Lock Node Template rows in name order.
SELECT name FROM node_templates WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE;

-- node_templates_by_name --
-- The Node Templates with the given names.
SELECT * FROM node_templates WHERE name = ANY($1::text[]);

-- node_templates_of_runner --
-- Names of the Node Templates a Runner executes.
SELECT name FROM node_templates WHERE runner = $1 ORDER BY name;

-- insert_node_templates --
-- Insert a batch of Node Templates.
INSERT INTO node_templates (name, runner, description, config_schema, default_config,
                            multiple_inputs, max_attempts, initial_backoff_ms, max_backoff_ms,
                            backoff_multiplier, attempt_timeout_ms)
SELECT x.name, x.runner, x.description, x.config_schema, x.default_config, x.multiple_inputs,
       x.max_attempts, x.initial_backoff_ms, x.max_backoff_ms, x.backoff_multiplier,
       x.attempt_timeout_ms
FROM jsonb_to_recordset($1::jsonb) AS x(name text, runner text, description text,
     config_schema jsonb, default_config jsonb, multiple_inputs boolean, max_attempts integer,
     initial_backoff_ms bigint, max_backoff_ms bigint, backoff_multiplier double precision,
     attempt_timeout_ms bigint)
RETURNING *;

-- update_node_templates --
-- Overwrite the updatable fields of a batch of Node Templates, matched by name.
UPDATE node_templates AS t
SET runner = x.runner, description = x.description, config_schema = x.config_schema,
    default_config = x.default_config, multiple_inputs = x.multiple_inputs,
    max_attempts = x.max_attempts, initial_backoff_ms = x.initial_backoff_ms,
    max_backoff_ms = x.max_backoff_ms, backoff_multiplier = x.backoff_multiplier,
    attempt_timeout_ms = x.attempt_timeout_ms, update_time = now()
FROM jsonb_to_recordset($1::jsonb) AS x(name text, runner text, description text,
     config_schema jsonb, default_config jsonb, multiple_inputs boolean, max_attempts integer,
     initial_backoff_ms bigint, max_backoff_ms bigint, backoff_multiplier double precision,
     attempt_timeout_ms bigint)
WHERE t.name = x.name
RETURNING t.*;

-- delete_node_template --
-- Delete one Node Template, and the durations measured for it.
WITH measured AS (DELETE FROM template_durations WHERE node_template = $1)
DELETE FROM node_templates WHERE name = $1 RETURNING name;

-- template_durations --
-- The latest successful attempts' durations of the given Node Templates, newest first.
SELECT node_template, samples_ms FROM template_durations WHERE node_template = ANY($1::text[]);

-- list_node_templates --
-- A page of Node Templates after a name, optionally only one Runner's.
SELECT * FROM node_templates
WHERE name > $1 AND ($3::text = '' OR runner = $3)
ORDER BY name
LIMIT $2;

-- lock_session_templates --
-- Lock Session Template rows in name order.
SELECT name FROM session_templates WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE;

-- session_templates_by_name --
-- The Session Templates with the given names, each with its nodes in order.
SELECT s.*,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                            'key', n.key, 'node_template', n.node_template,
                            'config', n.config, 'depends_on', to_jsonb(n.depends_on))
                        ORDER BY n.position)
                 FROM session_template_nodes AS n
                 WHERE n.session_template = s.name), '[]'::jsonb) AS nodes
FROM session_templates AS s
WHERE s.name = ANY($1::text[]);

-- session_templates_using --
-- Names of the Session Templates with a node of one of the given Node Templates.
SELECT DISTINCT session_template AS name
FROM session_template_nodes
WHERE node_template = ANY($1::text[])
ORDER BY 1;

-- insert_session_templates --
-- Insert a batch of Session Templates (their nodes separately).
INSERT INTO session_templates (name, description, default_parameters, default_priority)
SELECT x.name, x.description, x.default_parameters, x.default_priority
FROM jsonb_to_recordset($1::jsonb)
     AS x(name text, description text, default_parameters jsonb, default_priority integer)
RETURNING name;

-- update_session_templates --
-- Overwrite the fields of a batch of Session Templates (their nodes separately).
UPDATE session_templates AS s
SET description = x.description, default_parameters = x.default_parameters,
    default_priority = x.default_priority, update_time = now()
FROM jsonb_to_recordset($1::jsonb)
     AS x(name text, description text, default_parameters jsonb, default_priority integer)
WHERE s.name = x.name
RETURNING s.name;

-- delete_session_template_nodes --
-- Drop the nodes of the given Session Templates before they are written anew.
DELETE FROM session_template_nodes WHERE session_template = ANY($1::text[]);

-- insert_session_template_nodes --
-- The nodes of a batch of Session Templates, in their order.
INSERT INTO session_template_nodes (session_template, position, key, node_template, config,
                                    depends_on)
SELECT x.name, n.pos - 1, n.node ->> 'key', n.node ->> 'node_template',
       COALESCE(n.node -> 'config', '{}'::jsonb),
       ARRAY(SELECT jsonb_array_elements_text(n.node -> 'depends_on'))
FROM jsonb_to_recordset($1::jsonb) AS x(name text, nodes jsonb),
     jsonb_array_elements(x.nodes) WITH ORDINALITY AS n(node, pos);

-- delete_session_template --
-- Delete one Session Template with its nodes.
DELETE FROM session_templates WHERE name = $1 RETURNING name;

-- list_session_templates --
-- A page of Session Template names after a name, optionally only those using a Node Template.
SELECT s.name FROM session_templates AS s
WHERE s.name > $1
  AND ($3::text = '' OR EXISTS (SELECT 1 FROM session_template_nodes AS n
                                WHERE n.session_template = s.name AND n.node_template = $3))
ORDER BY s.name
LIMIT $2;

-- insert_credential --
-- Record a new runner credential by its secret's digest.
INSERT INTO runner_credentials (id, runner, secret_hash, description)
VALUES ($1, $2, $3, $4)
RETURNING id, runner, description, create_time, revoke_time;

-- list_credentials --
-- A Runner's credentials, newest first; revoked ones only when asked.
SELECT id, runner, description, create_time, revoke_time
FROM runner_credentials
WHERE runner = $1 AND ($2::boolean OR revoke_time IS NULL)
ORDER BY create_time DESC, id;

-- revoke_credential --
-- Revoke a credential; revoking it again keeps the first revocation time.
UPDATE runner_credentials
SET revoke_time = COALESCE(revoke_time, now())
WHERE id = $1
RETURNING id, runner, description, create_time, revoke_time;

-- runner_of_credential --
-- The Runner a (non-revoked) credential belongs to.
SELECT runner FROM runner_credentials WHERE secret_hash = $1 AND revoke_time IS NULL;

-- all_runners --
-- Every Runner (the registry is small).
SELECT * FROM runners ORDER BY name;
