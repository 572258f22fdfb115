//! Configuration: distribution's `config.yml`, overridden by `REGISTRY_*`
//! environment variables as distribution does, then by command-line flags.
//!
//! Supported keys behave as distribution documents them. Keys Wharf does not
//! support are reported: as a warning when ignoring them is harmless, as an
//! error when ignoring them would change what the registry stores or who may
//! use it (another storage driver, client certificates, `auth.silly`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

/// The effective configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
}

/// `auth`: at most one of `htpasswd`, `token` (as in distribution) and
/// `builtin` (Wharf's users, projects and token service).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No section: everyone may do everything (distribution's default).
    None,
    Htpasswd {
        realm: String,
        path: PathBuf,
    },
    Token {
        realm: String,
        service: String,
        issuer: String,
        rootcertbundle: Option<PathBuf>,
        jwks: Option<PathBuf>,
    },
    Builtin {
        /// `auth.builtin.service`: the `service` tokens are for (default `wharf`).
        service: String,
        /// `auth.builtin.issuer` (default `wharf`).
        issuer: String,
        /// `auth.builtin.tokenexpiration` (default 5m).
        #[serde(serialize_with = "ser_duration")]
        tokenexpiration: Duration,
        /// `auth.builtin.refreshexpiration` (default 720h).
        #[serde(serialize_with = "ser_duration")]
        refreshexpiration: Duration,
        /// `auth.builtin.admin.name`: the administrator made on first start.
        admin_name: String,
        /// `auth.builtin.admin.passwordfile`: its password (else
        /// `WHARF_ADMIN_PASSWORD`, else generated and printed once).
        admin_passwordfile: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// `auth.lockout.attempts` failed logins per address within
    /// `auth.lockout.window` before it gets 429s.
    pub lockout_attempts: u32,
    #[serde(serialize_with = "ser_duration")]
    pub lockout_window: Duration,
    /// `auth.audit.retention`: how long audit records are kept (default 2160h).
    #[serde(serialize_with = "ser_duration")]
    pub audit_retention: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    /// `http.addr`: where to listen. `:5000` means every address, IPv4 and IPv6.
    pub addr: String,
    /// `http.host`: base URL for `Location` headers.
    pub host: Option<String>,
    /// `http.tls.certificate` and `http.tls.key`: PEM files; both or neither.
    pub tls: Option<TlsConfig>,
    /// `http.draintimeout`: how long shutdown waits for requests in flight.
    #[serde(serialize_with = "ser_duration")]
    pub draintimeout: Duration,
    /// `http.headers`: extra headers on every response.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `http.http2.disabled`
    pub http2_disabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `http.tls.minimumtls`: `tls1.2` (default) or `tls1.3`.
    pub minimumtls: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageConfig {
    /// `storage.filesystem.rootdirectory`: the data directory. Blobs in
    /// distribution's layout, plus Wharf's database and upload area.
    pub rootdirectory: PathBuf,
    /// `storage.delete.enabled`. Wharf's default is `true` (distribution's is
    /// `false`): deleting images is a feature, not an accident.
    pub delete_enabled: bool,
    /// `storage.delete.referrers`: `delete` (default) removes a deleted
    /// manifest's referrers (signatures, SBOMs) with it; `keep` leaves them.
    pub delete_referrers: bool,
    pub uploadpurging: UploadPurging,
    pub gc: GcConfig,
    /// `storage.maintenance.retention.enabled` (default `true`) and
    /// `.interval` (default `1h`): how often projects' retention rules are
    /// applied. Only projects that have rules are touched.
    pub retention_interval: Option<Duration>,
}

/// `storage.maintenance.gc`: Wharf's online garbage collection.
#[derive(Debug, Clone, Serialize)]
pub struct GcConfig {
    /// Run on a schedule (default `true`).
    pub enabled: bool,
    /// How often (default `24h`; the first run is one interval after start).
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Blobs and links younger than this are kept whatever references them:
    /// the time a push may take between its blobs and its manifest (default `24h`).
    #[serde(serialize_with = "ser_duration")]
    pub grace: Duration,
    /// `storage.maintenance.untagged.enabled` (default `false`) and `.age`
    /// (default `168h`): collections also delete manifests untagged for
    /// longer than `age`, unless an index lists them or they are referrers of
    /// a manifest still there.
    pub untagged_age: Option<Duration>,
    /// `storage.maintenance.gc.cgroup`: a cgroup directory that the server's
    /// background threads (its collections' deletions and database writes)
    /// move into, made idle to the CPU controller; none by default. On
    /// cgroup v2 it must be a child of the server's own, delegated cgroup.
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadPurging {
    pub enabled: bool,
    #[serde(serialize_with = "ser_duration")]
    pub age: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    pub dryrun: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// `log.level`: error, warn, info or debug.
    pub level: String,
    /// `log.formatter`: text, json or logstash (same as json).
    pub formatter: String,
    /// `log.accesslog.disabled`
    pub accesslog_disabled: bool,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if d.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses a Go duration such as `168h`, `1h30m`, `10s` or `500ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| anyhow!("duration {s:?} lacks a unit (h, m, s, ms)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1e3,
            "us" | "µs" => n / 1e6,
            "ns" => n / 1e9,
            _ => bail!("invalid duration unit {unit:?} in {s:?}"),
        };
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

/// The keys Wharf reads. Anything else in the file is reported.
const SUPPORTED: &[&str] = &[
    "version",
    "log.level",
    "log.formatter",
    "log.fields",
    "log.accesslog.disabled",
    "http.addr",
    "http.net",
    "http.host",
    "http.secret",
    "http.relativeurls",
    "http.draintimeout",
    "http.headers",
    "http.http2.disabled",
    "http.tls.certificate",
    "http.tls.key",
    "http.tls.minimumtls",
    "storage.filesystem.rootdirectory",
    "storage.filesystem.maxthreads",
    "storage.delete.enabled",
    "storage.delete.referrers",
    "storage.maintenance.uploadpurging.enabled",
    "storage.maintenance.uploadpurging.age",
    "storage.maintenance.uploadpurging.interval",
    "storage.maintenance.uploadpurging.dryrun",
    "storage.maintenance.gc.enabled",
    "storage.maintenance.gc.interval",
    "storage.maintenance.gc.grace",
    "storage.maintenance.gc.cgroup",
    "storage.maintenance.untagged.enabled",
    "storage.maintenance.untagged.age",
    "storage.maintenance.retention.enabled",
    "storage.maintenance.retention.interval",
    "storage.cache.blobdescriptor",
    "storage.cache.blobdescriptorsize",
    "auth.htpasswd.realm",
    "auth.htpasswd.path",
    "auth.token.realm",
    "auth.token.service",
    "auth.token.issuer",
    "auth.token.rootcertbundle",
    "auth.token.jwks",
    "auth.token.autoredirect",
    "auth.builtin.service",
    "auth.builtin.issuer",
    "auth.builtin.tokenexpiration",
    "auth.builtin.refreshexpiration",
    "auth.builtin.admin.name",
    "auth.builtin.admin.passwordfile",
    "auth.lockout.attempts",
    "auth.lockout.window",
    "auth.audit.retention",
    "storage.redirect.disable",
];

/// Keys whose presence we must refuse: ignoring them would silently store data
/// elsewhere or open the registry to anyone.
const REFUSED: &[(&str, &str)] = &[
    (
        "auth.silly",
        "the silly authenticator accepts anyone; use auth.htpasswd, auth.token or auth.builtin",
    ),
    (
        "http.tls.clientcas",
        "client certificate authentication is not supported yet",
    ),
    (
        "http.tls.letsencrypt",
        "Let's Encrypt certificates are not supported; give http.tls.certificate and http.tls.key",
    ),
    ("storage.s3", "the S3 storage driver is not supported yet"),
    ("storage.azure", "the Azure storage driver is not supported"),
    ("storage.gcs", "the GCS storage driver is not supported"),
    ("storage.swift", "the Swift storage driver is not supported"),
    ("storage.oss", "the OSS storage driver is not supported"),
    (
        "storage.inmemory",
        "the in-memory storage driver is not supported",
    ),
    (
        "storage.maintenance.readonly",
        "read-only mode is not supported yet",
    ),
    ("proxy", "pull-through cache mode is not supported yet"),
];

/// The raw document after env overrides, plus what we found along the way.
pub struct Loaded {
    pub config: Config,
    /// Keys present but not supported and harmless to ignore.
    pub ignored: Vec<String>,
}

fn key_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Mapping(m) = v {
        for (k, v) in m {
            let k = match k {
                Value::String(s) => s.to_ascii_lowercase(),
                other => serde_yaml_ng::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            let path = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            if path == "http.headers" || path == "log.fields" {
                out.push(path);
                continue;
            }
            if matches!(v, Value::Mapping(_)) {
                key_paths(v, &path, out);
            } else {
                out.push(path);
            }
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        let m = cur.as_mapping()?;
        cur = m
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(part)))
            .map(|(_, v)| v)?;
    }
    Some(cur)
}

/// Sets `path` in the document, creating mappings as needed (env overrides).
fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let mut cur = doc;
    for (i, part) in path.iter().enumerate() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        let existing = m
            .keys()
            .find(|k| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(part)))
            .cloned();
        let key = existing.unwrap_or_else(|| Value::String(part.clone()));
        if i == path.len() - 1 {
            m.insert(key, value);
            return;
        }
        cur = m.entry(key).or_insert(Value::Null);
    }
}

fn as_string(v: &Value, key: &str) -> anyhow::Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => bail!("{key} must be a string"),
    }
}

fn as_bool(v: &Value, key: &str) -> anyhow::Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => bail!("{key} must be true or false"),
    }
}

fn get_string(doc: &Value, key: &str) -> anyhow::Result<Option<String>> {
    lookup(doc, key)
        .filter(|v| !v.is_null())
        .map(|v| as_string(v, key))
        .transpose()
}

fn get_bool(doc: &Value, key: &str) -> anyhow::Result<Option<bool>> {
    lookup(doc, key)
        .filter(|v| !v.is_null())
        .map(|v| as_bool(v, key))
        .transpose()
}

fn get_duration(doc: &Value, key: &str) -> anyhow::Result<Option<Duration>> {
    get_string(doc, key)?
        .map(|s| parse_duration(&s).with_context(|| key.to_string()))
        .transpose()
}

/// The default data directory: `/var/lib/wharf` for root, else under the
/// user's data directory.
pub fn default_data_dir() -> PathBuf {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            return PathBuf::from("/var/lib/wharf");
        }
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("wharf");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/wharf"),
        None => PathBuf::from("wharf-data"),
    }
}

/// Loads the configuration: the file (if any), then `REGISTRY_*` variables
/// from `env`, then defaults.
pub fn load(file: Option<&std::path::Path>, env: &[(String, String)]) -> anyhow::Result<Loaded> {
    let mut doc = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading configuration {}", path.display()))?;
            let v: Value =
                serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            match v {
                Value::Null => Value::Mapping(Mapping::new()),
                Value::Mapping(_) => v,
                _ => bail!(
                    "{}: the configuration must be a YAML mapping",
                    path.display()
                ),
            }
        }
        None => Value::Mapping(Mapping::new()),
    };

    for (k, v) in env {
        let Some(rest) = k.strip_prefix("REGISTRY_") else {
            continue;
        };
        if rest == "CONFIGURATION_PATH" {
            continue;
        }
        if rest == "STORAGE" {
            if !v.eq_ignore_ascii_case("filesystem") {
                bail!("REGISTRY_STORAGE={v}: only the filesystem storage driver is supported");
            }
            continue;
        }
        let path: Vec<String> = rest.split('_').map(|p| p.to_ascii_lowercase()).collect();
        // Values are YAML, as in distribution: "true" is a boolean, "5" a number.
        let value: Value = serde_yaml_ng::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        set_path(&mut doc, &path, value);
    }

    let mut keys = Vec::new();
    key_paths(&doc, "", &mut keys);
    for (refused, why) in REFUSED {
        if keys
            .iter()
            .any(|k| k == refused || k.starts_with(&format!("{refused}.")))
        {
            bail!("configuration key {refused}: {why}");
        }
    }
    let ignored: Vec<String> = keys
        .into_iter()
        .filter(|k| !SUPPORTED.contains(&k.as_str()))
        .collect();

    let tls = match (
        get_string(&doc, "http.tls.certificate")?,
        get_string(&doc, "http.tls.key")?,
    ) {
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => Some(TlsConfig {
            certificate: c.into(),
            key: k.into(),
            minimumtls: get_string(&doc, "http.tls.minimumtls")?.unwrap_or_else(|| "tls1.2".into()),
        }),
        (None, None) => None,
        (Some(c), Some(k)) if c.is_empty() && k.is_empty() => None,
        _ => bail!("http.tls.certificate and http.tls.key must be given together"),
    };
    if let Some(t) = &tls
        && !matches!(t.minimumtls.as_str(), "tls1.2" | "tls1.3")
    {
        bail!(
            "http.tls.minimumtls must be tls1.2 or tls1.3, not {:?}",
            t.minimumtls
        );
    }
    if let Some(net) = get_string(&doc, "http.net")?
        && net != "tcp"
    {
        bail!("http.net {net:?}: only tcp is supported");
    }
    let mut headers = BTreeMap::new();
    if let Some(Value::Mapping(m)) = lookup(&doc, "http.headers") {
        for (k, v) in m {
            let name = as_string(k, "http.headers")?;
            let values = match v {
                Value::Sequence(s) => s
                    .iter()
                    .map(|x| as_string(x, "http.headers"))
                    .collect::<Result<Vec<_>, _>>()?,
                other => vec![as_string(other, "http.headers")?],
            };
            headers.insert(name, values);
        }
    }
    let level = get_string(&doc, "log.level")?
        .unwrap_or_else(|| "info".into())
        .to_ascii_lowercase();
    let level = match level.as_str() {
        "panic" | "fatal" | "error" => "error".to_owned(),
        "warn" | "warning" => "warn".to_owned(),
        "info" | "debug" | "trace" => level,
        other => bail!("log.level {other:?}: use error, warn, info or debug"),
    };
    let formatter = get_string(&doc, "log.formatter")?.unwrap_or_else(|| "text".into());
    if !matches!(formatter.as_str(), "text" | "json" | "logstash") {
        bail!("log.formatter {formatter:?}: use text, json or logstash");
    }

    let auth = load_auth(&doc)?;
    let config = Config {
        auth,
        http: HttpConfig {
            addr: get_string(&doc, "http.addr")?.unwrap_or_else(|| ":5000".into()),
            host: get_string(&doc, "http.host")?.filter(|h| !h.is_empty()),
            tls,
            draintimeout: get_duration(&doc, "http.draintimeout")?
                .unwrap_or(Duration::from_secs(30)),
            headers,
            http2_disabled: get_bool(&doc, "http.http2.disabled")?.unwrap_or(false),
        },
        storage: StorageConfig {
            rootdirectory: get_string(&doc, "storage.filesystem.rootdirectory")?
                .map(PathBuf::from)
                .unwrap_or_else(default_data_dir),
            delete_enabled: get_bool(&doc, "storage.delete.enabled")?.unwrap_or(true),
            delete_referrers: match get_string(&doc, "storage.delete.referrers")?.as_deref() {
                None | Some("delete") => true,
                Some("keep") => false,
                Some(v) => bail!("storage.delete.referrers {v:?}: use delete or keep"),
            },
            uploadpurging: UploadPurging {
                enabled: get_bool(&doc, "storage.maintenance.uploadpurging.enabled")?
                    .unwrap_or(true),
                age: get_duration(&doc, "storage.maintenance.uploadpurging.age")?
                    .unwrap_or(Duration::from_secs(168 * 3600)),
                interval: get_duration(&doc, "storage.maintenance.uploadpurging.interval")?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
                dryrun: get_bool(&doc, "storage.maintenance.uploadpurging.dryrun")?
                    .unwrap_or(false),
            },
            gc: GcConfig {
                enabled: get_bool(&doc, "storage.maintenance.gc.enabled")?.unwrap_or(true),
                interval: get_duration(&doc, "storage.maintenance.gc.interval")?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
                grace: get_duration(&doc, "storage.maintenance.gc.grace")?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
                cgroup: get_string(&doc, "storage.maintenance.gc.cgroup")?.map(PathBuf::from),
                untagged_age: if get_bool(&doc, "storage.maintenance.untagged.enabled")?
                    .unwrap_or(false)
                {
                    Some(
                        get_duration(&doc, "storage.maintenance.untagged.age")?
                            .unwrap_or(Duration::from_secs(168 * 3600)),
                    )
                } else {
                    None
                },
            },
            retention_interval: if get_bool(&doc, "storage.maintenance.retention.enabled")?
                .unwrap_or(true)
            {
                Some(
                    get_duration(&doc, "storage.maintenance.retention.interval")?
                        .unwrap_or(Duration::from_secs(3600)),
                )
            } else {
                None
            },
        },
        log: LogConfig {
            level,
            formatter,
            accesslog_disabled: get_bool(&doc, "log.accesslog.disabled")?.unwrap_or(false),
        },
    };
    if config.storage.gc.enabled && config.storage.gc.interval.is_zero() {
        bail!("storage.maintenance.gc.interval must be more than 0");
    }
    if let Some(p) = &config.storage.gc.cgroup
        && !p.is_absolute()
    {
        bail!(
            "storage.maintenance.gc.cgroup {}: use an absolute path",
            p.display()
        );
    }
    if config.storage.uploadpurging.enabled && config.storage.uploadpurging.interval.is_zero() {
        bail!("storage.maintenance.uploadpurging.interval must be more than 0");
    }
    Ok(Loaded { config, ignored })
}

fn load_auth(doc: &Value) -> anyhow::Result<AuthConfig> {
    let section = |k: &str| lookup(doc, &format!("auth.{k}")).is_some();
    let present: Vec<&str> = ["htpasswd", "token", "builtin"]
        .into_iter()
        .filter(|k| section(k))
        .collect();
    if present.len() > 1 {
        bail!(
            "auth: configure one of htpasswd, token and builtin, not {}",
            present.join(" and ")
        );
    }
    let need = |key: &str| -> anyhow::Result<String> {
        get_string(doc, key)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("{key} is required"))
    };
    let mode = match present.first() {
        None => AuthMode::None,
        Some(&"htpasswd") => AuthMode::Htpasswd {
            realm: get_string(doc, "auth.htpasswd.realm")?
                .unwrap_or_else(|| "Registry Realm".into()),
            path: need("auth.htpasswd.path")?.into(),
        },
        Some(&"token") => {
            let rootcertbundle = get_string(doc, "auth.token.rootcertbundle")?.map(PathBuf::from);
            let jwks = get_string(doc, "auth.token.jwks")?.map(PathBuf::from);
            if rootcertbundle.is_none() && jwks.is_none() {
                bail!("auth.token needs rootcertbundle or jwks to verify tokens with");
            }
            AuthMode::Token {
                realm: need("auth.token.realm")?,
                service: need("auth.token.service")?,
                issuer: need("auth.token.issuer")?,
                rootcertbundle,
                jwks,
            }
        }
        Some(_) => AuthMode::Builtin {
            service: get_string(doc, "auth.builtin.service")?.unwrap_or_else(|| "wharf".into()),
            issuer: get_string(doc, "auth.builtin.issuer")?.unwrap_or_else(|| "wharf".into()),
            tokenexpiration: get_duration(doc, "auth.builtin.tokenexpiration")?
                .unwrap_or(Duration::from_secs(300)),
            refreshexpiration: get_duration(doc, "auth.builtin.refreshexpiration")?
                .unwrap_or(Duration::from_secs(720 * 3600)),
            admin_name: get_string(doc, "auth.builtin.admin.name")?
                .unwrap_or_else(|| "admin".into()),
            admin_passwordfile: get_string(doc, "auth.builtin.admin.passwordfile")?
                .map(PathBuf::from),
        },
    };
    if let AuthMode::Builtin {
        tokenexpiration, ..
    } = &mode
        && (tokenexpiration.as_secs() < 10 || tokenexpiration.as_secs() > 24 * 3600)
    {
        bail!("auth.builtin.tokenexpiration must be between 10s and 24h");
    }
    let attempts = match lookup(doc, "auth.lockout.attempts") {
        None => 10,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("auth.lockout.attempts must be a positive number"))?,
    };
    Ok(AuthConfig {
        mode,
        lockout_attempts: attempts,
        lockout_window: get_duration(doc, "auth.lockout.window")?
            .unwrap_or(Duration::from_secs(300)),
        audit_retention: get_duration(doc, "auth.audit.retention")?
            .unwrap_or(Duration::from_secs(2160 * 3600)),
    })
}

/// Resolves `http.addr` into the addresses to bind. `:5000` means every
/// address: IPv6 `[::]` (which also takes IPv4 on Linux), else `0.0.0.0`.
pub fn listen_addrs(addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .with_context(|| format!("http.addr {addr:?}"))?;
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("http.addr {addr:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("http.addr {addr:?} resolves to no address");
    }
    Ok(addrs)
}

impl Config {
    /// The configuration as YAML, in distribution's key names, secrets left out.
    pub fn to_yaml(&self) -> String {
        let tls = self.http.tls.as_ref().map(|t| {
            serde_json::json!({
                "certificate": t.certificate, "key": t.key, "minimumtls": t.minimumtls
            })
        });
        let v = serde_json::json!({
            "version": "0.1",
            "log": {
                "level": self.log.level,
                "formatter": self.log.formatter,
                "accesslog": {"disabled": self.log.accesslog_disabled},
            },
            "http": {
                "addr": self.http.addr,
                "host": self.http.host,
                "tls": tls,
                "draintimeout": format_duration(self.http.draintimeout),
                "headers": self.http.headers,
                "http2": {"disabled": self.http.http2_disabled},
            },
            "auth": self.auth_yaml(),
            "storage": {
                "filesystem": {"rootdirectory": self.storage.rootdirectory},
                "delete": {"enabled": self.storage.delete_enabled,
                           "referrers": if self.storage.delete_referrers { "delete" } else { "keep" }},
                "maintenance": {"uploadpurging": {
                    "enabled": self.storage.uploadpurging.enabled,
                    "age": format_duration(self.storage.uploadpurging.age),
                    "interval": format_duration(self.storage.uploadpurging.interval),
                    "dryrun": self.storage.uploadpurging.dryrun,
                },
                "gc": {
                    "enabled": self.storage.gc.enabled,
                    "interval": format_duration(self.storage.gc.interval),
                    "grace": format_duration(self.storage.gc.grace),
                    "cgroup": self.storage.gc.cgroup,
                },
                "untagged": {
                    "enabled": self.storage.gc.untagged_age.is_some(),
                    "age": self.storage.gc.untagged_age.map(format_duration),
                },
                "retention": {
                    "enabled": self.storage.retention_interval.is_some(),
                    "interval": self.storage.retention_interval.map(format_duration),
                }},
            },
        });
        serde_yaml_ng::to_string(&v).unwrap_or_default()
    }

    fn auth_yaml(&self) -> serde_json::Value {
        let a = &self.auth;
        let mut v = match &a.mode {
            AuthMode::None => serde_json::json!({}),
            AuthMode::Htpasswd { realm, path } => {
                serde_json::json!({"htpasswd": {"realm": realm, "path": path}})
            }
            AuthMode::Token {
                realm,
                service,
                issuer,
                rootcertbundle,
                jwks,
            } => serde_json::json!({
                "token": {"realm": realm, "service": service, "issuer": issuer,
                          "rootcertbundle": rootcertbundle, "jwks": jwks}
            }),
            AuthMode::Builtin {
                service,
                issuer,
                tokenexpiration,
                refreshexpiration,
                admin_name,
                admin_passwordfile,
            } => serde_json::json!({
                "builtin": {"service": service, "issuer": issuer,
                    "tokenexpiration": format_duration(*tokenexpiration),
                    "refreshexpiration": format_duration(*refreshexpiration),
                    "admin": {"name": admin_name, "passwordfile": admin_passwordfile}}
            }),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "lockout".into(),
                serde_json::json!({
                "attempts": a.lockout_attempts, "window": format_duration(a.lockout_window)}),
            );
            o.insert(
                "audit".into(),
                serde_json::json!({
                "retention": format_duration(a.audit_retention)}),
            );
        }
        v
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("168h").unwrap(),
            Duration::from_secs(168 * 3600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn distribution_config() {
        let l = load_str(
            "version: 0.1\nlog:\n  level: debug\n  formatter: json\nstorage:\n  cache: {blobdescriptor: inmemory}\n  filesystem: {rootdirectory: /srv/reg}\n  delete: {enabled: false}\n  maintenance:\n    uploadpurging: {enabled: true, age: 2h, interval: 10m, dryrun: false}\nhttp:\n  addr: 127.0.0.1:5056\n  host: https://r.example.com\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
            &[],
        )
        .unwrap();
        let c = l.config;
        assert!(l.ignored.is_empty(), "{:?}", l.ignored);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.formatter, "json");
        assert_eq!(c.storage.rootdirectory, PathBuf::from("/srv/reg"));
        assert!(!c.storage.delete_enabled);
        assert_eq!(c.storage.uploadpurging.age, Duration::from_secs(7200));
        assert_eq!(c.http.addr, "127.0.0.1:5056");
        assert_eq!(c.http.host.as_deref(), Some("https://r.example.com"));
        assert_eq!(c.http.headers["X-Content-Type-Options"], vec!["nosniff"]);
    }

    #[test]
    fn env_overrides_file() {
        let l = load_str(
            "http:\n  addr: :5000\nstorage:\n  filesystem:\n    rootdirectory: /a\n",
            &[
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:7000"),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/b"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "false"),
                ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
                ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
                ("REGISTRY_CONFIGURATION_PATH", "/ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(l.config.http.addr, "127.0.0.1:7000");
        assert_eq!(l.config.storage.rootdirectory, PathBuf::from("/b"));
        assert!(!l.config.storage.delete_enabled);
        let tls = l.config.http.tls.unwrap();
        assert_eq!(tls.certificate, PathBuf::from("/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
    }

    #[test]
    fn unsupported_keys_are_reported_or_refused() {
        let l = load_str(
            "notifications:\n  endpoints: []\nhttp:\n  prefix: /x\n",
            &[],
        )
        .unwrap();
        assert_eq!(l.ignored, vec!["notifications.endpoints", "http.prefix"]);
        let e = load_str("auth:\n  silly: {realm: r, service: s}\n", &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("auth.silly"), "{e}");
        let e = load_str("storage:\n  s3: {bucket: b}\n", &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("storage.s3"), "{e}");
        assert!(load_str("", &[("REGISTRY_STORAGE", "s3")]).is_err());
    }

    #[test]
    fn auth_sections() {
        let l = load_str("", &[("REGISTRY_AUTH_HTPASSWD_PATH", "/x")]).unwrap();
        assert!(matches!(
            l.config.auth.mode,
            AuthMode::Htpasswd { ref path, ref realm } if path == &PathBuf::from("/x") && realm == "Registry Realm"
        ));
        let l = load_str("auth:\n  builtin: {}\n", &[]).unwrap();
        assert!(matches!(
            l.config.auth.mode,
            AuthMode::Builtin { ref service, tokenexpiration, .. } if service == "wharf" && tokenexpiration.as_secs() == 300
        ));
        assert_eq!(l.config.auth.lockout_attempts, 10);
        let e = load_str("auth:\n  builtin: {}\n  htpasswd: {path: /p}\n", &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("one of"), "{e}");
        let e = load_str("auth:\n  htpasswd: {realm: r}\n", &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("auth.htpasswd.path"), "{e}");
        let e = load_str("auth:\n  token: {realm: r, service: s, issuer: i}\n", &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("rootcertbundle"), "{e}");
        assert!(
            load_str(
                "auth:\n  token: {realm: r, service: s, issuer: i, rootcertbundle: /c}\n",
                &[]
            )
            .is_ok()
        );
        assert!(load_str("auth:\n  builtin: {tokenexpiration: 1s}\n", &[]).is_err());
        assert!(load_str("auth:\n  lockout: {attempts: 0}\n", &[]).is_err());
    }

    #[test]
    fn malformed_file_names_the_line() {
        let e = load_str("http:\n  addr: :5000\n  tls: [unclosed\n", &[])
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("line"), "{msg}");
        assert!(load_str("- a list\n", &[]).is_err());
        assert!(load_str("log:\n  level: loud\n", &[]).is_err());
        assert!(load_str("http:\n  tls:\n    certificate: /c\n", &[]).is_err());
        assert!(load_str("storage:\n  delete:\n    enabled: maybe\n", &[]).is_err());
        let cgroup = |v: &str| {
            load_str(
                &format!("storage:\n  maintenance:\n    gc:\n      cgroup: {v}\n"),
                &[],
            )
        };
        let e = cgroup("wharf-background").err().unwrap().to_string();
        assert!(e.contains("absolute"), "{e}");
        assert_eq!(
            cgroup("/sys/fs/cgroup/cpu/wharf")
                .unwrap()
                .config
                .storage
                .gc
                .cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/cpu/wharf"))
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
}
