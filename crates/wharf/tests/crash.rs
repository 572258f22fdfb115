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

/// A repository and each of an image's blobs (digest, bytes).
type Image = (String, Vec<(String, Vec<u8>)>);

/// Pushes `n` images of 21 small blobs each and deletes every other one.
/// Returns the images kept and how many blobs the deleted ones had.
async fn images_half_deleted(client: &reqwest::Client, base: &str, n: u64) -> (Vec<Image>, usize) {
    let mut kept: Vec<Image> = Vec::new();
    let mut freed_blobs = 0;
    for i in 0..n {
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
    (kept, freed_blobs)
}

/// Every kept blob reads back byte-identical.
async fn assert_intact(client: &reqwest::Client, base: &str, kept: &[Image], when: &str) {
    for (repo, blobs) in kept {
        for (d, body) in blobs {
            let r = client
                .get(format!("{base}/v2/{repo}/blobs/{d}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{when}: {repo}@{d}");
            assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
        }
    }
}

/// How many blobs the store holds.
fn blob_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("docker/registry/v2/blobs/sha256"))
        .map(|d| {
            d.flatten()
                .flat_map(|p| std::fs::read_dir(p.path()).into_iter().flatten().flatten())
                .filter(|b| b.path().join("data").exists())
                .count()
        })
        .unwrap_or(0)
}

/// The blob store holds exactly the kept images' blobs.
fn assert_disk_holds_only(data: &std::path::Path, kept: &[Image], freed_blobs: usize) {
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
    let (kept, freed_blobs) = images_half_deleted(&client, &base, 30).await;

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
        assert_intact(&client, &base, &kept, &format!("attempt {attempt}")).await;
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
    assert_disk_holds_only(&data, &kept, freed_blobs);
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

/// kill -9 `wharf serve` in the middle of its scheduled collection, again and
/// again: nothing reachable is lost, and a later scheduled run finishes the work.
#[tokio::test(flavor = "multi_thread")]
async fn kill_serve_during_its_scheduled_collection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = common::client();
    // Garbage first, with no schedule (a zero grace would also take the
    // blobs of pushes in progress: that is what the grace is for).
    let setup = Server::start(
        &data,
        &[],
        &[("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "false")],
    );
    let (kept, freed_blobs) = images_half_deleted(&client, &setup.url(""), 90).await;
    setup.kill9();
    let scheduled = [
        ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "1s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_GRACE", "0s"),
    ];
    let kept_blobs: usize = kept.iter().map(|(_, b)| b.len()).sum();
    let mut before = blob_files(&data);
    assert_eq!(before, kept_blobs + freed_blobs);
    let (mut interrupted, mut partial) = (0, 0);
    for attempt in 0..6 {
        let server = Server::start(&data, &[], &scheduled);
        // Kill at a different point of the collection each time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server.stderr().contains("garbage collection started") {
            assert!(
                std::time::Instant::now() < deadline,
                "no scheduled collection started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(attempt * 8));
        let finished = server.stderr().contains("garbage collection finished");
        let base = server.url("");
        server.kill9();
        let left = blob_files(&data);
        eprintln!("attempt {attempt}: finished={finished}, blobs {before} -> {left}");
        if !finished {
            interrupted += 1;
            if left > kept_blobs && left < before {
                partial += 1;
            }
        }
        before = left;
        let check = Server::start(
            &data,
            &[],
            &[("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "false")],
        );
        assert_intact(
            &client,
            &check.url(""),
            &kept,
            &format!("restart {attempt} ({base})"),
        )
        .await;
        check.kill9();
    }
    eprintln!(
        "serve killed in the middle of its collection: {interrupted} of 6, {partial} with some blobs deleted"
    );
    assert!(
        partial > 0,
        "no kill landed while the collection was deleting"
    );
    // Left running, the schedule finishes the work.
    let server = Server::start(&data, &[], &scheduled);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.stderr().contains("garbage collection finished") {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled collection did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_intact(&client, &server.url(""), &kept, "after the last collection").await;
    assert_disk_holds_only(&data, &kept, freed_blobs);
    server.kill9();
}
