-- insert_token --
-- Record a new access token by its secret's digest.
INSERT INTO access_tokens (id, role, secret_hash, description, created_by, expire_time)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, role, description, created_by, create_time, expire_time, revoke_time;

-- replace_token --
-- Insert a token, or give the one with its id this digest; an unchanged digest keeps its row
-- (a revoked token stays revoked until its secret changes).
INSERT INTO access_tokens (id, role, secret_hash, description, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE
SET secret_hash = EXCLUDED.secret_hash, role = EXCLUDED.role, revoke_time = NULL,
    expire_time = NULL, create_time = now()
WHERE access_tokens.secret_hash <> EXCLUDED.secret_hash
RETURNING id, role, description, created_by, create_time, expire_time, revoke_time;

-- insert_token_if_absent --
-- Insert a token unless one with its id exists (whatever its digest).
INSERT INTO access_tokens (id, role, secret_hash, description, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO NOTHING
RETURNING id, role, description, created_by, create_time, expire_time, revoke_time;

-- list_tokens --
-- Access tokens, newest first; revoked ones only when asked.
SELECT id, role, description, created_by, create_time, expire_time, revoke_time
FROM access_tokens
WHERE $1::boolean OR revoke_time IS NULL
ORDER BY create_time DESC, id;

-- revoke_token --
-- Revoke a token; revoking it again keeps the first revocation time.
UPDATE access_tokens
SET revoke_time = COALESCE(revoke_time, now())
WHERE id = $1
RETURNING id, role, description, created_by, create_time, expire_time, revoke_time;

-- token_by_digest --
-- The token a secret belongs to, revoked or expired ones included (the caller decides).
SELECT id, role, description, created_by, create_time, expire_time, revoke_time
FROM access_tokens WHERE secret_hash = $1;

-- token_digest --
-- The digest of a token's secret.
SELECT secret_hash FROM access_tokens WHERE id = $1;

-- record_audit_events --
-- Append events to the audit trail, in the order given.
INSERT INTO audit_events (actor_kind, actor_subject, actor_role, action, resource, name, detail)
SELECT e.actor_kind, e.actor_subject, e.actor_role, e.action, e.resource, e.name, e.detail
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])
    WITH ORDINALITY AS e (actor_kind, actor_subject, actor_role, action, resource, name, detail, n)
ORDER BY e.n;

-- audit_page --
-- A page of the audit trail, newest first, before an id, optionally filtered.
SELECT id, time, actor_kind, actor_subject, actor_role, action, resource, name, detail
FROM audit_events
WHERE ($1::bigint = 0 OR id < $1)
  AND ($2::text = '' OR actor_subject = $2)
  AND ($3::text = '' OR resource = $3)
  AND ($4::text = '' OR name = $4)
ORDER BY id DESC
LIMIT $5;
