//! Garbage collection at grace 0 beside a busy registry, with the real
//! binary: sixteen clients push (sharing some layers), re-tag, mount and
//! delete while collections run back to back from `wharf gc` processes and
//! from the admin API. No response may be a 5xx; a manifest refused with
//! `MANIFEST_BLOB_UNKNOWN` (a collection took a blob whose manifest had not
//! come yet, which a zero grace allows) makes the client push again, as real
//! clients do. Collections pause a little between runs: back to back with
//! no pause, a zero grace takes the blobs of every push before its manifest
//! arrives, which is what the grace period is for. Afterwards every
//! remaining tag pulls back byte-identical and one more collection leaves
//! exactly the reachable blobs on disk.
//!
//! Runs for `WHARF_GC_STRESS_SECS` seconds (default 180).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};

const ADMIN_PASSWORD: &str = "stress-admin-secret-1";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WORKERS: usize = 16;
/// Layers every worker's images share, so that pushes, mounts and
/// collections meet on the same digests.
const SHARED_LAYERS: u64 = 6;

/// Every response with a status of 500 or more, and how many requests ran.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    server_errors: std::sync::Mutex<Vec<String>>,
    manifest_retries: AtomicU64,
    gc_cli_runs: AtomicU64,
    gc_cli_busy: AtomicU64,
    gc_api_runs: AtomicU64,
    gc_api_busy: AtomicU64,
    freed: AtomicU64,
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    tally: Tally,
}

impl Ctx {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut rb = self
            .http
            .request(method.clone(), &url)
            .basic_auth("admin", Some(ADMIN_PASSWORD));
        if let Some((data, ct)) = body {
            rb = rb.header("content-type", ct).body(data);
        }
        self.tally.requests.fetch_add(1, Ordering::Relaxed);
        let r = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        if status.is_server_error() {
            self.tally.server_errors.lock().unwrap().push(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        (status, headers, body)
    }

    /// Uploads `data` to `repo` unless the repository has it already.
    async fn push_blob(&self, repo: &str, data: &[u8]) {
        let d = sha256(data);
        let (s, _, _) = self
            .send(Method::HEAD, &format!("/v2/{repo}/blobs/{d}"), None)
            .await;
        if s == StatusCode::OK {
            return;
        }
        let (s, h, _) = self
            .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), None)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "POST upload in {repo}");
        let loc = h["location"].to_str().unwrap().to_owned();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let (s, _, body) = self
            .send(
                Method::PUT,
                &format!("{loc}{sep}digest={d}"),
                Some((data.to_vec(), "application/octet-stream")),
            )
            .await;
        assert!(
            s == StatusCode::CREATED || s.is_server_error(),
            "PUT blob {d} in {repo}: {s} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Pushes an image's blobs and then its manifest under `tag`, again from
    /// the blobs while a collection keeps taking a blob first.
    async fn push_image(&self, repo: &str, tag: &str, img: &Image) {
        for attempt in 0..50 {
            for (_, data) in &img.blobs {
                self.push_blob(repo, data).await;
            }
            let (s, _, body) = self
                .send(
                    Method::PUT,
                    &format!("/v2/{repo}/manifests/{tag}"),
                    Some((img.manifest.clone(), OCI_MANIFEST)),
                )
                .await;
            if s == StatusCode::CREATED {
                return;
            }
            let text = String::from_utf8_lossy(&body);
            assert!(
                s == StatusCode::BAD_REQUEST && text.contains("MANIFEST_BLOB_UNKNOWN")
                    || s.is_server_error(),
                "PUT manifest {repo}:{tag} (attempt {attempt}): {s} {text}"
            );
            self.tally.manifest_retries.fetch_add(1, Ordering::Relaxed);
        }
        panic!("{repo}:{tag} could not be pushed in 50 attempts");
    }
}

#[derive(Clone)]
struct Image {
    manifest: Vec<u8>,
    digest: String,
    /// (digest, bytes): config first.
    blobs: Vec<(String, Vec<u8>)>,
}

fn image(seed: u64) -> Image {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let shared = bytes(1_000_000 + seed % SHARED_LAYERS, 16 * 1024);
    let own = bytes(seed, 24 * 1024 + (seed % 4096) as usize);
    let desc = |data: &[u8], mt: &str| {
        format!(
            r#"{{"mediaType":"{mt}","digest":"{}","size":{}}}"#,
            sha256(data),
            data.len()
        )
    };
    let layer = "application/vnd.oci.image.layer.v1.tar";
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{},{}]}}"#,
        desc(&config, "application/vnd.oci.image.config.v1+json"),
        desc(&shared, layer),
        desc(&own, layer)
    )
    .into_bytes();
    Image {
        digest: sha256(&manifest),
        manifest,
        blobs: vec![
            (sha256(&config), config),
            (sha256(&shared), shared),
            (sha256(&own), own),
        ],
    }
}

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

/// What a worker leaves: its repository, the tags that must pull, and every
/// manifest still stored (tagged or not) with its blobs.
type Outcome = (
    String,
    BTreeMap<String, Image>,
    BTreeMap<String, Vec<String>>,
);

async fn worker(ctx: Arc<Ctx>, w: usize, until: Instant) -> Outcome {
    let repo = format!("stress/w{w}");
    let mut live: BTreeMap<String, Image> = BTreeMap::new();
    let mut stored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut n: u64 = 0;
    while Instant::now() < until {
        n += 1;
        let tag = format!("t{n}");
        let img = image((w as u64) << 32 | n);
        if n.is_multiple_of(7) {
            // Mount the shared layer from a neighbour first, as clients do
            // when they know where it is; a 202 (no mount) is fine too.
            let from = format!("stress/w{}", (w + 1) % WORKERS);
            let d = &img.blobs[1].0;
            let (s, _, _) = ctx
                .send(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
                    None,
                )
                .await;
            assert!(
                s == StatusCode::CREATED || s == StatusCode::ACCEPTED || s.is_server_error(),
                "mount: {s}"
            );
        }
        ctx.push_image(&repo, &tag, &img).await;
        stored.insert(
            img.digest.clone(),
            img.blobs.iter().map(|(d, _)| d.clone()).collect(),
        );
        live.insert(tag.clone(), img.clone());
        if n.is_multiple_of(3) {
            let alias = format!("alias{n}");
            ctx.push_image(&repo, &alias, &img).await;
            live.insert(alias, img.clone());
        }
        if n.is_multiple_of(4) {
            // Delete an older image by digest: its tags go with it.
            let victim = live.keys().next().cloned().unwrap();
            let digest = live[&victim].digest.clone();
            let (s, _, _) = ctx
                .send(
                    Method::DELETE,
                    &format!("/v2/{repo}/manifests/{digest}"),
                    None,
                )
                .await;
            assert!(
                s == StatusCode::ACCEPTED || s.is_server_error(),
                "delete: {s}"
            );
            live.retain(|_, v| v.digest != digest);
            stored.remove(&digest);
        }
        if n.is_multiple_of(5)
            && let Some(t) = live.keys().nth(1).cloned()
        {
            // Delete one tag only: the manifest stays, untagged.
            let (s, _, _) = ctx
                .send(Method::DELETE, &format!("/v2/{repo}/manifests/{t}"), None)
                .await;
            assert!(
                s == StatusCode::ACCEPTED || s.is_server_error(),
                "untag: {s}"
            );
            live.remove(&t);
        }
    }
    (repo, live, stored)
}

/// Between two collections from one source: 100 to 400 ms.
fn pause() -> Duration {
    Duration::from_millis(100 + rand_below(300))
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

fn gc_command(config: &Path, data: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"));
    c.arg("gc")
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .args(["--grace", "0s"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grace_zero_collections_beside_sixteen_busy_clients() {
    let secs: u64 = std::env::var("WHARF_GC_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        "auth:\n  builtin: {}\n  lockout:\n    attempts: 1000\nstorage:\n  maintenance:\n    gc:\n      enabled: false\n",
    )
    .unwrap();
    let server = Server::start(
        &data,
        &["--config", config.to_str().unwrap()],
        &[("WHARF_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    );
    let ctx = Arc::new(Ctx {
        http: client(),
        base: server.url(""),
        tally: Tally::default(),
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));

    // Collections from `wharf gc` processes, back to back.
    let cli = {
        let (ctx, stop, config, data) = (ctx.clone(), stop.clone(), config.clone(), data.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let out = gc_command(&config, &data)
                    .env("WHARF_ADMIN_PASSWORD", ADMIN_PASSWORD)
                    .output()
                    .await
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() {
                    ctx.tally.gc_cli_runs.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause()).await;
                } else {
                    assert!(
                        stderr.contains("already running"),
                        "wharf gc failed: {}\n{stderr}",
                        out.status
                    );
                    ctx.tally.gc_cli_busy.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    // And from the admin API, at the same time.
    let api = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (s, _, body) = ctx
                    .send(Method::POST, "/api/v1/gc?grace_seconds=0", None)
                    .await;
                match s {
                    StatusCode::OK => {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        ctx.tally
                            .freed
                            .fetch_add(v["blobs"].as_u64().unwrap(), Ordering::Relaxed);
                        ctx.tally.gc_api_runs.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause()).await;
                    }
                    StatusCode::CONFLICT => {
                        ctx.tally.gc_api_busy.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    s if s.is_server_error() => {}
                    s => panic!("POST /api/v1/gc: {s} {}", String::from_utf8_lossy(&body)),
                }
            }
        })
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(ctx.clone(), w, until)))
        .collect();
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.push(w.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    cli.await.unwrap();
    api.await.unwrap();

    let t = &ctx.tally;
    eprintln!(
        "{} requests; manifest pushes retried after a collection took a blob: {}; \
         wharf gc: {} runs, {} found another running; API: {} runs ({} blobs freed), {} busy",
        t.requests.load(Ordering::Relaxed),
        t.manifest_retries.load(Ordering::Relaxed),
        t.gc_cli_runs.load(Ordering::Relaxed),
        t.gc_cli_busy.load(Ordering::Relaxed),
        t.gc_api_runs.load(Ordering::Relaxed),
        t.freed.load(Ordering::Relaxed),
        t.gc_api_busy.load(Ordering::Relaxed),
    );
    let errors = t.server_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} responses >= 500, first: {:?}\nserver log tail: {}",
        errors.len(),
        &errors[..errors.len().min(10)],
        server
            .stderr()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(t.gc_cli_runs.load(Ordering::Relaxed) >= 3, "wharf gc ran");
    assert!(
        t.gc_api_runs.load(Ordering::Relaxed) >= 3,
        "the API collected"
    );
    assert!(
        t.freed.load(Ordering::Relaxed) > 0,
        "collections freed blobs"
    );

    // Every remaining tag pulls back byte-identical.
    let mut reachable = BTreeSet::new();
    let mut tags = 0;
    for (repo, live, stored) in &outcomes {
        reachable.extend(stored.values().flatten().cloned());
        for (tag, img) in live {
            tags += 1;
            let (s, _, body) = ctx
                .send(Method::GET, &format!("/v2/{repo}/manifests/{tag}"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{repo}:{tag}");
            assert_eq!(body, img.manifest, "{repo}:{tag}");
            for (d, bytes) in &img.blobs {
                let (s, _, body) = ctx
                    .send(Method::GET, &format!("/v2/{repo}/blobs/{d}"), None)
                    .await;
                assert_eq!(s, StatusCode::OK, "{repo}@{d}");
                assert!(body == *bytes, "{repo}@{d}: different bytes");
            }
        }
    }
    assert!(tags >= WORKERS, "{tags} tags");

    // One more collection, with nobody else working: exactly the blobs of
    // stored manifests stay.
    let out = gc_command(&config, &data)
        .env("WHARF_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk = blobs_on_disk(&data);
    let lost: Vec<_> = reachable.difference(&on_disk).collect();
    let left: Vec<_> = on_disk.difference(&reachable).collect();
    assert!(lost.is_empty(), "reachable blobs lost: {lost:?}");
    assert!(left.is_empty(), "unreachable blobs left: {left:?}");
    // And no collection is left holding the lease.
    let (s, _, body) = ctx.send(Method::GET, "/api/v1/gc", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["running"], false, "{v}");
}
