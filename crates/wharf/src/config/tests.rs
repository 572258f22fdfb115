use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn load_str(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Loaded> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(&p, yaml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load(Some(&p), &env)
}

/// The configuration, which must have loaded without errors.
fn ok(yaml: &str, env: &[(&str, &str)]) -> (Config, Vec<String>) {
    let l = load_str(yaml, env).unwrap();
    assert!(l.report.errors.is_empty(), "{:?}", l.report.errors);
    (l.config, l.report.warnings)
}

/// The errors of a configuration that must have some.
fn errors(yaml: &str, env: &[(&str, &str)]) -> Vec<String> {
    let l = load_str(yaml, env).unwrap();
    assert!(!l.report.errors.is_empty(), "no error for {yaml:?}");
    l.report.errors
}

fn has(list: &[String], needle: &str) -> bool {
    list.iter().any(|e| e.contains(needle))
}

#[test]
fn distribution_config() {
    let (c, warnings) = ok(
        "version: 0.1\nlog:\n  level: debug\n  formatter: json\nstorage:\n  cache: {blobdescriptor: inmemory}\n  filesystem: {rootdirectory: /srv/reg}\n  delete: {enabled: false}\n  maintenance:\n    uploadpurging: {enabled: true, age: 2h, interval: 10m, dryrun: false}\nhttp:\n  addr: 127.0.0.1:5056\n  host: https://r.example.com\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        &[],
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.formatter, LogFormat::Json);
    assert_eq!(c.storage.root(), Path::new("/srv/reg"));
    assert!(!c.storage.delete.enabled);
    assert_eq!(
        c.storage.maintenance.uploadpurging.age,
        Duration::from_secs(7200)
    );
    assert_eq!(c.http.addr, "127.0.0.1:5056");
    assert_eq!(c.http.host.as_deref(), Some("https://r.example.com"));
    assert_eq!(
        c.http.headers["X-Content-Type-Options"].values(),
        ["nosniff"]
    );
}

#[test]
fn keys_are_case_insensitive_but_header_names_keep_their_case() {
    let (c, _) = ok(
        "HTTP:\n  Addr: 127.0.0.1:1\n  Headers:\n    X-Frame-Options: DENY\n",
        &[],
    );
    assert_eq!(c.http.addr, "127.0.0.1:1");
    assert_eq!(c.http.headers["X-Frame-Options"].values(), ["DENY"]);
}

#[test]
fn env_overrides_file() {
    let (c, _) = ok(
        "http:\n  addr: :5000\nstorage:\n  filesystem:\n    rootdirectory: /a\n",
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:7000"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/b"),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
            ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
            ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
            ("REGISTRY_HTTP_TRUSTEDPROXIES", "10.0.0.0/8, 192.168.1.1"),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "1234"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/h"),
            ("REGISTRY_CONFIGURATION_PATH", "/ignored"),
            ("OTHER", "x"),
        ],
    );
    assert_eq!(c.http.addr, "127.0.0.1:7000");
    assert_eq!(c.storage.root(), Path::new("/b"));
    assert!(!c.storage.delete.enabled);
    let tls = c.http.tls.files().unwrap();
    assert_eq!(tls.certificate, PathBuf::from("/c.pem"));
    assert_eq!(tls.key, PathBuf::from("/k.pem"));
    assert_eq!(c.http.trustedproxies.len(), 2);
    assert_eq!(c.http.trustedproxies[1].to_string(), "192.168.1.1/32");
    assert!(matches!(c.auth.mode(), AuthMode::Htpasswd(h) if h.realm == "1234"));
}

/// The environment is shared with other programs: podman's credentials file
/// is skipped, and a variable that names no key is a warning, not an error.
#[test]
fn foreign_environment_variables_are_not_errors() {
    let l = load_str(
        "",
        &[
            ("REGISTRY_AUTH_FILE", "/run/containers/auth.json"),
            ("REGISTRY_MYSTERY", "1"),
        ],
    )
    .unwrap();
    assert!(l.report.errors.is_empty(), "{:?}", l.report.errors);
    assert_eq!(l.report.warnings.len(), 1, "{:?}", l.report.warnings);
    assert!(l.report.warnings[0].contains("REGISTRY_MYSTERY"));
    // The same key in a file is a typo.
    assert!(!errors("mystery: 1\n", &[]).is_empty());
}

/// Every problem in one report, each with its key.
#[test]
fn every_problem_is_reported_at_once() {
    let e = errors(
        "log:\n  level: loud\nstorage:\n  delete:\n    enabled: maybe\n  filesystem:\n    rootdirectroy: /typo\n  s3:\n    bucket: b\n    region: r\nhttp:\n  timeouts:\n    header: soon\n  limits:\n    uploads: -1\n  trustedproxies: [nonsense]\nauth:\n  lockout: {attempts: 0}\n",
        &[("REGISTRY_STORAGE", "azure")],
    );
    for needle in [
        "log.level",
        "storage.delete.enabled",
        "storage.filesystem.rootdirectroy: unknown key",
        "storage.s3: the S3 storage driver",
        "http.timeouts.header",
        "http.limits.uploads",
        "http.trustedproxies",
        "auth.lockout.attempts",
        "REGISTRY_STORAGE",
    ] {
        assert!(has(&e, needle), "{needle} missing from {e:#?}");
    }
    // storage.s3 is reported once, not per key.
    assert_eq!(e.iter().filter(|x| x.contains("storage.s3")).count(), 1);
    assert_eq!(e.len(), 9, "{e:#?}");
}

#[test]
fn unsupported_keys_are_warned_about_or_refused() {
    let (_, w) = ok(
        "notifications:\n  endpoints: []\nhttp:\n  prefix: /x\nredis:\n  addr: x\nversion: 0.1\n",
        &[],
    );
    assert!(has(&w, "notifications"), "{w:?}");
    assert!(has(&w, "http.prefix"), "{w:?}");
    assert!(has(&w, "redis"), "{w:?}");
    assert_eq!(w.len(), 3, "{w:?}");
    for (yaml, key) in [
        ("auth:\n  silly: {realm: r, service: s}\n", "auth.silly"),
        ("storage:\n  s3: {bucket: b}\n", "storage.s3"),
        ("storage:\n  inmemory:\n", "storage.inmemory"),
        (
            "http:\n  tls:\n    clientcas: [/ca.pem]\n",
            "http.tls.clientcas",
        ),
        (
            "proxy:\n  remoteurl: https://registry-1.docker.io\n",
            "proxy",
        ),
        (
            "storage:\n  maintenance:\n    readonly:\n      enabled: true\n",
            "storage.maintenance.readonly",
        ),
    ] {
        let e = errors(yaml, &[]);
        assert!(has(&e, key), "{key}: {e:?}");
    }
    // Read-only mode switched off is fine.
    ok(
        "storage:\n  maintenance:\n    readonly:\n      enabled: false\n",
        &[],
    );
    assert!(has(
        &errors("", &[("REGISTRY_STORAGE", "s3")]),
        "REGISTRY_STORAGE"
    ));
}

/// distribution's sample configuration (what registry:2 ships) and
/// Debian's: nothing but clear warnings from the file itself.
#[test]
fn distribution_and_debian_samples() {
    let sample = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/registry\n  tag:\n    concurrencylimit: 8\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n";
    let (c, w) = ok(sample, &[]);
    assert_eq!(c.storage.root(), Path::new("/var/lib/registry"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(has(&w, "log.fields"), "{w:?}");
    let debian = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\n  delete:\n    enabled: true\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: /etc/docker/registry\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n";
    let (c, _) = ok(debian, &[]);
    assert!(matches!(c.auth.mode(), AuthMode::Htpasswd(_)));
    // Its htpasswd path is a directory: the file check says so.
    let dir = tempfile::tempdir().unwrap();
    let mut c = c;
    c.storage.filesystem.rootdirectory = dir.path().join("data");
    c.auth.htpasswd.as_mut().unwrap().path = Some(dir.path().to_owned());
    let mut r = Report::default();
    files::check(&c, &mut r);
    assert!(has(&r.errors, "is a directory"), "{:?}", r.errors);
}

#[test]
fn auth_sections() {
    let (c, _) = ok("", &[("REGISTRY_AUTH_HTPASSWD_PATH", "/x")]);
    assert!(matches!(
        c.auth.mode(),
        AuthMode::Htpasswd(h) if h.path.as_deref() == Some(Path::new("/x")) && h.realm == "Registry Realm"
    ));
    for yaml in ["auth:\n  builtin: {}\n", "auth:\n  builtin:\n"] {
        let (c, _) = ok(yaml, &[]);
        assert!(matches!(
            c.auth.mode(),
            AuthMode::Builtin(b) if b.service == "wharf" && b.tokenexpiration.as_secs() == 300
        ));
        assert_eq!(c.auth.lockout.attempts, 10);
    }
    assert!(has(
        &errors("auth:\n  builtin: {}\n  htpasswd: {path: /p}\n", &[]),
        "one of"
    ));
    assert!(has(
        &errors("auth:\n  htpasswd: {realm: r}\n", &[]),
        "auth.htpasswd.path"
    ));
    let e = errors("auth:\n  token: {realm: r}\n", &[]);
    assert!(
        has(&e, "auth.token.service") && has(&e, "auth.token.issuer") && has(&e, "rootcertbundle"),
        "{e:?}"
    );
    ok(
        "auth:\n  token: {realm: r, service: s, issuer: i, rootcertbundle: /c}\n",
        &[],
    );
    assert!(has(
        &errors("auth:\n  builtin: {tokenexpiration: 1s}\n", &[]),
        "tokenexpiration"
    ));
    assert!(has(
        &errors("auth:\n  builtin: {admin: {name: 'no spaces'}}\n", &[]),
        "auth.builtin.admin.name"
    ));
}

#[test]
fn malformed_file_names_the_line() {
    let e = load_str("http:\n  addr: :5000\n  tls: [unclosed\n", &[])
        .err()
        .unwrap();
    assert!(e.to_string().contains("line"), "{e}");
    assert!(load_str("- a list\n", &[]).is_err());
    assert!(has(
        &errors("http:\n  tls:\n    certificate: /c\n", &[]),
        "http.tls.key"
    ));
    let cgroup = |v: &str| {
        load_str(
            &format!("storage:\n  maintenance:\n    gc:\n      cgroup: {v}\n"),
            &[],
        )
        .unwrap()
    };
    assert!(has(&cgroup("wharf-background").report.errors, "absolute"));
    assert_eq!(
        cgroup("/sys/fs/cgroup/cpu/wharf")
            .config
            .storage
            .maintenance
            .gc
            .cgroup,
        Some(PathBuf::from("/sys/fs/cgroup/cpu/wharf"))
    );
}

#[test]
fn debug_address() {
    let (c, _) = ok(
        "http:\n  addr: 127.0.0.1:5000\n  debug:\n    addr: localhost:5001\n    prometheus:\n      enabled: true\n",
        &[],
    );
    assert_eq!(c.http.debug.addr.as_deref(), Some("localhost:5001"));
    assert!(c.http.debug.prometheus.enabled);
    assert_eq!(c.http.debug.prometheus.path, "/metrics");
    assert!(has(
        &errors(
            "http:\n  addr: :5000\n  debug:\n    addr: 127.0.0.1:5000\n",
            &[]
        ),
        "http.debug.addr"
    ));
}

#[test]
fn effective_config_round_trips() {
    let (c, _) = ok(
        "http:\n  addr: 127.0.0.1:1\n  timeouts: {bodyidle: 90s}\nstorage:\n  maintenance:\n    untagged: {enabled: true, age: 48h}\nauth:\n  builtin: {}\n",
        &[],
    );
    let yaml = c.to_yaml();
    assert!(yaml.contains("bodyidle: 90s"), "{yaml}");
    let (again, _) = ok(&yaml, &[]);
    assert_eq!(again.to_yaml(), yaml);
    assert_eq!(
        again.storage.untagged_age(),
        Some(Duration::from_secs(48 * 3600))
    );
}

#[test]
fn listen_addresses() {
    let a = listen_addrs(":5000").unwrap();
    assert_eq!(a[0].to_string(), "[::]:5000");
    assert_eq!(a[1].to_string(), "0.0.0.0:5000");
    assert_eq!(
        listen_addrs("127.0.0.1:1").unwrap()[0].to_string(),
        "127.0.0.1:1"
    );
    assert!(listen_addrs(":x").is_err());
}

#[test]
fn tls_pair_and_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let make = |name: &str| {
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            ])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(d.join(format!("{name}.key")))
            .arg("-out")
            .arg(d.join(format!("{name}.crt")))
            .output();
        st.is_ok_and(|o| o.status.success())
    };
    if !(make("a") && make("b")) {
        eprintln!("skipped: no openssl");
        return;
    }
    let mut c = Config::default();
    c.storage.filesystem.rootdirectory = d.join("data");
    c.http.tls.certificate = Some(d.join("a.crt"));
    c.http.tls.key = Some(d.join("b.key"));
    let mut r = Report::default();
    files::check(&c, &mut r);
    assert!(
        has(&r.errors, "do not form a usable pair"),
        "{:?}",
        r.errors
    );
    c.http.tls.key = Some(d.join("a.key"));
    let mut r = Report::default();
    files::check(&c, &mut r);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    c.http.tls.key = Some(d.join("missing.key"));
    c.auth.htpasswd = Some(HtpasswdAuth {
        path: Some(d.join("nope")),
        ..Default::default()
    });
    c.storage.filesystem.rootdirectory = d.join("a.crt/data");
    let mut r = Report::default();
    files::check(&c, &mut r);
    assert!(
        has(&r.errors, "missing.key does not exist"),
        "{:?}",
        r.errors
    );
    assert!(has(&r.errors, "auth.htpasswd.path"), "{:?}", r.errors);
    assert!(has(&r.errors, "not a directory"), "{:?}", r.errors);
    assert_eq!(r.errors.len(), 3, "{:?}", r.errors);
}
