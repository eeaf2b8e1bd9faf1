-- Access tokens of operators and services, and the audit trail of changes.

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
