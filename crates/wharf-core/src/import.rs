//! Adopting a distribution root in place (`wharf import`, and `wharf serve`
//! when it finds one).
//!
//! distribution keeps everything in files: blobs under
//! `docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data` (the layout Wharf's
//! blob store shares, so no byte is copied), and per repository under
//! `docker/registry/v2/repositories/<name>/`:
//!
//! - `_layers/<alg>/<hex>/link`: the blobs the repository may serve;
//! - `_manifests/revisions/<alg>/<hex>/link`: its manifests, whose bytes are
//!   the blob of that digest;
//! - `_manifests/tags/<tag>/current/link`: what each tag points at.
//!
//! Each link file holds a digest. The importer reads one repository at a
//! time into an [`ImportBatch`] and records it in one transaction, then
//! notes it as imported: a killed import resumes with the next repository,
//! and running it again adds only what is new. Manifests keep their bytes
//! and media type; their own blob files are recorded as referenced by them,
//! so that a collection keeps them and distribution, started again on the
//! root, still serves every image Wharf did not delete. Docker schema 1
//! manifests (which Wharf does not accept in a push) are imported as stored,
//! with their layers, so that no collection takes those either.
//!
//! Until the import is complete the metadata store says so
//! ([`ImportState::Pending`]) and no collection deletes anything: the blobs
//! of repositories not imported yet are unknown to it.
//!
//! The reading is plain `std::fs` on blocking threads: the layout is a
//! filesystem's, and no crate reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wharf_meta::{ImportBatch, ImportState, ManifestRecord, ManifestRefs, MetaStore};
use wharf_oci::manifest::MAX_MANIFEST_SIZE;
use wharf_oci::{Digest, Manifest, ManifestError, RepoName, Tag};

use crate::{CoreError, now_ms};

/// Where distribution keeps its repositories under a data directory.
const REPOSITORIES: &str = "docker/registry/v2/repositories";
const BLOBS: &str = "docker/registry/v2/blobs";
/// The problems a report lists in full; beyond, it counts them.
const MAX_LISTED_PROBLEMS: usize = 1000;

/// The repositories directory if `data` holds a distribution root.
pub fn distribution_root(data: &Path) -> Option<PathBuf> {
    let p = data.join(REPOSITORIES);
    p.is_dir().then_some(p)
}

/// Something the import could not take as it is; it goes on without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    pub repository: String,
    pub what: String,
}

impl std::fmt::Display for ImportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.repository.is_empty() {
            write!(f, "{}", self.what)
        } else {
            write!(f, "{}: {}", self.repository, self.what)
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Repositories found, and of them those imported by an earlier run.
    pub repositories: u64,
    pub already_imported: u64,
    pub tags: u64,
    pub manifests: u64,
    /// Of `manifests`, Docker schema 1 ones (imported as stored).
    pub schema1: u64,
    pub blob_links: u64,
    /// Problems, the first [`MAX_LISTED_PROBLEMS`] of them, and how many.
    #[serde(skip)]
    pub problems: Vec<ImportProblem>,
    pub problem_count: u64,
    pub seconds: f64,
}

/// Told about progress, one repository at a time.
pub trait ImportProgress: Send + Sync {
    fn started(&self, _repositories: u64) {}
    fn repository_done(&self, _name: &str) {}
}

impl ImportProgress for () {}

/// Imports every repository under `data`'s distribution root that is not
/// imported yet (all of them with `dry_run`, writing nothing).
pub async fn import(
    data: &Path,
    meta: Arc<dyn MetaStore>,
    dry_run: bool,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, CoreError> {
    let started = Instant::now();
    let mut report = ImportReport {
        dry_run,
        ..ImportReport::default()
    };
    let Some(repos_dir) = distribution_root(data) else {
        return Ok(report);
    };
    if !dry_run {
        meta.set_import_state(ImportState::Pending).await?;
    }
    let (found, problems) = blocking(move || Ok(find_repositories(&repos_dir))).await?;
    for p in problems {
        note(&mut report, p);
    }
    report.repositories = found.len() as u64;
    progress.started(found.len() as u64);
    let done = meta.imported_repositories().await?;
    let blobs_dir = data.join(BLOBS);
    for (name, dir) in found {
        if done.contains(name.as_str()) && !dry_run {
            report.already_imported += 1;
            progress.repository_done(name.as_str());
            continue;
        }
        let blobs = blobs_dir.clone();
        let label = name.to_string();
        let (batch, counts, problems) =
            blocking(move || Ok(read_repository(&label, &dir, &blobs))).await?;
        for p in problems {
            note(&mut report, p);
        }
        report.tags += batch.tags.len() as u64;
        report.manifests += batch.manifests.len() as u64;
        report.schema1 += counts.schema1;
        report.blob_links += batch.blobs.len() as u64;
        if !dry_run {
            meta.import_repository(&name, &batch, now_ms()).await?;
        }
        progress.repository_done(name.as_str());
    }
    if !dry_run {
        meta.set_import_state(ImportState::Complete).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn note(report: &mut ImportReport, p: ImportProblem) {
    report.problem_count += 1;
    if report.problems.len() < MAX_LISTED_PROBLEMS {
        report.problems.push(p);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("import task failed: {e}")))?
}

fn problem(repo: &str, what: impl Into<String>) -> ImportProblem {
    ImportProblem {
        repository: repo.to_owned(),
        what: what.into(),
    }
}

/// Every repository directory under `repos` (one holding `_manifests`,
/// `_layers` or `_uploads`), by name; names may nest (`a` and `a/b`).
fn find_repositories(repos: &Path) -> (Vec<(RepoName, PathBuf)>, Vec<ImportProblem>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut stack = vec![(repos.to_owned(), String::new())];
    while let Some((dir, name)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(problem(
                    &name,
                    format!("cannot read {}: {e}", dir.display()),
                ));
                continue;
            }
        };
        let mut is_repo = false;
        for e in entries.flatten() {
            let file_name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if file_name.starts_with('_') {
                is_repo |= matches!(file_name.as_str(), "_manifests" | "_layers" | "_uploads");
                continue;
            }
            let child = if name.is_empty() {
                file_name
            } else {
                format!("{name}/{file_name}")
            };
            stack.push((e.path(), child));
        }
        if is_repo {
            match name.parse::<RepoName>() {
                Ok(n) => found.push((n, dir)),
                Err(_) => problems.push(problem(&name, "not a valid repository name: skipped")),
            }
        }
    }
    found.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    (found, problems)
}

#[derive(Default)]
struct Counts {
    schema1: u64,
}

/// The digest a link file holds.
fn read_link(path: &Path) -> Result<Digest, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.trim()
        .parse::<Digest>()
        .map_err(|e| format!("{:?} is not a digest: {e}", text.trim()))
}

/// The `<alg>/<hex>/link` files under `dir`: (digest, link path).
fn links_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(algs) = std::fs::read_dir(dir) else {
        return out;
    };
    for alg in algs.flatten() {
        let Ok(hexes) = std::fs::read_dir(alg.path()) else {
            continue;
        };
        for h in hexes.flatten() {
            let link = h.path().join("link");
            if link.is_file() {
                out.push(link);
            }
        }
    }
    out.sort();
    out
}

fn blob_file(blobs: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    blobs
        .join(d.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn read_repository(
    repo: &str,
    dir: &Path,
    blobs: &Path,
) -> (ImportBatch, Counts, Vec<ImportProblem>) {
    let mut batch = ImportBatch::default();
    let mut counts = Counts::default();
    let mut problems = Vec::new();
    // Blobs the repository links.
    for link in links_under(&dir.join("_layers")) {
        match read_link(&link) {
            Err(e) => problems.push(problem(repo, format!("{}: {e}", link.display()))),
            Ok(d) => match std::fs::metadata(blob_file(blobs, &d)) {
                Ok(m) => batch.blobs.push((d, m.len())),
                Err(_) => problems.push(problem(
                    repo,
                    format!("layer link {d} names a blob that is not stored: skipped"),
                )),
            },
        }
    }
    // Manifests.
    let mut held: BTreeMap<Digest, ()> = BTreeMap::new();
    for link in links_under(&dir.join("_manifests/revisions")) {
        let d = match read_link(&link) {
            Ok(d) => d,
            Err(e) => {
                problems.push(problem(repo, format!("{}: {e}", link.display())));
                continue;
            }
        };
        let path = blob_file(blobs, &d);
        let body = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_MANIFEST_SIZE as u64 => {
                problems.push(problem(
                    repo,
                    format!("manifest {d} is over 4 MiB: skipped"),
                ));
                continue;
            }
            Ok(_) => match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(problem(repo, format!("manifest {d}: {e}: skipped")));
                    continue;
                }
            },
            Err(_) => {
                problems.push(problem(
                    repo,
                    format!("revision {d} names a blob that is not stored: skipped"),
                ));
                continue;
            }
        };
        if d.of_same_algorithm(&body) != d {
            problems.push(problem(
                repo,
                format!("manifest {d}: its bytes have another digest: skipped"),
            ));
            continue;
        }
        match manifest_record(&d, body) {
            Ok((record, refs, schema1)) => {
                if schema1 {
                    counts.schema1 += 1;
                    problems.push(problem(
                        repo,
                        format!("manifest {d} is Docker schema 1: imported as stored (Wharf refuses new schema 1 pushes)"),
                    ));
                }
                held.insert(d, ());
                batch.manifests.push((record, refs));
            }
            Err(e) => problems.push(problem(repo, format!("manifest {d}: {e}: skipped"))),
        }
    }
    // Tags.
    let tags_dir = dir.join("_manifests/tags");
    if let Ok(entries) = std::fs::read_dir(&tags_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(tag) = name.parse::<Tag>() else {
                problems.push(problem(
                    repo,
                    format!("tag {name:?} is not a valid tag: skipped"),
                ));
                continue;
            };
            let link = e.path().join("current/link");
            match read_link(&link) {
                Err(_) if !link.exists() => {}
                Err(e) => problems.push(problem(repo, format!("tag {name}: {e}"))),
                Ok(d) if held.contains_key(&d) => batch.tags.push((tag, d)),
                Ok(d) => problems.push(problem(
                    repo,
                    format!("tag {name} points at {d}, which is not imported: skipped"),
                )),
            }
        }
    }
    batch.tags.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    if dir.join("_uploads").is_dir()
        && std::fs::read_dir(dir.join("_uploads")).is_ok_and(|mut e| e.next().is_some())
    {
        problems.push(problem(
            repo,
            "unfinished distribution uploads (_uploads) are not carried over: their clients start again",
        ));
    }
    (batch, counts, problems)
}

/// A manifest as Wharf records it, from its bytes: (record, references,
/// whether it is Docker schema 1).
fn manifest_record(
    digest: &Digest,
    body: Vec<u8>,
) -> Result<(ManifestRecord, ManifestRefs, bool), String> {
    match Manifest::parse(&body, None) {
        Ok(m) => {
            let (record, refs) = crate::record_of(digest.clone(), body, &m);
            Ok((record, refs, false))
        }
        Err(ManifestError::Invalid(_)) | Err(ManifestError::Unsupported(_)) => {
            schema1(digest, body).map(|(r, refs)| (r, refs, true))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Docker schema 1: `fsLayers[].blobSum` are its blobs; signed unless it
/// has no `signatures`.
fn schema1(digest: &Digest, body: Vec<u8>) -> Result<(ManifestRecord, ManifestRefs), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct V1 {
        schema_version: i64,
        #[serde(default)]
        fs_layers: Vec<FsLayer>,
        signatures: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct FsLayer {
        blob_sum: Digest,
    }
    let v: V1 =
        serde_json::from_slice(&body).map_err(|e| format!("not a manifest Wharf reads: {e}"))?;
    if v.schema_version != 1 {
        return Err("not a manifest Wharf reads".into());
    }
    let media_type = if v.signatures.is_some() {
        wharf_oci::media::DOCKER_SCHEMA1_SIGNED
    } else {
        wharf_oci::media::DOCKER_SCHEMA1
    };
    let mut blobs: Vec<Digest> = v.fs_layers.into_iter().map(|l| l.blob_sum).collect();
    blobs.sort();
    blobs.dedup();
    Ok((
        ManifestRecord {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            content: body,
            artifact_type: None,
            subject: None,
            annotations: None,
        },
        ManifestRefs {
            blobs,
            children: vec![],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, data: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    fn blob(data_dir: &Path, body: &[u8]) -> Digest {
        let d = Digest::sha256_of(body);
        write(&blob_file(&data_dir.join(BLOBS), &d), body);
        d
    }

    fn link(repo: &Path, rel: &str, d: &Digest) {
        write(
            &repo
                .join(rel)
                .join(d.as_str().replace(':', "/"))
                .join("link"),
            d.as_str().as_bytes(),
        );
    }

    /// What a root holds that Wharf cannot take as it is is reported, and
    /// the rest imported: schema 1 as stored, with its layers.
    #[test]
    fn reads_a_repository_and_reports_what_it_cannot_take() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let repo = data.join(REPOSITORIES).join("lib/app");
        let layer = blob(data, b"layer");
        let config = blob(data, br#"{"architecture":"amd64","os":"linux"}"#);
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":5}}]}}"#
        );
        let image_d = blob(data, image.as_bytes());
        let v1 = format!(
            r#"{{"schemaVersion":1,"name":"lib/app","tag":"old","fsLayers":[{{"blobSum":"{layer}"}}],"signatures":[]}}"#
        );
        let v1_d = blob(data, v1.as_bytes());
        let missing = Digest::sha256_of(b"not stored");
        link(&repo, "_layers", &layer);
        link(&repo, "_layers", &config);
        link(&repo, "_layers", &missing);
        link(&repo, "_manifests/revisions", &image_d);
        link(&repo, "_manifests/revisions", &v1_d);
        link(&repo, "_manifests/revisions", &missing);
        let tag = |name: &str, d: &Digest| {
            write(
                &repo.join("_manifests/tags").join(name).join("current/link"),
                d.as_str().as_bytes(),
            )
        };
        tag("latest", &image_d);
        tag("old", &v1_d);
        tag("dangling", &missing);
        tag("-invalid", &image_d);
        write(&repo.join("_uploads/abc/startedat"), b"x");
        // A nested repository and a directory that is none.
        let nested = data.join(REPOSITORIES).join("lib/app/sub");
        link(&nested, "_layers", &layer);
        std::fs::create_dir_all(data.join(REPOSITORIES).join("empty/dir")).unwrap();

        let (found, problems) = find_repositories(&data.join(REPOSITORIES));
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["lib/app", "lib/app/sub"]);

        let (batch, counts, problems) = read_repository("lib/app", &repo, &data.join(BLOBS));
        let mut blobs: Vec<_> = batch.blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
        blobs.sort();
        let mut want = vec![(layer.clone(), 5), (config.clone(), 37)];
        want.sort();
        assert_eq!(blobs, want);
        assert_eq!(batch.manifests.len(), 2);
        assert_eq!(counts.schema1, 1);
        let (v1_rec, v1_refs) = batch
            .manifests
            .iter()
            .find(|(m, _)| m.digest == v1_d)
            .unwrap();
        assert_eq!(v1_rec.media_type, wharf_oci::media::DOCKER_SCHEMA1_SIGNED);
        assert_eq!(v1_refs.blobs, std::slice::from_ref(&layer));
        let (_, img_refs) = batch
            .manifests
            .iter()
            .find(|(m, _)| m.digest == image_d)
            .unwrap();
        let mut img_blobs = img_refs.blobs.clone();
        img_blobs.sort();
        let mut want = vec![config.clone(), layer.clone()];
        want.sort();
        assert_eq!(img_blobs, want);
        let tags: Vec<(&str, &Digest)> = batch.tags.iter().map(|(t, d)| (t.as_str(), d)).collect();
        assert_eq!(tags, [("latest", &image_d), ("old", &v1_d)]);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for needle in [
            "layer link sha256:",
            "revision sha256:",
            "tag dangling points at",
            "\"-invalid\" is not a valid tag",
            "Docker schema 1",
            "_uploads",
        ] {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "{needle} not in {text:#?}"
            );
        }
        assert_eq!(text.len(), 6, "{text:#?}");
    }

    /// A manifest whose bytes are not its digest's is not imported.
    #[test]
    fn a_manifest_with_other_bytes_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let repo = data.join(REPOSITORIES).join("x");
        let d = Digest::sha256_of(b"the real one");
        write(&blob_file(&data.join(BLOBS), &d), b"something else");
        link(&repo, "_manifests/revisions", &d);
        let (batch, _, problems) = read_repository("x", &repo, &data.join(BLOBS));
        assert!(batch.manifests.is_empty());
        assert!(
            problems[0].to_string().contains("other digest"),
            "{problems:?}"
        );
    }
}
