//! Online garbage collection against a real server: what it frees, what it
//! keeps, the grace period, and a stress run with pushes, re-tags and deletes
//! while collections run in a loop.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::{OCI_MANIFEST, TestRegistry, image_manifest, sha256};
use reqwest::Method;
use wharf_core::GcOptions;

/// Every blob file in the data directory, as `sha256:<hex>`.
fn blobs_on_disk(data: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let root = data.join("docker/registry/v2/blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return out;
    };
    for p in prefixes.flatten() {
        for b in std::fs::read_dir(p.path()).unwrap().flatten() {
            if b.path().join("data").exists() {
                out.insert(format!("sha256:{}", b.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn now_grace(secs: u64) -> GcOptions {
    GcOptions {
        grace: Duration::from_secs(secs),
        dry_run: false,
        untagged_age: None,
    }
}

/// An image: manifest bytes, its digest, and its blobs (digest, data).
type Image = (Vec<u8>, String, Vec<Blob>);
type Blob = (String, Vec<u8>);

/// An image of random content.
fn random_image(tag_seed: &str) -> Image {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","seed":"{tag_seed}-{}"}}"#,
        rand::random::<u64>()
    )
    .into_bytes();
    let layer: Vec<u8> = (0..2048).map(|_| rand::random::<u8>()).collect();
    let (cd, ld) = (sha256(&config), sha256(&layer));
    let m = image_manifest(&cd, config.len(), &[(&ld, layer.len())], None);
    (m.clone(), sha256(&m), vec![(cd, config), (ld, layer)])
}

async fn push(reg: &TestRegistry, repo: &str, tag: &str, img: &Image) {
    for (_, data) in &img.2 {
        reg.push_blob(repo, data).await;
    }
    let r = reg.put_manifest(repo, tag, &img.0, OCI_MANIFEST).await;
    assert_eq!(r.status(), 201, "push {repo}:{tag}");
}

#[tokio::test(flavor = "multi_thread")]
async fn frees_what_nothing_references_and_keeps_the_rest() {
    let reg = TestRegistry::builder().spawn().await;
    let keep = random_image("keep");
    let gone = random_image("gone");
    push(&reg, "gc/app", "keep", &keep).await;
    push(&reg, "gc/app", "gone", &gone).await;
    // Shared with another repository: must survive the delete below.
    push(&reg, "gc/other", "same", &keep).await;
    // A blob uploaded for a push that never came.
    let orphan = reg.push_blob("gc/app", b"an orphan blob").await;
    assert_eq!(blobs_on_disk(&reg.data).len(), 5);

    // Within the grace period nothing goes, whatever is unreferenced.
    let r = reg.registry.gc(now_grace(3600), &()).await.unwrap();
    assert_eq!((r.blobs, r.links), (0, 0));

    let s = reg
        .status(Method::DELETE, &format!("/v2/gc/app/manifests/{}", gone.1))
        .await;
    assert_eq!(s, 202);
    let dry = reg
        .registry
        .gc(
            GcOptions {
                grace: Duration::ZERO,
                dry_run: true,
                untagged_age: None,
            },
            &(),
        )
        .await
        .unwrap();
    let gone_bytes: u64 = gone.2.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(
        (dry.blobs, dry.bytes, dry.links),
        (3, gone_bytes + 14, 3),
        "dry run: the deleted image's two blobs and the orphan"
    );
    assert_eq!(
        blobs_on_disk(&reg.data).len(),
        5,
        "a dry run deletes nothing"
    );

    let r = reg.registry.gc(now_grace(0), &()).await.unwrap();
    assert_eq!((r.blobs, r.bytes, r.links), (3, gone_bytes + 14, 3));
    let left = blobs_on_disk(&reg.data);
    let want: BTreeSet<String> = keep.2.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(left, want);
    assert!(!left.contains(&orphan));
    // What is left pulls back identical, from both repositories.
    for repo in ["gc/app", "gc/other"] {
        for (d, data) in &keep.2 {
            let r = reg
                .send(Method::GET, &format!("/v2/{repo}/blobs/{d}"))
                .await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
        }
    }
    for (d, _) in &gone.2 {
        assert_eq!(
            reg.status(Method::HEAD, &format!("/v2/gc/app/blobs/{d}"))
                .await,
            404
        );
    }
    // Nothing more to do.
    let r = reg.registry.gc(now_grace(0), &()).await.unwrap();
    assert_eq!((r.blobs, r.links), (0, 0));
    // A blob freed once can be pushed again.
    push(&reg, "gc/app", "again", &gone).await;
    let r = reg.send(Method::GET, "/v2/gc/app/manifests/again").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_in_flight_keeps_its_blobs() {
    let reg = TestRegistry::builder().spawn().await;
    let img = random_image("inflight");
    // Blobs uploaded, manifest not yet: a collection with a grace period
    // leaves them, and the manifest then goes in.
    for (_, data) in &img.2 {
        reg.push_blob("gc/slow", data).await;
    }
    let r = reg.registry.gc(now_grace(60), &()).await.unwrap();
    assert_eq!(r.blobs, 0);
    let r = reg
        .put_manifest("gc/slow", "v1", &img.0, OCI_MANIFEST)
        .await;
    assert_eq!(r.status(), 201);
    // Referenced now: even a zero grace keeps them.
    let r = reg.registry.gc(now_grace(0), &()).await.unwrap();
    assert_eq!(r.blobs, 0);
    assert_eq!(blobs_on_disk(&reg.data).len(), 2);
}

/// Pushers, re-taggers and deleters against a collection running in a loop:
/// every image that should remain pulls back whole, and after the grace
/// period nothing unreachable is left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_push_retag_delete_while_collecting() {
    let reg = Arc::new(TestRegistry::builder().spawn().await);
    let grace = Duration::from_secs(2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let gc = {
        let (reg, stop) = (reg.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            let mut freed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = reg
                    .registry
                    .gc(
                        GcOptions {
                            grace,
                            dry_run: false,
                            untagged_age: None,
                        },
                        &(),
                    )
                    .await
                    .unwrap();
                runs += 1;
                freed += r.blobs;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (runs, freed)
        })
    };

    let mut workers = Vec::new();
    for w in 0..4 {
        let reg = reg.clone();
        workers.push(tokio::spawn(async move {
            let repo = format!("stress/w{w}");
            // tag -> (manifest, its digest, blobs)
            let mut live: BTreeMap<String, Image> = BTreeMap::new();
            // Every manifest still stored, tagged or not: digest -> blobs.
            let mut stored: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let tag = format!("t{n}");
                let img = random_image(&format!("{repo}-{tag}"));
                push(&reg, &repo, &tag, &img).await;
                stored.insert(
                    img.1.clone(),
                    img.2.iter().map(|(d, _)| d.clone()).collect(),
                );
                live.insert(tag.clone(), img.clone());
                if n % 3 == 0 {
                    // Re-tag: the same manifest under a second name.
                    let alias = format!("alias{n}");
                    let r = reg.put_manifest(&repo, &alias, &img.0, OCI_MANIFEST).await;
                    assert_eq!(r.status(), 201);
                    live.insert(alias, img.clone());
                }
                if n % 4 == 0 {
                    // Delete an older image by digest: its tags go with it.
                    let victim = live.keys().next().cloned().unwrap();
                    let digest = live[&victim].1.clone();
                    let s = reg
                        .status(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}"))
                        .await;
                    assert_eq!(s, 202);
                    live.retain(|_, v| v.1 != digest);
                    stored.remove(&digest);
                }
                if n % 5 == 0 {
                    // Delete one tag only: the manifest stays, untagged.
                    if let Some(t) = live.keys().nth(1).cloned() {
                        let s = reg
                            .status(Method::DELETE, &format!("/v2/{repo}/manifests/{t}"))
                            .await;
                        assert_eq!(s, 202);
                        live.remove(&t);
                    }
                }
            }
            (repo, live, stored)
        }));
    }
    let mut expected = Vec::new();
    for w in workers {
        expected.push(w.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (runs, freed) = gc.await.unwrap();
    assert!(runs >= 3, "collections ran during the pushes ({runs})");

    // Everything that should be there pulls back byte-identical.
    let mut reachable = BTreeSet::new();
    let mut tags = 0;
    for (repo, live, stored) in &expected {
        reachable.extend(stored.values().flatten().cloned());
        for (tag, (manifest, _, blobs)) in live {
            tags += 1;
            let r = reg
                .send(Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
                .await;
            assert_eq!(r.status(), 200, "{repo}:{tag}");
            assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
            for (d, data) in blobs {
                let r = reg
                    .send(Method::GET, &format!("/v2/{repo}/blobs/{d}"))
                    .await;
                assert_eq!(r.status(), 200, "{repo}@{d}");
                assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
            }
        }
    }
    assert!(tags > 0);
    // Past the grace period, one more collection leaves exactly what is reachable.
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    reg.registry
        .gc(now_grace(grace.as_secs()), &())
        .await
        .unwrap();
    let on_disk = blobs_on_disk(&reg.data);
    let lost: Vec<_> = reachable.difference(&on_disk).collect();
    let left: Vec<_> = on_disk.difference(&reachable).collect();
    assert!(lost.is_empty(), "reachable blobs lost: {lost:?}");
    assert!(left.is_empty(), "unreachable blobs left: {left:?}");
    assert!(
        freed > 0,
        "collections freed blobs while clients worked ({runs} runs)"
    );
}

/// Deleting what users mean: an index's child stays while the index lists it;
/// a deleted manifest's referrers go with it, or stay if so configured.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_respect_indexes_and_follow_referrers() {
    for delete_referrers in [true, false] {
        let reg = TestRegistry::builder()
            .delete_referrers(delete_referrers)
            .spawn()
            .await;
        let img = random_image("subject");
        push(&reg, "del/app", "v1", &img).await;
        // An index listing the image.
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": harness::OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": img.1, "size": img.0.len(),
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }))
        .unwrap();
        let r = reg
            .put_manifest("del/app", "multi", &index, harness::OCI_INDEX)
            .await;
        assert_eq!(r.status(), 201);
        let r = reg
            .send(Method::DELETE, &format!("/v2/del/app/manifests/{}", img.1))
            .await;
        // DELETE answers only what the spec lists for it: 400 UNSUPPORTED.
        assert_eq!(r.status(), 400, "the index still lists it");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
        assert_eq!(
            reg.status(Method::GET, "/v2/del/app/manifests/v1").await,
            200
        );

        // A signature of the image, and a signature of that signature.
        let sig_blob = format!("signature {}", rand::random::<u64>()).into_bytes();
        let sd = reg.push_blob("del/app", &sig_blob).await;
        let sig = image_manifest(&sd, sig_blob.len(), &[], Some((&img.1, img.0.len())));
        let sig_digest = sha256(&sig);
        let r = reg
            .put_manifest("del/app", &sig_digest, &sig, OCI_MANIFEST)
            .await;
        assert_eq!(r.status(), 201);
        let sig2 = image_manifest(&sd, sig_blob.len(), &[], Some((&sig_digest, sig.len())));
        let sig2_digest = sha256(&sig2);
        let r = reg
            .put_manifest("del/app", &sig2_digest, &sig2, OCI_MANIFEST)
            .await;
        assert_eq!(r.status(), 201);

        // Deleting the index frees the child; deleting the child takes its referrers.
        let index_digest = sha256(&index);
        let s = reg
            .status(
                Method::DELETE,
                &format!("/v2/del/app/manifests/{index_digest}"),
            )
            .await;
        assert_eq!(s, 202);
        let s = reg
            .status(Method::DELETE, &format!("/v2/del/app/manifests/{}", img.1))
            .await;
        assert_eq!(s, 202);
        let want = if delete_referrers { 404 } else { 200 };
        for d in [&sig_digest, &sig2_digest] {
            let s = reg
                .status(Method::GET, &format!("/v2/del/app/manifests/{d}"))
                .await;
            assert_eq!(
                s, want,
                "referrer {d} with delete_referrers={delete_referrers}"
            );
        }
        if delete_referrers {
            // Then everything is garbage.
            let r = reg.registry.gc(now_grace(0), &()).await.unwrap();
            assert_eq!(r.blobs, 3);
            assert!(blobs_on_disk(&reg.data).is_empty());
        }
    }
}

/// What a collection told its caller it deleted.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl wharf_core::GcEvents for Told {
    async fn untagged_deleted(&self, manifests: &[(wharf_oci::RepoName, wharf_oci::Digest)]) {
        let mut told = self.0.lock().unwrap();
        told.extend(manifests.iter().map(|(r, d)| format!("{r}@{d}")));
    }
}

/// The untagged policy: a manifest that lost its tag goes (with its blobs);
/// a tagged one, and an untagged child of a tagged index, stay.
#[tokio::test(flavor = "multi_thread")]
async fn untagged_manifests_policy() {
    let reg = TestRegistry::builder().spawn().await;
    let old = random_image("old");
    let new = random_image("new");
    let child = random_image("child");
    push(&reg, "untag/app", "latest", &old).await;
    push(&reg, "untag/app", "latest", &new).await; // the tag moves: old is untagged
    for (_, data) in &child.2 {
        reg.push_blob("untag/app", data).await;
    }
    let r = reg
        .put_manifest("untag/app", &child.1, &child.0, OCI_MANIFEST)
        .await;
    assert_eq!(r.status(), 201);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": harness::OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child.1, "size": child.0.len()}],
    }))
    .unwrap();
    let r = reg
        .put_manifest("untag/app", "multi", &index, harness::OCI_INDEX)
        .await;
    assert_eq!(r.status(), 201);
    let opts = |age: u64, dry_run: bool| GcOptions {
        grace: Duration::ZERO,
        dry_run,
        untagged_age: Some(Duration::from_secs(age)),
    };
    let told = Told::default();
    // Not old enough yet.
    let r = reg.registry.gc(opts(3600, false), &told).await.unwrap();
    assert_eq!((r.manifests, r.blobs), (0, 0));
    let r = reg.registry.gc(opts(0, true), &told).await.unwrap();
    assert_eq!(r.manifests, 1, "dry run");
    assert!(
        told.0.lock().unwrap().is_empty(),
        "a dry run deletes nothing"
    );
    let r = reg.registry.gc(opts(0, false), &told).await.unwrap();
    assert_eq!(
        (r.manifests, r.blobs),
        (1, 2),
        "the old image and its two blobs"
    );
    assert_eq!(
        *told.0.lock().unwrap(),
        [format!("untag/app@{}", old.1)],
        "the caller hears of each deleted manifest, to audit it"
    );
    let s = reg
        .status(Method::GET, &format!("/v2/untag/app/manifests/{}", old.1))
        .await;
    assert_eq!(s, 404);
    for reference in ["latest", "multi", child.1.as_str()] {
        let s = reg
            .status(Method::GET, &format!("/v2/untag/app/manifests/{reference}"))
            .await;
        assert_eq!(s, 200, "{reference}");
    }
    let want: BTreeSet<String> = new
        .2
        .iter()
        .chain(&child.2)
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(blobs_on_disk(&reg.data), want);
}
