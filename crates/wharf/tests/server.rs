//! The binary: TLS probes on the plain port, graceful shutdown, configuration.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn tls_client_hello_on_plain_port_gets_go_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The start of a TLS 1.2 ClientHello record.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap(); // the server closes the connection
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    );
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let client = common::client();
    let r = client
        .post(server.url("/v2/slow/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let data = bytes(7, 64 * 1024);
    let d = sha256(&data);
    // Stream the body slowly; SIGTERM arrives while it is in flight.
    let chunks: Vec<Vec<u8>> = data.chunks(8192).map(<[u8]>::to_vec).collect();
    let body = futures::stream::unfold(chunks.into_iter(), |mut it| async move {
        let c = it.next()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(c), it))
    });
    let req = client
        .put(format!("{loc}?digest={d}"))
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let pending = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.sigterm();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(
        r.status(),
        201,
        "the upload in flight was cut off by shutdown"
    );
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "wharf exited with {status}");
    // New connections are refused once it has stopped.
    assert!(client.get(server.url("/v2/")).send().await.is_err());
}

#[test]
fn config_check_prints_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(&p, "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv/x\n  delete:\n    enabled: false\nnotifications:\n  endpoints: []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check"])
        .arg(&p)
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:6000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("rootdirectory: /srv/x"), "{stdout}");
    assert!(stdout.contains("addr: 127.0.0.1:6000"), "{stdout}");
    assert!(stdout.contains("enabled: false"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("warning: notifications"), "{stderr}");

    // Every problem at once, and a failure: what `serve` would refuse.
    std::fs::write(
        &p,
        "log:\n  level: loud\nstorage:\n  filesystem:\n    rootdirectroy: /x\n  s3: {bucket: b}\nauth:\n  htpasswd:\n    path: /nonexistent/htpasswd\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    for needle in [
        "error: log.level",
        "error: storage.filesystem.rootdirectroy: unknown key",
        "error: storage.s3",
        "error: auth.htpasswd.path: /nonexistent/htpasswd does not exist",
        "4 errors",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("4 errors") && stderr.contains("/nonexistent/htpasswd"),
        "{stderr}"
    );

    std::fs::write(&p, "http:\n  addr: :5000\n   bad: indent\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("line 3"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["config", "check"])
        .arg(&p)
        .env("REGISTRY_CONFIGURATION_PATH", "/ignored")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn env_selects_data_dir_and_unsupported_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("from-env");
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, "version: 0.1\nhttp:\n  prefix: /x\n").unwrap();
    let server = Server::start(
        &dir.path().join("unused"),
        &["--config", cfg.to_str().unwrap()],
        &[(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            root.to_str().unwrap(),
        )],
    );
    assert!(root.join("wharf/meta.db").exists());
    assert!(root.join("docker/registry/v2/blobs").exists());
    // The database is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("wharf/meta.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let stderr = server.stderr();
    assert!(
        stderr.contains("http.prefix") && stderr.contains("not supported"),
        "{stderr}"
    );
    eprintln!("start-up took {:?}", server.startup);
}

#[test]
fn refuses_configs_it_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        "auth:\n  htpasswd:\n    realm: r\n    path: /etc/htpasswd\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth"));
    // Help is useful.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("--data") && help.contains("--config") && help.contains(":5000"),
        "{help}"
    );
}

/// A start that fails (here: the port is taken) leaves no data directory.
#[test]
fn a_failed_start_creates_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--addr", &addr, "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(!data.exists(), "a half-made data directory was left");
}

/// Built-in auth on first start: an administrator with a generated password,
/// printed once; a private signing key; a warning when passwords would cross
/// the network unencrypted.
#[tokio::test]
async fn builtin_auth_first_start() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, "auth:\n  builtin: {}\n").unwrap();
    let data = dir.path().join("data");
    let spawn = |addr: &str| {
        let stderr =
            std::fs::File::create(dir.path().join(format!("{}.err", addr.replace(':', "_"))))
                .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(&data)
            .args(["--addr", addr])
            .env_remove("WHARF_ADMIN_PASSWORD")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            assert!(
                out.read_line(&mut l).unwrap() > 0,
                "wharf exited: {lines:?}"
            );
            let done = l.starts_with("wharf listening on ");
            lines.push(l);
            if done {
                break;
            }
        }
        (child, lines)
    };
    let (mut child, lines) = spawn("127.0.0.1:0");
    let first = &lines[0];
    assert!(
        first.starts_with("created administrator \"admin\" with password: "),
        "{lines:?}"
    );
    let password = first.trim_end().rsplit(' ').next().unwrap().to_owned();
    assert!(password.len() >= 32);
    let addr = lines.last().unwrap()["wharf listening on ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let client = common::client();
    let token = |pw: String| {
        client
            .get(format!("http://{addr}/auth/token?service=wharf"))
            .basic_auth("admin", Some(pw))
            .send()
    };
    assert_eq!(token(password.clone()).await.unwrap().status(), 200);
    assert_eq!(token("wrong".into()).await.unwrap().status(), 401);
    let key = data.join("wharf/token-signing.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let log = std::fs::read_to_string(dir.path().join("127.0.0.1_0.err")).unwrap();
    assert!(
        !log.contains(&password),
        "the password must not reach the log"
    );
    assert!(
        !log.contains("without TLS"),
        "loopback needs no warning: {log}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Second start, on every address: no new password, a TLS warning.
    let (mut child, lines) = spawn("0.0.0.0:0");
    assert_eq!(lines.len(), 1, "{lines:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("0.0.0.0_0.err")).unwrap();
    assert!(log.contains("without TLS"), "{log}");
}

/// Starts `wharf serve` whose upload purging looks every 200 ms for sessions
/// idle for 1 s, and opens a session holding a few bytes. Returns the
/// server, the session's URL and its data file.
async fn server_with_quick_purging(
    dir: &std::path::Path,
    dryrun: bool,
) -> (Server, String, std::path::PathBuf) {
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  maintenance:\n    uploadpurging: {{enabled: true, age: 1s, interval: 200ms, dryrun: {dryrun}}}\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let server = Server::start(&data, &["--config", cfg.to_str().unwrap()], &[]);
    let client = common::client();
    let r = client
        .post(server.url("/v2/idle/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client.patch(&loc).body("partial").send().await.unwrap();
    assert_eq!(r.status(), 202);
    let uploads: Vec<_> = std::fs::read_dir(data.join("wharf/uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    (server, loc, uploads[0].clone())
}

/// `storage.maintenance.uploadpurging` in a running server: an abandoned
/// upload's session and bytes go once it has been idle for `age`.
#[tokio::test]
async fn scheduled_purging_removes_abandoned_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let (server, loc, file) = server_with_quick_purging(dir.path(), false).await;
    let client = common::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.get(&loc).send().await.unwrap().status();
        if status == 404 {
            break;
        }
        assert_eq!(status, 204);
        assert!(
            std::time::Instant::now() < deadline,
            "the idle session was not purged; stderr: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!file.exists(), "the session's data stayed behind");
    // A client coming back to the purged session is told plainly.
    let r = client.patch(&loc).body("more").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}");
    let stderr = server.stderr();
    assert!(stderr.contains("removed stale upload sessions"), "{stderr}");
}

/// With `dryrun`, the schedule reports the idle session and keeps it.
#[tokio::test]
async fn scheduled_purging_dry_run_keeps_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let (server, loc, file) = server_with_quick_purging(dir.path(), true).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server
        .stderr()
        .contains("would remove stale upload sessions")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the dry run reported nothing; stderr: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = common::client();
    assert_eq!(client.get(&loc).send().await.unwrap().status(), 204);
    assert!(file.exists());
    // The session still works: finishing it stores the blob.
    let d = sha256(b"partial");
    let r = client
        .put(format!("{loc}?digest={d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// The audit writer batches records for up to a second; a graceful shutdown
/// writes what it holds instead of dropping it.
#[tokio::test]
async fn audit_records_survive_a_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, "auth:\n  builtin: {}\n").unwrap();
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap()];
    let env = [("WHARF_ADMIN_PASSWORD", "admin-secret-1")];
    let server = Server::start(&data, &args, &env);
    let client = common::client();
    let r = client
        .post(server.url("/api/v1/projects"))
        .basic_auth("admin", Some("admin-secret-1"))
        .json(&serde_json::json!({"name": "just-before-exit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    server.sigterm();
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "wharf exited with {status}");

    let server = Server::start(&data, &args, &env);
    let r = client
        .get(server.url("/api/v1/audit?action=project.create"))
        .basic_auth("admin", Some("admin-secret-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: serde_json::Value = r.json().await.unwrap();
    assert_eq!(rows[0]["resource"], "just-before-exit", "{rows}");
    assert_eq!(rows[0]["actor"], "admin", "{rows}");
}

/// `storage.maintenance.gc.cgroup`: the background threads, and only they,
/// run in the configured cgroup, made idle; a path that is no cgroup stops
/// the start with a message that names the key.
#[test]
fn background_threads_run_in_the_configured_idle_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_cgroup = dir.path().join("plain");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("REGISTRY_STORAGE_MAINTENANCE_GC_CGROUP", &not_a_cgroup)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage.maintenance.gc.cgroup") && err.contains("is not a cgroup"),
        "{err}"
    );

    // SAFETY: geteuid takes nothing and returns an integer.
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu/tasks").exists();
    if unsafe { libc::geteuid() } != 0 || !v1 {
        eprintln!("SKIPPED the cgroup itself: needs root and a cgroup v1 cpu hierarchy");
        return;
    }
    let cg = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/cpu/wharf-test-serve-{}",
        std::process::id()
    ));
    let cg_env = cg.to_str().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[],
        &[("REGISTRY_STORAGE_MAINTENANCE_GC_CGROUP", cg_env)],
    );
    let pid = server.child.id();
    let tids: Vec<String> = std::fs::read_to_string(cg.join("tasks"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(tids.len(), wharf_background::THREADS, "{tids:?}");
    for tid in &tids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
        // Names are cut to 15 bytes.
        assert_eq!(comm.trim(), "wharf-backgroun");
    }
    assert_eq!(
        std::fs::read_to_string(cg.join("cpu.idle")).unwrap().trim(),
        "1"
    );
    assert!(
        server
            .stderr()
            .contains("background work runs in an idle cgroup")
    );
    server.kill9();
    std::fs::remove_dir(&cg).unwrap();

    // A service user, in a cgroup that root prepared: only `tasks` is its
    // to write, and that is enough.
    std::fs::create_dir(&cg).unwrap();
    std::fs::write(cg.join("cpu.idle"), "1").unwrap();
    let nobody = dir.path().join("nobody");
    std::fs::create_dir(&nobody).unwrap();
    let chown = |p: &std::path::Path| {
        let ok = Command::new("chown")
            .arg("nobody")
            .arg(p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", p.display());
    };
    chown(dir.path());
    chown(&nobody);
    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--addr", "127.0.0.1:0", "--data"])
            .arg(nobody.join("data"))
            .env("REGISTRY_STORAGE_MAINTENANCE_GC_CGROUP", &cg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    // Threads it may not move: the start stops, and nothing stays behind.
    let out = as_nobody().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moving a thread into"), "{err}");
    assert_eq!(std::fs::read_to_string(cg.join("tasks")).unwrap(), "");
    chown(&cg.join("tasks"));
    let mut child = as_nobody().spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let moved = std::fs::read_to_string(cg.join("tasks")).unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.starts_with("wharf listening on "),
        "{line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(moved.lines().count(), wharf_background::THREADS, "{moved}");
    std::fs::remove_dir(&cg).unwrap();
}

/// `wharf repo rm --data` beside a running server without access control:
/// the repository is gone for the server at once (its tag cache follows
/// other processes' writes), other repositories stay, and a name that does
/// not exist is an error.
#[tokio::test]
async fn repo_rm_on_the_data_directory_beside_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[], &[]);
    let client = common::client();
    let push = |repo: &'static str| {
        let (client, base) = (client.clone(), server.url(""));
        async move {
            let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
            let d = common::sha256(&config);
            let r = client
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(config.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":{}}},"layers":[]}}"#,
                config.len()
            );
            let r = client
                .put(format!("{base}/v2/{repo}/manifests/v1"))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(m)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    };
    push("team/gone").await;
    push("team/kept").await;
    let tags = |repo: &str| {
        client
            .get(server.url(&format!("/v2/{repo}/tags/list")))
            .send()
    };
    // Listed once, so the server caches the list.
    assert_eq!(tags("team/gone").await.unwrap().status(), 200);
    let rm = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["repo", "rm", name, "--data"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = rm("team/gone");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deleted repository team/gone"
    );
    assert_eq!(tags("team/gone").await.unwrap().status(), 404);
    let r = client
        .get(server.url("/v2/team/gone/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(tags("team/kept").await.unwrap().status(), 200);
    let out = rm("team/never");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["repo", "rm", "team/kept", "--data"])
        .arg(dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "not a data directory");
    assert!(
        !dir.path().join("elsewhere").exists(),
        "and nothing created there"
    );
}

/// `WHARF_RUN_AS` (the container image sets it): started as root, `serve`
/// gives a root-owned data directory (such as a distribution root written by
/// `registry:2`) to the service user and runs as that user; `wharf gc` as
/// root does the same, so no file in the directory is ever root's.
#[tokio::test]
async fn run_as_gives_the_data_directory_to_the_service_user() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The service user must reach the data directory through its parents.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = dir.path().join("data");
    let old = data.join("docker/registry/v2/repositories/old/_layers");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("link"), b"x").unwrap();
    let server = Server::start(&data, &[], &[("WHARF_RUN_AS", "65532:65533")]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid_line}"
    );
    let client = common::client();
    let body = bytes(7, 4096);
    let d = sha256(&body);
    let r = client
        .post(server.url(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the service user can write");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--grace", "0s", "--data"])
        .arg(&data)
        .env("WHARF_RUN_AS", "65532:65533")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stack = vec![data.clone()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65532, 65533), "{}", p.display());
        seen += 1;
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 5, "{seen}");
    // A malformed value is an error, not root.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["gc", "--data"])
        .arg(&data)
        .env("WHARF_RUN_AS", "nobody")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WHARF_RUN_AS"));
}

/// CORS as distribution does it: `http.headers` on every answer, and an
/// `OPTIONS` preflight (no credentials) answered 204 even with access
/// control on. `/metrics` moves to `http.debug.addr` with
/// `http.debug.prometheus.enabled`, off the registry's port.
#[tokio::test]
async fn cors_preflight_and_metrics_on_the_debug_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        "http:\n  headers:\n    Access-Control-Allow-Origin: ['https://ui.example.com']\n    Access-Control-Allow-Methods: ['HEAD', 'GET', 'OPTIONS', 'DELETE']\n    Access-Control-Allow-Headers: ['Authorization', 'Accept']\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n      path: /metrics\nauth:\n  builtin: {}\n",
    )
    .unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &[("WHARF_ADMIN_PASSWORD", "admin-secret-123")],
    );
    let client = common::client();
    let r = client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/v2/team/app/tags/list"),
        )
        .header("origin", "https://ui.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "a preflight needs no credentials");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.example.com"
    );
    assert!(r.headers()["allow"].to_str().unwrap().contains("DELETE"));
    let methods: Vec<_> = r
        .headers()
        .get_all("access-control-allow-methods")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(methods, ["HEAD", "GET", "OPTIONS", "DELETE"]);
    // The real request still needs credentials, and carries the headers.
    let r = client
        .get(server.url("/v2/team/app/tags/list"))
        .header("origin", "https://ui.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://ui.example.com"
    );
    // Metrics are on the debug address only.
    assert_eq!(
        client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let log = server.stderr();
    let debug = log
        .lines()
        .find(|l| l.contains("debug server listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no debug listener in the log: {log}"))
        .to_owned();
    let r = client
        .get(format!("http://{debug}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("wharf_http_requests_total")
    );
    let r = client
        .get(format!("http://{debug}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
