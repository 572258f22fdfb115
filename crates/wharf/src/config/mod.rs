//! Configuration: distribution's `config.yml`, overridden by `REGISTRY_*`
//! environment variables as distribution does, then by command-line flags.
//!
//! One `serde` struct per section, named as in distribution's file, each
//! field with its default and a doc comment that the README's reference
//! repeats. Loading never stops at the first problem: [`load`] deserializes
//! the whole document, and every invalid value, unknown key and key of
//! distribution's that Wharf cannot honour ends up in one [`Report`], so
//! `wharf config check` and `wharf serve` list them all at once. Whatever
//! the report calls an error, `wharf serve` refuses ([`Loaded::into_config`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml_ng::{Mapping, Value};

pub mod distribution;
pub mod duration;
pub mod files;

pub use duration::parse as parse_duration;

/// The effective configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub log: Log,
    pub http: Http,
    pub storage: Storage,
    pub auth: Auth,
}

// ---- log ---------------------------------------------------------------

/// `log`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Log {
    /// `log.level`: `error`, `warn`, `info` (default) or `debug`.
    pub level: LogLevel,
    /// `log.formatter`: `text` (default), `json` or `logstash` (JSON).
    pub formatter: LogFormat,
    pub accesslog: AccessLog,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = scalar_string(d)?;
        Ok(match s.to_ascii_lowercase().as_str() {
            "panic" | "fatal" | "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "{s:?} is no log level: use error, warn, info or debug"
                )));
            }
        })
    }
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
    Logstash,
}

/// `log.accesslog`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AccessLog {
    /// `log.accesslog.disabled`: no per-request access log lines.
    pub disabled: bool,
}

// ---- http --------------------------------------------------------------

/// `http`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Http {
    /// `http.addr`: where to listen; `:5000` (default) means every address,
    /// IPv4 and IPv6.
    #[serde(deserialize_with = "scalar_string")]
    pub addr: String,
    /// `http.net`: only `tcp`.
    #[serde(deserialize_with = "scalar_string")]
    pub net: String,
    /// `http.host`: the base URL for `Location` headers, e.g.
    /// `https://registry.example.com`; by default the request's `Host`.
    #[serde(deserialize_with = "opt_string")]
    pub host: Option<String>,
    pub tls: Tls,
    /// `http.draintimeout`: on SIGTERM or SIGINT, how long requests in
    /// flight may take to finish (default 30s).
    #[serde(with = "duration")]
    pub draintimeout: Duration,
    /// `http.headers`: extra headers on every response (and on answers to
    /// CORS preflights).
    pub headers: BTreeMap<String, OneOrMany>,
    pub http2: Http2,
    pub debug: Debug,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// `http.trustedproxies`: addresses or CIDRs of reverse proxies whose
    /// `X-Forwarded-For` / `Forwarded` headers name the client (for login
    /// throttling, upload limits, the audit log and the access log).
    #[serde(deserialize_with = "networks")]
    pub trustedproxies: Vec<ipnet::IpNet>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            addr: ":5000".into(),
            net: "tcp".into(),
            host: None,
            tls: Tls::default(),
            draintimeout: Duration::from_secs(30),
            headers: BTreeMap::new(),
            http2: Http2::default(),
            debug: Debug::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            trustedproxies: Vec::new(),
        }
    }
}

/// A header value or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `http.tls`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Tls {
    /// `http.tls.certificate`: PEM certificate chain; with `key`, serves HTTPS.
    #[serde(deserialize_with = "opt_path")]
    pub certificate: Option<PathBuf>,
    /// `http.tls.key`: PEM private key.
    #[serde(deserialize_with = "opt_path")]
    pub key: Option<PathBuf>,
    /// `http.tls.minimumtls`: `tls1.2` (default) or `tls1.3`.
    pub minimumtls: TlsVersion,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "tls1.2")]
    Tls12,
    #[serde(rename = "tls1.3")]
    Tls13,
}

/// The certificate and key when both are set.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub minimum: TlsVersion,
}

impl Tls {
    pub fn files(&self) -> Option<TlsFiles> {
        match (&self.certificate, &self.key) {
            (Some(c), Some(k)) => Some(TlsFiles {
                certificate: c.clone(),
                key: k.clone(),
                minimum: self.minimumtls,
            }),
            _ => None,
        }
    }
}

/// `http.http2`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Http2 {
    /// `http.http2.disabled`: serve HTTP/1.1 only, also over TLS.
    pub disabled: bool,
}

/// `http.debug`: a second listener for operators.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Debug {
    /// `http.debug.addr`: where the debug server listens, e.g.
    /// `localhost:5001`. With it, `/metrics` moves there (when
    /// `prometheus.enabled`) and `/healthz` is served there too.
    #[serde(deserialize_with = "opt_string")]
    pub addr: Option<String>,
    pub prometheus: Prometheus,
}

/// `http.debug.prometheus`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Prometheus {
    /// `http.debug.prometheus.enabled`: serve metrics on the debug address
    /// (and no longer on the registry's).
    pub enabled: bool,
    /// `http.debug.prometheus.path` (default `/metrics`).
    #[serde(deserialize_with = "scalar_string")]
    pub path: String,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            enabled: false,
            path: "/metrics".into(),
        }
    }
}

/// `http.timeouts` (Wharf's): how long a client may keep a connection
/// without making progress.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Timeouts {
    /// `http.timeouts.header`: to send a request's headers, from the first
    /// byte or from the end of the previous request (default 30s).
    #[serde(with = "duration")]
    pub header: Duration,
    /// `http.timeouts.bodyidle`: the longest pause in a request body
    /// (default 60s); the upload keeps what arrived and can be resumed.
    #[serde(with = "duration")]
    pub bodyidle: Duration,
    /// `http.timeouts.writeidle`: the longest time a client may take no
    /// response bytes (default 60s).
    #[serde(with = "duration")]
    pub writeidle: Duration,
    /// `http.timeouts.idle`: a connection with no request in flight and no
    /// traffic is closed after this (default 120s).
    #[serde(with = "duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(30),
            bodyidle: Duration::from_secs(60),
            writeidle: Duration::from_secs(60),
            idle: Duration::from_secs(120),
        }
    }
}

/// `http.limits` (Wharf's): what one client, or all together, may hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Limits {
    /// `http.limits.uploads`: upload requests (PATCH, PUT or POST with a
    /// body) in progress at once; past it, `429 TOOMANYREQUESTS` (default 4096).
    pub uploads: usize,
    /// `http.limits.uploadsperclient`: the same, per client address
    /// (default 256).
    pub uploadsperclient: usize,
    /// `http.limits.connectionsperclient`: open connections per client
    /// address; trusted proxies are exempt (default 4096, 0: no limit).
    pub connectionsperclient: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            uploads: 4096,
            uploadsperclient: 256,
            connectionsperclient: 4096,
        }
    }
}

// ---- storage -----------------------------------------------------------

/// `storage`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Storage {
    pub filesystem: Filesystem,
    pub delete: Delete,
    pub maintenance: Maintenance,
    pub manifests: Manifests,
    pub import: Import,
}

/// `storage.filesystem`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Filesystem {
    /// `storage.filesystem.rootdirectory`: the data directory (blobs in
    /// distribution's layout, Wharf's database, uploads in progress).
    #[serde(deserialize_with = "path")]
    pub rootdirectory: PathBuf,
}

impl Default for Filesystem {
    fn default() -> Self {
        Filesystem {
            rootdirectory: default_data_dir(),
        }
    }
}

/// `storage.delete`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Delete {
    /// `storage.delete.enabled` (default `true`; distribution's is `false`).
    pub enabled: bool,
    /// `storage.delete.referrers`: `delete` (default) removes a deleted
    /// manifest's referrers with it; `keep` leaves them.
    pub referrers: Referrers,
}

impl Default for Delete {
    fn default() -> Self {
        Delete {
            enabled: true,
            referrers: Referrers::Delete,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Referrers {
    #[default]
    Delete,
    Keep,
}

/// `storage.maintenance`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Maintenance {
    pub uploadpurging: UploadPurging,
    pub readonly: ReadOnly,
    pub gc: Gc,
    pub untagged: Untagged,
    pub retention: Retention,
}

/// `storage.maintenance.uploadpurging`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct UploadPurging {
    /// Remove upload sessions idle for longer than `age` (default `true`).
    pub enabled: bool,
    /// Default `168h`.
    #[serde(with = "duration")]
    pub age: Duration,
    /// How often to look (default `24h`).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Log what would be removed, remove nothing.
    pub dryrun: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        UploadPurging {
            enabled: true,
            age: Duration::from_secs(168 * 3600),
            interval: Duration::from_secs(24 * 3600),
            dryrun: false,
        }
    }
}

/// `storage.maintenance.readonly`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ReadOnly {
    /// Not supported: `true` is refused.
    pub enabled: bool,
}

/// `storage.maintenance.gc`: online garbage collection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Gc {
    /// Collect on a schedule (default `true`).
    pub enabled: bool,
    /// How often (default `24h`; the first run one interval after start).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Blobs and links younger than this are kept whatever references them
    /// (default `24h`).
    #[serde(with = "duration")]
    pub grace: Duration,
    /// A cgroup directory for the server's background threads, made idle.
    #[serde(deserialize_with = "opt_path")]
    pub cgroup: Option<PathBuf>,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            enabled: true,
            interval: Duration::from_secs(24 * 3600),
            grace: Duration::from_secs(24 * 3600),
            cgroup: None,
        }
    }
}

/// `storage.maintenance.untagged`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Untagged {
    /// Collections also delete manifests untagged for longer than `age`
    /// (default `false`).
    pub enabled: bool,
    /// Default `168h`.
    #[serde(with = "duration")]
    pub age: Duration,
}

impl Default for Untagged {
    fn default() -> Self {
        Untagged {
            enabled: false,
            age: Duration::from_secs(168 * 3600),
        }
    }
}

/// `storage.maintenance.retention`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Retention {
    /// Apply projects' retention rules on a schedule (default `true`).
    pub enabled: bool,
    /// Default `1h`.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            enabled: true,
            interval: Duration::from_secs(3600),
        }
    }
}

/// `storage.manifests`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Manifests {
    /// `storage.manifests.sparse`: accept manifests whose blobs, or index
    /// children, are not (yet) in the repository, e.g. an index pushed with
    /// only some of its platforms (default `false`).
    pub sparse: bool,
}

/// `storage.import`: adopting a distribution root.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Import {
    /// `storage.import.auto`: when `wharf serve` finds repositories of
    /// distribution's in its data directory that are not imported yet, it
    /// imports them in the background (default `true`).
    pub auto: bool,
}

impl Default for Import {
    fn default() -> Self {
        Import { auto: true }
    }
}

impl Storage {
    pub fn root(&self) -> &Path {
        &self.filesystem.rootdirectory
    }

    pub fn untagged_age(&self) -> Option<Duration> {
        self.maintenance
            .untagged
            .enabled
            .then_some(self.maintenance.untagged.age)
    }

    pub fn retention_interval(&self) -> Option<Duration> {
        self.maintenance
            .retention
            .enabled
            .then_some(self.maintenance.retention.interval)
    }
}

// ---- auth --------------------------------------------------------------

/// `auth`: at most one of `htpasswd`, `token` (as in distribution) and
/// `builtin` (Wharf's users, projects and token service).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Auth {
    #[serde(deserialize_with = "section", skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdAuth>,
    #[serde(deserialize_with = "section", skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
    #[serde(deserialize_with = "section", skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinAuth>,
    pub lockout: Lockout,
    pub audit: Audit,
}

/// `auth.htpasswd`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HtpasswdAuth {
    /// Default `Registry Realm`.
    #[serde(deserialize_with = "scalar_string")]
    pub realm: String,
    /// Required: the htpasswd file (bcrypt entries); re-read when it changes.
    #[serde(deserialize_with = "opt_path")]
    pub path: Option<PathBuf>,
}

impl Default for HtpasswdAuth {
    fn default() -> Self {
        HtpasswdAuth {
            realm: "Registry Realm".into(),
            path: None,
        }
    }
}

/// `auth.token`: tokens from an external issuer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TokenAuth {
    #[serde(deserialize_with = "scalar_string")]
    pub realm: String,
    #[serde(deserialize_with = "scalar_string")]
    pub service: String,
    #[serde(deserialize_with = "scalar_string")]
    pub issuer: String,
    /// PEM certificates whose keys sign tokens.
    #[serde(deserialize_with = "opt_path")]
    pub rootcertbundle: Option<PathBuf>,
    /// A JWKS file with the keys that sign tokens.
    #[serde(deserialize_with = "opt_path")]
    pub jwks: Option<PathBuf>,
}

/// `auth.builtin`: Wharf's users, projects and token service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BuiltinAuth {
    /// The token `service` (audience), default `wharf`.
    #[serde(deserialize_with = "scalar_string")]
    pub service: String,
    /// The token `iss`, default `wharf`.
    #[serde(deserialize_with = "scalar_string")]
    pub issuer: String,
    /// Lifetime of access tokens (default `5m`, 10s to 24h).
    #[serde(with = "duration")]
    pub tokenexpiration: Duration,
    /// Lifetime of refresh tokens (default `720h`).
    #[serde(with = "duration")]
    pub refreshexpiration: Duration,
    pub admin: Admin,
}

impl Default for BuiltinAuth {
    fn default() -> Self {
        BuiltinAuth {
            service: "wharf".into(),
            issuer: "wharf".into(),
            tokenexpiration: Duration::from_secs(300),
            refreshexpiration: Duration::from_secs(720 * 3600),
            admin: Admin::default(),
        }
    }
}

/// `auth.builtin.admin`: the administrator created when none exists.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Admin {
    /// Default `admin`.
    #[serde(deserialize_with = "scalar_string")]
    pub name: String,
    /// Its password, from this file (else `WHARF_ADMIN_PASSWORD`, else
    /// generated and printed once).
    #[serde(deserialize_with = "opt_path")]
    pub passwordfile: Option<PathBuf>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            name: "admin".into(),
            passwordfile: None,
        }
    }
}

/// `auth.lockout`: throttling of failed logins.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Lockout {
    /// Failed logins of one account from one client address before each
    /// further failure blocks that pair (only) for a doubling delay: 1 s,
    /// 2 s, 4 s, … (default 10).
    pub attempts: u32,
    /// Failures are forgotten this long after the last one or its block
    /// (default `5m`).
    #[serde(with = "duration")]
    pub window: Duration,
    /// Failed logins under user names that do not exist, per client
    /// address within `window` (default 30).
    pub unknownattempts: u32,
    /// The first block, after `attempts` failures (default `1s`).
    #[serde(with = "duration")]
    pub delay: Duration,
    /// Each failure past the limit doubles the wait, up to this (default `1h`).
    #[serde(with = "duration")]
    pub maxdelay: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            attempts: 10,
            window: Duration::from_secs(300),
            unknownattempts: 30,
            delay: Duration::from_secs(1),
            maxdelay: Duration::from_secs(3600),
        }
    }
}

/// `auth.audit`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Audit {
    /// How long audit records are kept (default `2160h`).
    #[serde(with = "duration")]
    pub retention: Duration,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            retention: Duration::from_secs(2160 * 3600),
        }
    }
}

/// Which access control is configured.
#[derive(Debug, Clone, Copy)]
pub enum AuthMode<'a> {
    /// No section: everyone may do everything (distribution's default).
    None,
    Htpasswd(&'a HtpasswdAuth),
    Token(&'a TokenAuth),
    Builtin(&'a BuiltinAuth),
}

impl Auth {
    /// The mode; [`load`] has made sure at most one section is present.
    pub fn mode(&self) -> AuthMode<'_> {
        if let Some(b) = &self.builtin {
            AuthMode::Builtin(b)
        } else if let Some(t) = &self.token {
            AuthMode::Token(t)
        } else if let Some(h) = &self.htpasswd {
            AuthMode::Htpasswd(h)
        } else {
            AuthMode::None
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.mode(), AuthMode::None)
    }
}

// ---- field helpers -------------------------------------------------------

/// A scalar as a string: YAML (and environment variables, parsed as YAML)
/// make numbers and booleans of values meant as text.
fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(serde::de::Error::custom("expected a string")),
    }
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(scalar_string(d)?).filter(|s| !s.is_empty()))
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(opt_string(d)?.map(PathBuf::from))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    opt_path(d)?.ok_or_else(|| serde::de::Error::custom("expected a path"))
}

/// An optional section: present (even empty, `builtin:` or `builtin: {}`)
/// means on.
fn section<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// CIDRs or addresses, as a list or one comma-separated string.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let items: Vec<String> = match Value::deserialize(d)? {
        Value::Null => Vec::new(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Sequence(v) => v
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err(serde::de::Error::custom("expected an address or CIDR")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(serde::de::Error::custom("expected a list of CIDRs")),
    };
    items
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is no address or CIDR")))
        })
        .collect()
}

// ---- loading -------------------------------------------------------------

/// What loading found: errors stop `wharf serve`; warnings do not.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn error(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{key}: {msg}"));
    }

    pub fn warn(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{key}: {msg}"));
    }

    /// `Err` listing every error, if there is one.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let n = self.errors.len();
        let mut msg = format!(
            "the configuration has {n} error{}:",
            if n == 1 { "" } else { "s" }
        );
        for e in &self.errors {
            msg.push_str("\n  - ");
            msg.push_str(e);
        }
        Err(anyhow!(msg))
    }
}

/// A loaded configuration with what was found wrong with it.
pub struct Loaded {
    pub config: Config,
    pub report: Report,
}

impl Loaded {
    /// The configuration, unless the report holds errors (all of them are
    /// in the message).
    pub fn into_config(self) -> anyhow::Result<(Config, Vec<String>)> {
        let warnings = self.report.warnings.clone();
        self.report.into_result()?;
        Ok((self.config, warnings))
    }
}

/// Keys whose children are data (header names, log fields), not settings:
/// their case is kept.
const DATA_MAPS: &[&str] = &["http.headers", "log.fields"];

/// Lower-cases every key (distribution's keys are case-insensitive), except
/// inside data maps.
fn normalise(v: &mut Value, path: &str) {
    if DATA_MAPS.contains(&path) {
        return;
    }
    if let Value::Mapping(m) = v {
        let old = std::mem::take(m);
        for (k, mut child) in old {
            let k = match k {
                Value::String(s) => Value::String(s.to_ascii_lowercase()),
                other => other,
            };
            let child_path = match &k {
                Value::String(s) if path.is_empty() => s.clone(),
                Value::String(s) => format!("{path}.{s}"),
                _ => format!("{path}.?"),
            };
            normalise(&mut child, &child_path);
            m.insert(k, child);
        }
    } else if let Value::Sequence(s) = v {
        for child in s {
            normalise(child, &format!("{path}.?"));
        }
    }
}

/// Sets `path` in the document, creating mappings as needed (env overrides).
fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let mut cur = doc;
    for (i, part) in path.iter().enumerate() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else { return };
        let key = Value::String(part.clone());
        if i == path.len() - 1 {
            m.insert(key, value);
            return;
        }
        cur = m.entry(key).or_insert(Value::Null);
    }
}

/// Removes the value at a deserializer's error path, so that the next pass
/// takes the default there. `false` if the path leads nowhere.
fn remove_at(doc: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = doc;
    for s in parents {
        cur = match (s, cur) {
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Sequence(v)) => match v.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Map { key }, Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, Value::Sequence(v)) if *index < v.len() => {
            v.remove(*index);
            true
        }
        _ => false,
    }
}

/// Reads the document: the file if any (a missing or malformed file is the
/// only error that stops here), then the `REGISTRY_*` variables of `env`.
fn read_document(
    file: Option<&Path>,
    env: &[(String, String)],
    report: &mut Report,
    from_env: &mut std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Value> {
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
    normalise(&mut doc, "");
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("REGISTRY_") else {
            continue;
        };
        // REGISTRY_AUTH_FILE is the credentials file of podman, buildah
        // and skopeo (containers-auth.json), often set in the same shell.
        if rest == "CONFIGURATION_PATH" || rest == "AUTH_FILE" {
            continue;
        }
        if rest == "STORAGE" {
            if !v.eq_ignore_ascii_case("filesystem") {
                report.error(
                    k,
                    format!("{v}: only the filesystem storage driver is supported"),
                );
            }
            continue;
        }
        let path: Vec<String> = rest.split('_').map(|p| p.to_ascii_lowercase()).collect();
        from_env.insert(path.join("."), k.clone());
        // Values are YAML, as in distribution: "true" is a boolean, "5" a number.
        let value: Value = serde_yaml_ng::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        set_path(&mut doc, &path, value);
    }
    Ok(doc)
}

/// Loads the configuration: the file (if any), then `REGISTRY_*` variables
/// from `env`, then defaults; and checks it, without touching any file it
/// names (see [`files::check`] for those).
pub fn load(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Loaded> {
    let mut report = Report::default();
    let mut from_env = std::collections::BTreeMap::new();
    let mut doc = read_document(file, env, &mut report, &mut from_env)?;
    // Deserialize; at an invalid value, note it, drop it and go again, so
    // that every invalid value is reported, each with its path.
    let (config, ignored) = loop {
        let mut ignored = Vec::new();
        let result: Result<Config, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(doc.clone(), &mut |p: serde_ignored::Path| {
                ignored.push(p.to_string())
            }),
        );
        match result {
            Ok(c) => break (c, ignored),
            Err(e) => {
                let path = e.path().clone();
                report.error(&path.to_string(), e.inner());
                if !remove_at(&mut doc, &path) {
                    // Nothing to drop (the whole document is wrong): the
                    // defaults, and the error says why.
                    break (Config::default(), Vec::new());
                }
            }
        }
    };
    let mut leaves = Vec::new();
    for key in &ignored {
        leaf_keys(&doc, key, &mut leaves);
    }
    classify_unknown(&leaves, &from_env, &mut report);
    if let Some(ro) = doc_bool(&doc, &["storage", "maintenance", "readonly", "enabled"])
        && ro
    {
        report.error(
            "storage.maintenance.readonly.enabled",
            "read-only mode is not supported yet",
        );
    }
    validate(&config, &mut report);
    Ok(Loaded { config, report })
}

/// The keys of every leaf under `key` (a dotted path the deserializer did
/// not use), so that `health.storagedriver` and `health.tcp` under one
/// ignored `health` are judged apart.
fn leaf_keys(doc: &Value, key: &str, out: &mut Vec<String>) {
    let mut cur = Some(doc);
    for part in key.split('.') {
        cur = cur.and_then(|v| match v {
            Value::Mapping(m) => m.get(part),
            Value::Sequence(s) => part.parse::<usize>().ok().and_then(|i| s.get(i)),
            _ => None,
        });
    }
    fn walk(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, child) in m {
                    let k = match k {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    walk(child, format!("{path}.{k}"), out);
                }
            }
            _ => out.push(path),
        }
    }
    match cur {
        Some(v) => walk(v, key.to_owned(), out),
        None => out.push(key.to_owned()),
    }
}

fn doc_bool(doc: &Value, path: &[&str]) -> Option<bool> {
    let mut cur = doc;
    for p in path {
        cur = cur.as_mapping()?.get(*p)?;
    }
    cur.as_bool()
}

/// Sorts keys outside Wharf's sections into quiet, warned and refused ones.
/// A variable of the environment that names no key is only warned about:
/// the environment is shared with other programs.
fn classify_unknown(
    ignored: &[String],
    from_env: &std::collections::BTreeMap<String, String>,
    report: &mut Report,
) {
    let mut seen = std::collections::BTreeSet::new();
    for key in ignored {
        match distribution::disposition(key) {
            Some((prefix, d)) => {
                if !seen.insert(prefix) {
                    continue;
                }
                match d {
                    distribution::Disposition::Accepted => {}
                    distribution::Disposition::Warn(why) => report.warn(prefix, why),
                    distribution::Disposition::Refuse(why) => report.error(prefix, why),
                }
            }
            None => match from_env.get(key) {
                Some(var) => report.warn(
                    key,
                    format!("set by {var}, which names no configuration key: ignored"),
                ),
                None => report.error(
                    key,
                    "unknown key (a typo?): see the configuration reference",
                ),
            },
        }
    }
}

/// Checks between fields and ranges that types cannot say.
fn validate(c: &Config, report: &mut Report) {
    let h = &c.http;
    if h.net != "tcp" {
        report.error("http.net", format!("{:?}: only tcp is supported", h.net));
    }
    if let Err(e) = listen_addrs(&h.addr) {
        report.error("http.addr", format!("{e:#}"));
    }
    if let Some(host) = &h.host
        && !(host.starts_with("http://") || host.starts_with("https://"))
    {
        report.error(
            "http.host",
            format!("{host:?} must be a URL such as https://registry.example.com"),
        );
    }
    match (&h.tls.certificate, &h.tls.key) {
        (Some(_), None) => report.error("http.tls.key", "required with http.tls.certificate"),
        (None, Some(_)) => report.error("http.tls.certificate", "required with http.tls.key"),
        _ => {}
    }
    for (name, values) in &h.headers {
        if http::HeaderName::try_from(name.as_str()).is_err() {
            report.error(&format!("http.headers.{name}"), "not a valid header name");
        }
        for v in values.values() {
            if http::HeaderValue::try_from(v.as_str()).is_err() {
                report.error(
                    &format!("http.headers.{name}"),
                    format!("{v:?} is not a valid header value"),
                );
            }
        }
    }
    if let Some(addr) = &h.debug.addr {
        match listen_addrs(addr) {
            Err(e) => report.error("http.debug.addr", format!("{e:#}")),
            Ok(debug) => {
                if let Ok(main) = listen_addrs(&h.addr)
                    && debug
                        .iter()
                        .any(|d| d.port() != 0 && main.iter().any(|m| m.port() == d.port()))
                {
                    report.error(
                        "http.debug.addr",
                        format!("{addr} uses the port of http.addr ({})", h.addr),
                    );
                }
            }
        }
    }
    if !h.debug.prometheus.path.starts_with('/') {
        report.error("http.debug.prometheus.path", "must start with /");
    }
    if h.debug.prometheus.enabled && h.debug.addr.is_none() {
        report.warn(
            "http.debug.prometheus.enabled",
            "without http.debug.addr, metrics stay on the registry's address",
        );
    }
    for (key, d) in [
        ("http.timeouts.header", h.timeouts.header),
        ("http.timeouts.bodyidle", h.timeouts.bodyidle),
        ("http.timeouts.writeidle", h.timeouts.writeidle),
        ("http.timeouts.idle", h.timeouts.idle),
    ] {
        if d < Duration::from_secs(1) {
            report.error(key, "must be at least 1s");
        }
    }
    if h.limits.uploads == 0 {
        report.error("http.limits.uploads", "must be more than 0");
    }
    if h.limits.uploadsperclient == 0 {
        report.error("http.limits.uploadsperclient", "must be more than 0");
    }

    let s = &c.storage;
    if !s.filesystem.rootdirectory.is_absolute() {
        report.warn(
            "storage.filesystem.rootdirectory",
            format!(
                "{} is relative: it depends on the directory Wharf starts in",
                s.filesystem.rootdirectory.display()
            ),
        );
    }
    let m = &s.maintenance;
    if m.gc.enabled && m.gc.interval.is_zero() {
        report.error("storage.maintenance.gc.interval", "must be more than 0");
    }
    if let Some(p) = &m.gc.cgroup
        && !p.is_absolute()
    {
        report.error(
            "storage.maintenance.gc.cgroup",
            format!("{}: use an absolute path", p.display()),
        );
    }
    if m.uploadpurging.enabled && m.uploadpurging.interval.is_zero() {
        report.error(
            "storage.maintenance.uploadpurging.interval",
            "must be more than 0",
        );
    }
    if m.retention.enabled && m.retention.interval.is_zero() {
        report.error(
            "storage.maintenance.retention.interval",
            "must be more than 0",
        );
    }

    let a = &c.auth;
    let present: Vec<&str> = [
        ("htpasswd", a.htpasswd.is_some()),
        ("token", a.token.is_some()),
        ("builtin", a.builtin.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    if present.len() > 1 {
        report.error(
            "auth",
            format!(
                "configure one of htpasswd, token and builtin, not {}",
                present.join(" and ")
            ),
        );
    }
    if let Some(hp) = &a.htpasswd
        && hp.path.is_none()
    {
        report.error("auth.htpasswd.path", "required with auth.htpasswd");
    }
    if let Some(t) = &a.token {
        for (k, v) in [
            ("auth.token.realm", &t.realm),
            ("auth.token.service", &t.service),
            ("auth.token.issuer", &t.issuer),
        ] {
            if v.is_empty() {
                report.error(k, "required with auth.token");
            }
        }
        if t.rootcertbundle.is_none() && t.jwks.is_none() {
            report.error(
                "auth.token",
                "needs rootcertbundle or jwks to verify tokens with",
            );
        }
    }
    if let Some(b) = &a.builtin {
        if b.tokenexpiration < Duration::from_secs(10)
            || b.tokenexpiration > Duration::from_secs(24 * 3600)
        {
            report.error(
                "auth.builtin.tokenexpiration",
                "must be between 10s and 24h",
            );
        }
        if !wharf_auth::valid_user_name(&b.admin.name) {
            report.error(
                "auth.builtin.admin.name",
                format!("{:?} is not a valid user name", b.admin.name),
            );
        }
    }
    if a.lockout.attempts == 0 {
        report.error("auth.lockout.attempts", "must be more than 0");
    }
    if a.lockout.unknownattempts == 0 {
        report.error("auth.lockout.unknownattempts", "must be more than 0");
    }
    if a.lockout.window.is_zero() {
        report.error("auth.lockout.window", "must be more than 0");
    }
    if a.lockout.maxdelay < Duration::from_secs(1) {
        report.error("auth.lockout.maxdelay", "must be at least 1s");
    }
    if a.lockout.delay.is_zero() || a.lockout.delay > a.lockout.maxdelay {
        report.error(
            "auth.lockout.delay",
            "must be more than 0 and at most auth.lockout.maxdelay",
        );
    }
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

/// Resolves an address to listen on. `:5000` means every address: IPv6
/// `[::]` (which also takes IPv4 on Linux), else `0.0.0.0`.
pub fn listen_addrs(addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().with_context(|| format!("{addr:?}"))?;
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("{addr:?} is no address to listen on"))?
        .collect();
    if addrs.is_empty() {
        bail!("{addr:?} resolves to no address");
    }
    Ok(addrs)
}

impl Config {
    /// The configuration as YAML, in distribution's key names. It holds no
    /// secrets: those stay in the files it names.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
