//! The contract suite every [`MetaStore`] backend runs unchanged, on a fresh,
//! empty store.

use wharf_oci::{Digest, RepoName, Tag};

use crate::{
    GC_LEASE, ImportBatch, ImportState, Keep, ManifestRecord, ManifestRefs, MetaError, MetaStore,
    ProjectPolicy, PutChecks, RetentionRule, TagRule, Upload,
};

fn name(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn manifest(body: &str, subject: Option<&Digest>, artifact_type: Option<&str>) -> ManifestRecord {
    ManifestRecord {
        digest: Digest::sha256_of(body.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        content: body.as_bytes().to_vec(),
        artifact_type: artifact_type.map(str::to_owned),
        subject: subject.cloned(),
        annotations: Some(r#"{"k":"v"}"#.into()),
    }
}

pub async fn run_all(meta: &dyn MetaStore) {
    // First: these count everything in the store.
    untagged(meta).await;
    garbage_collection(meta).await;
    leases(meta).await;
    blobs(meta).await;
    manifests_need_their_references(meta).await;
    tags_and_deletes(meta).await;
    listings_paginate(meta).await;
    listings_follow_writes(meta).await;
    referrers(meta).await;
    uploads(meta).await;
    repository_delete(meta).await;
    usage(meta).await;
    policies(meta).await;
    quota(meta).await;
    immutable_tags(meta).await;
    sparse_manifests(meta).await;
    import(meta).await;
    retention_queries(meta).await;
}

/// Storage accounting: what manifests reference, a blob shared inside a
/// project once; links no manifest uses do not count.
pub async fn usage(meta: &dyn MetaStore) {
    let (shared, own, pending) = (
        Digest::sha256_of(b"usage-shared"),
        Digest::sha256_of(b"usage-own"),
        Digest::sha256_of(b"usage-pending"),
    );
    meta.record_blob(&shared, 1000, 1, None).await.unwrap();
    meta.record_blob(&own, 10, 1, None).await.unwrap();
    meta.record_blob(&pending, 5000, 1, None).await.unwrap();
    let (a, b, other) = (name("use_r/a"), name("use_r/b"), name("user/x"));
    meta.link_blob(&a, &shared, None).await.unwrap();
    meta.link_blob(&a, &pending, None).await.unwrap();
    meta.link_blob(&b, &shared, None).await.unwrap();
    meta.link_blob(&b, &own, None).await.unwrap();
    meta.link_blob(&other, &own, None).await.unwrap();
    let m = manifest("usage-image", None, None);
    meta.put_manifest(
        &a,
        &m,
        &ManifestRefs {
            blobs: vec![shared.clone()],
            children: vec![],
        },
        Some(&tag("v1")),
    )
    .await
    .unwrap();
    let m2 = manifest("usage-image-2", None, None);
    meta.put_manifest(
        &b,
        &m2,
        &ManifestRefs {
            blobs: vec![shared.clone(), own.clone()],
            children: vec![],
        },
        None,
    )
    .await
    .unwrap();
    let m3 = manifest("usage-image-3", None, None);
    meta.put_manifest(
        &other,
        &m3,
        &ManifestRefs {
            blobs: vec![own.clone()],
            children: vec![],
        },
        None,
    )
    .await
    .unwrap();
    let (ms, ms2) = (m.content.len() as u64, m2.content.len() as u64);
    let (total, repos) = meta.project_usage("use_r").await.unwrap();
    assert_eq!(
        total,
        1010 + ms + ms2,
        "the shared blob once, the pending one not"
    );
    assert_eq!(
        repos,
        [
            ("use_r/a".to_string(), 1000 + ms),
            ("use_r/b".to_string(), 1010 + ms2)
        ]
    );
    // `_` in a project name is literal: `user/x` is not in `use_r`.
    assert_eq!(
        meta.project_usage("user").await.unwrap().0,
        10 + m3.content.len() as u64
    );
    assert_eq!(meta.project_usage("nothing").await.unwrap(), (0, vec![]));
    // Deleting the image frees its share at once (before any collection).
    meta.delete_manifest(&b, &m2.digest).await.unwrap();
    assert_eq!(meta.project_usage("use_r").await.unwrap().0, 1000 + ms);
}

/// Policies are stored and returned as given, per project.
pub async fn policies(meta: &dyn MetaStore) {
    assert_eq!(meta.project_policy("pol").await.unwrap(), None);
    let p = ProjectPolicy {
        quota_bytes: Some(1 << 30),
        immutable: vec![TagRule {
            repositories: "**".into(),
            tags: "v*".into(),
        }],
        retention: vec![RetentionRule {
            repositories: "app".into(),
            tags: "**".into(),
            keep: Keep::Newest(3),
        }],
    };
    meta.set_project_policy("pol", Some(&p)).await.unwrap();
    meta.set_project_policy("pol2", Some(&ProjectPolicy::default()))
        .await
        .unwrap();
    assert_eq!(meta.project_policy("pol").await.unwrap(), Some(p.clone()));
    let all = meta.project_policies().await.unwrap();
    assert!(all.contains(&("pol".to_string(), p.clone())));
    assert!(all.iter().any(|(n, _)| n == "pol2"));
    let mut q = p.clone();
    q.quota_bytes = None;
    meta.set_project_policy("pol", Some(&q)).await.unwrap();
    assert_eq!(meta.project_policy("pol").await.unwrap(), Some(q));
    meta.set_project_policy("pol", None).await.unwrap();
    meta.set_project_policy("pol2", None).await.unwrap();
    assert_eq!(meta.project_policy("pol").await.unwrap(), None);
    assert!(
        meta.project_policies()
            .await
            .unwrap()
            .iter()
            .all(|(n, _)| n != "pol")
    );
}

/// A quota check counts what the manifest adds and refuses it whole.
pub async fn quota(meta: &dyn MetaStore) {
    let (r1, r2) = (name("quo/a"), name("quo/b"));
    let (big, small) = (
        Digest::sha256_of(b"quota-big"),
        Digest::sha256_of(b"quota-small"),
    );
    meta.record_blob(&big, 1000, 1, None).await.unwrap();
    meta.record_blob(&small, 100, 1, None).await.unwrap();
    for r in [&r1, &r2] {
        meta.link_blob(r, &big, None).await.unwrap();
        meta.link_blob(r, &small, None).await.unwrap();
    }
    let m1 = manifest("quota-1", None, None);
    let refs = |b: &[&Digest]| ManifestRefs {
        blobs: b.iter().map(|d| (*d).clone()).collect(),
        children: vec![],
    };
    let limit = |n: u64| PutChecks {
        quota: Some(("quo".into(), n)),
        ..PutChecks::default()
    };
    let m1s = m1.content.len() as u64;
    // A blob the repository lacks is reported as such, quota or not.
    let unknown = Digest::sha256_of(b"quota-unknown");
    assert!(matches!(
        meta.put_manifest_checked(&r1, &m1, &refs(&[&unknown]), &[], &limit(10))
            .await,
        Err(MetaError::MissingBlob(d)) if d == unknown
    ));
    // 1000 + manifest does not fit in 1000.
    match meta
        .put_manifest_checked(&r1, &m1, &refs(&[&big]), &[tag("v1")], &limit(1000))
        .await
    {
        Err(MetaError::QuotaExceeded {
            used,
            adding,
            limit,
            ..
        }) => assert_eq!((used, adding, limit), (0, 1000 + m1s, 1000)),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert!(
        meta.manifest_by_digest(&r1, &m1.digest)
            .await
            .unwrap()
            .is_none()
    );
    assert!(meta.list_tags(&r1, None, 10).await.unwrap().is_none());
    meta.put_manifest_checked(&r1, &m1, &refs(&[&big]), &[tag("v1")], &limit(1000 + m1s))
        .await
        .unwrap();
    // The same blob in another repository of the project costs only the manifest.
    let m2 = manifest("quota-2", None, None);
    let m2s = m2.content.len() as u64;
    let at_limit = 1000 + m1s + m2s;
    meta.put_manifest_checked(&r2, &m2, &refs(&[&big]), &[], &limit(at_limit))
        .await
        .unwrap();
    // Full: a new blob does not fit, re-tagging what is there does.
    let m3 = manifest("quota-3", None, None);
    assert!(matches!(
        meta.put_manifest_checked(&r2, &m3, &refs(&[&small]), &[], &limit(at_limit))
            .await,
        Err(MetaError::QuotaExceeded { adding, .. }) if adding == 100 + m3.content.len() as u64
    ));
    meta.put_manifest_checked(&r2, &m2, &refs(&[&big]), &[tag("again")], &limit(at_limit))
        .await
        .unwrap();
    assert_eq!(meta.project_usage("quo").await.unwrap().0, at_limit);
    // Two pushes at once, each fitting alone but not both: exactly one is
    // stored, and the project never goes past its limit.
    let (ra, rb) = (name("quo2/a"), name("quo2/b"));
    for r in [&ra, &rb] {
        meta.link_blob(r, &big, None).await.unwrap();
    }
    let (ma, mb) = (
        manifest("quota-race-a", None, None),
        manifest("quota-race-b", None, None),
    );
    let cap = 1000 + ma.content.len().max(mb.content.len()) as u64;
    let checks = PutChecks {
        quota: Some(("quo2".into(), cap)),
        ..PutChecks::default()
    };
    let uses_big = refs(&[&big]);
    let (x, y) = futures::join!(
        meta.put_manifest_checked(&ra, &ma, &uses_big, &[], &checks),
        meta.put_manifest_checked(&rb, &mb, &uses_big, &[], &checks),
    );
    let refused = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(MetaError::QuotaExceeded { .. })))
        .count();
    assert_eq!(
        (x.is_ok() as u8 + y.is_ok() as u8, refused),
        (1, 1),
        "{x:?} {y:?}"
    );
    let total = meta.project_usage("quo2").await.unwrap().0;
    assert!(total <= cap, "overshot: {total} > {cap}");
}

/// An immutable tag is not moved; pushing the manifest it has is fine.
pub async fn immutable_tags(meta: &dyn MetaStore) {
    let r = name("imm/app");
    let (m1, m2) = (manifest("imm-1", None, None), manifest("imm-2", None, None));
    let none = ManifestRefs::default();
    let guard = PutChecks {
        immutable_tags: vec!["v1".into()],
        ..PutChecks::default()
    };
    meta.put_manifest_checked(&r, &m1, &none, &[tag("v1")], &guard)
        .await
        .unwrap();
    meta.put_manifest_checked(&r, &m1, &none, &[tag("v1")], &guard)
        .await
        .unwrap();
    assert!(matches!(
        meta.put_manifest_checked(&r, &m2, &none, &[tag("v1")], &guard)
            .await,
        Err(MetaError::Immutable(t)) if t == "v1"
    ));
    assert_eq!(
        meta.manifest_by_tag(&r, &tag("v1"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m1.digest
    );
    assert!(
        meta.manifest_by_digest(&r, &m2.digest)
            .await
            .unwrap()
            .is_none()
    );
    meta.put_manifest(&r, &m1, &none, Some(&tag("v0")))
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_tags(&r, &m1.digest).await.unwrap(),
        ["v0", "v1"]
    );
    assert!(meta.manifest_tags(&r, &m2.digest).await.unwrap().is_empty());
    // Several tags at once: all or none, and only the immutable ones are
    // guarded.
    meta.put_manifest_checked(&r, &m2, &none, &[tag("moving"), tag("v2")], &guard)
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_tags(&r, &m2.digest).await.unwrap(),
        ["moving", "v2"]
    );
    meta.put_manifest_checked(&r, &m1, &none, &[tag("moving"), tag("v1")], &guard)
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_tags(&r, &m1.digest).await.unwrap(),
        ["moving", "v0", "v1"]
    );
    assert!(matches!(
        meta.put_manifest_checked(&r, &m2, &none, &[tag("other"), tag("v1")], &guard)
            .await,
        Err(MetaError::Immutable(t)) if t == "v1"
    ));
    assert_eq!(
        meta.manifest_tags(&r, &m2.digest).await.unwrap(),
        ["v2"],
        "nothing of it stored"
    );
}

/// Importing a repository of a distribution root: all in one go,
/// idempotent, Wharf's own later tag moves kept, manifests' own blob files
/// kept by collections while the manifest exists.
pub async fn import(meta: &dyn MetaStore) {
    let r = name("imported/app");
    let (layer, config) = (
        Digest::sha256_of(b"imp-layer"),
        Digest::sha256_of(b"imp-config"),
    );
    let img = manifest("imported-image", None, None);
    let idx = manifest("imported-index", None, None);
    let batch = ImportBatch {
        blobs: vec![(layer.clone(), 9), (config.clone(), 10)],
        manifests: vec![
            // The index first: order does not matter.
            (
                idx.clone(),
                ManifestRefs {
                    blobs: vec![],
                    children: vec![img.digest.clone()],
                },
            ),
            (
                img.clone(),
                ManifestRefs {
                    blobs: vec![config.clone(), layer.clone()],
                    children: vec![],
                },
            ),
        ],
        tags: vec![
            (tag("latest"), idx.digest.clone()),
            (tag("amd64"), img.digest.clone()),
            (
                tag("gone"),
                Digest::sha256_of(b"a schema1 manifest, not imported"),
            ),
        ],
    };
    assert_eq!(meta.import_state().await.unwrap(), None);
    meta.set_import_state(ImportState::Pending).await.unwrap();
    assert_eq!(
        meta.import_state().await.unwrap(),
        Some(ImportState::Pending)
    );
    meta.import_repository(&r, &batch, 70_000).await.unwrap();
    let listed = |p: Option<crate::Page>| p.map(|p| p.items);
    assert_eq!(
        listed(meta.list_tags(&r, None, 10).await.unwrap()),
        Some(vec!["amd64".into(), "latest".into()])
    );
    assert_eq!(meta.blob_in_repo(&r, &layer).await.unwrap(), Some(9));
    assert_eq!(
        meta.manifest_by_tag(&r, &tag("latest"))
            .await
            .unwrap()
            .unwrap()
            .content,
        idx.content
    );
    // Referenced: a collection at any cutoff takes none of them, nor the
    // manifests' own blob files.
    let far = i64::MAX / 2;
    meta.gc_drop_stale_links(far).await.unwrap();
    take_gc_lease(meta, "gc-import", 70_000, 1_000).await;
    let marked = meta
        .gc_mark("gc-import", far, 70_000, 100, None)
        .await
        .unwrap();
    for d in [&layer, &config, &img.digest, &idx.digest] {
        assert!(!marked.iter().any(|(m, _)| m == d), "{d} marked");
    }
    meta.gc_forget(
        "gc-import",
        &marked.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    meta.lease_release(GC_LEASE, "gc-import").await.unwrap();
    // Wharf moves a tag; importing again (a resumed run) adds nothing and
    // does not move it back.
    let other = manifest("wharf-pushed", None, None);
    meta.put_manifest(&r, &other, &ManifestRefs::default(), Some(&tag("latest")))
        .await
        .unwrap();
    meta.import_repository(&r, &batch, 80_000).await.unwrap();
    assert_eq!(
        meta.manifest_by_tag(&r, &tag("latest"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        other.digest
    );
    assert!(
        meta.imported_repositories()
            .await
            .unwrap()
            .contains("imported/app")
    );
    meta.set_import_state(ImportState::Complete).await.unwrap();
    assert_eq!(
        meta.import_state().await.unwrap(),
        Some(ImportState::Complete)
    );
    // Once its manifest is deleted, a manifest's blob file is collectable.
    meta.delete_tag(&r, &tag("amd64")).await.unwrap();
    meta.delete_manifest(&r, &idx.digest).await.unwrap();
    meta.delete_manifest(&r, &img.digest).await.unwrap();
    meta.unlink_blob(&r, &layer).await.unwrap();
    meta.unlink_blob(&r, &config).await.unwrap();
    take_gc_lease(meta, "gc-import", 90_000, 1_000).await;
    let marked = meta
        .gc_mark("gc-import", far, 90_000, 100, None)
        .await
        .unwrap();
    for d in [&layer, &config, &img.digest, &idx.digest] {
        assert!(marked.iter().any(|(m, _)| m == d), "{d} not marked");
    }
    meta.gc_forget(
        "gc-import",
        &marked.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    meta.lease_release(GC_LEASE, "gc-import").await.unwrap();
}

/// With `sparse`, references to blobs and children the repository lacks are
/// accepted and recorded; without it they are refused.
pub async fn sparse_manifests(meta: &dyn MetaStore) {
    let r = name("sparse/app");
    let (blob, child) = (
        Digest::sha256_of(b"sparse-blob"),
        Digest::sha256_of(b"sparse-child"),
    );
    let m = manifest("sparse-index", None, None);
    let refs = ManifestRefs {
        blobs: vec![blob.clone()],
        children: vec![child.clone()],
    };
    assert!(matches!(
        meta.put_manifest_checked(&r, &m, &refs, &[tag("s")], &PutChecks::default()).await,
        Err(MetaError::MissingBlob(d)) if d == blob
    ));
    let only_child = ManifestRefs {
        blobs: vec![],
        children: vec![child.clone()],
    };
    assert!(matches!(
        meta.put_manifest_checked(&r, &m, &only_child, &[tag("s")], &PutChecks::default()).await,
        Err(MetaError::MissingManifest(d)) if d == child
    ));
    let sparse = PutChecks {
        sparse: true,
        ..PutChecks::default()
    };
    meta.put_manifest_checked(&r, &m, &refs, &[tag("s")], &sparse)
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_by_tag(&r, &tag("s"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m.digest
    );
    // The missing blob counts as referenced once it comes: no collection
    // takes it after its push.
    let before = meta.gc_estimate(i64::MAX / 2).await.unwrap();
    meta.record_blob(&blob, 3, 1, None).await.unwrap();
    assert_eq!(
        meta.gc_estimate(i64::MAX / 2).await.unwrap(),
        before,
        "{blob} is referenced"
    );
}

/// What retention reads (push and pull times) and how it deletes.
pub async fn retention_queries(meta: &dyn MetaStore) {
    let (a, b) = (name("ret/a"), name("ret/sub/b"));
    let none = ManifestRefs::default();
    let (m1, m2, m3) = (
        manifest("ret-1", None, None),
        manifest("ret-2", None, None),
        manifest("ret-3", None, None),
    );
    // Push times are in ms: apart, so that the order is the push order.
    meta.put_manifest(&a, &m1, &none, Some(&tag("old")))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    meta.put_manifest(&a, &m1, &none, Some(&tag("old-alias")))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    meta.put_manifest(&a, &m2, &none, Some(&tag("new")))
        .await
        .unwrap();
    meta.put_manifest(&b, &m3, &none, Some(&tag("x")))
        .await
        .unwrap();
    let idx = manifest("ret-index", None, None);
    meta.put_manifest(
        &b,
        &idx,
        &ManifestRefs {
            blobs: vec![],
            children: vec![m3.digest.clone()],
        },
        None,
    )
    .await
    .unwrap();
    meta.record_pulls(&[
        (a.clone(), m2.digest.clone(), 5000),
        (a.clone(), m2.digest.clone(), 4000),
        (a.clone(), Digest::sha256_of(b"gone"), 7000),
    ])
    .await
    .unwrap();
    meta.record_pulls(&[(a.clone(), m2.digest.clone(), 3000)])
        .await
        .unwrap();
    let tags = meta.project_tags("ret").await.unwrap();
    let got: Vec<(&str, &str, Option<i64>)> = tags
        .iter()
        .map(|t| (t.repo.as_str(), t.tag.as_str(), t.pulled_at_ms))
        .collect();
    assert_eq!(
        got,
        [
            ("ret/a", "new", Some(5000)),
            ("ret/a", "old-alias", None),
            ("ret/a", "old", None),
            ("ret/sub/b", "x", None)
        ],
        "by repository, newest push first, pull times never moving back"
    );
    assert!(tags[0].pushed_at_ms > tags[2].pushed_at_ms);
    assert_eq!(
        meta.project_index_children("ret").await.unwrap(),
        [(b.clone(), idx.digest.clone(), m3.digest.clone())]
    );
    assert!(
        meta.project_index_children("other")
            .await
            .unwrap()
            .is_empty()
    );
    // Not at that digest any more: nothing happens.
    assert_eq!(
        meta.delete_tag_and_untagged(&a, &tag("new"), &m1.digest)
            .await
            .unwrap(),
        (false, false)
    );
    // Another tag still points at m1: only the tag goes.
    assert_eq!(
        meta.delete_tag_and_untagged(&a, &tag("old"), &m1.digest)
            .await
            .unwrap(),
        (true, false)
    );
    assert_eq!(
        meta.delete_tag_and_untagged(&a, &tag("old-alias"), &m1.digest)
            .await
            .unwrap(),
        (true, true)
    );
    assert!(
        meta.manifest_by_digest(&a, &m1.digest)
            .await
            .unwrap()
            .is_none()
    );
    // An index lists m3: it stays, untagged.
    assert_eq!(
        meta.delete_tag_and_untagged(&b, &tag("x"), &m3.digest)
            .await
            .unwrap(),
        (true, false)
    );
    assert!(
        meta.manifest_by_digest(&b, &m3.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        meta.list_tags(&a, None, 10).await.unwrap().unwrap().items,
        ["new"]
    );
}

/// Untagged manifests: who is eligible, in which round.
pub async fn untagged(meta: &dyn MetaStore) {
    let repo = name("untag/app");
    let none = ManifestRefs::default();
    let (m1, m2, m3) = (
        manifest("untag-1", None, None),
        manifest("untag-2", None, None),
        manifest("untag-3", None, None),
    );
    let c1 = manifest("untag-child", None, None);
    meta.put_manifest(&repo, &m1, &none, Some(&tag("a")))
        .await
        .unwrap();
    meta.put_manifest(&repo, &m2, &none, None).await.unwrap();
    meta.put_manifest(&repo, &c1, &none, None).await.unwrap();
    let i1 = manifest("untag-index", None, None);
    let children = ManifestRefs {
        blobs: vec![],
        children: vec![c1.digest.clone()],
    };
    meta.put_manifest(&repo, &i1, &children, None)
        .await
        .unwrap();
    let r1 = manifest("untag-sig-1", Some(&m1.digest), Some("sig"));
    let r2 = manifest("untag-sig-2", Some(&m2.digest), Some("sig"));
    meta.put_manifest(&repo, &r1, &none, None).await.unwrap();
    meta.put_manifest(&repo, &r2, &none, None).await.unwrap();
    // Tag a moves to m3: m1 has lost its last tag. m3 keeps one.
    meta.put_manifest(&repo, &m3, &none, Some(&tag("a")))
        .await
        .unwrap();
    meta.put_manifest(&repo, &m3, &none, Some(&tag("b")))
        .await
        .unwrap();
    assert!(meta.delete_tag(&repo, &tag("b")).await.unwrap());

    let far = i64::MAX / 2;
    let sorted = |mut v: Vec<Digest>| {
        v.sort();
        v
    };
    let repo_ref = &repo;
    let round = |dry| async move {
        let v = meta.gc_untagged(far, 100, dry).await.unwrap();
        assert!(v.iter().all(|(r, _)| r == repo_ref));
        sorted(v.into_iter().map(|(_, d)| d).collect())
    };
    // Too recent for a cutoff in the past.
    assert!(meta.gc_untagged(0, 100, false).await.unwrap().is_empty());
    let first = sorted(vec![
        m1.digest.clone(),
        m2.digest.clone(),
        i1.digest.clone(),
    ]);
    assert_eq!(round(true).await, first, "dry run");
    assert_eq!(round(true).await, first, "a dry run deletes nothing");
    assert_eq!(round(false).await, first);
    // Their child and referrers are eligible now; then nothing is.
    let second = sorted(vec![
        c1.digest.clone(),
        r1.digest.clone(),
        r2.digest.clone(),
    ]);
    assert_eq!(round(false).await, second);
    assert!(round(false).await.is_empty());
    // The tagged one stays.
    assert!(
        meta.manifest_by_tag(&repo, &tag("a"))
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn repository_delete(meta: &dyn MetaStore) {
    let (repo, other) = (name("rmrepo/app"), name("rmrepo/other"));
    let layer = Digest::sha256_of(b"rmrepo-layer");
    meta.record_blob(&layer, 3, 1, None).await.unwrap();
    for r in [&repo, &other] {
        meta.link_blob(r, &layer, None).await.unwrap();
        let m = manifest("rmrepo-image", None, None);
        let refs = ManifestRefs {
            blobs: vec![layer.clone()],
            children: vec![],
        };
        meta.put_manifest(r, &m, &refs, Some(&tag("v1")))
            .await
            .unwrap();
    }
    meta.create_upload(&Upload {
        id: "rmrepo-upload".into(),
        repo: repo.clone(),
        size: 0,
        hash_state: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        meta.delete_repository(&repo).await.unwrap(),
        Some(vec!["rmrepo-upload".to_string()])
    );
    assert_eq!(meta.delete_repository(&repo).await.unwrap(), None);
    assert_eq!(meta.list_tags(&repo, None, 10).await.unwrap(), None);
    assert_eq!(meta.blob_in_repo(&repo, &layer).await.unwrap(), None);
    assert!(meta.get_upload("rmrepo-upload").await.unwrap().is_none());
    let cat = meta.list_repositories(Some("rmrepo/"), 10).await.unwrap();
    assert!(!cat.items.contains(&repo.to_string()));
    // The other repository is untouched.
    assert_eq!(meta.blob_in_repo(&other, &layer).await.unwrap(), Some(3));
    assert!(
        meta.manifest_by_tag(&other, &tag("v1"))
            .await
            .unwrap()
            .is_some()
    );
}

/// Marks, forgets, stale links, grace and the record/mark handshake.
pub async fn garbage_collection(meta: &dyn MetaStore) {
    let repo = name("gc/app");
    let (used, orphan, fresh, stale_link) = (
        Digest::sha256_of(b"gc-used"),
        Digest::sha256_of(b"gc-orphan"),
        Digest::sha256_of(b"gc-fresh"),
        Digest::sha256_of(b"gc-stale-link"),
    );
    // Recorded long ago (t=100), except `fresh` (t=10_000).
    for (d, t) in [
        (&used, 100),
        (&orphan, 100),
        (&stale_link, 100),
        (&fresh, 10_000),
    ] {
        meta.record_blob(d, 7, t, None).await.unwrap();
    }
    meta.link_blob(&repo, &used, None).await.unwrap();
    meta.link_blob(&repo, &stale_link, None).await.unwrap();
    let m = manifest("gc-image", None, None);
    meta.put_manifest(
        &repo,
        &m,
        &ManifestRefs {
            blobs: vec![used.clone()],
            children: vec![],
        },
        None,
    )
    .await
    .unwrap();
    // Links are made "now"; a cutoff in the far future makes them stale.
    let far = i64::MAX / 2;
    let cutoff = 5_000;
    // Estimate at the cutoff: the orphan only (links are recent).
    assert_eq!(meta.gc_estimate(cutoff).await.unwrap(), (0, 1, 7));
    // With every link stale: stale_link's link goes, the used one stays.
    assert_eq!(meta.gc_estimate(far).await.unwrap(), (1, 3, 21));
    assert_eq!(meta.gc_drop_stale_links(far).await.unwrap(), 1);
    assert_eq!(meta.blob_in_repo(&repo, &stale_link).await.unwrap(), None);
    assert_eq!(meta.blob_in_repo(&repo, &used).await.unwrap(), Some(7));

    // Only the holder of the GC lease marks.
    assert!(matches!(
        meta.gc_mark("gc-1", cutoff, 20_000, 10, None).await,
        Err(MetaError::LeaseLost(_))
    ));
    take_gc_lease(meta, "gc-1", 20_000, 10_000).await; // until 30_000
    // Marking honours the cutoff: `fresh` was recorded after it, and linking
    // `stale_link` touched it "now".
    let marked = meta
        .gc_mark("gc-1", cutoff, 20_000, 10, None)
        .await
        .unwrap();
    assert_eq!(marked, [(orphan.clone(), 7)]);
    // Marked blobs of a live collector can be neither recorded (an upload
    // waits) nor linked.
    assert!(matches!(
        meta.record_blob(&orphan, 7, 21_000, None).await,
        Err(MetaError::Conflict)
    ));
    assert!(matches!(
        meta.link_blob(&repo, &orphan, None).await,
        Err(MetaError::MissingBlob(_))
    ));
    // Another collector can neither take the lease nor mark.
    let held = meta
        .lease_acquire(GC_LEASE, "gc-2", 21_000, 10_000)
        .await
        .unwrap();
    assert_eq!(held.owner, "gc-1");
    assert!(matches!(
        meta.gc_mark("gc-2", cutoff, 21_000, 10, None).await,
        Err(MetaError::LeaseLost(_))
    ));
    // Forgetting is per owner.
    meta.gc_forget("gc-2", std::slice::from_ref(&orphan))
        .await
        .unwrap();
    assert!(matches!(
        meta.record_blob(&orphan, 7, 22_000, None).await,
        Err(MetaError::Conflict)
    ));
    // gc-1 stops renewing (it died, or froze): at 30_000 its lease lapses,
    // and the next holder takes over its marks.
    assert!(meta.lease_holder(GC_LEASE, 29_999).await.unwrap().is_some());
    assert_eq!(meta.lease_holder(GC_LEASE, 30_000).await.unwrap(), None);
    take_gc_lease(meta, "gc-2", 31_000, 10_000).await; // until 41_000
    assert!(
        !meta
            .lease_renew(GC_LEASE, "gc-1", 31_000, 10_000)
            .await
            .unwrap()
    );
    assert!(matches!(
        meta.gc_mark("gc-1", cutoff, 31_000, 10, None).await,
        Err(MetaError::LeaseLost(_))
    ));
    let taken = meta
        .gc_mark("gc-2", cutoff, 31_000, 10, None)
        .await
        .unwrap();
    assert_eq!(taken, [(orphan.clone(), 7)], "gc-1's mark is taken over");
    meta.gc_forget("gc-1", std::slice::from_ref(&orphan))
        .await
        .unwrap();
    assert!(
        matches!(
            meta.record_blob(&orphan, 7, 32_000, None).await,
            Err(MetaError::Conflict)
        ),
        "gc-1 no longer owns it"
    );
    meta.gc_forget("gc-2", std::slice::from_ref(&orphan))
        .await
        .unwrap();
    // Forgotten: an upload may record the orphan afresh, and it is then safe.
    meta.record_blob(&orphan, 7, 40_000, None).await.unwrap();
    assert!(
        meta.lease_renew(GC_LEASE, "gc-2", 40_000, 10_000)
            .await
            .unwrap()
    ); // until 50_000
    let m3 = meta
        .gc_mark("gc-2", 35_000, 41_000, 10, None)
        .await
        .unwrap();
    assert_eq!(
        m3,
        [(fresh.clone(), 7)],
        "the re-recorded orphan is newer than the cutoff"
    );
    // gc-2 dies holding that mark. An upload of the same blob clears a mark
    // whose collector lost the lease (its commit puts the bytes back), and
    // the dead collector's late forget cannot drop the record.
    assert!(matches!(
        meta.record_blob(&fresh, 7, 45_000, None).await,
        Err(MetaError::Conflict)
    ));
    meta.record_blob(&fresh, 7, 50_000, None).await.unwrap();
    let before = meta.gc_estimate(far).await.unwrap();
    meta.gc_forget("gc-2", std::slice::from_ref(&fresh))
        .await
        .unwrap();
    assert_eq!(
        meta.gc_estimate(far).await.unwrap(),
        before,
        "the record stays"
    );
    take_gc_lease(meta, "gc-4", 50_001, i64::MAX / 4).await;
    // A blob a manifest uses is never marked, even without links.
    assert!(meta.unlink_blob(&repo, &used).await.unwrap());
    let marked = meta.gc_mark("gc-4", far, 50_001, 10, None).await.unwrap();
    assert!(!marked.iter().any(|(d, _)| d == &used), "{marked:?}");
    meta.gc_forget(
        "gc-4",
        &marked.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    // Re-recording refreshes: a blob touched after the cutoff is kept.
    meta.record_blob(&fresh, 7, 50_000, None).await.unwrap();
    assert!(
        meta.gc_mark("gc-4", 45_000, 51_000, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    // A blob an upload is committing (pinned) is kept at any cutoff until
    // the upload links it; linking ends the upload and its pin.
    let pinned = Digest::sha256_of(b"gc-pinned");
    let upload = Upload {
        id: "00000000-0000-4000-8000-00000000a11c".into(),
        repo: repo.clone(),
        size: 3,
        hash_state: None,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    meta.create_upload(&upload).await.unwrap();
    meta.record_blob(&pinned, 3, 52_000, Some(&upload.id))
        .await
        .unwrap();
    assert_eq!(meta.gc_estimate(far).await.unwrap().1, 1, "only `fresh`");
    let marked = meta.gc_mark("gc-4", far, 53_000, 10, None).await.unwrap();
    assert_eq!(marked, [(fresh.clone(), 7)], "the pinned blob is kept");
    meta.gc_forget("gc-4", std::slice::from_ref(&fresh))
        .await
        .unwrap();
    meta.link_blob(&repo, &pinned, Some(&upload.id))
        .await
        .unwrap();
    assert_eq!(meta.get_upload(&upload.id).await.unwrap(), None);
    assert_eq!(meta.blob_in_repo(&repo, &pinned).await.unwrap(), Some(3));
    assert!(meta.unlink_blob(&repo, &pinned).await.unwrap());
    let marked = meta.gc_mark("gc-4", far, 54_000, 10, None).await.unwrap();
    assert_eq!(marked, [(pinned.clone(), 3)], "unpinned once linked");
    meta.gc_forget("gc-4", std::slice::from_ref(&pinned))
        .await
        .unwrap();
    // Batches come in digest order, each after the cursor it is given
    // (other deletable blobs of the suite may be among them).
    let orphans: Vec<Digest> = (0..7)
        .map(|i| Digest::sha256_of(format!("gc-cursor-{i}").as_bytes()))
        .collect();
    for d in &orphans {
        meta.record_blob(d, 1, 60_000, None).await.unwrap();
    }
    let digests = |v: Vec<(Digest, u64)>| v.into_iter().map(|(d, _)| d).collect::<Vec<_>>();
    let first = digests(meta.gc_mark("gc-4", 61_000, 62_000, 3, None).await.unwrap());
    assert_eq!(first.len(), 3);
    assert!(first.is_sorted(), "{first:?}");
    let second = digests(
        meta.gc_mark("gc-4", 61_000, 62_000, 1000, first.last())
            .await
            .unwrap(),
    );
    assert!(second.is_sorted(), "{second:?}");
    assert!(
        second.iter().all(|d| d > &first[2]),
        "only after the cursor"
    );
    for d in &orphans {
        assert!(
            first.contains(d) || second.contains(d),
            "{d} was not marked"
        );
    }
    assert!(
        meta.gc_mark("gc-4", 61_000, 62_000, 1000, None)
            .await
            .unwrap()
            .is_empty()
    );
    meta.gc_forget("gc-4", &[first, second].concat())
        .await
        .unwrap();
    meta.lease_release(GC_LEASE, "gc-4").await.unwrap();
    assert_eq!(meta.lease_holder(GC_LEASE, 62_000).await.unwrap(), None);
}

/// Takes the GC lease for `owner`, which must get it.
async fn take_gc_lease(meta: &dyn MetaStore, owner: &str, now: i64, ttl: i64) {
    let held = meta.lease_acquire(GC_LEASE, owner, now, ttl).await.unwrap();
    assert_eq!(held.owner, owner, "{held:?}");
    assert_eq!(held.expires_at_ms, now + ttl);
}

/// Leases: exclusive until released or expired; renewing extends only the
/// holder's; re-acquiring by the holder keeps its start time.
pub async fn leases(meta: &dyn MetaStore) {
    let l = "contract-lease";
    assert_eq!(meta.lease_holder(l, 0).await.unwrap(), None);
    let a = meta.lease_acquire(l, "a", 1_000, 500).await.unwrap();
    assert_eq!(
        (a.owner.as_str(), a.acquired_at_ms, a.expires_at_ms),
        ("a", 1_000, 1_500)
    );
    assert_eq!(
        meta.lease_acquire(l, "b", 1_200, 500).await.unwrap().owner,
        "a"
    );
    assert!(!meta.lease_renew(l, "b", 1_300, 500).await.unwrap());
    assert!(meta.lease_renew(l, "a", 1_400, 500).await.unwrap());
    assert_eq!(
        meta.lease_holder(l, 1_800)
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        1_900
    );
    let again = meta.lease_acquire(l, "a", 1_850, 500).await.unwrap();
    assert_eq!((again.acquired_at_ms, again.expires_at_ms), (1_000, 2_350));
    // Expired: anyone takes it, and the old holder cannot renew.
    let b = meta.lease_acquire(l, "b", 2_350, 500).await.unwrap();
    assert_eq!((b.owner.as_str(), b.acquired_at_ms), ("b", 2_350));
    assert!(!meta.lease_renew(l, "a", 2_400, 500).await.unwrap());
    // Releasing another's lease does nothing; releasing one's own frees it.
    meta.lease_release(l, "a").await.unwrap();
    assert_eq!(
        meta.lease_holder(l, 2_400).await.unwrap().unwrap().owner,
        "b"
    );
    meta.lease_release(l, "b").await.unwrap();
    assert_eq!(meta.lease_holder(l, 2_400).await.unwrap(), None);
    assert_eq!(
        meta.lease_acquire(l, "c", 2_400, 500).await.unwrap().owner,
        "c"
    );
    meta.lease_release(l, "c").await.unwrap();
}

pub async fn blobs(meta: &dyn MetaStore) {
    let (a, b) = (name("blobs/a"), name("blobs/b"));
    let d = Digest::sha256_of(b"blob");
    assert_eq!(meta.blob_known(&d).await.unwrap(), None);
    assert!(
        matches!(
            meta.link_blob(&a, &d, None).await,
            Err(MetaError::MissingBlob(_))
        ),
        "linking needs a record"
    );
    meta.record_blob(&d, 4, 1, None).await.unwrap();
    meta.link_blob(&a, &d, None).await.unwrap();
    meta.link_blob(&a, &d, None).await.unwrap(); // idempotent
    assert_eq!(meta.blob_in_repo(&a, &d).await.unwrap(), Some(4));
    assert_eq!(meta.blob_in_repo(&b, &d).await.unwrap(), None);
    assert_eq!(meta.blob_known(&d).await.unwrap(), Some(4));
    meta.link_blob(&b, &d, None).await.unwrap();
    assert!(meta.unlink_blob(&a, &d).await.unwrap());
    assert!(!meta.unlink_blob(&a, &d).await.unwrap());
    assert_eq!(meta.blob_in_repo(&a, &d).await.unwrap(), None);
    assert_eq!(meta.blob_in_repo(&b, &d).await.unwrap(), Some(4));
    meta.unlink_blob(&b, &d).await.unwrap();
    assert_eq!(meta.blob_known(&d).await.unwrap(), None);
}

pub async fn manifests_need_their_references(meta: &dyn MetaStore) {
    let repo = name("refs/app");
    let layer = Digest::sha256_of(b"layer");
    let m = manifest("image", None, None);
    let refs = ManifestRefs {
        blobs: vec![layer.clone()],
        children: vec![],
    };
    assert!(matches!(
        meta.put_manifest(&repo, &m, &refs, Some(&tag("v1"))).await,
        Err(MetaError::MissingBlob(d)) if d == layer
    ));
    // Nothing of the failed put is visible.
    assert_eq!(
        meta.manifest_by_digest(&repo, &m.digest).await.unwrap(),
        None
    );
    assert_eq!(meta.manifest_by_tag(&repo, &tag("v1")).await.unwrap(), None);
    // A blob visible only in another repository does not count.
    meta.record_blob(&layer, 5, 1, None).await.unwrap();
    meta.link_blob(&name("refs/other"), &layer, None)
        .await
        .unwrap();
    assert!(meta.put_manifest(&repo, &m, &refs, None).await.is_err());
    meta.link_blob(&repo, &layer, None).await.unwrap();
    meta.put_manifest(&repo, &m, &refs, Some(&tag("v1")))
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_by_tag(&repo, &tag("v1")).await.unwrap(),
        Some(m.clone())
    );
    assert_eq!(
        meta.manifest_by_digest(&repo, &m.digest).await.unwrap(),
        Some(m.clone())
    );
    // Putting it again is fine.
    meta.put_manifest(&repo, &m, &refs, Some(&tag("v1")))
        .await
        .unwrap();

    let index = manifest("index", None, None);
    let missing = Digest::sha256_of(b"no such child");
    let bad = ManifestRefs {
        blobs: vec![],
        children: vec![m.digest.clone(), missing.clone()],
    };
    assert!(matches!(
        meta.put_manifest(&repo, &index, &bad, None).await,
        Err(MetaError::MissingManifest(d)) if d == missing
    ));
    let good = ManifestRefs {
        blobs: vec![],
        children: vec![m.digest.clone()],
    };
    meta.put_manifest(&repo, &index, &good, Some(&tag("multi")))
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_by_tag(&repo, &tag("multi")).await.unwrap(),
        Some(index.clone())
    );
    // A child stays while an index lists it; deleting the index frees it.
    assert!(matches!(
        meta.delete_manifest(&repo, &m.digest).await,
        Err(MetaError::Referenced(d)) if d == index.digest
    ));
    assert!(
        meta.manifest_by_digest(&repo, &m.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert!(meta.delete_manifest(&repo, &index.digest).await.unwrap());
    assert!(meta.delete_manifest(&repo, &m.digest).await.unwrap());
}

pub async fn tags_and_deletes(meta: &dyn MetaStore) {
    let repo = name("tags/app");
    let m1 = manifest("one", None, None);
    let m2 = manifest("two", None, None);
    let none = ManifestRefs::default();
    meta.put_manifest(&repo, &m1, &none, Some(&tag("a")))
        .await
        .unwrap();
    meta.put_manifest(&repo, &m1, &none, Some(&tag("b")))
        .await
        .unwrap();
    meta.put_manifest(&repo, &m2, &none, Some(&tag("c")))
        .await
        .unwrap();
    // Moving a tag.
    meta.put_manifest(&repo, &m2, &none, Some(&tag("b")))
        .await
        .unwrap();
    assert_eq!(
        meta.manifest_by_tag(&repo, &tag("b"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m2.digest
    );
    // Deleting a tag removes only that tag.
    assert!(meta.delete_tag(&repo, &tag("c")).await.unwrap());
    assert!(!meta.delete_tag(&repo, &tag("c")).await.unwrap());
    assert!(
        meta.manifest_by_digest(&repo, &m2.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        meta.manifest_by_tag(&repo, &tag("b"))
            .await
            .unwrap()
            .unwrap()
            .digest,
        m2.digest
    );
    // Deleting a manifest removes the tags pointing at it.
    assert!(meta.delete_manifest(&repo, &m2.digest).await.unwrap());
    assert!(!meta.delete_manifest(&repo, &m2.digest).await.unwrap());
    assert_eq!(meta.manifest_by_tag(&repo, &tag("b")).await.unwrap(), None);
    let tags = meta.list_tags(&repo, None, 100).await.unwrap().unwrap();
    assert_eq!(tags.items, vec!["a"]);
    // Unknown repository.
    assert_eq!(
        meta.list_tags(&name("tags/none"), None, 10).await.unwrap(),
        None
    );
    assert!(
        !meta
            .delete_tag(&name("tags/none"), &tag("a"))
            .await
            .unwrap()
    );
}

pub async fn listings_paginate(meta: &dyn MetaStore) {
    let none = ManifestRefs::default();
    let names = ["list/b", "list/a", "list/a-b", "list/a/b", "list/c"];
    for (i, n) in names.iter().enumerate() {
        let m = manifest(&format!("list {i}"), None, None);
        meta.put_manifest(&name(n), &m, &none, Some(&tag("latest")))
            .await
            .unwrap();
    }
    // A repository with only blobs is not listed.
    meta.record_blob(&Digest::sha256_of(b"bo"), 2, 1, None)
        .await
        .unwrap();
    meta.link_blob(&name("list/blobonly"), &Digest::sha256_of(b"bo"), None)
        .await
        .unwrap();
    let all = meta.list_repositories(Some("list/"), 100).await.unwrap();
    let ours: Vec<_> = all
        .items
        .iter()
        .filter(|n| n.starts_with("list/"))
        .cloned()
        .collect();
    assert_eq!(
        ours,
        vec!["list/a", "list/a-b", "list/a/b", "list/b", "list/c"]
    );
    let p1 = meta.list_repositories(Some("list/"), 2).await.unwrap();
    assert_eq!(p1.items, vec!["list/a", "list/a-b"]);
    assert!(p1.more);
    let p2 = meta.list_repositories(Some("list/a-b"), 2).await.unwrap();
    assert_eq!(p2.items, vec!["list/a/b", "list/b"]);
    let p3 = meta.list_repositories(Some("list/b"), 100).await.unwrap();
    assert_eq!(p3.items.first().map(String::as_str), Some("list/c"));

    let repo = name("list/tags");
    let m = manifest("tagged", None, None);
    for t in ["v10", "v2", "V1", "latest", "_x"] {
        meta.put_manifest(&repo, &m, &none, Some(&tag(t)))
            .await
            .unwrap();
    }
    let all = meta.list_tags(&repo, None, 100).await.unwrap().unwrap();
    assert_eq!(all.items, vec!["V1", "_x", "latest", "v10", "v2"]);
    assert!(!all.more);
    let p = meta.list_tags(&repo, Some("_x"), 2).await.unwrap().unwrap();
    assert_eq!(p.items, vec!["latest", "v10"]);
    assert!(p.more);
    let p = meta.list_tags(&repo, None, 0).await.unwrap().unwrap();
    assert!(p.items.is_empty() && p.more);
}

/// A listing reflects every write acknowledged before it, however often the
/// repository was listed in between (backends may cache).
pub async fn listings_follow_writes(meta: &dyn MetaStore) {
    let repo = name("follow/app");
    let none = ManifestRefs::default();
    let m1 = manifest("follow one", None, None);
    let m2 = manifest("follow two", None, None);
    let tags = |p: Option<crate::Page>| p.map(|p| p.items);
    assert_eq!(tags(meta.list_tags(&repo, None, 100).await.unwrap()), None);
    meta.put_manifest(&repo, &m1, &none, None).await.unwrap();
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec![])
    );
    meta.put_manifest(&repo, &m1, &none, Some(&tag("b")))
        .await
        .unwrap();
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec!["b".into()])
    );
    meta.put_manifest(&repo, &m2, &none, Some(&tag("a")))
        .await
        .unwrap();
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(
        tags(meta.list_tags(&repo, Some("a"), 100).await.unwrap()),
        Some(vec!["b".into()])
    );
    meta.delete_tag(&repo, &tag("b")).await.unwrap();
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec!["a".into()])
    );
    meta.delete_manifest(&repo, &m2.digest).await.unwrap();
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec![])
    );
    meta.delete_manifest(&repo, &m1.digest).await.unwrap();
    // Its last manifest gone, the repository still answers (empty) until
    // it is deleted; one that only ever held blobs does not.
    assert_eq!(
        tags(meta.list_tags(&repo, None, 100).await.unwrap()),
        Some(vec![])
    );
    let blobs_only = name("follow/blobs-only");
    let d = Digest::sha256_of(b"follow-blobs-only");
    meta.record_blob(&d, 1, 1, None).await.unwrap();
    meta.link_blob(&blobs_only, &d, None).await.unwrap();
    assert_eq!(
        tags(meta.list_tags(&blobs_only, None, 100).await.unwrap()),
        None
    );
    meta.delete_repository(&repo).await.unwrap();
    assert_eq!(tags(meta.list_tags(&repo, None, 100).await.unwrap()), None);

    // Concurrent writers and listers: once every write is done, a listing
    // shows all of them.
    let repo2 = name("follow/busy");
    let writes = (0..40).map(|i| {
        let repo2 = repo2.clone();
        let m1 = m1.clone();
        let none = none.clone();
        async move {
            meta.put_manifest(&repo2, &m1, &none, Some(&tag(&format!("t{i:02}"))))
                .await
                .unwrap();
            meta.list_tags(&repo2, None, 1000).await.unwrap();
        }
    });
    futures::future::join_all(writes).await;
    let all = meta.list_tags(&repo2, None, 1000).await.unwrap().unwrap();
    assert_eq!(all.items.len(), 40);
}

pub async fn referrers(meta: &dyn MetaStore) {
    let repo = name("referrers/app");
    let none = ManifestRefs::default();
    let subject = manifest("subject", None, None);
    meta.put_manifest(&repo, &subject, &none, Some(&tag("v1")))
        .await
        .unwrap();
    let sig = manifest(
        "sig",
        Some(&subject.digest),
        Some("application/vnd.example.sig"),
    );
    let sbom = manifest(
        "sbom",
        Some(&subject.digest),
        Some("application/vnd.example.sbom"),
    );
    meta.put_manifest(&repo, &sig, &none, None).await.unwrap();
    meta.put_manifest(&repo, &sbom, &none, None).await.unwrap();
    // The same subject digest in another repository is not a referrer here.
    meta.put_manifest(
        &name("referrers/other"),
        &manifest("elsewhere", Some(&subject.digest), None),
        &none,
        None,
    )
    .await
    .unwrap();
    let all = meta.referrers(&repo, &subject.digest, None).await.unwrap();
    assert_eq!(all.len(), 2);
    let mut expected = vec![sig.digest.clone(), sbom.digest.clone()];
    expected.sort();
    assert_eq!(
        all.iter().map(|r| r.digest.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(all[0].size, if all[0].digest == sig.digest { 3 } else { 4 });
    let sigs = meta
        .referrers(&repo, &subject.digest, Some("application/vnd.example.sig"))
        .await
        .unwrap();
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].digest, sig.digest);
    assert_eq!(sigs[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert!(
        meta.referrers(&repo, &sig.digest, None)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn uploads(meta: &dyn MetaStore) {
    let u = Upload {
        id: "00000000-0000-4000-8000-000000000001".into(),
        repo: name("uploads/app"),
        size: 0,
        hash_state: Some(vec![1, 2, 3]),
        created_at_ms: 1000,
        updated_at_ms: 1000,
    };
    meta.create_upload(&u).await.unwrap();
    assert_eq!(meta.get_upload(&u.id).await.unwrap(), Some(u.clone()));
    meta.advance_upload(&u.id, 0, 10, Some(&[4, 5]), 2000)
        .await
        .unwrap();
    // A stale writer loses.
    assert!(matches!(
        meta.advance_upload(&u.id, 0, 5, None, 2001).await,
        Err(MetaError::Conflict)
    ));
    let got = meta.get_upload(&u.id).await.unwrap().unwrap();
    assert_eq!(
        (got.size, got.hash_state.as_deref(), got.updated_at_ms),
        (10, Some(&[4u8, 5][..]), 2000)
    );
    assert_eq!(
        meta.stale_uploads(1500).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(meta.stale_uploads(2500).await.unwrap(), vec![u.id.clone()]);
    assert!(meta.delete_upload(&u.id).await.unwrap());
    assert!(!meta.delete_upload(&u.id).await.unwrap());
    assert_eq!(meta.get_upload(&u.id).await.unwrap(), None);
    assert!(matches!(
        meta.advance_upload(&u.id, 10, 11, None, 3000).await,
        Err(MetaError::Conflict)
    ));
}

/// The contract suite for [`crate::AuthStore`] backends, on a fresh store.
pub mod auth {
    use crate::{
        AuditEntry, AuditFilter, AuthStore, Credential, CredentialKind, MetaError, Permission,
        Project, Role, ThrottleKey, ThrottlePolicy, User,
    };

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            password_hash: format!("hash-of-{name}"),
            admin: false,
            created_at_ms: 1,
            password_changed_at_ms: 1,
        }
    }

    fn project(name: &str, public: bool) -> Project {
        Project {
            name: name.into(),
            public,
            created_at_ms: 1,
        }
    }

    fn credential(kind: CredentialKind, owner: &str, name: &str, secret: u8) -> Credential {
        Credential {
            kind,
            owner: owner.into(),
            name: name.into(),
            secret_hash: vec![secret; 32],
            permissions: vec![Permission {
                project: "p".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            expires_at_ms: Some(99),
            created_at_ms: 5,
            created_by: "admin".into(),
        }
    }

    pub async fn run_all(s: &dyn AuthStore) {
        users(s).await;
        projects_and_members(s).await;
        credentials(s).await;
        audit(s).await;
        throttles(s).await;
    }

    /// Failures count per key, block with a doubling delay after the free
    /// attempts, are forgotten after the window, and are listed and cleared
    /// by account and address.
    pub async fn throttles(s: &dyn AuthStore) {
        let policy = ThrottlePolicy {
            attempts: 3,
            window_ms: 10_000,
            delay_ms: 1_000,
            max_delay_ms: 5_000,
        };
        let key = |account: Option<&str>, addr: &str| ThrottleKey {
            account: account.map(str::to_owned),
            addr: addr.into(),
        };
        let (alice_a, alice_b, unknown_a) = (
            key(Some("alice"), "10.0.0.1"),
            key(Some("alice"), "10.0.0.2"),
            key(None, "10.0.0.1"),
        );
        assert_eq!(s.throttle(&alice_a, &policy, 0).await.unwrap(), None);
        let t1 = s.throttle_failure(&alice_a, &policy, 1_000).await.unwrap();
        assert_eq!((t1.failures, t1.blocked_until_ms), (1, 0));
        s.throttle_failure(&alice_a, &policy, 1_100).await.unwrap();
        let t3 = s.throttle_failure(&alice_a, &policy, 1_200).await.unwrap();
        assert_eq!(
            (t3.failures, t3.blocked_until_ms),
            (3, 2_200),
            "1 s after the 3rd"
        );
        let t4 = s.throttle_failure(&alice_a, &policy, 2_300).await.unwrap();
        assert_eq!(t4.blocked_until_ms, 4_300, "then 2 s");
        for t in [4_400, 4_500, 4_600] {
            s.throttle_failure(&alice_a, &policy, t).await.unwrap();
        }
        let capped = s.throttle(&alice_a, &policy, 4_700).await.unwrap().unwrap();
        assert_eq!(capped.failures, 7);
        assert_eq!(capped.first_failure_ms, 1_000);
        assert_eq!(capped.blocked_until_ms, 4_600 + 5_000, "up to max_delay");
        // Other keys are untouched.
        assert_eq!(s.throttle(&alice_b, &policy, 4_700).await.unwrap(), None);
        assert_eq!(s.throttle(&unknown_a, &policy, 4_700).await.unwrap(), None);
        let u = s
            .throttle_failure(&unknown_a, &policy, 4_800)
            .await
            .unwrap();
        assert_eq!((u.key.account, u.failures), (None, 1));
        s.throttle_failure(&alice_b, &policy, 4_900).await.unwrap();
        // Listed newest first; all three are live.
        let all = s.throttles(&policy, 5_000, 10).await.unwrap();
        let keys: Vec<_> = all.iter().map(|t| t.key.clone()).collect();
        assert_eq!(keys, [alice_b.clone(), unknown_a.clone(), alice_a.clone()]);
        assert_eq!(s.throttles(&policy, 5_000, 1).await.unwrap().len(), 1);
        // Forgotten a window after the last failure or block.
        assert!(
            s.throttle(&alice_a, &policy, 9_600 + 9_999)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.throttle(&alice_a, &policy, 9_600 + 10_000).await.unwrap(),
            None
        );
        let again = s.throttle_failure(&alice_a, &policy, 20_000).await.unwrap();
        assert_eq!(
            (again.failures, again.first_failure_ms),
            (1, 20_000),
            "counted afresh"
        );
        let live = s.throttles(&policy, 20_000, 10).await.unwrap();
        assert_eq!(live.len(), 1, "{live:?}");
        // Clearing: by account and address, by account, by address, all.
        s.throttle_failure(&alice_b, &policy, 20_100).await.unwrap();
        s.throttle_failure(&unknown_a, &policy, 20_200)
            .await
            .unwrap();
        s.throttle_failure(&key(Some("bob"), "10.0.0.1"), &policy, 20_300)
            .await
            .unwrap();
        assert_eq!(
            s.clear_throttles(Some("alice"), Some("10.0.0.1"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(s.throttle(&alice_a, &policy, 20_400).await.unwrap(), None);
        assert!(
            s.throttle(&alice_b, &policy, 20_400)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            s.clear_throttles(Some(""), None).await.unwrap(),
            1,
            "unknown names"
        );
        assert_eq!(
            s.clear_throttles(None, Some("10.0.0.1")).await.unwrap(),
            1,
            "bob"
        );
        assert_eq!(
            s.clear_throttles(None, None).await.unwrap(),
            1,
            "alice from b"
        );
        assert!(s.throttles(&policy, 20_400, 10).await.unwrap().is_empty());
        // Long-forgotten keys are pruned as new failures come.
        s.throttle_failure(&alice_a, &policy, 30_000).await.unwrap();
        s.throttle_failure(&alice_b, &policy, 1_000_000)
            .await
            .unwrap();
        assert_eq!(
            s.clear_throttles(None, None).await.unwrap(),
            1,
            "alice_a was pruned"
        );
    }

    pub async fn users(s: &dyn AuthStore) {
        assert_eq!(s.user("alice").await.unwrap(), None);
        s.create_user(&user("alice")).await.unwrap();
        assert!(matches!(
            s.create_user(&user("alice")).await,
            Err(MetaError::AlreadyExists(_))
        ));
        s.create_user(&user("bob")).await.unwrap();
        assert_eq!(s.user("alice").await.unwrap(), Some(user("alice")));
        let names: Vec<_> = s
            .users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(s.set_password("alice", "new", 7).await.unwrap());
        assert!(!s.set_password("nobody", "new", 7).await.unwrap());
        let a = s.user("alice").await.unwrap().unwrap();
        assert_eq!(
            (a.password_hash.as_str(), a.password_changed_at_ms),
            ("new", 7)
        );
        assert!(s.set_admin("alice", true).await.unwrap());
        assert!(s.user("alice").await.unwrap().unwrap().admin);
        assert!(!s.set_admin("nobody", true).await.unwrap());
        assert!(s.delete_user("bob").await.unwrap());
        assert!(!s.delete_user("bob").await.unwrap());
        assert_eq!(s.user("bob").await.unwrap(), None);
    }

    pub async fn projects_and_members(s: &dyn AuthStore) {
        s.create_project(&project("team", false)).await.unwrap();
        s.create_project(&project("apps", true)).await.unwrap();
        assert!(matches!(
            s.create_project(&project("team", true)).await,
            Err(MetaError::AlreadyExists(_))
        ));
        let names: Vec<_> = s
            .projects()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["apps", "team"]);
        assert!(s.set_project_public("team", true).await.unwrap());
        assert!(s.project("team").await.unwrap().unwrap().public);
        assert!(!s.set_project_public("nope", true).await.unwrap());

        s.create_user(&user("carol")).await.unwrap();
        s.create_user(&user("dave")).await.unwrap();
        s.set_member("team", "carol", Role::Developer)
            .await
            .unwrap();
        s.set_member("team", "carol", Role::Maintainer)
            .await
            .unwrap(); // changes the role
        s.set_member("apps", "carol", Role::Guest).await.unwrap();
        s.set_member("team", "dave", Role::LimitedGuest)
            .await
            .unwrap();
        assert!(matches!(
            s.set_member("nope", "carol", Role::Guest).await,
            Err(MetaError::NotFound(_))
        ));
        assert!(matches!(
            s.set_member("team", "nobody", Role::Guest).await,
            Err(MetaError::NotFound(_))
        ));
        let m = s.members("team").await.unwrap();
        assert_eq!(
            m.iter()
                .map(|m| (m.user.as_str(), m.role))
                .collect::<Vec<_>>(),
            [("carol", Role::Maintainer), ("dave", Role::LimitedGuest)]
        );
        assert_eq!(
            s.roles_of("carol").await.unwrap(),
            [
                ("apps".to_string(), Role::Guest),
                ("team".to_string(), Role::Maintainer)
            ]
        );
        assert!(s.remove_member("apps", "carol").await.unwrap());
        assert!(!s.remove_member("apps", "carol").await.unwrap());
        // Deleting a user or a project removes its memberships.
        assert!(s.delete_user("dave").await.unwrap());
        assert_eq!(s.members("team").await.unwrap().len(), 1);
        assert!(s.delete_project("team").await.unwrap());
        assert!(!s.delete_project("team").await.unwrap());
        assert!(s.roles_of("carol").await.unwrap().is_empty());
        assert!(s.project("team").await.unwrap().is_none());
    }

    pub async fn credentials(s: &dyn AuthStore) {
        use CredentialKind::{Robot, Token};
        s.create_user(&user("erin")).await.unwrap();
        let robot = credential(Robot, "", "ci", 1);
        s.create_credential(&robot).await.unwrap();
        assert!(matches!(
            s.create_credential(&credential(Robot, "", "ci", 2)).await,
            Err(MetaError::AlreadyExists(_))
        ));
        // The same name is fine for another kind or owner.
        s.create_credential(&credential(Token, "erin", "ci", 3))
            .await
            .unwrap();
        assert!(matches!(
            s.create_credential(&credential(Token, "nobody", "x", 4))
                .await,
            Err(MetaError::NotFound(_))
        ));
        assert_eq!(
            s.credential_by_secret_hash(&[1; 32]).await.unwrap(),
            Some(robot.clone())
        );
        assert_eq!(s.credential_by_secret_hash(&[9; 32]).await.unwrap(), None);
        assert_eq!(s.credentials(Robot, None).await.unwrap(), [robot]);
        assert_eq!(s.credentials(Token, Some("erin")).await.unwrap().len(), 1);
        assert!(s.credentials(Token, Some("zed")).await.unwrap().is_empty());
        assert!(s.delete_credential(Robot, "", "ci").await.unwrap());
        assert!(!s.delete_credential(Robot, "", "ci").await.unwrap());
        assert_eq!(s.credential_by_secret_hash(&[1; 32]).await.unwrap(), None);
        // A user's tokens go with the user.
        s.delete_user("erin").await.unwrap();
        assert_eq!(s.credential_by_secret_hash(&[3; 32]).await.unwrap(), None);
    }

    pub async fn audit(s: &dyn AuthStore) {
        let e = |at: i64, actor: &str, action: &str, resource: &str, outcome: &str| AuditEntry {
            at_ms: at,
            actor: actor.into(),
            addr: "127.0.0.1".into(),
            action: action.into(),
            resource: resource.into(),
            outcome: outcome.into(),
            detail: None,
        };
        s.append_audit(&[]).await.unwrap();
        s.append_audit(&[
            e(10, "alice", "push", "team/app:1", "ok"),
            e(20, "bob", "pull", "team/app:1", "ok"),
            e(30, "alice", "login", "", "failed"),
            e(40, "alice", "pull", "team_x/app:1", "denied"),
        ])
        .await
        .unwrap();
        let all = s
            .audit(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|(_, e)| e.at_ms).collect::<Vec<_>>(),
            [40, 30, 20, 10],
            "newest first"
        );
        let q = |f: AuditFilter| async move {
            s.audit(&AuditFilter { limit: 10, ..f })
                .await
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.at_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            q(AuditFilter {
                actor: Some("alice".into()),
                ..Default::default()
            })
            .await,
            [40, 30, 10]
        );
        assert_eq!(
            q(AuditFilter {
                action: Some("pull".into()),
                ..Default::default()
            })
            .await,
            [40, 20]
        );
        // `_` in a prefix is literal, not a wildcard.
        assert_eq!(
            q(AuditFilter {
                resource_prefix: Some("team_".into()),
                ..Default::default()
            })
            .await,
            [40]
        );
        assert_eq!(
            q(AuditFilter {
                outcome: Some("failed".into()),
                ..Default::default()
            })
            .await,
            [30]
        );
        assert_eq!(
            q(AuditFilter {
                since_ms: Some(20),
                until_ms: Some(40),
                ..Default::default()
            })
            .await,
            [30, 20]
        );
        assert_eq!(
            q(AuditFilter {
                before_id: Some(all[1].0),
                ..Default::default()
            })
            .await,
            [20, 10]
        );
        assert_eq!(
            s.audit(&AuditFilter {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
            1
        );
        assert_eq!(s.prune_audit(25).await.unwrap(), 2);
        assert_eq!(q(AuditFilter::default()).await, [40, 30]);
    }
}
