-- Online garbage collection. A blob's record is refreshed (touched_at) when
-- an upload of it is about to commit; a collector marks records it is about
-- to delete (gc_marked_at, gc_owner) so that such an upload waits for it.
ALTER TABLE blobs ADD COLUMN touched_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE blobs ADD COLUMN gc_marked_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE blobs ADD COLUMN gc_owner TEXT;
UPDATE blobs SET touched_at = created_at;
CREATE INDEX blobs_gc ON blobs(gc_marked_at, touched_at);
CREATE INDEX repo_blobs_by_created ON repo_blobs(created_at);
