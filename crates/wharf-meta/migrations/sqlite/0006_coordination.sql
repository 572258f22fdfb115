-- Coordination between processes on one database (and, on a shared
-- database, between nodes): named leases with an owner and an expiry. The
-- garbage collector holds "gc" while it works.
CREATE TABLE leases (
    name        TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- An upload that is committing a blob pins it: no collection deletes a blob
-- an upload is about to link, whatever the grace period.
ALTER TABLE uploads ADD COLUMN committing TEXT;
CREATE INDEX uploads_by_committing ON uploads(committing) WHERE committing IS NOT NULL;

-- Bumped whenever a repository gains or loses a tag, by whichever process
-- writes: caches of tag lists compare it instead of trusting their own
-- process to have seen every write.
ALTER TABLE repositories ADD COLUMN tags_version INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER tags_version_insert AFTER INSERT ON tags BEGIN
    UPDATE repositories SET tags_version = tags_version + 1 WHERE id = NEW.repo_id;
END;
CREATE TRIGGER tags_version_delete AFTER DELETE ON tags BEGIN
    UPDATE repositories SET tags_version = tags_version + 1 WHERE id = OLD.repo_id;
END;
