-- Each site's users and roles for Aerospike security on its client port: one JSON document per
-- site, replaced as a whole under optimistic concurrency (its version counts the changes).
-- Passwords in it are salted bcrypt hashes. Nodes of the site read it and write their
-- clients' admin commands to it; every change is audited.
CREATE TABLE site_security (
    site     TEXT   PRIMARY KEY NOT NULL,
    version  BIGINT NOT NULL,
    document TEXT   NOT NULL
);
