-- When a manifest lost its last tag (or was stored without one); NULL while tagged.
ALTER TABLE manifests ADD COLUMN untagged_at INTEGER;
UPDATE manifests SET untagged_at = created_at WHERE NOT EXISTS
    (SELECT 1 FROM tags t WHERE t.repo_id = manifests.repo_id AND t.manifest_digest = manifests.digest);
CREATE INDEX manifests_untagged ON manifests(untagged_at) WHERE untagged_at IS NOT NULL;
