-- The W3C trace context of the span that created a Session (CreateSession's server span, or
-- the caller's): the parent of each of its nodes' dispatch spans. Empty when nothing traced it.

ALTER TABLE sessions
    ADD COLUMN traceparent text NOT NULL DEFAULT '',
    ADD COLUMN tracestate  text NOT NULL DEFAULT '';
