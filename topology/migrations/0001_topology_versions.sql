-- Every applied topology file is a version. The version number is assigned by the writer as
-- parent + 1, so two concurrent writers collide on the primary key and exactly one wins.
CREATE TABLE topology_versions (
    version       BIGINT PRIMARY KEY NOT NULL,
    parent        BIGINT,
    source        TEXT   NOT NULL,
    content       TEXT   NOT NULL,
    parsed        TEXT   NOT NULL,
    author        TEXT   NOT NULL,
    comment       TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
