//! The filesystem backend.
//!
//! Blobs use distribution's layout, `<root>/docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data`,
//! so an existing distribution root can be adopted in place. Uploads live in
//! `<root>/wharf/uploads/<id>`, on the same filesystem, so committing is a
//! rename: fsync the file, rename it into place, fsync the directory.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use wharf_oci::Digest;

use crate::{BlobRead, BlobStore, ByteStream, StoreError};

/// Writes are batched to this size before they go to the disk thread.
const WRITE_BATCH: usize = 512 << 10;
/// Reads are served in chunks of this size.
const READ_CHUNK: usize = 1 << 20;
/// Batches in flight between the request and the disk thread, per upload.
const WRITE_QUEUE: usize = 2;

pub struct FsBlobStore {
    blobs: PathBuf,
    uploads: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> std::io::Result<FsBlobStore> {
        let blobs = root.join("docker/registry/v2/blobs");
        let uploads = root.join("wharf/uploads");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&uploads)?;
        Ok(FsBlobStore { blobs, uploads })
    }

    fn blob_dir(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }
}

fn not_found_as_none<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Streams `len` bytes of `file` from its current position, reading on the
/// blocking pool in large chunks.
fn file_stream(file: std::fs::File, len: u64) -> ByteStream {
    futures::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = left.min(READ_CHUNK as u64) as usize;
        let res = tokio::task::spawn_blocking(move || {
            let mut buf = BytesMut::zeroed(want);
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return (file, Err(e)),
                }
            }
            if filled < want {
                return (
                    file,
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than expected",
                    )),
                );
            }
            buf.truncate(filled);
            (file, Ok(buf.freeze()))
        })
        .await;
        match res {
            Ok((file, Ok(b))) => {
                let left = left - b.len() as u64;
                Some((Ok(b), (file, left)))
            }
            // After an error the stream ends: one error item, then None.
            Ok((file, Err(e))) => Some((Err(e), (file, 0))),
            Err(e) => {
                // The task panicked or was cancelled; we have lost the file handle.
                let err = std::io::Error::other(e);
                Some((Err(err), (std::fs::File::open("/dev/null").ok()?, 0)))
            }
        }
    })
    .boxed()
}

#[async_trait::async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_dir(digest).join("data");
        Ok(not_found_as_none(tokio::fs::metadata(path).await)?.map(|m| m.len()))
    }

    async fn open(
        &self,
        digest: &Digest,
        range: Option<RangeInclusive<u64>>,
    ) -> Result<Option<BlobRead>, StoreError> {
        let path = self.blob_dir(digest).join("data");
        let opened = blocking(move || {
            let Some(mut file) = not_found_as_none(std::fs::File::open(path))? else {
                return Ok(None);
            };
            let size = file.metadata()?.len();
            let (start, len) = match range {
                Some(r) => (*r.start(), r.end().saturating_sub(*r.start()) + 1),
                None => (0, size),
            };
            file.seek(SeekFrom::Start(start))?;
            Ok(Some((file, size, len)))
        })
        .await?;
        Ok(opened.map(|(file, size, len)| BlobRead {
            size,
            stream: file_stream(file, len),
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError> {
        let dir = self.blob_dir(digest);
        let existed = not_found_as_none(tokio::fs::remove_file(dir.join("data")).await)?.is_some();
        // The directory may hold nothing else; failing to remove it is harmless.
        let _ = tokio::fs::remove_dir(&dir).await;
        Ok(existed)
    }

    async fn create_upload(&self, id: &str) -> Result<(), StoreError> {
        tokio::fs::File::create(self.upload_path(id)).await?;
        Ok(())
    }

    async fn append_upload(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
    ) -> Result<u64, StoreError> {
        let path = self.upload_path(id);
        let id_owned = id.to_owned();
        let file = blocking(move || {
            let Some(mut file) =
                not_found_as_none(std::fs::OpenOptions::new().write(true).open(&path))?
            else {
                return Ok(Err(StoreError::UploadNotFound(id_owned)));
            };
            let actual = file.metadata()?.len();
            if actual < offset {
                return Ok(Err(StoreError::OffsetMismatch {
                    id: id_owned,
                    expected: offset,
                    actual,
                }));
            }
            if actual > offset {
                file.set_len(offset)?;
            }
            file.seek(SeekFrom::Start(offset))?;
            Ok(Ok(file))
        })
        .await??;

        // A disk thread writes batches while this task reads the next ones from
        // the network: memory per upload is at most (WRITE_QUEUE + 1) batches.
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut file = file;
            let mut written = 0u64;
            while let Some(b) = rx.blocking_recv() {
                file.write_all(&b)?;
                written += b.len() as u64;
            }
            // No fsync here: see the trait. commit_upload makes the bytes durable.
            Ok(written)
        });
        let mut batch = BytesMut::new();
        let mut body_err = None;
        while let Some(item) = data.next().await {
            match item {
                Ok(chunk) => {
                    batch.extend_from_slice(&chunk);
                    if batch.len() >= WRITE_BATCH && tx.send(batch.split().freeze()).await.is_err()
                    {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    body_err = Some(e);
                    break;
                }
            }
        }
        if body_err.is_none() && !batch.is_empty() {
            let _ = tx.send(batch.freeze()).await;
        }
        drop(tx);
        let written = writer.await.map_err(std::io::Error::other)??;
        if let Some(e) = body_err {
            return Err(StoreError::Body(e));
        }
        Ok(offset + written)
    }

    async fn read_upload(&self, id: &str, size: u64) -> Result<ByteStream, StoreError> {
        let path = self.upload_path(id);
        let id_owned = id.to_owned();
        let file = blocking(move || not_found_as_none(std::fs::File::open(path))).await?;
        let file = file.ok_or(StoreError::UploadNotFound(id_owned))?;
        Ok(file_stream(file, size))
    }

    async fn commit_upload(&self, id: &str, size: u64, digest: &Digest) -> Result<(), StoreError> {
        let src = self.upload_path(id);
        let dir = self.blob_dir(digest);
        let id_owned = id.to_owned();
        blocking(move || {
            let Some(file) = not_found_as_none(std::fs::OpenOptions::new().write(true).open(&src))?
            else {
                return Ok(Err(StoreError::UploadNotFound(id_owned)));
            };
            let dst = dir.join("data");
            if std::fs::metadata(&dst).is_ok() {
                // Content-addressed: the bytes already there are the same bytes.
                std::fs::remove_file(&src)?;
                return Ok(Ok(()));
            }
            let held = file.metadata()?.len();
            if held < size {
                // Never pad: these bytes were hashed, the missing ones were not.
                return Ok(Err(StoreError::OffsetMismatch {
                    id: id_owned,
                    expected: size,
                    actual: held,
                }));
            }
            if held > size {
                file.set_len(size)?;
            }
            file.sync_all()?;
            drop(file);
            std::fs::create_dir_all(&dir)?;
            std::fs::rename(&src, &dst)?;
            sync_dir(&dir)?;
            // The new directory entries of the 2-hex and hex levels must be durable too.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
                if let Some(grand) = parent.parent() {
                    sync_dir(grand)?;
                }
            }
            Ok(Ok(()))
        })
        .await?
    }

    async fn delete_upload(&self, id: &str) -> Result<(), StoreError> {
        not_found_as_none(tokio::fs::remove_file(self.upload_path(id)).await)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        crate::testsuite::run_all(&store).await;
    }

    #[tokio::test]
    async fn uses_distribution_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"layout");
        store.create_upload("u1").await.unwrap();
        let body: ByteStream = futures::stream::iter([Ok(Bytes::from_static(b"layout"))]).boxed();
        store.append_upload("u1", 0, body).await.unwrap();
        store.commit_upload("u1", 6, &d).await.unwrap();
        let p = dir
            .path()
            .join("docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data");
        assert_eq!(std::fs::read(p).unwrap(), b"layout");
        // No upload leftovers.
        assert_eq!(
            std::fs::read_dir(dir.path().join("wharf/uploads"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn adopts_an_existing_distribution_blob() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"old");
        let p = dir
            .path()
            .join("docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("data"), b"old").unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(3));
    }
}
