//! `wharf user|project|robot|token|audit`: the admin API from the command
//! line, against a running server.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// How to reach and log in to the server.
#[derive(Args, Clone)]
pub struct Remote {
    /// The Wharf server's URL.
    #[arg(
        long,
        env = "WHARF_SERVER",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    server: String,
    /// Your user name (a robot logs in as robot$NAME).
    #[arg(long, env = "WHARF_USER", default_value = "admin", global = true)]
    user: String,
    /// A file holding your password. Else WHARF_PASSWORD, else asked on the terminal.
    #[arg(long, value_name = "FILE", global = true)]
    password_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https server, besides the system's.
    #[arg(long, env = "WHARF_CACERT", value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. The password comes from stdin with --password-stdin,
    /// else one is generated and printed once.
    Add {
        name: String,
        /// Make the user a system administrator.
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password (stdin with --password-stdin, else asked twice).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Grant or revoke system administration.
    Admin {
        name: String,
        #[arg(action = clap::ArgAction::Set, value_name = "true|false")]
        admin: bool,
    },
    /// Delete a user, their memberships and tokens.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project (the first component of repository names).
    Add {
        name: String,
        /// Anyone, even anonymous, may pull.
        #[arg(long)]
        public: bool,
    },
    /// List the projects you may see.
    List,
    /// Make a project public or private.
    Public {
        name: String,
        #[arg(action = clap::ArgAction::Set, value_name = "true|false")]
        public: bool,
    },
    /// Delete a project record and its members (repositories stay).
    Rm { name: String },
    /// Storage the project uses, each blob counted once, and per repository.
    Usage { name: String },
    /// Set the project's quota (system administrators): a size such as
    /// 500MiB, 20GiB, 1TB, or `none`.
    Quota {
        name: String,
        #[arg(value_name = "SIZE|none")]
        size: String,
    },
    /// Print the project's policy (quota, immutability and retention rules)
    /// as JSON, or replace it with --set FILE (`-` for stdin).
    Policy {
        name: String,
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
    },
    /// Apply the project's retention rules now; --dry-run lists what would go.
    Retention {
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// List, set or remove members.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Subcommand)]
pub enum MemberCommand {
    List {
        project: String,
    },
    /// Add a member or change their role: projectadmin, maintainer,
    /// developer, guest or limitedguest.
    Set {
        project: String,
        #[arg(value_name = "USER")]
        member: String,
        role: String,
    },
    Rm {
        project: String,
        #[arg(value_name = "USER")]
        member: String,
    },
}

#[derive(Args)]
pub struct CredentialSpec {
    name: String,
    /// PROJECT:ACTIONS, e.g. team:pull,push (repeatable; * for every project).
    #[arg(
        long = "permission",
        short = 'p',
        required = true,
        value_name = "PROJECT:ACTIONS"
    )]
    permissions: Vec<String>,
    /// Days until it expires (default: never).
    #[arg(long, value_name = "DAYS")]
    expires_days: Option<u32>,
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Create a robot account; prints its secret once. Log in as robot$NAME.
    Add(CredentialSpec),
    List,
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a personal access token for --user; prints it once. Use it as
    /// the password of `docker login`.
    Add(CredentialSpec),
    List,
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Delete a repository: its manifests, tags and upload sessions. Blobs
    /// nothing else uses are freed by the next garbage collection.
    ///
    /// With --config or --data, works on the data directory directly (like
    /// `wharf gc`, also beside a running server, with or without access
    /// control); else asks the server at --server.
    Rm {
        name: String,
        /// The server's config.yml: work on its data directory.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory to work on (overrides the configuration's).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ThrottleCommand {
    /// Accounts and addresses with failed logins, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Forget failed logins, so that a blocked client may log in again at
    /// once: of an account, an address, or both; of everyone with neither.
    ///
    /// With --config or --data, works on the data directory directly (for an
    /// administrator who is locked out themselves).
    Clear {
        /// The account (a user, robot$NAME or htpasswd name); "" for the
        /// names that name no account.
        #[arg(long)]
        account: Option<String>,
        /// The client address (an IPv6 address stands for its /64).
        #[arg(long)]
        address: Option<String>,
        /// The server's config.yml: work on its data directory.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The data directory to work on.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long)]
    actor: Option<String>,
    /// pull, push, delete, login, or an admin action such as user.create.
    #[arg(long)]
    action: Option<String>,
    /// Records whose resource starts with this (e.g. team/app).
    #[arg(long)]
    resource: Option<String>,
    /// ok, denied or failed.
    #[arg(long)]
    outcome: Option<String>,
    /// Only the last N hours.
    #[arg(long, value_name = "N")]
    since_hours: Option<u64>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

struct Api {
    base: String,
    http: reqwest::Client,
    user: String,
    password: String,
    json: bool,
}

fn tls_config(cacert: Option<&PathBuf>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    if system.exists()
        && let Ok(it) = CertificateDer::pem_file_iter(&system)
    {
        for c in it.flatten() {
            let _ = roots.add(c);
        }
    }
    if let Some(p) = cacert {
        for c in
            CertificateDer::pem_file_iter(p).with_context(|| format!("reading {}", p.display()))?
        {
            roots.add(c.with_context(|| format!("a certificate in {}", p.display()))?)?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_password(r: &Remote) -> anyhow::Result<String> {
    if let Some(f) = &r.password_file {
        let p = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(p.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(p) = std::env::var("WHARF_PASSWORD")
        && !p.is_empty()
    {
        return Ok(p);
    }
    rpassword::prompt_password(format!("password for {}: ", r.user))
        .context("no password: use --password-file, WHARF_PASSWORD or a terminal")
}

fn new_password(from_stdin: bool, confirm: bool) -> anyhow::Result<Option<String>> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        let s = s.trim_end_matches(['\n', '\r']).to_owned();
        if s.is_empty() {
            bail!("empty password on stdin");
        }
        return Ok(Some(s));
    }
    if !confirm {
        return Ok(None);
    }
    let a = rpassword::prompt_password("new password: ")?;
    let b = rpassword::prompt_password("again: ")?;
    if a != b {
        bail!("the passwords differ");
    }
    Ok(Some(a))
}

impl Api {
    fn new(r: &Remote) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(r.cacert.as_ref())?)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            base: r.server.trim_end_matches('/').to_owned(),
            http,
            user: r.user.clone(),
            password: read_password(r)?,
            json: r.json,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut rb = self
            .http
            .request(method, &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v["errors"][0]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            bail!("{status}: {msg}");
        }
        Ok(v)
    }

    fn print(&self, v: &Value, columns: &[&str]) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
            return;
        }
        let rows: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Null => return,
            other => vec![other],
        };
        let cell = |r: &Value, c: &str| match &r[c] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            Value::Array(a) if c == "permissions" => a
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}",
                        p["project"].as_str().unwrap_or(""),
                        p["actions"]
                            .as_array()
                            .map(|x| x
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
            x => x.to_string(),
        };
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for r in &rows {
            for (i, c) in columns.iter().enumerate() {
                widths[i] = widths[i].max(cell(r, c).len());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        println!(
            "{}",
            line(columns.iter().map(|c| c.to_uppercase()).collect())
        );
        for r in rows {
            println!("{}", line(columns.iter().map(|c| cell(r, c)).collect()));
        }
    }
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `20GiB`, `500MiB`, `1TB`, `1048576` → bytes; `none` → `None`.
fn parse_size(s: &str) -> anyhow::Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("size {s:?}: expected a number with an optional unit, e.g. 20GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => bail!("size {s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"),
    };
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

fn permissions(spec: &[String]) -> anyhow::Result<Value> {
    spec.iter()
        .map(|p| {
            let (project, actions) = p.split_once(':').ok_or_else(|| {
                anyhow!("permission {p:?}: expected PROJECT:ACTIONS, e.g. team:pull,push")
            })?;
            Ok(json!({"project": project, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect::<anyhow::Result<Vec<Value>>>()
        .map(Value::Array)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

use reqwest::Method;

pub fn user(r: Remote, cmd: UserCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        match cmd {
            UserCommand::Add {
                name,
                admin,
                password_stdin,
            } => {
                let given = new_password(password_stdin, false)?;
                let generated = given.is_none();
                let pw = given.unwrap_or_else(|| wharf_auth::password::random_secret(""));
                let v = api
                    .call(
                        Method::POST,
                        "/users",
                        Some(json!({"name": name, "password": pw, "admin": admin})),
                    )
                    .await?;
                api.print(&v, &["name", "admin", "created_at"]);
                if generated {
                    println!("password: {pw}\n(shown once)");
                }
            }
            UserCommand::List => {
                let v = api.call(Method::GET, "/users", None).await?;
                api.print(&v, &["name", "admin", "created_at"]);
            }
            UserCommand::Passwd {
                name,
                password_stdin,
            } => {
                let pw = new_password(password_stdin, true)?.unwrap_or_default();
                api.call(
                    Method::PUT,
                    &format!("/users/{}/password", seg(&name)),
                    Some(json!({"password": pw})),
                )
                .await?;
                println!("password of {name} changed");
            }
            UserCommand::Admin { name, admin } => {
                let v = api
                    .call(
                        Method::PATCH,
                        &format!("/users/{}", seg(&name)),
                        Some(json!({"admin": admin})),
                    )
                    .await?;
                api.print(&v, &["name", "admin", "created_at"]);
            }
            UserCommand::Rm { name } => {
                api.call(Method::DELETE, &format!("/users/{}", seg(&name)), None)
                    .await?;
                println!("deleted user {name}");
            }
        }
        Ok(())
    })
}

pub fn project(r: Remote, cmd: ProjectCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        let cols = ["name", "public", "created_at"];
        match cmd {
            ProjectCommand::Add { name, public } => {
                let v = api
                    .call(
                        Method::POST,
                        "/projects",
                        Some(json!({"name": name, "public": public})),
                    )
                    .await?;
                api.print(&v, &cols);
            }
            ProjectCommand::List => {
                api.print(&api.call(Method::GET, "/projects", None).await?, &cols)
            }
            ProjectCommand::Public { name, public } => {
                let v = api
                    .call(
                        Method::PATCH,
                        &format!("/projects/{}", seg(&name)),
                        Some(json!({"public": public})),
                    )
                    .await?;
                api.print(&v, &cols);
            }
            ProjectCommand::Rm { name } => {
                api.call(Method::DELETE, &format!("/projects/{}", seg(&name)), None)
                    .await?;
                println!("deleted project {name}");
            }
            ProjectCommand::Usage { name } => {
                let v = api
                    .call(
                        Method::GET,
                        &format!("/projects/{}/usage", seg(&name)),
                        None,
                    )
                    .await?;
                if api.json {
                    api.print(&v, &[]);
                } else {
                    match v["quota_bytes"].as_u64() {
                        Some(q) => println!("{name}: {} of {q} bytes", v["bytes"]),
                        None => println!("{name}: {} bytes", v["bytes"]),
                    }
                    api.print(&v["repositories"], &["name", "bytes"]);
                }
            }
            ProjectCommand::Quota { name, size } => {
                let path = format!("/projects/{}/policy", seg(&name));
                let mut policy = api.call(Method::GET, &path, None).await?;
                policy["quota_bytes"] = match parse_size(&size)? {
                    Some(n) => json!(n),
                    None => Value::Null,
                };
                let v = api.call(Method::PUT, &path, Some(policy)).await?;
                if api.json {
                    api.print(&v, &[]);
                } else {
                    match v["quota_bytes"].as_u64() {
                        Some(n) => println!("{name}: quota {n} bytes"),
                        None => println!("{name}: no quota"),
                    }
                }
            }
            ProjectCommand::Policy { name, set } => {
                let path = format!("/projects/{}/policy", seg(&name));
                let v = match set {
                    None => api.call(Method::GET, &path, None).await?,
                    Some(file) => {
                        let text = if file.as_os_str() == "-" {
                            let mut t = String::new();
                            std::io::stdin().read_to_string(&mut t)?;
                            t
                        } else {
                            std::fs::read_to_string(&file)
                                .with_context(|| format!("reading {}", file.display()))?
                        };
                        let body: Value = serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", file.display()))?;
                        api.call(Method::PUT, &path, Some(body)).await?
                    }
                };
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            ProjectCommand::Retention { name, dry_run } => {
                let v = api
                    .call(
                        Method::POST,
                        &format!("/projects/{}/retention?dry_run={dry_run}", seg(&name)),
                        None,
                    )
                    .await?;
                if api.json {
                    api.print(&v, &[]);
                } else {
                    let n = v["tags"].as_array().map_or(0, Vec::len);
                    println!(
                        "{name}: {n} tags {}, {} manifests with them",
                        if dry_run { "would go" } else { "removed" },
                        v["manifests"]
                    );
                    api.print(
                        &v["tags"],
                        &["repository", "tag", "digest", "pushed_at", "pulled_at"],
                    );
                }
            }
            ProjectCommand::Member(m) => match m {
                MemberCommand::List { project } => {
                    let v = api
                        .call(
                            Method::GET,
                            &format!("/projects/{}/members", seg(&project)),
                            None,
                        )
                        .await?;
                    api.print(&v, &["user", "role"]);
                }
                MemberCommand::Set {
                    project,
                    member,
                    role,
                } => {
                    let v = api
                        .call(
                            Method::PUT,
                            &format!("/projects/{}/members/{}", seg(&project), seg(&member)),
                            Some(json!({"role": role})),
                        )
                        .await?;
                    api.print(&v, &["user", "role"]);
                }
                MemberCommand::Rm { project, member } => {
                    api.call(
                        Method::DELETE,
                        &format!("/projects/{}/members/{}", seg(&project), seg(&member)),
                        None,
                    )
                    .await?;
                    println!("removed {member} from {project}");
                }
            },
        }
        Ok(())
    })
}

const CRED_COLS: [&str; 4] = ["name", "permissions", "expires_at", "created_by"];

async fn add_credential(api: &Api, path: &str, spec: CredentialSpec) -> anyhow::Result<()> {
    let mut body = json!({"name": spec.name, "permissions": permissions(&spec.permissions)?});
    if let Some(d) = spec.expires_days {
        body["expires_in_days"] = d.into();
    }
    let v = api.call(Method::POST, path, Some(body)).await?;
    api.print(&v, &CRED_COLS);
    if !api.json {
        println!(
            "secret: {}\n(shown once)",
            v["secret"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn robot(r: Remote, cmd: RobotCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        match cmd {
            RobotCommand::Add(spec) => add_credential(&api, "/robots", spec).await?,
            RobotCommand::List => {
                api.print(&api.call(Method::GET, "/robots", None).await?, &CRED_COLS)
            }
            RobotCommand::Rm { name } => {
                api.call(Method::DELETE, &format!("/robots/{}", seg(&name)), None)
                    .await?;
                println!("deleted robot {name}");
            }
        }
        Ok(())
    })
}

pub fn token(r: Remote, cmd: TokenCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        let base = format!("/users/{}/tokens", seg(&r.user));
        match cmd {
            TokenCommand::Add(spec) => add_credential(&api, &base, spec).await?,
            TokenCommand::List => api.print(&api.call(Method::GET, &base, None).await?, &CRED_COLS),
            TokenCommand::Rm { name } => {
                api.call(Method::DELETE, &format!("{base}/{}", seg(&name)), None)
                    .await?;
                println!("revoked token {name}");
            }
        }
        Ok(())
    })
}

pub fn repo(r: Remote, cmd: RepoCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        match cmd {
            RepoCommand::Rm { name, .. } => {
                // Slashes separate the name's components in the path too.
                let path: Vec<String> = name.split('/').map(seg).collect();
                api.call(
                    Method::DELETE,
                    &format!("/repositories/{}", path.join("/")),
                    None,
                )
                .await?;
                println!("deleted repository {name}");
            }
        }
        Ok(())
    })
}

pub fn throttle(r: Remote, cmd: ThrottleCommand) -> anyhow::Result<()> {
    use wharf_auth::throttle::{ThrottleEntry, ThrottlesCleared};
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        match cmd {
            ThrottleCommand::List { limit } => {
                let v = api
                    .call(Method::GET, &format!("/throttles?limit={limit}"), None)
                    .await?;
                let list: Vec<ThrottleEntry> =
                    serde_json::from_value(v).context("reading the server's answer")?;
                api.print(
                    &serde_json::to_value(&list)?,
                    &[
                        "account",
                        "address",
                        "failures",
                        "last_failure",
                        "blocked_until",
                    ],
                );
            }
            ThrottleCommand::Clear {
                account, address, ..
            } => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                if let Some(a) = &account {
                    q.append_pair("account", a);
                }
                if let Some(a) = &address {
                    q.append_pair("address", a);
                }
                let v = api
                    .call(Method::DELETE, &format!("/throttles?{}", q.finish()), None)
                    .await?;
                let r: ThrottlesCleared =
                    serde_json::from_value(v).context("reading the server's answer")?;
                println!("cleared {} throttle entries", r.cleared);
            }
        }
        Ok(())
    })
}

pub fn audit(r: Remote, a: AuditArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let api = Api::new(&r)?;
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("actor", &a.actor),
            ("action", &a.action),
            ("resource", &a.resource),
            ("outcome", &a.outcome),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(h) = a.since_hours {
            let since = wharf_auth::now_ms() / 1000 - (h as i64) * 3600;
            q.append_pair("since", &since.to_string());
        }
        q.append_pair("limit", &a.limit.to_string());
        let v = api
            .call(Method::GET, &format!("/audit?{}", q.finish()), None)
            .await?;
        api.print(
            &v,
            &["at", "actor", "addr", "action", "resource", "outcome"],
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("none").unwrap(), None);
        assert_eq!(parse_size("1024").unwrap(), Some(1024));
        assert_eq!(parse_size("20GiB").unwrap(), Some(20 << 30));
        assert_eq!(parse_size("500 MiB").unwrap(), Some(500 << 20));
        assert_eq!(parse_size("1TB").unwrap(), Some(1_000_000_000_000));
        assert_eq!(parse_size("2m").unwrap(), Some(2 << 20));
        for bad in ["", "GiB", "1.5GiB", "-1", "10 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
