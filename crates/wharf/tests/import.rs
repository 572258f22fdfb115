//! `wharf import` as a process: killed in the middle, run again, it resumes
//! with the repositories it had not done, and the result is the whole root.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A distribution root written as distribution lays it out: `repos`
/// repositories of `tags` manifests each (a config of their own, a layer
/// shared by all).
fn distribution_root(data: &Path, repos: usize, tags: usize) {
    let v2 = data.join("docker/registry/v2");
    let put_blob = |body: &[u8]| {
        let d = sha256(body);
        let hex = &d[7..];
        let dir = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), body).unwrap();
        d
    };
    let link = |dir: std::path::PathBuf, d: &str| {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("link"), d).unwrap();
    };
    let layer = bytes(1, 2048);
    let layer_d = put_blob(&layer);
    for r in 0..repos {
        let repo = v2.join(format!("repositories/team/app{r:04}"));
        link(repo.join("_layers/sha256").join(&layer_d[7..]), &layer_d);
        for t in 0..tags {
            let config = format!(r#"{{"architecture":"amd64","os":"linux","r":{r},"t":{t}}}"#);
            let config_d = put_blob(config.as_bytes());
            link(repo.join("_layers/sha256").join(&config_d[7..]), &config_d);
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{layer_d}","size":{}}}]}}"#,
                config.len(),
                layer.len()
            );
            let m_d = put_blob(m.as_bytes());
            link(
                repo.join("_manifests/revisions/sha256").join(&m_d[7..]),
                &m_d,
            );
            link(repo.join(format!("_manifests/tags/v{t}/current")), &m_d);
        }
    }
}

fn import(data: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["import", "--data"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// "imported N repositories (K imported before), T tags, M manifests ..."
fn counts(report: &str) -> (u64, u64, u64) {
    let nums: Vec<u64> = report
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2])
}

#[tokio::test]
async fn a_killed_import_resumes_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (repos, tags) = (400, 3);
    distribution_root(&data, repos, tags);
    // Kill it part-way: later and later until some, not all, were done.
    let mut before = 0;
    for delay_ms in [30u64, 60, 120, 250, 500, 1000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["import", "--data"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if !data.join("wharf/meta.db").exists() {
            continue;
        }
        // Run it again: it resumes.
        let report = import(&data);
        let (found, done_before, new_tags) = counts(&report);
        assert_eq!(found, repos as u64, "{report}");
        before = done_before;
        if done_before > 0 && done_before < repos as u64 {
            // Exactly the rest was imported by this run.
            assert_eq!(
                new_tags,
                (repos as u64 - done_before) * tags as u64,
                "{report}"
            );
            break;
        }
        // Killed before the first or after the last: start again.
        std::fs::remove_dir_all(data.join("wharf")).unwrap();
    }
    assert!(
        before > 0 && before < repos as u64,
        "no kill landed in the middle of the import ({before} done before)"
    );
    // Whatever the kill left, the result is the whole root.
    let report = import(&data);
    assert_eq!(counts(&report), (repos as u64, repos as u64, 0), "{report}");
    let server = Server::start(&data, &[], &[]);
    let client = client();
    let mut names = Vec::new();
    let mut next = Some("/v2/_catalog?n=1000".to_owned());
    while let Some(path) = next.take() {
        let r = client.get(server.url(&path)).send().await.unwrap();
        next = r
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split(['<', '>']).nth(1))
            .map(str::to_owned);
        let v: serde_json::Value = r.json().await.unwrap();
        names.extend(
            v["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(names.len(), repos);
    for r in [0, repos / 2, repos - 1] {
        let v: serde_json::Value = client
            .get(server.url(&format!("/v2/team/app{r:04}/tags/list")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["tags"], serde_json::json!(["v0", "v1", "v2"]));
    }
}
