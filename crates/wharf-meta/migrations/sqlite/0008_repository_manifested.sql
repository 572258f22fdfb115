-- A repository that has held a manifest keeps answering its tag list (with
-- no tags) after its last manifest is deleted, as distribution does and the
-- OCI conformance suite expects; one that only ever had blobs does not.
ALTER TABLE repositories ADD COLUMN manifested INTEGER NOT NULL DEFAULT 0;
UPDATE repositories SET manifested = 1 WHERE id IN (SELECT repo_id FROM manifests);
CREATE TRIGGER repositories_manifested AFTER INSERT ON manifests BEGIN
    UPDATE repositories SET manifested = 1 WHERE id = NEW.repo_id AND manifested = 0;
END;
