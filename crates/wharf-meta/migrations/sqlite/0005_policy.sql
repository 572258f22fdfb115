-- Retention decides on pulls: when a manifest was last pulled in its repository.
ALTER TABLE manifests ADD COLUMN pulled_at INTEGER;
-- Per-project quota, immutability and retention rules, as JSON.
CREATE TABLE project_policies (
    project    TEXT    PRIMARY KEY,
    policy     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
