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

/// kill -9 a `wharf gc` running beside the server, again and again: nothing
/// reachable is lost, and the next collection finishes the work.
#[tokio::test(flavor = "multi_thread")]
async fn kill_during_garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    let client = common::client();
    let base = server.url("");
    // 30 images of 20 small layers each; half of them deleted afterwards.
    // repo, then each blob's digest and bytes
    type Image = (String, Vec<(String, Vec<u8>)>);
    let mut kept: Vec<Image> = Vec::new();
    let mut freed_blobs = 0;
    for i in 0..30u64 {
        let repo = format!("gc/r{}", i % 3);
        let mut blobs = Vec::new();
        for l in 0..21u64 {
            let body = bytes(i * 100 + l, 512 + l as usize);
            let d = sha256(&body);
            let r = client
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            blobs.push((d, body));
        }
        let layers: Vec<String> = blobs[1..]
            .iter()
            .map(|(d, b)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                    b.len()
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
            blobs[0].0,
            blobs[0].1.len(),
            layers.join(",")
        );
        let r = client
            .put(format!("{base}/v2/{repo}/manifests/v{i}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        if i % 2 == 0 {
            let digest = sha256(manifest.as_bytes());
            let r = client
                .delete(format!("{base}/v2/{repo}/manifests/{digest}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            freed_blobs += blobs.len();
        } else {
            kept.push((repo, blobs));
        }
    }

    let gc = |extra: &[&str]| {
        let log = dir.path().join("gc.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["gc", "--grace", "0s", "--data"])
            .arg(&data)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let mut interrupted = 0;
    for attempt in 0..12u64 {
        let (mut child, log) = gc(&[]);
        std::thread::sleep(Duration::from_millis(5 + attempt * 4));
        let _ = child.kill();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("garbage collection started")
            && !text.contains("garbage collection finished")
        {
            interrupted += 1;
        }
        // Whatever was interrupted, every kept image is whole.
        for (repo, blobs) in &kept {
            for (d, body) in blobs {
                let r = client
                    .get(format!("{base}/v2/{repo}/blobs/{d}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "attempt {attempt}: {repo}@{d}");
                assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
            }
        }
    }
    eprintln!("kills in the middle of a collection: {interrupted} of 12");
    assert!(
        interrupted > 0,
        "no kill landed in the middle of a collection"
    );

    // The next collection finishes the work: only the kept blobs remain.
    let (child, _) = gc(&[]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut on_disk = std::collections::BTreeSet::new();
    for p in std::fs::read_dir(data.join("docker/registry/v2/blobs/sha256"))
        .unwrap()
        .flatten()
    {
        for b in std::fs::read_dir(p.path()).unwrap().flatten() {
            if b.path().join("data").exists() {
                on_disk.insert(format!("sha256:{}", b.file_name().to_string_lossy()));
            }
        }
    }
    let want: std::collections::BTreeSet<String> = kept
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(d, _)| d.clone()))
        .collect();
    assert_eq!(
        on_disk.len(),
        want.len(),
        "{freed_blobs} blobs were to be freed"
    );
    assert_eq!(on_disk, want);
    // Nothing is left marked: a deleted image's blob can be pushed again at once.
    let body = bytes(0, 512);
    let d = sha256(&body);
    let r = client
        .post(format!("{base}/v2/gc/r0/blobs/uploads/?digest={d}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    server.kill9();
}
