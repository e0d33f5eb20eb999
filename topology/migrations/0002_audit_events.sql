-- The audit trail: who did what to the deployment, when and from where (topology versions,
-- link controls, drills). Append-only. Ids are assigned by the writer as max + 1; a concurrent
-- writer collides on the primary key and tries the next.
CREATE TABLE audit_events (
    id          BIGINT PRIMARY KEY NOT NULL,
    at_ms       BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    origin      TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    detail      TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    recorded_by TEXT   NOT NULL
);
