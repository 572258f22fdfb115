//! The registry API end to end over HTTP, against the embedded backends.

mod harness;

use reqwest::Method;

use harness::*;

#[tokio::test]
async fn base_and_unknown_routes() {
    let reg = TestRegistry::builder().spawn().await;
    for path in ["/v2/", "/v2"] {
        let r = reg.send(Method::GET, path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
    }
    let r = reg.send(Method::GET, "/nope").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NOT_FOUND");
    // Under /v2 only the spec's codes (see tests/conformance.rs).
    let r = reg.send(Method::GET, "/v2/a/b").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = reg.send(Method::GET, "/v2/UPPER/tags/list").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
    let r = reg.send(Method::POST, "/v2/a/tags/list").await;
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = reg.send(Method::GET, "/v2/a/blobs/sha256:1234").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = reg
        .send(
            Method::GET,
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
        )
        .await;
    assert_eq!(r.status(), 400);
    // Percent-encoded digests are decoded.
    let d = reg.push_blob("enc", b"x").await;
    let r = reg
        .send(
            Method::HEAD,
            &format!("/v2/enc/blobs/{}", d.replace(':', "%3A")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = reg.send(Method::GET, "/healthz").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn monolithic_blob_get_head_range() {
    let reg = TestRegistry::builder().spawn().await;
    let data: Vec<u8> = (0..100u8).collect();
    let d = reg.push_blob("a/b/c", &data).await;
    let r = reg
        .send(Method::HEAD, &format!("/v2/a/b/c/blobs/{d}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let r = reg.send(Method::GET, &format!("/v2/a/b/c/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    let r = reg
        .client
        .get(reg.url(&format!("/v2/a/b/c/blobs/{d}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/a/b/c/blobs/{d}")))
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[95..]);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/a/b/c/blobs/{d}")))
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */100");

    // Another repository cannot see it.
    let r = reg.send(Method::GET, &format!("/v2/other/blobs/{d}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = reg
        .send(Method::HEAD, &format!("/v2/other/blobs/{d}"))
        .await;
    assert_eq!(r.status(), 404);

    // A wrong digest stores nothing.
    let wrong = sha256(b"something else");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/a/blobs/uploads/?digest={wrong}")))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = reg
        .send(Method::HEAD, &format!("/v2/a/blobs/{wrong}"))
        .await;
    assert_eq!(r.status(), 404);
    // Empty blob.
    reg.push_blob("a", b"").await;
}

#[tokio::test]
async fn chunked_upload_flows() {
    let reg = TestRegistry::builder().spawn().await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let d = sha256(&data);

    let r = reg.send(Method::POST, "/v2/x/y/blobs/uploads/").await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-0");
    let uuid = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("http://") && loc.ends_with(&uuid), "{loc}");

    // Content-Range without "bytes=", then with it.
    let r = reg
        .client
        .patch(&loc)
        .header("content-range", "0-999")
        .body(data[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-999");
    let r = reg
        .client
        .patch(&loc)
        .header("content-range", "bytes=1000-1999")
        .body(data[1000..2000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Out of order: 416 with the current range, nothing changes.
    let r = reg
        .client
        .patch(&loc)
        .header("content-range", "500-999")
        .body(data[500..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["range"], "0-1999");
    // A range that does not match the body length.
    let r = reg
        .client
        .patch(&loc)
        .header("content-range", "2000-2009")
        .body(vec![0u8; 3])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    let r = reg.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-1999");
    // No Content-Range at all, streamed (chunked transfer encoding).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data[2000..2500]
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = reg
        .client
        .patch(&loc)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-2499");
    // Wrong digest at the end: refused; the session stays.
    let r = reg
        .client
        .put(format!("{loc}?digest={}", sha256(b"nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Close with the final chunk in the PUT.
    let r = reg
        .client
        .put(format!("{loc}?digest={d}"))
        .body(data[2500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = reg.send(Method::GET, &format!("/v2/x/y/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // The session is gone.
    let r = reg.client.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");

    // PUT with the whole body (ctr, oras, dxf style), and a missing digest.
    let r = reg.send(Method::POST, "/v2/x/y/blobs/uploads/").await;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = reg.client.put(&loc).body("abc").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = reg
        .client
        .put(format!("{loc}?digest={}", sha256(b"abc")))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Cancel.
    let r = reg.send(Method::POST, "/v2/x/y/blobs/uploads/").await;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(reg.client.delete(&loc).send().await.unwrap().status(), 204);
    assert_eq!(reg.client.get(&loc).send().await.unwrap().status(), 404);
    // An upload is bound to its repository, and ids are validated.
    let r = reg.send(Method::POST, "/v2/x/y/blobs/uploads/").await;
    let id = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_owned();
    let r = reg
        .send(Method::GET, &format!("/v2/other/blobs/uploads/{id}"))
        .await;
    assert_eq!(r.status(), 404);
    let r = reg
        .client
        .patch(reg.url("/v2/x/y/blobs/uploads/../../etc"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(r.status() == 404 || r.status() == 400, "{}", r.status());
}

#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let reg = TestRegistry::builder().spawn().await;
    let data = b"sha512 content";
    let d = sha512(data);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/s/blobs/uploads/?digest={d}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg.send(Method::GET, &format!("/v2/s/blobs/{d}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data);
    let cd = reg.push_blob("s", b"{}").await;
    let m = image_manifest(&cd, 2, &[(&d, data.len())], None);
    let md = sha512(&m);
    let r = reg.put_manifest("s", &md, &m, OCI_MANIFEST).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let r = reg
        .send(Method::GET, &format!("/v2/s/manifests/{md}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = TestRegistry::builder().spawn().await;
    let d = reg.push_blob("src/app", b"shared layer").await;
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/dst/app/blobs/uploads/?mount={d}&from=src/app"),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/v2/dst/app/blobs/{d}"))
    );
    assert_eq!(
        reg.status(Method::HEAD, &format!("/v2/dst/app/blobs/{d}"))
            .await,
        200
    );
    // Not visible in `from`: a normal session.
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/third/blobs/uploads/?mount={d}&from=nowhere"),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().contains_key("docker-upload-uuid"));
    assert_eq!(
        reg.status(Method::HEAD, &format!("/v2/third/blobs/{d}"))
            .await,
        404
    );
    // Without `from`, an existing blob is mounted.
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/fourth/blobs/uploads/?mount={d}"),
        )
        .await;
    assert_eq!(r.status(), 201);
    // Unknown blob without from: session.
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/fourth/blobs/uploads/?mount={}", sha256(b"unknown")),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = reg
        .send(
            Method::POST,
            "/v2/fourth/blobs/uploads/?mount=sha256:bad&from=src/app",
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let reg = TestRegistry::builder().spawn().await;
    let (md, m) = reg.push_image("lib/app", "1.0", "one").await;
    for reference in ["1.0", md.as_str()] {
        let r = reg
            .send(Method::GET, &format!("/v2/lib/app/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
        assert_eq!(r.headers()["content-length"], m.len().to_string().as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), m.as_slice());
        let r = reg
            .send(Method::HEAD, &format!("/v2/lib/app/manifests/{reference}"))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], m.len().to_string().as_str());
        assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    }
    // Accept: several lines, or one comma-joined line, with the type: served.
    let r = reg
        .client
        .get(reg.url("/v2/lib/app/manifests/1.0"))
        .header("accept", DOCKER_MANIFEST)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reg
        .client
        .get(reg.url("/v2/lib/app/manifests/1.0"))
        .header("accept", format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Only other manifest types: not served, as distribution does.
    let r = reg
        .client
        .get(reg.url("/v2/lib/app/manifests/1.0"))
        .header("accept", format!("{DOCKER_MANIFEST},{DOCKER_LIST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // A wildcard accepts anything.
    let r = reg
        .client
        .get(reg.url("/v2/lib/app/manifests/1.0"))
        .header("accept", format!("{DOCKER_MANIFEST}, */*"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = reg.send(Method::GET, "/v2/lib/app/manifests/2.0").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = reg
        .send(Method::GET, &format!("/v2/lib/other/manifests/{md}"))
        .await;
    assert_eq!(r.status(), 404);

    // Put by digest: the digest must match the body.
    let r = reg
        .put_manifest("lib/app", &sha256(b"other"), &m, OCI_MANIFEST)
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = reg.put_manifest("lib/app", &md, &m, OCI_MANIFEST).await;
    assert_eq!(r.status(), 201);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with(&format!("/v2/lib/app/manifests/{md}"))
    );
}

#[tokio::test]
async fn manifest_validation() {
    let reg = TestRegistry::builder().spawn().await;
    let cd = reg.push_blob("v", b"{}").await;
    let missing = sha256(b"missing layer");
    let m = image_manifest(&cd, 2, &[(&missing, 13)], None);
    let r = reg.put_manifest("v", "t", &m, OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // A blob in another repository does not count.
    let elsewhere = reg.push_blob("w", b"elsewhere").await;
    let m = image_manifest(&cd, 2, &[(&elsewhere, 9)], None);
    let r = reg.put_manifest("v", "t", &m, OCI_MANIFEST).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    let r = reg.put_manifest("v", "t", b"{not json", OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = reg
        .put_manifest(
            "v",
            "t",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
            OCI_MANIFEST,
        )
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let m = image_manifest(&cd, 2, &[], None);
    let r = reg.put_manifest("v", "t", &m, DOCKER_MANIFEST).await;
    assert_eq!(
        error_code(r).await,
        "MANIFEST_INVALID",
        "Content-Type and mediaType disagree"
    );
    let r = reg
        .put_manifest(
            "v",
            "t",
            br#"{"schemaVersion":1}"#,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = reg.put_manifest("v", "bad:tag", &m, OCI_MANIFEST).await;
    assert_eq!(r.status(), 400);

    // Index naming a child the repository does not have.
    let child = sha256(b"child");
    let idx = serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"mediaType":OCI_INDEX,
        "manifests":[{"mediaType":OCI_MANIFEST,"digest":child,"size":5}]}))
    .unwrap();
    let r = reg.put_manifest("v", "multi", &idx, OCI_INDEX).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Over 4 MiB: 413, with and without a Content-Length.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = reg.put_manifest("v", "big", &big, OCI_MANIFEST).await;
    assert_eq!(r.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(65536).map(|c| Ok(c.to_vec())).collect();
    let r = reg
        .client
        .put(reg.url("/v2/v/manifests/big"))
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Nothing of it was stored.
    let r = reg.send(Method::GET, "/v2/v/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn index_docker_types_and_artifacts() {
    let reg = TestRegistry::builder().spawn().await;
    let (a, am) = reg.push_image("multi", "amd64", "amd").await;
    let (b, bm) = reg.push_image("multi", "arm64", "arm").await;
    let list = serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"mediaType":DOCKER_LIST,
        "manifests":[{"mediaType":OCI_MANIFEST,"digest":a,"size":am.len(),"platform":{"architecture":"amd64","os":"linux"}},
                     {"mediaType":OCI_MANIFEST,"digest":b,"size":bm.len(),"platform":{"architecture":"arm64","os":"linux"}}]})).unwrap();
    let r = reg
        .put_manifest("multi", "latest", &list, DOCKER_LIST)
        .await;
    assert_eq!(r.status(), 201);
    let r = reg.send(Method::GET, "/v2/multi/manifests/latest").await;
    assert_eq!(r.headers()["content-type"], DOCKER_LIST);

    // Docker schema 2 manifest, and dxf's trick of using any blob as config.
    let cd = reg.push_blob("docker", b"not even json").await;
    let m = serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"mediaType":DOCKER_MANIFEST,
        "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":cd,"size":13},"layers":[]})).unwrap();
    assert_eq!(
        reg.put_manifest("docker", "v1", &m, DOCKER_MANIFEST)
            .await
            .status(),
        201
    );

    // An OCI 1.1 artifact with a subject, then referrers.
    let (subject, sm) = reg.push_image("art", "v1", "subject").await;
    let empty = reg.push_blob("art", b"{}").await;
    let mut sig = serde_json::json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"artifactType":"application/vnd.example.sig",
        "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":empty,"size":2},"layers":[],
        "subject":{"mediaType":OCI_MANIFEST,"digest":subject,"size":sm.len()},
        "annotations":{"org.example.signer":"alice"}});
    let sig_bytes = serde_json::to_vec(&sig).unwrap();
    let r = reg
        .put_manifest("art", &sha256(&sig_bytes), &sig_bytes, OCI_MANIFEST)
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], subject.as_str());
    sig["artifactType"] = "application/vnd.example.sbom".into();
    let sbom_bytes = serde_json::to_vec(&sig).unwrap();
    assert_eq!(
        reg.put_manifest("art", &sha256(&sbom_bytes), &sbom_bytes, OCI_MANIFEST)
            .await
            .status(),
        201
    );

    let r = reg
        .send(Method::GET, &format!("/v2/art/referrers/{subject}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(!r.headers().contains_key("oci-filters-applied"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    let r = reg
        .send(
            Method::GET,
            &format!("/v2/art/referrers/{subject}?artifactType=application/vnd.example.sig"),
        )
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = r.json().await.unwrap();
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["digest"], sha256(&sig_bytes).as_str());
    assert_eq!(ms[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(ms[0]["size"], sig_bytes.len());
    assert_eq!(ms[0]["annotations"]["org.example.signer"], "alice");
    // No referrers: an empty index, 200.
    let r = reg
        .send(
            Method::GET,
            &format!("/v2/art/referrers/{}", sha256(b"none")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 0);
    assert_eq!(v["schemaVersion"], 2);
}

#[tokio::test]
async fn tag_and_catalog_pagination() {
    let reg = TestRegistry::builder().spawn().await;
    for t in ["b", "a", "c", "v1.10", "v1.2"] {
        reg.push_image("pg/app", t, "same").await;
    }
    let r = reg.send(Method::GET, "/v2/pg/app/tags/list").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["name"], "pg/app");
    assert_eq!(
        v["tags"],
        serde_json::json!(["a", "b", "c", "v1.10", "v1.2"])
    );
    let r = reg.send(Method::GET, "/v2/pg/app/tags/list?n=2").await;
    assert_eq!(
        r.headers()["link"],
        "</v2/pg/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let r = reg
        .send(Method::GET, "/v2/pg/app/tags/list?n=2&last=b")
        .await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "v1.10"]));
    let r = reg
        .send(Method::GET, "/v2/pg/app/tags/list?n=10&last=v1.10")
        .await;
    assert!(!r.headers().contains_key("link"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1.2"]));
    let r = reg.send(Method::GET, "/v2/pg/app/tags/list?n=x").await;
    assert_eq!(r.status(), 400);
    let r = reg.send(Method::GET, "/v2/pg/none/tags/list").await;
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");

    for n in ["zeta", "alpha/one", "alpha", "mid/x/y"] {
        reg.push_image(n, "latest", n).await;
    }
    let r = reg.send(Method::GET, "/v2/_catalog").await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["alpha", "alpha/one", "mid/x/y", "pg/app", "zeta"])
    );
    let mut seen = Vec::new();
    let mut url = reg.url("/v2/_catalog?n=2");
    loop {
        let r = reg.client.get(&url).send().await.unwrap();
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let v: serde_json::Value = r.json().await.unwrap();
        seen.extend(
            v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned()),
        );
        match link {
            Some(l) => url = reg.url(l.trim_start_matches('<').split('>').next().unwrap()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["alpha", "alpha/one", "mid/x/y", "pg/app", "zeta"]
    );
}

#[tokio::test]
async fn deletes() {
    let reg = TestRegistry::builder().spawn().await;
    let (md, _) = reg.push_image("del", "one", "x").await;
    reg.put_manifest(
        "del",
        "two",
        &reg.send(Method::GET, "/v2/del/manifests/one")
            .await
            .bytes()
            .await
            .unwrap(),
        OCI_MANIFEST,
    )
    .await;
    // Deleting a tag removes only that tag.
    let r = reg.send(Method::DELETE, "/v2/del/manifests/one").await;
    assert_eq!(r.status(), 202);
    assert_eq!(reg.status(Method::GET, "/v2/del/manifests/one").await, 404);
    assert_eq!(reg.status(Method::GET, "/v2/del/manifests/two").await, 200);
    assert_eq!(
        reg.status(Method::GET, &format!("/v2/del/manifests/{md}"))
            .await,
        200
    );
    let r = reg.send(Method::DELETE, "/v2/del/manifests/one").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    // Deleting by digest removes the manifest and its tags.
    let r = reg
        .send(Method::DELETE, &format!("/v2/del/manifests/{md}"))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(reg.status(Method::GET, "/v2/del/manifests/two").await, 404);
    // Blob delete.
    let d = reg.push_blob("del", b"blob to delete").await;
    assert_eq!(
        reg.status(Method::DELETE, &format!("/v2/del/blobs/{d}"))
            .await,
        202
    );
    assert_eq!(
        reg.status(Method::HEAD, &format!("/v2/del/blobs/{d}"))
            .await,
        404
    );
    let r = reg
        .send(Method::DELETE, &format!("/v2/del/blobs/{d}"))
        .await;
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");

    // With deletes disabled: 405 UNSUPPORTED, nothing removed.
    let data = reg.stop().await.unwrap();
    let reg = TestRegistry::builder()
        .data(data.path())
        .delete_enabled(false)
        .spawn()
        .await;
    let (md, _) = reg.push_image("del2", "v", "y").await;
    let r = reg
        .send(Method::DELETE, &format!("/v2/del2/manifests/{md}"))
        .await;
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    assert_eq!(reg.status(Method::GET, "/v2/del2/manifests/v").await, 200);
    drop(data);
}

#[tokio::test]
async fn upload_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let reg = TestRegistry::builder().data(dir.path()).spawn().await;
    let r = reg.send(Method::POST, "/v2/restart/blobs/uploads/").await;
    let path = r.headers()["location"]
        .to_str()
        .unwrap()
        .split(&reg.addr.to_string())
        .nth(1)
        .unwrap()
        .to_owned();
    let r = reg
        .client
        .patch(reg.url(&path))
        .body(data[..120_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    reg.stop().await;

    let reg = TestRegistry::builder().data(dir.path()).spawn().await;
    let r = reg.send(Method::GET, &path).await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-119999");
    let r = reg
        .client
        .patch(reg.url(&path))
        .header("content-range", "120000-199999")
        .body(data[120_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let d = sha256(&data);
    let r = reg
        .client
        .put(reg.url(&format!("{path}?digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = reg
        .send(Method::GET, &format!("/v2/restart/blobs/{d}"))
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}

#[tokio::test]
async fn concurrent_pushes_of_one_blob() {
    let reg = std::sync::Arc::new(TestRegistry::builder().spawn().await);
    let data = b"same bytes from everyone".repeat(5000);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let reg = reg.clone();
            let data = data.clone();
            tokio::spawn(async move { reg.push_blob(&format!("conc/r{}", i % 3), &data).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), sha256(&data));
    }
    for i in 0..3 {
        let r = reg
            .send(
                Method::GET,
                &format!("/v2/conc/r{i}/blobs/{}", sha256(&data)),
            )
            .await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    }
}

#[tokio::test]
async fn metrics_are_exported() {
    let reg = TestRegistry::builder().spawn().await;
    reg.push_blob("m", b"metrics").await;
    reg.send(
        Method::GET,
        "/v2/m/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
    let text = reg
        .send(Method::GET, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "wharf_http_requests_total{endpoint=\"upload_start\",method=\"POST\",status=\"201\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("endpoint=\"blob\",method=\"GET\",status=\"404\""),
        "{text}"
    );
    assert!(
        text.contains("wharf_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("wharf_http_request_bytes_total{endpoint=\"upload_start\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn stale_uploads_are_purged() {
    let reg = TestRegistry::builder().spawn().await;
    let r = reg.send(Method::POST, "/v2/purge/blobs/uploads/").await;
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    reg.client.patch(&loc).body("partial").send().await.unwrap();
    // Younger than the age: kept.
    let n = reg
        .registry
        .purge_stale_uploads(std::time::Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(reg.client.get(&loc).send().await.unwrap().status(), 204);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // A dry run counts it and removes nothing.
    let n = reg
        .registry
        .purge_stale_uploads(std::time::Duration::from_millis(10), true)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(reg.client.get(&loc).send().await.unwrap().status(), 204);
    let n = reg
        .registry
        .purge_stale_uploads(std::time::Duration::from_millis(10), false)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(reg.client.get(&loc).send().await.unwrap().status(), 404);
    // Its bytes are gone from the upload area too.
    assert_eq!(
        std::fs::read_dir(reg.data.join("wharf/uploads"))
            .unwrap()
            .count(),
        0
    );
}

/// Thousands of malformed and odd requests: none may answer 5xx, and every
/// error carries the OCI envelope.
#[tokio::test]
async fn arbitrary_requests_never_fail_with_500() {
    let reg = TestRegistry::builder().spawn().await;
    let (md, _) = reg.push_image("fz/app", "latest", "fuzz").await;
    let long = "x".repeat(300);
    let pieces: Vec<&str> = vec![
        "fz",
        "app",
        "fz/app",
        "_catalog",
        "tags",
        "list",
        "manifests",
        "blobs",
        "uploads",
        "referrers",
        "latest",
        &md,
        "sha256:",
        "sha512:abc",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "..",
        ".",
        "%2F",
        "%00",
        "%ZZ",
        "%FF",
        "-x",
        "",
        "A",
        &long,
        "0f7e2a8c-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
        "a:b",
    ];
    let queries = [
        "",
        "?digest=sha256:zz",
        "?digest=",
        "?mount=sha256:zz&from=fz/app",
        "?mount=&from=",
        "?n=-1",
        "?n=99999999999999999999999",
        "?n=0",
        "?last=%FF%FE",
        "?artifactType=%00",
        "?from=A&mount=x",
    ];
    let headers = [
        ("content-range", "bytes=9-1"),
        ("content-range", "999999999999999999999-1"),
        ("content-range", "x"),
        ("range", "bytes=5-1"),
        ("range", "bytes=-"),
        ("range", "bytes=99999999999999999999-"),
        ("accept", ",,,;;"),
        (
            "content-type",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        ("content-type", "\u{1}"),
    ];
    let methods = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"];
    let bodies: [&[u8]; 5] = [
        b"",
        b"{",
        b"{\"schemaVersion\":2}",
        b"\xff\xfe",
        b"{\"schemaVersion\":2,\"manifests\":[{}]}",
    ];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    for _ in 0..1500 {
        let depth = 1 + next(5);
        let path: Vec<&str> = (0..depth).map(|_| pieces[next(pieces.len())]).collect();
        let url = reg.url(&format!(
            "/v2/{}{}",
            path.join("/"),
            queries[next(queries.len())]
        ));
        let method = reqwest::Method::from_bytes(methods[next(methods.len())].as_bytes()).unwrap();
        let mut req = reg
            .client
            .request(method.clone(), &url)
            .body(bodies[next(bodies.len())].to_vec());
        for _ in 0..next(3) {
            let (k, v) = headers[next(headers.len())];
            if let Ok(v) = reqwest::header::HeaderValue::from_str(v) {
                req = req.header(k, v);
            }
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        assert!(status.as_u16() < 500, "{method} {url} answered {status}");
        if status.is_client_error() && method != reqwest::Method::HEAD {
            let body = r.bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {url}: error body is not JSON: {body:?}"));
            assert!(v["errors"][0]["code"].is_string(), "{method} {url}: {v}");
        }
    }
    // The registry still works afterwards.
    assert_eq!(
        reg.status(Method::GET, "/v2/fz/app/manifests/latest").await,
        200
    );
}
