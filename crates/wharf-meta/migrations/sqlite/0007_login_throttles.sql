-- Failed logins, counted per (account, client address) and, for names that
-- name no account, per address (account = ''). Kept in the database so that
-- every process and node on it counts the same failures.
CREATE TABLE login_throttles (
    addr          TEXT    NOT NULL,
    account       TEXT    NOT NULL,
    failures      INTEGER NOT NULL,
    first_at      INTEGER NOT NULL,
    last_at       INTEGER NOT NULL,
    blocked_until INTEGER NOT NULL,
    PRIMARY KEY (addr, account)
) WITHOUT ROWID;
CREATE INDEX login_throttles_by_last ON login_throttles(last_at);
