//! The contract suite every [`BlobStore`] backend runs unchanged.
//!
//! Each function checks one clause of the trait's documented contract; a
//! backend's test calls [`run_all`] with a fresh, empty store.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use wharf_oci::Digest;

use crate::{BlobStore, ByteStream, StoreError};

fn body(chunks: &[&[u8]]) -> ByteStream {
    let v: Vec<std::io::Result<Bytes>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(v).boxed()
}

fn failing_body(prefix: &[u8]) -> ByteStream {
    let v = vec![
        Ok(Bytes::copy_from_slice(prefix)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client gone",
        )),
    ];
    futures::stream::iter(v).boxed()
}

async fn collect(s: ByteStream) -> Vec<u8> {
    s.try_fold(Vec::new(), |mut acc, b| async move {
        acc.extend_from_slice(&b);
        Ok(acc)
    })
    .await
    .expect("stream failed")
}

pub async fn run_all(store: &dyn BlobStore) {
    absent_blob(store).await;
    upload_commit_read(store).await;
    ranges(store).await;
    chunked_and_offsets(store).await;
    failed_append_keeps_prefix(store).await;
    commit_twice_is_one_blob(store).await;
    uncommitted_is_invisible(store).await;
    delete_blob_and_upload(store).await;
    large_blob_streams(store).await;
    odd_and_large_appends(store).await;
    concurrent_uploads(store).await;
}

/// Appends of odd sizes around large ones: every byte lands where it belongs,
/// whatever alignment a backend's fast path needs.
pub async fn odd_and_large_appends(store: &dyn BlobStore) {
    let sizes = [5usize, 3 << 20, 7, 4096, 1, (2 << 20) + 123, 0, 65_537];
    let all: Vec<u8> = (0..sizes.iter().sum::<usize>())
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    store.create_upload("t-odd").await.unwrap();
    let mut off = 0usize;
    for n in sizes {
        // Each append arrives in uneven pieces, as network reads do.
        let piece = &all[off..off + n];
        let chunks: Vec<&[u8]> = piece.chunks(9_999).collect();
        let got = store
            .append_upload("t-odd", off as u64, body(&chunks))
            .await
            .unwrap();
        off += n;
        assert_eq!(got, off as u64);
    }
    assert_eq!(
        collect(store.read_upload("t-odd", off as u64).await.unwrap()).await,
        all
    );
    let d = Digest::sha256_of(&all);
    store.commit_upload("t-odd", off as u64, &d).await.unwrap();
    assert_eq!(
        collect(store.open(&d, None).await.unwrap().unwrap().stream).await,
        all
    );
}

pub async fn absent_blob(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"never stored");
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(store.open(&d, None).await.unwrap().is_none());
    assert!(!store.delete(&d).await.unwrap());
    assert!(matches!(
        store
            .append_upload("no-such-upload", 0, body(&[b"x"]))
            .await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert!(matches!(
        store.commit_upload("no-such-upload", 0, &d).await,
        Err(StoreError::UploadNotFound(_))
    ));
    store.delete_upload("no-such-upload").await.unwrap();
}

pub async fn upload_commit_read(store: &dyn BlobStore) {
    let data = b"hello blob store";
    let d = Digest::sha256_of(data);
    store.create_upload("t-basic").await.unwrap();
    let n = store
        .append_upload("t-basic", 0, body(&[data]))
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    store.commit_upload("t-basic", n, &d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(data.len() as u64));
    let r = store.open(&d, None).await.unwrap().unwrap();
    assert_eq!(r.size, data.len() as u64);
    assert_eq!(collect(r.stream).await, data);
    // The upload is gone once committed.
    assert!(matches!(
        store.append_upload("t-basic", n, body(&[b"more"])).await,
        Err(StoreError::UploadNotFound(_))
    ));
}

pub async fn ranges(store: &dyn BlobStore) {
    let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let d = Digest::sha256_of(&data);
    store.create_upload("t-range").await.unwrap();
    store
        .append_upload("t-range", 0, body(&[&data]))
        .await
        .unwrap();
    store.commit_upload("t-range", 5000, &d).await.unwrap();
    for (a, b) in [
        (0u64, 0u64),
        (0, 4999),
        (10, 19),
        (4999, 4999),
        (1000, 3999),
    ] {
        let r = store.open(&d, Some(a..=b)).await.unwrap().unwrap();
        assert_eq!(r.size, 5000);
        assert_eq!(collect(r.stream).await, &data[a as usize..=b as usize]);
    }
}

pub async fn chunked_and_offsets(store: &dyn BlobStore) {
    store.create_upload("t-chunks").await.unwrap();
    let n = store
        .append_upload("t-chunks", 0, body(&[b"abc", b"def"]))
        .await
        .unwrap();
    assert_eq!(n, 6);
    let n = store
        .append_upload("t-chunks", 6, body(&[b"ghi"]))
        .await
        .unwrap();
    assert_eq!(n, 9);
    // Claiming more than is held is refused and changes nothing.
    assert!(matches!(
        store.append_upload("t-chunks", 20, body(&[b"zzz"])).await,
        Err(StoreError::OffsetMismatch { actual: 9, .. })
    ));
    // An empty append is allowed.
    assert_eq!(
        store.append_upload("t-chunks", 9, body(&[])).await.unwrap(),
        9
    );
    assert_eq!(
        collect(store.read_upload("t-chunks", 9).await.unwrap()).await,
        b"abcdefghi"
    );
    let d = Digest::sha256_of(b"abcdefghi");
    store.commit_upload("t-chunks", 9, &d).await.unwrap();
    assert_eq!(
        collect(store.open(&d, None).await.unwrap().unwrap().stream).await,
        b"abcdefghi"
    );
}

pub async fn failed_append_keeps_prefix(store: &dyn BlobStore) {
    store.create_upload("t-fail").await.unwrap();
    store
        .append_upload("t-fail", 0, body(&[b"good"]))
        .await
        .unwrap();
    assert!(matches!(
        store
            .append_upload("t-fail", 4, failing_body(b"junk"))
            .await,
        Err(StoreError::Body(_))
    ));
    // The caller still believes 4 bytes; the half-written tail is dropped.
    assert_eq!(
        store
            .append_upload("t-fail", 4, body(&[b"!"]))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        collect(store.read_upload("t-fail", 5).await.unwrap()).await,
        b"good!"
    );
    // Committing a prefix shorter than what is held publishes only that prefix.
    store
        .append_upload("t-fail", 5, body(&[b"tail"]))
        .await
        .unwrap();
    let d = Digest::sha256_of(b"good!");
    store.commit_upload("t-fail", 5, &d).await.unwrap();
    assert_eq!(
        collect(store.open(&d, None).await.unwrap().unwrap().stream).await,
        b"good!"
    );
}

pub async fn commit_twice_is_one_blob(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"twice");
    for id in ["t-twice-1", "t-twice-2"] {
        store.create_upload(id).await.unwrap();
        store.append_upload(id, 0, body(&[b"twice"])).await.unwrap();
        store.commit_upload(id, 5, &d).await.unwrap();
    }
    assert_eq!(store.stat(&d).await.unwrap(), Some(5));
}

pub async fn uncommitted_is_invisible(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"pending");
    store.create_upload("t-pending").await.unwrap();
    store
        .append_upload("t-pending", 0, body(&[b"pending"]))
        .await
        .unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    // Committing more bytes than are held publishes nothing.
    assert!(matches!(
        store.commit_upload("t-pending", 8, &d).await,
        Err(StoreError::OffsetMismatch { actual: 7, .. })
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
    store.delete_upload("t-pending").await.unwrap();
    assert!(matches!(
        store.commit_upload("t-pending", 7, &d).await,
        Err(StoreError::UploadNotFound(_))
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
}

pub async fn delete_blob_and_upload(store: &dyn BlobStore) {
    let d = Digest::sha256_of(b"doomed");
    store.create_upload("t-del").await.unwrap();
    store
        .append_upload("t-del", 0, body(&[b"doomed"]))
        .await
        .unwrap();
    store.commit_upload("t-del", 6, &d).await.unwrap();
    assert!(store.delete(&d).await.unwrap());
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(!store.delete(&d).await.unwrap());
    // Several at once: one answer per digest, in order.
    let (a, b) = (
        Digest::sha256_of(b"doomed-a"),
        Digest::sha256_of(b"doomed-b"),
    );
    for (id, d, bytes) in [("t-del-a", &a, b"doomed-a"), ("t-del-b", &b, b"doomed-b")] {
        store.create_upload(id).await.unwrap();
        store.append_upload(id, 0, body(&[bytes])).await.unwrap();
        store.commit_upload(id, 8, d).await.unwrap();
    }
    let got: Vec<bool> = store
        .delete_many(&[a.clone(), d.clone(), b.clone()])
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [true, false, true]);
    assert_eq!(store.stat(&a).await.unwrap(), None);
    assert_eq!(store.stat(&b).await.unwrap(), None);
    assert!(store.delete_many(&[]).await.is_empty());
}

pub async fn large_blob_streams(store: &dyn BlobStore) {
    // Larger than any internal batch, sent in odd-sized chunks.
    let chunk: Vec<u8> = (0..77_777u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<&[u8]> = std::iter::repeat_n(chunk.as_slice(), 60).collect();
    let total = (chunk.len() * 60) as u64;
    let mut h = wharf_oci::DigestHasher::new(wharf_oci::Algorithm::Sha256);
    for c in &chunks {
        h.update(c);
    }
    let d = h.finish();
    store.create_upload("t-large").await.unwrap();
    assert_eq!(
        store
            .append_upload("t-large", 0, body(&chunks))
            .await
            .unwrap(),
        total
    );
    store.commit_upload("t-large", total, &d).await.unwrap();
    let r = store.open(&d, None).await.unwrap().unwrap();
    let mut h = wharf_oci::DigestHasher::new(wharf_oci::Algorithm::Sha256);
    let mut n = 0u64;
    let mut s = r.stream;
    while let Some(b) = s.next().await {
        let b = b.unwrap();
        n += b.len() as u64;
        h.update(&b);
    }
    assert_eq!(n, total);
    assert_eq!(h.finish(), d);
}

pub async fn concurrent_uploads(store: &dyn BlobStore) {
    let futs = (0..8).map(|i| async move {
        let id = format!("t-conc-{i}");
        let data = format!("concurrent blob {i}").repeat(1000);
        let d = Digest::sha256_of(data.as_bytes());
        store.create_upload(&id).await.unwrap();
        let n = store
            .append_upload(&id, 0, body(&[data.as_bytes()]))
            .await
            .unwrap();
        store.commit_upload(&id, n, &d).await.unwrap();
        (d, data)
    });
    for (d, data) in futures::future::join_all(futs).await {
        let r = store.open(&d, None).await.unwrap().unwrap();
        assert_eq!(collect(r.stream).await, data.as_bytes());
    }
}
