//! kill -9 during concurrent pushes, restart: the store is consistent, no
//! partial blob is visible, and every acknowledged push reads back identical.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sha2::Digest as _;

#[derive(Default)]
struct Acked {
    blobs: Vec<(String, String, usize)>, // repo, digest, size
    tags: Vec<(String, String, String)>, // repo, tag, manifest digest
}

/// One client: pushes blobs (monolithic and chunked) and manifests until told
/// to stop or the server dies.
async fn pusher(id: u64, base: String, acked: Arc<Mutex<Acked>>) {
    let client = common::client();
    let repo = format!("crash/r{}", id % 3);
    for n in 0u64.. {
        let seed = id * 1_000_000 + n;
        let size = 1000 + (seed as usize * 7919) % (3 << 20);
        let data = bytes(seed, size);
        let d = sha256(&data);
        let ok = if n % 2 == 0 {
            match client
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(data.clone())
                .send()
                .await
            {
                Ok(r) => r.status() == 201,
                Err(_) => return,
            }
        } else {
            let Ok(r) = client
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
            else {
                return;
            };
            let Some(loc) = r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned)
            else {
                return;
            };
            let half = size / 2;
            let Ok(r) = client
                .patch(&loc)
                .header("content-range", format!("0-{}", half - 1))
                .body(data[..half].to_vec())
                .send()
                .await
            else {
                return;
            };
            if r.status() != 202 {
                return;
            }
            match client
                .put(format!("{loc}?digest={d}"))
                .body(data[half..].to_vec())
                .send()
                .await
            {
                Ok(r) => r.status() == 201,
                Err(_) => return,
            }
        };
        if !ok {
            return;
        }
        acked
            .lock()
            .unwrap()
            .blobs
            .push((repo.clone(), d.clone(), size));
        // A manifest using this blob as its only layer and config.
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/octet-stream", "digest": d, "size": size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}]
        }))
        .unwrap();
        let tag = format!("t{id}-{n}");
        match client
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(m.clone())
            .send()
            .await
        {
            Ok(r) if r.status() == 201 => {
                acked
                    .lock()
                    .unwrap()
                    .tags
                    .push((repo.clone(), tag, sha256(&m)))
            }
            _ => return,
        }
    }
}

fn check_store_files(data: &std::path::Path) -> usize {
    let root = data.join("docker/registry/v2/blobs/sha256");
    let mut n = 0;
    for prefix in std::fs::read_dir(&root).unwrap() {
        for dir in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let dir = dir.unwrap().path();
            let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
            let content = std::fs::read(dir.join("data")).unwrap_or_else(|e| panic!("{name}: {e}"));
            let actual = hex::encode(sha2::Sha256::digest(&content));
            assert_eq!(
                actual, name,
                "a blob file does not match its digest: partial or wrong blob visible"
            );
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_concurrent_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked = Arc::new(Mutex::new(Acked::default()));
    for round in 0..3u64 {
        let server = Server::start(&data, &[], &[]);
        let base = format!("http://{}", server.addr);
        let tasks: Vec<_> = (0..6)
            .map(|i| tokio::spawn(pusher(round * 100 + i, base.clone(), acked.clone())))
            .collect();
        // Let pushes get going, then kill mid-flight.
        tokio::time::sleep(Duration::from_millis(700 + round * 400)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }

    let server = Server::start(&data, &[], &[]);
    let client = common::client();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.blobs.len() >= 6,
        "too few pushes acknowledged to prove anything: {}",
        acked.blobs.len()
    );
    for (repo, d, size) in &acked.blobs {
        let r = client
            .get(server.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged blob {d} lost");
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len(), *size);
        assert_eq!(&sha256(&body), d, "acknowledged blob {d} corrupted");
    }
    for (repo, tag, md) in &acked.tags {
        let r = client
            .head(server.url(&format!("/v2/{repo}/manifests/{tag}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged tag {repo}:{tag} lost");
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), md);
    }
    let files = check_store_files(&data);
    assert!(files >= acked.blobs.len() / 3);
    eprintln!(
        "crash test: {} blobs and {} tags acknowledged across 3 kills, all intact; {} blob files verified",
        acked.blobs.len(),
        acked.tags.len(),
        files
    );
}
