//! Behaviours the OCI distribution-spec conformance suites check (v1.1 and
//! the main branch, with OCI_API_BLOBS_UPLOAD_CANCEL, OCI_DATA_SPARSE and
//! OCI_API_MANIFESTS_TAG_PARAM on), tested here against the spec's text
//! because the suites are Go and cannot be built on these machines. Each
//! test names the spec rule it checks.

mod harness;

use harness::{OCI_INDEX, OCI_MANIFEST, TestRegistry, error_code, image_manifest, sha256, sha512};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The error codes the spec lists: no answer under /v2 uses another.
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

async fn pushed_image(reg: &TestRegistry, repo: &str, tag: &str) -> (String, Vec<u8>) {
    reg.push_image(repo, tag, &format!("{repo}-{tag}")).await
}

/// "If the manifest is not found in the repository, the response code MUST
/// be 404 Not Found" — also when the reference could never have been
/// stored: an invalid tag, or something that is not a digest.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_reference_names_nothing_stored() {
    let reg = TestRegistry::builder().spawn().await;
    pushed_image(&reg, "conf/app", "v1").await;
    let long = "t".repeat(129);
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "-bad",
        long.as_str(),
        "sha256:totallywrong",
        "md5:abc",
    ] {
        let path = format!("/v2/conf/app/manifests/{reference}");
        let r = reg.send(Method::GET, &path).await;
        assert_eq!(r.status(), 404, "GET {reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN", "GET {reference}");
        assert_eq!(
            reg.status(Method::HEAD, &path).await,
            404,
            "HEAD {reference}"
        );
        let r = reg.send(Method::DELETE, &path).await;
        assert_eq!(r.status(), 404, "DELETE {reference}");
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    // A push to it is a bad request: the tag, or the digest, is invalid.
    let m = image_manifest(&sha256(b"c"), 1, &[], None);
    let r = reg.put_manifest("conf/app", "-bad", &m, OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = reg
        .put_manifest("conf/app", "sha256:baddigeststring", &m, OCI_MANIFEST)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // An invalid name is still NAME_INVALID, whatever the reference.
    let r = reg.send(Method::GET, "/v2/Conf/app/manifests/-bad").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

/// "PUT /v2/<name>/manifests/<tag>?digest=<digest>": the digest parameter
/// names the algorithm the registry uses for a manifest pushed by tag, which
/// Docker-Content-Digest and later requests use.
#[tokio::test(flavor = "multi_thread")]
async fn the_digest_parameter_chooses_the_algorithm() {
    let reg = TestRegistry::builder().spawn().await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = reg.push_blob("conf/sha512", config).await;
    let m = image_manifest(&cd, config.len(), &[], None);
    let d512 = sha512(&m);
    let put = |q: String| {
        reg.client
            .put(reg.url(&format!("/v2/conf/sha512/manifests/v1{q}")))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
    };
    let r = put(format!("?digest={d512}")).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d512.as_str());
    assert!(r.headers()["location"].to_str().unwrap().ends_with(&d512));
    let r = reg.send(Method::GET, "/v2/conf/sha512/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], d512.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
    let r = reg
        .send(Method::GET, &format!("/v2/conf/sha512/manifests/{d512}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
    // A parameter that is not the body's digest, or no digest at all.
    let wrong = sha512(b"something else");
    let r = put(format!("?digest={wrong}")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = put("?digest=sha512:nothex".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // By digest, the parameter must agree with the path.
    let r = reg
        .client
        .put(reg.url(&format!(
            "/v2/conf/sha512/manifests/{d512}?digest={}",
            sha256(&m)
        )))
        .header("content-type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Without the parameter, sha256 as ever.
    let r = put(String::new()).await.unwrap();
    assert_eq!(r.headers()["docker-content-digest"], sha256(&m).as_str());
}

/// "PUT /v2/<name>/manifests/<digest>?tag=<tag>&tag=<tag>": every tag
/// points at the manifest, and the answer has one `OCI-Tag` header per tag.
#[tokio::test(flavor = "multi_thread")]
async fn tag_parameters_tag_a_push_by_digest() {
    let reg = TestRegistry::builder().spawn().await;
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = reg.push_blob("conf/tags", config).await;
    let m = image_manifest(&cd, config.len(), &[], None);
    let d = sha256(&m);
    let put = |q: &str| {
        reg.client
            .put(reg.url(&format!("/v2/conf/tags/manifests/{d}?{q}")))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
    };
    // One invalid tag: nothing is stored.
    let r = put("tag=good&tag=-bad").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    assert_eq!(
        reg.status(Method::GET, &format!("/v2/conf/tags/manifests/{d}"))
            .await,
        404
    );
    let r = put("tag=a&tag=b").await.unwrap();
    assert_eq!(r.status(), 201);
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "b"]);
    for t in ["a", "b"] {
        let r = reg
            .send(Method::GET, &format!("/v2/conf/tags/manifests/{t}"))
            .await;
        assert_eq!(r.status(), 200, "{t}");
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    }
    let v: Value = reg
        .send(Method::GET, "/v2/conf/tags/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    // Without tag parameters, no OCI-Tag header.
    let r = put("").await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("oci-tag").is_none());
}

/// An index whose children were not pushed, and an image whose layer was
/// not ("sparse" content, as when copying only some platforms): refused by
/// default, accepted with `storage.manifests.sparse`.
#[tokio::test(flavor = "multi_thread")]
async fn sparse_manifests_only_when_configured() {
    let config = br#"{"architecture":"amd64","os":"linux","sparse":1}"#;
    let missing_layer = sha256(b"a layer never pushed");
    let missing_child = sha256(b"a child never pushed");
    for sparse in [false, true] {
        let reg = TestRegistry::builder()
            .sparse_manifests(sparse)
            .spawn()
            .await;
        let cd = reg.push_blob("conf/sparse", config).await;
        let image = image_manifest(&cd, config.len(), &[(&missing_layer, 1024)], None);
        let r = reg
            .put_manifest("conf/sparse", "image", &image, OCI_MANIFEST)
            .await;
        if sparse {
            assert_eq!(r.status(), 201);
        } else {
            assert_eq!(r.status(), 400);
            assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
        }
        let (pushed, pushed_bytes) = pushed_image(&reg, "conf/sparse", "child").await;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": pushed, "size": pushed_bytes.len(),
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": missing_child, "size": 1024,
                 "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }))
        .unwrap();
        let r = reg
            .put_manifest("conf/sparse", "index", &index, OCI_INDEX)
            .await;
        if sparse {
            assert_eq!(r.status(), 201);
            let r = reg
                .send(Method::GET, "/v2/conf/sparse/manifests/index")
                .await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice());
            let r = reg
                .send(
                    Method::GET,
                    &format!("/v2/conf/sparse/manifests/{missing_child}"),
                )
                .await;
            assert_eq!(r.status(), 404);
            assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
        } else {
            assert_eq!(r.status(), 400);
            assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
        }
    }
}

/// A repository whose last tag and manifest were deleted still lists its
/// (now no) tags: 200, not NAME_UNKNOWN.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_emptied_by_deletes_still_lists_tags() {
    let reg = TestRegistry::builder().spawn().await;
    let (d, _) = pushed_image(&reg, "conf/emptied", "tagtest0").await;
    assert_eq!(
        reg.status(Method::DELETE, "/v2/conf/emptied/manifests/tagtest0")
            .await,
        202
    );
    assert_eq!(
        reg.status(Method::DELETE, &format!("/v2/conf/emptied/manifests/{d}"))
            .await,
        202
    );
    let r = reg.send(Method::GET, "/v2/conf/emptied/tags/list").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name": "conf/emptied", "tags": []}));
    // A repository that never held anything is unknown.
    let r = reg.send(Method::GET, "/v2/conf/never/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

/// DELETE answers 202, 400, 404 or 405 (besides authentication): a manifest
/// an index in the repository lists is refused with 400 UNSUPPORTED.
#[tokio::test(flavor = "multi_thread")]
async fn delete_answers_only_what_the_spec_lists() {
    let reg = TestRegistry::builder().spawn().await;
    let (child, child_bytes) = pushed_image(&reg, "conf/del", "child").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": child_bytes.len()}],
    }))
    .unwrap();
    assert_eq!(
        reg.put_manifest("conf/del", "index", &index, OCI_INDEX)
            .await
            .status(),
        201
    );
    let r = reg
        .send(Method::DELETE, &format!("/v2/conf/del/manifests/{child}"))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = reg
        .send(
            Method::DELETE,
            &format!("/v2/conf/del/manifests/{}", sha256(b"nothing")),
        )
        .await;
    assert_eq!(r.status(), 404);
    // With deletes off: 405 UNSUPPORTED.
    let off = TestRegistry::builder().delete_enabled(false).spawn().await;
    let (d, _) = pushed_image(&off, "conf/keep", "v1").await;
    for path in [
        format!("/v2/conf/keep/manifests/{d}"),
        "/v2/conf/keep/manifests/v1".to_owned(),
    ] {
        let r = off.send(Method::DELETE, &path).await;
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
}

/// Every refusal under /v2 carries a code from the spec's list, with the
/// status that goes with it.
#[tokio::test(flavor = "multi_thread")]
async fn every_error_code_is_one_the_spec_lists() {
    let reg = TestRegistry::builder().spawn().await;
    pushed_image(&reg, "conf/codes", "v1").await;
    let upload = reg
        .client
        .post(reg.url("/v2/conf/codes/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let session = upload.headers()["location"].to_str().unwrap().to_owned();
    let session = session
        .find("/v2/")
        .map(|i| session[i..].to_owned())
        .unwrap();
    let uuid = "0f7e2a8c-1b3d-4e5f-8a9b-0c1d2e3f4a5b";
    let cases: Vec<(Method, String, u16, &str)> = vec![
        (Method::GET, "/v2/conf/codes".into(), 404, "UNSUPPORTED"),
        (Method::GET, "/v2/conf/codes/foo".into(), 404, "UNSUPPORTED"),
        (
            Method::GET,
            "/v2/conf/codes/tags/list?n=abc".into(),
            400,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/conf/codes/tags/list?n=-1".into(),
            400,
            "UNSUPPORTED",
        ),
        (Method::GET, "/v2/_catalog?n=abc".into(), 400, "UNSUPPORTED"),
        (
            Method::GET,
            "/v2/conf/codes/blobs/uploads/..%2F..%2Fetc".into(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::PATCH,
            "/v2/conf/codes/blobs/uploads/..%2F..%2Fetc".into(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            Method::GET,
            format!("/v2/conf/codes/blobs/uploads/{uuid}"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        // An unknown session is the first thing wrong, before the digest.
        (
            Method::PUT,
            format!("/v2/conf/codes/blobs/uploads/{uuid}"),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (Method::PUT, session.clone(), 400, "DIGEST_INVALID"),
        (
            Method::GET,
            "/v2/conf/codes/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            format!("/v2/conf/codes/blobs/{}", sha256(b"none")),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/conf/none/tags/list".into(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            Method::GET,
            "/v2/Conf/codes/tags/list".into(),
            400,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/conf/codes/manifests/nope".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            Method::POST,
            "/v2/conf/codes/manifests/v1".into(),
            405,
            "UNSUPPORTED",
        ),
        (Method::GET, "/v2/a%ff/tags/list".into(), 404, "UNSUPPORTED"),
    ];
    for (m, path, status, code) in cases {
        let r = reg.send(m.clone(), &path).await;
        assert_eq!(
            r.status(),
            StatusCode::from_u16(status).unwrap(),
            "{m} {path}"
        );
        let got = error_code(r).await;
        assert_eq!(got, code, "{m} {path}");
        assert!(SPEC_CODES.contains(&got.as_str()), "{m} {path}: {got}");
    }
}
