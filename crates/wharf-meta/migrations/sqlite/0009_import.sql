-- Adopting a distribution root in place (`wharf import`): the repositories
-- already imported (so an interrupted import resumes), and the state of the
-- whole import, which garbage collection waits for.
CREATE TABLE import_repos (
    name        TEXT    PRIMARY KEY,
    imported_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Small named values of the registry as a whole: 'import' is 'pending' while
-- a distribution root has not been fully imported, 'complete' after.
CREATE TABLE registry_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
