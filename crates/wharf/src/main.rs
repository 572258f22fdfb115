//! `wharf`: a container image registry in one binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod access;
mod admin_cli;
mod config;
mod run_as;
mod server;
mod tls;

use config::Config;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A container image registry: OCI Distribution v1.1 and Docker Registry v2 in one binary",
    long_about = "A container image registry: OCI Distribution v1.1 and Docker Registry v2 in one binary.\n\n\
Run `wharf serve` to serve on :5000 with everything kept in one data directory. \
Wharf reads distribution's config.yml and REGISTRY_* environment variables."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry.
    ///
    /// Without arguments: listen on :5000 (every address), keep blobs and the
    /// metadata database in the default data directory (printed at start-up).
    Serve(ServeArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage users on a running server (auth.builtin).
    User {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::UserCommand,
    },
    /// Manage projects and their members on a running server.
    Project {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::ProjectCommand,
    },
    /// Delete repositories on a running server.
    Repo {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::RepoCommand,
    },
    /// Manage robot accounts on a running server.
    Robot {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::RobotCommand,
    },
    /// Manage your personal access tokens on a running server.
    Token {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::TokenCommand,
    },
    /// Collect garbage: delete blobs that nothing references any more, and
    /// print what was (or, with --dry-run, would be) freed.
    ///
    /// Works on the data directory directly, also while `wharf serve` runs on
    /// it (the two coordinate through the database): clients keep pushing and
    /// pulling meanwhile.
    Gc(GcArgs),
    /// See and clear failed-login throttles on a running server (or, with
    /// --data, on the data directory).
    Throttle {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(subcommand)]
        cmd: admin_cli::ThrottleCommand,
    },
    /// Adopt a distribution (registry:2) root in place: record its
    /// repositories, tags, manifests and blob links in the metadata store,
    /// without copying a byte. Resumable and idempotent; prints what it
    /// could not import. `wharf serve` also does it by itself, in the
    /// background, when it finds such a root (storage.import.auto).
    Import(ImportArgs),
    /// Query the audit log of a running server.
    Audit {
        #[command(flatten)]
        remote: admin_cli::Remote,
        #[command(flatten)]
        args: admin_cli::AuditArgs,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A distribution-style config.yml. Also REGISTRY_CONFIGURATION_PATH.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The config file, as `docker-registry serve FILE` takes it.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    config_positional: Option<PathBuf>,
    /// The data directory (overrides storage.filesystem.rootdirectory).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where to listen, e.g. 127.0.0.1:5000 or :5000 (overrides http.addr).
    #[arg(long, value_name = "ADDR")]
    addr: Option<String>,
}

#[derive(clap::Args)]
struct GcArgs {
    /// A distribution-style config.yml (for the data directory and grace).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory (overrides storage.filesystem.rootdirectory).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Only report what would be freed.
    #[arg(long)]
    dry_run: bool,
    /// Keep what is younger than this, e.g. 24h or 0s (default:
    /// storage.maintenance.gc.grace, 24h).
    #[arg(long, value_name = "DURATION")]
    grace: Option<String>,
    /// Also delete manifests untagged for longer than this, e.g. 168h
    /// (default: storage.maintenance.untagged, off).
    #[arg(long, value_name = "DURATION")]
    untagged_age: Option<String>,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// A distribution-style config.yml (for the data directory).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory: distribution's rootdirectory.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Only read the root and report what would be imported.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and print the effective settings (secrets
    /// redacted), after REGISTRY_* environment overrides.
    Check {
        /// The config file; without it, REGISTRY_CONFIGURATION_PATH or defaults.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("REGISTRY_"))
        .collect()
}

fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| std::env::var_os("REGISTRY_CONFIGURATION_PATH").map(PathBuf::from))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check { file }) => check(file),
        Command::Gc(args) => gc(args),
        Command::Import(args) => import(args),
        Command::User { remote, cmd } => admin_cli::user(remote, cmd),
        Command::Project { remote, cmd } => admin_cli::project(remote, cmd),
        Command::Repo {
            cmd: admin_cli::RepoCommand::Rm { name, config, data },
            ..
        } if config.is_some() || data.is_some() => repo_rm_local(&name, config, data),
        Command::Repo { remote, cmd } => admin_cli::repo(remote, cmd),
        Command::Throttle {
            cmd:
                admin_cli::ThrottleCommand::Clear {
                    account,
                    address,
                    config,
                    data,
                },
            ..
        } if config.is_some() || data.is_some() => {
            throttle_clear_local(account.as_deref(), address.as_deref(), config, data)
        }
        Command::Throttle { remote, cmd } => admin_cli::throttle(remote, cmd),
        Command::Robot { remote, cmd } => admin_cli::robot(remote, cmd),
        Command::Token { remote, cmd } => admin_cli::token(remote, cmd),
        Command::Audit { remote, args } => admin_cli::audit(remote, args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `wharf config check`: every warning and error at once, then the
/// effective configuration; fails if there is an error, exactly when `wharf
/// serve` would refuse to start.
fn check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path(file);
    let mut loaded = config::load(path.as_deref(), &env_vars())?;
    config::files::check(&loaded.config, &mut loaded.report);
    for w in &loaded.report.warnings {
        eprintln!("warning: {w}");
    }
    for e in &loaded.report.errors {
        eprintln!("error: {e}");
    }
    print!("{}", loaded.config.to_yaml());
    let n = loaded.report.errors.len();
    if n > 0 {
        anyhow::bail!(
            "{n} error{} in the configuration",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Progress of an import: a bar on a terminal, else a log line now and then.
struct ImportProgressView {
    bar: Option<indicatif::ProgressBar>,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
    last_log: std::sync::Mutex<Instant>,
}

impl ImportProgressView {
    fn new(terminal: bool) -> ImportProgressView {
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "importing {bar:40} {pos}/{len} repositories ({eta} left) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        ImportProgressView {
            bar,
            done: 0.into(),
            total: 0.into(),
            last_log: std::sync::Mutex::new(Instant::now()),
        }
    }
}

impl wharf_core::import::ImportProgress for ImportProgressView {
    fn started(&self, repositories: u64) {
        self.total
            .store(repositories, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(repositories);
        }
    }

    fn repository_done(&self, name: &str) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.set_message(name.to_owned());
            b.inc(1);
            return;
        }
        let Ok(mut last) = self.last_log.lock() else {
            return;
        };
        if last.elapsed() >= std::time::Duration::from_secs(5) {
            *last = Instant::now();
            let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(done, total, "importing the distribution root");
        }
    }
}

fn print_import_report(r: &wharf_core::import::ImportReport) {
    let verb = if r.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!(
        "{verb} {} repositories ({} imported before), {} tags, {} manifests ({} Docker schema 1), {} blob links; {:.2} s",
        r.repositories, r.already_imported, r.tags, r.manifests, r.schema1, r.blob_links, r.seconds
    );
    if r.problem_count > 0 {
        println!("{} things were not imported as they are:", r.problem_count);
        for p in &r.problems {
            println!("  - {p}");
        }
        if r.problem_count > r.problems.len() as u64 {
            println!(
                "  ... and {} more",
                r.problem_count - r.problems.len() as u64
            );
        }
    }
}

/// `wharf import`: adopts the distribution root in the data directory.
fn import(args: ImportArgs) -> anyhow::Result<()> {
    let cfg = local_config(args.config, args.data)?;
    init_logging(&cfg);
    let root = cfg.storage.root().to_owned();
    if wharf_core::import::distribution_root(&root).is_none() {
        anyhow::bail!(
            "{} holds no distribution root (docker/registry/v2/repositories): nothing to import",
            root.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if !args.dry_run {
        run_as::become_service_user(&root)?;
    }
    rt.block_on(async {
        let meta: Arc<dyn wharf_meta::MetaStore> = if args.dry_run {
            // A dry run writes nothing, not even a new database.
            let dir = tempfile_dir()?;
            Arc::new(
                wharf_meta::sqlite::SqliteMeta::open(&dir.join("meta.db"))
                    .await
                    .context("opening a scratch database")?,
            )
        } else {
            let (_, meta) = open_registry(&cfg).await?;
            meta
        };
        use std::io::IsTerminal;
        let view = ImportProgressView::new(std::io::stderr().is_terminal());
        let report = wharf_core::import::import(&root, meta, args.dry_run, &view).await;
        if let Some(b) = &view.bar {
            b.finish_and_clear();
        }
        if args.dry_run {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("wharf-import-{}", std::process::id())),
            );
        }
        let report = report?;
        print_import_report(&report);
        Ok(())
    })
}

/// A fresh private directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("wharf-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Before anything may collect: a distribution root in the data directory
/// that is not fully imported makes collections wait (see
/// [`wharf_core::import`]).
async fn note_distribution_root(
    root: &Path,
    meta: &dyn wharf_meta::MetaStore,
) -> anyhow::Result<bool> {
    if wharf_core::import::distribution_root(root).is_none() {
        return Ok(false);
    }
    if meta.import_state().await? == Some(wharf_meta::ImportState::Complete) {
        return Ok(false);
    }
    meta.set_import_state(wharf_meta::ImportState::Pending)
        .await?;
    Ok(true)
}

/// The configuration of a command that works on the data directory itself
/// (`gc`, `import`, `repo rm --data`, `throttle clear --data`): the file (or
/// REGISTRY_CONFIGURATION_PATH) and REGISTRY_* variables, with `--data`
/// over the configured directory.
fn local_config(config: Option<PathBuf>, data: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = config_path(config);
    let (mut cfg, _) = config::load(path.as_deref(), &env_vars())?.into_config()?;
    if let Some(d) = data {
        cfg.storage.filesystem.rootdirectory = d;
    }
    Ok(cfg)
}

/// The database of a data directory Wharf has used; an error (creating
/// nothing) for any other directory.
fn existing_database(cfg: &Config) -> anyhow::Result<PathBuf> {
    let db = cfg.storage.root().join("wharf/meta.db");
    if !db.exists() {
        anyhow::bail!(
            "{} holds no Wharf database: is this the data directory?",
            cfg.storage.root().display()
        );
    }
    Ok(db)
}

/// `wharf repo rm NAME --data DIR`: deletes a repository on the data
/// directory, beside a running server or without one. With access control
/// on, the audit log records it.
fn repo_rm_local(name: &str, config: Option<PathBuf>, data: Option<PathBuf>) -> anyhow::Result<()> {
    let repo: wharf_oci::RepoName = name
        .parse()
        .map_err(|_| anyhow::anyhow!("{name:?} is not a valid repository name"))?;
    let cfg = local_config(config, data)?;
    existing_database(&cfg)?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    run_as::become_service_user(cfg.storage.root())?;
    rt.block_on(async {
        let (registry, meta) = open_registry(&cfg).await?;
        let result = registry.delete_repository(&repo).await;
        if cfg.auth.enabled() {
            let log = wharf_auth::AuditLog::spawn(meta, cfg.auth.audit.retention);
            let who = format!("local:{}", local_user());
            let outcome = if result.is_ok() { "ok" } else { "error" };
            log.record_now(who, None, "repository.delete", name, outcome)
                .await;
            log.flush().await;
        }
        match result {
            Ok(()) => {
                println!("deleted repository {name}");
                Ok(())
            }
            Err(wharf_core::CoreError::NameUnknown) => {
                anyhow::bail!("repository {name} does not exist")
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    })
}

/// `wharf throttle clear --data DIR`: forgets failed logins in the data
/// directory's database, for an administrator who is locked out.
fn throttle_clear_local(
    account: Option<&str>,
    address: Option<&str>,
    config: Option<PathBuf>,
    data: Option<PathBuf>,
) -> anyhow::Result<()> {
    let address = match address {
        None => None,
        Some(a) => Some(wharf_auth::throttle::parse_throttle_addr(a).ok_or_else(|| {
            anyhow::anyhow!("{a:?} is not an IP address (or an IPv6 /64 as listed)")
        })?),
    };
    let cfg = local_config(config, data)?;
    let db = existing_database(&cfg)?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    run_as::become_service_user(cfg.storage.root())?;
    rt.block_on(async {
        let meta = Arc::new(
            wharf_meta::sqlite::SqliteMeta::open(&db)
                .await
                .context("opening the metadata database")?,
        );
        use wharf_meta::AuthStore;
        let n = meta.clear_throttles(account, address.as_deref()).await?;
        let log = wharf_auth::AuditLog::spawn(meta, cfg.auth.audit.retention);
        log.record_now(
            format!("local:{}", local_user()),
            None,
            "throttle.clear",
            wharf_auth::throttle::clear_resource(account, address.as_deref()),
            "ok",
        )
        .await;
        log.flush().await;
        println!("cleared {n} throttle entries");
        Ok(())
    })
}

/// The name of the user running this command, for the audit log.
fn local_user() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns NULL or a valid entry.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
        format!("uid {uid}")
    }
}

/// Who the audit log names for collections nobody asked for by hand.
const GC_ACTOR: &str = "system:gc";

/// Runs one collection unless another is running on the metadata store
/// (`Ok(None)`, with the reason). With an audit log, what it deleted goes
/// there: each untagged manifest and a summary.
async fn collect(
    registry: &wharf_core::Registry,
    grace: std::time::Duration,
    untagged_age: Option<std::time::Duration>,
    dry_run: bool,
    audit: Option<&wharf_auth::AuditLog>,
) -> anyhow::Result<Result<wharf_core::GcReport, String>> {
    let opts = wharf_core::GcOptions {
        grace,
        dry_run,
        untagged_age,
    };
    let r = match audit {
        Some(log) => {
            let events = wharf_api::GcAudit {
                log: log.clone(),
                actor: GC_ACTOR.into(),
                addr: None,
            };
            let r = match registry.gc(opts, &events).await {
                Err(wharf_core::CoreError::Busy(why)) => return Ok(Err(why)),
                r => r?,
            };
            if !dry_run {
                log.record_now(
                    GC_ACTOR,
                    None,
                    "gc",
                    format!("{} blobs, {} bytes", r.blobs, r.bytes),
                    "ok",
                )
                .await;
            }
            r
        }
        None => match registry.gc(opts, &()).await {
            Err(wharf_core::CoreError::Busy(why)) => return Ok(Err(why)),
            r => r?,
        },
    };
    Ok(Ok(r))
}

fn gc(args: GcArgs) -> anyhow::Result<()> {
    // First, while this is the only thread: the idle class below counts only
    // within a session (autogroups), and a shell or cron starts this in
    // another session than the server's.
    let session = wharf_background::own_session();
    // The whole process is background work beside a serving registry, so
    // its start-up and runtime threads (which inherit this) yield to it too,
    // not only the collection's SQL and deletions.
    wharf_background::lower_this_thread();
    let cfg = local_config(args.config, args.data)?;
    let grace = match args.grace {
        Some(g) => config::parse_duration(&g).context("--grace")?,
        None => cfg.storage.maintenance.gc.grace,
    };
    let untagged_age = match args.untagged_age {
        Some(a) => Some(config::parse_duration(&a).context("--untagged-age")?),
        None => cfg.storage.untagged_age(),
    };
    init_logging(&cfg);
    match session {
        Ok(wharf_background::Session::Unchanged) => {}
        Ok(wharf_background::Session::Own { forked, autogroup }) => {
            tracing::debug!(forked, %autogroup, "collecting in a session of its own");
        }
        Err(e) => tracing::warn!(
            error = %e,
            "could not move to a session of its own: the collection may slow down \
             requests more than it should"
        ),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    run_as::become_service_user(cfg.storage.root())?;
    rt.block_on(async {
        let (registry, meta) = open_registry(&cfg).await?;
        note_distribution_root(cfg.storage.root(), meta.as_ref()).await?;
        // With access control on, the server keeps an audit log in the same
        // database: this collection's deletions belong there too.
        let audit = cfg
            .auth
            .enabled()
            .then(|| wharf_auth::AuditLog::spawn(meta, cfg.auth.audit.retention));
        let collected = collect(
            &registry,
            grace,
            untagged_age,
            args.dry_run,
            audit.as_ref(),
        )
        .await;
        if let Some(log) = &audit {
            log.flush().await;
        }
        let r = match collected? {
            Ok(r) => r,
            Err(why) => anyhow::bail!("{why}"),
        };
        let verb = if r.dry_run { "would free" } else { "freed" };
        println!(
            "{verb} {} blobs, {} bytes ({:.1} MiB), {} unused links, {} untagged manifests; {:.2} s",
            r.blobs,
            r.bytes,
            r.bytes as f64 / (1 << 20) as f64,
            r.links,
            r.manifests,
            r.seconds
        );
        if r.kept_blobs > 0 || r.kept_links > 0 {
            println!(
                "kept for the grace period ({}): {} unreferenced blobs, {} bytes ({:.1} MiB), {} unused links",
                config::duration::format(grace),
                r.kept_blobs,
                r.kept_bytes,
                r.kept_bytes as f64 / (1 << 20) as f64,
                r.kept_links
            );
        } else if r.blobs == 0 {
            println!("nothing unreferenced is left: every stored blob is used by a manifest");
        }
        Ok(())
    })
}

fn init_logging(cfg: &Config) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::new(f),
        _ => {
            let mut f = format!("{},hyper=warn,h2=warn,rustls=warn", cfg.log.level.as_str());
            if cfg.log.accesslog.disabled {
                f.push_str(",wharf::access=off");
            }
            EnvFilter::new(f)
        }
    };
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never into log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cfg.log.formatter == config::LogFormat::Text {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = config_path(args.config.or(args.config_positional));
    let mut loaded = config::load(path.as_deref(), &env_vars())?;
    if let Some(d) = args.data {
        loaded.config.storage.filesystem.rootdirectory = d;
    }
    if let Some(a) = args.addr {
        if let Err(e) = config::listen_addrs(&a) {
            loaded.report.error("--addr", format!("{e:#}"));
        }
        loaded.config.http.addr = a;
    }
    // The same checks as `wharf config check`, before anything is created.
    config::files::check(&loaded.config, &mut loaded.report);
    let (cfg, warnings) = loaded.into_config()?;
    init_logging(&cfg);
    for w in &warnings {
        tracing::warn!("configuration: {w}");
    }
    if let Some(dir) = &cfg.storage.maintenance.gc.cgroup {
        // Before any background job, which would start the pool outside it.
        let cg = wharf_background::start(Some(dir))
            .with_context(|| format!("storage.maintenance.gc.cgroup {}", dir.display()))?;
        if let Some(cg) = cg {
            tracing::info!(
                cgroup = %cg.dir().display(),
                by = cg.how(),
                "background work runs in an idle cgroup"
            );
        }
    }
    match server::raise_open_files_limit() {
        Ok(n) if n < 8192 => tracing::warn!(
            limit = n,
            "the open files limit is low: each connection and upload holds one \
             (raise LimitNOFILE or ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cfg, started))
}

/// A data directory this start is the first to use: if the start fails
/// before the server is up, what it created there goes again, so that a
/// failed start leaves no half-made directory behind (a directory that did
/// not exist is removed; one that was empty, such as a fresh volume, is
/// emptied).
struct FreshDataDir {
    root: PathBuf,
    existed: bool,
    armed: bool,
}

impl FreshDataDir {
    fn new(root: &Path) -> FreshDataDir {
        let existed = root.exists();
        let empty =
            !existed || std::fs::read_dir(root).is_ok_and(|mut entries| entries.next().is_none());
        FreshDataDir {
            root: root.to_owned(),
            existed,
            armed: empty,
        }
    }

    /// The server is up: whatever happens now, the directory stays.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for FreshDataDir {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let result = if self.existed {
            std::fs::read_dir(&self.root).and_then(|entries| {
                for e in entries {
                    let p = e?.path();
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p)?;
                    } else {
                        std::fs::remove_file(&p)?;
                    }
                }
                Ok(())
            })
        } else {
            std::fs::remove_dir_all(&self.root)
        };
        match result {
            Ok(()) => {
                tracing::info!(data = %self.root.display(), "start failed: removed what it had created in the data directory")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(data = %self.root.display(), error = %e, "start failed, and cleaning up the new data directory failed")
            }
        }
    }
}

fn prepare_data_dir(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("wharf"))
        .with_context(|| format!("creating data directory {}", root.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Holds the database: nobody else's business.
        std::fs::set_permissions(root.join("wharf"), std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens the data directory's blob store and database.
async fn open_registry(
    cfg: &Config,
) -> anyhow::Result<(
    Arc<wharf_core::Registry>,
    Arc<wharf_meta::sqlite::SqliteMeta>,
)> {
    let root = cfg.storage.root();
    prepare_data_dir(root)?;
    let blobs = wharf_store::fs::FsBlobStore::open(root)
        .with_context(|| format!("opening blob storage in {}", root.display()))?;
    let meta = wharf_meta::sqlite::SqliteMeta::open(&root.join("wharf/meta.db"))
        .await
        .context("opening the metadata database")?;
    let meta = Arc::new(meta);
    let registry = Arc::new(wharf_core::Registry::new(
        Arc::new(blobs),
        meta.clone(),
        wharf_core::CoreConfig {
            delete_enabled: cfg.storage.delete.enabled,
            delete_referrers: cfg.storage.delete.referrers == config::Referrers::Delete,
            sparse_manifests: cfg.storage.manifests.sparse,
        },
    ));
    Ok((registry, meta))
}

async fn run(cfg: Config, started: Instant) -> anyhow::Result<()> {
    let root = cfg.storage.root().to_owned();
    // What can fail for reasons outside the data directory (the port is
    // taken, the key does not load) fails before anything is created there.
    let tls = cfg
        .http
        .tls
        .files()
        .map(|t| tls::acceptor(&t, !cfg.http.http2.disabled))
        .transpose()?;
    let listener = server::bind(&config::listen_addrs(&cfg.http.addr)?).await?;
    let local = listener.local_addr()?;
    let debug_listener = match &cfg.http.debug.addr {
        Some(a) => Some(
            server::bind(&config::listen_addrs(a)?)
                .await
                .context("http.debug.addr")?,
        ),
        None => None,
    };
    let metrics_on_debug = debug_listener.is_some() && cfg.http.debug.prometheus.enabled;
    let fresh = FreshDataDir::new(&root);
    run_as::become_service_user(&root)?;
    let (registry, meta) = open_registry(&cfg).await?;
    if note_distribution_root(&root, meta.as_ref()).await? {
        if cfg.storage.import.auto {
            let (root, meta) = (root.clone(), meta.clone());
            tracing::info!(
                data = %root.display(),
                "found a distribution root that is not fully imported: importing it in the \
                 background (repositories appear as they are done; garbage collection waits \
                 until it is complete)"
            );
            tokio::spawn(async move {
                let view = ImportProgressView::new(false);
                match wharf_core::import::import(&root, meta, false, &view).await {
                    Ok(r) => {
                        tracing::info!(
                            repositories = r.repositories,
                            tags = r.tags,
                            manifests = r.manifests,
                            blob_links = r.blob_links,
                            problems = r.problem_count,
                            seconds = r.seconds,
                            "distribution root imported"
                        );
                        for p in &r.problems {
                            tracing::warn!(problem = %p, "not imported as it is");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "importing the distribution root failed; run wharf import")
                    }
                }
            });
        } else {
            tracing::warn!(
                data = %root.display(),
                "found a distribution root that is not fully imported and storage.import.auto \
                 is off: run wharf import; garbage collection waits until then"
            );
        }
    }
    let auth = access::build(&cfg.auth, meta.clone(), &root).await?;
    if auth.is_some()
        && cfg.http.tls.files().is_none()
        && config::listen_addrs(&cfg.http.addr)?
            .iter()
            .any(|a| !a.ip().is_loopback())
    {
        tracing::warn!(
            addr = %cfg.http.addr,
            "access control is on without TLS on a non-loopback address: passwords and tokens \
             cross the network in clear text. Set http.tls.certificate and http.tls.key \
             (or terminate TLS in front of Wharf and set http.host to its https URL)"
        );
    }
    let state = Arc::new(wharf_api::AppState::new(
        registry.clone(),
        wharf_api::ApiConfig {
            base_url: cfg.http.host.clone(),
            gc_grace: cfg.storage.maintenance.gc.grace,
            gc_untagged_age: cfg.storage.untagged_age(),
            body_idle: cfg.http.timeouts.bodyidle,
            max_uploads: cfg.http.limits.uploads,
            max_uploads_per_client: cfg.http.limits.uploadsperclient,
            metrics_on_main: !metrics_on_debug,
        },
        auth,
    ));
    let mut app = wharf_api::router(state.clone());
    if !cfg.http.headers.is_empty() {
        let mut extra = Vec::new();
        for (k, vs) in &cfg.http.headers {
            let name =
                HeaderName::try_from(k.as_str()).with_context(|| format!("http.headers: {k:?}"))?;
            for v in vs.values() {
                let v = HeaderValue::try_from(v.as_str())
                    .with_context(|| format!("http.headers: {k}: {v:?}"))?;
                extra.push((name.clone(), v));
            }
        }
        let extra = Arc::new(extra);
        app = app.layer(axum::middleware::map_response(
            move |mut r: axum::response::Response| {
                let extra = extra.clone();
                async move {
                    for (k, v) in extra.iter() {
                        r.headers_mut().append(k.clone(), v.clone());
                    }
                    r
                }
            },
        ));
    }

    if cfg.storage.maintenance.uploadpurging.enabled {
        let p = cfg.storage.maintenance.uploadpurging.clone();
        let reg = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(p.interval);
            loop {
                tick.tick().await;
                match reg.purge_stale_uploads(p.age, p.dryrun).await {
                    Ok(0) => {}
                    Ok(n) if p.dryrun => tracing::info!(
                        stale = n,
                        "upload purging is in dry-run mode: would remove stale upload sessions"
                    ),
                    Ok(n) => tracing::info!(purged = n, "removed stale upload sessions"),
                    Err(e) => tracing::error!(error = %e, "purging stale uploads failed"),
                }
            }
        });
    }

    if cfg.storage.maintenance.gc.enabled {
        let g = cfg.storage.maintenance.gc.clone();
        let untagged_age = cfg.storage.untagged_age();
        let reg = registry.clone();
        let audit = state.auth.as_ref().map(|a| a.audit_log().clone());
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + g.interval, g.interval);
            loop {
                tick.tick().await;
                match collect(&reg, g.grace, untagged_age, false, audit.as_ref()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => {
                        tracing::info!(reason = %why, "scheduled garbage collection skipped")
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled garbage collection failed"),
                }
            }
        });
    }

    {
        let reg = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(wharf_core::PULL_FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(e) = reg.flush_pulls().await {
                    tracing::warn!(error = %e, "recording pull times failed");
                }
            }
        });
    }

    if let Some(interval) = cfg.storage.retention_interval() {
        let reg = registry.clone();
        let meta = meta.clone();
        let auth = state.auth.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tick.tick().await;
                apply_retention(&reg, meta.as_ref(), auth.as_deref()).await;
            }
        });
    }

    if let Some(l) = debug_listener {
        let debug_local = l.local_addr()?;
        let path = metrics_on_debug.then_some(cfg.http.debug.prometheus.path.as_str());
        let app = wharf_api::debug_router(state.clone(), path);
        let opts = wharf_api::server::ServeOptions {
            header_timeout: cfg.http.timeouts.header,
            write_idle: cfg.http.timeouts.writeidle,
            idle: cfg.http.timeouts.idle,
            ..Default::default()
        };
        tracing::info!(addr = %debug_local, metrics = path.unwrap_or("(on the registry's address)"), "debug server listening");
        tokio::spawn(wharf_api::server::serve(
            l,
            app,
            opts,
            std::future::pending(),
        ));
    }
    fresh.keep();
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        data = %root.display(),
        delete_enabled = cfg.storage.delete.enabled,
        startup_ms = started.elapsed().as_millis() as u64,
        "wharf {} listening", env!("CARGO_PKG_VERSION")
    );
    // Scripts and tests wait for this line on stdout: the port is bound.
    println!(
        "wharf listening on {local} ({}), data in {}",
        if tls.is_some() { "https" } else { "http" },
        root.display()
    );

    let opts = wharf_api::server::ServeOptions {
        tls,
        http2: !cfg.http.http2.disabled,
        drain: cfg.http.draintimeout,
        header_timeout: cfg.http.timeouts.header,
        write_idle: cfg.http.timeouts.writeidle,
        idle: cfg.http.timeouts.idle,
        connections_per_client: cfg.http.limits.connectionsperclient,
        trusted_proxies: Arc::new(cfg.http.trustedproxies.clone()),
    };
    wharf_api::server::serve(listener, app, opts, shutdown_signal()).await;
    if let Err(e) = registry.flush_pulls().await {
        tracing::warn!(error = %e, "recording pull times failed");
    }
    // The last second of records would otherwise go with the process.
    if let Some(auth) = &state.auth {
        auth.audit_log().flush().await;
    }
    tracing::info!("wharf stopped");
    Ok(())
}

/// One scheduled pass of every project's retention rules.
async fn apply_retention(
    reg: &wharf_core::Registry,
    meta: &dyn wharf_meta::MetaStore,
    auth: Option<&wharf_auth::Auth>,
) {
    let projects = match meta.project_policies().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading project policies failed");
            return;
        }
    };
    for (project, policy) in projects {
        if policy.retention.is_empty() {
            continue;
        }
        match reg.apply_retention(&project, false).await {
            Ok(r) => {
                if !r.tags.is_empty() {
                    tracing::info!(%project, tags = r.tags.len(), manifests = r.manifests, "retention removed tags");
                }
                if let Some(auth) = auth {
                    for t in &r.tags {
                        auth.audit(
                            "system:retention",
                            None,
                            "retention.delete",
                            &format!("{}:{}", t.repo, t.tag),
                            "ok",
                        )
                        .await;
                    }
                }
            }
            Err(e) => tracing::error!(%project, error = %e, "applying retention rules failed"),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without signal handlers we can only run until killed.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::FreshDataDir;

    #[test]
    fn a_failed_first_start_leaves_no_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        // Did not exist: removed.
        let root = dir.path().join("new");
        let guard = FreshDataDir::new(&root);
        std::fs::create_dir_all(root.join("wharf")).unwrap();
        std::fs::write(root.join("wharf/meta.db"), b"x").unwrap();
        drop(guard);
        assert!(!root.exists());
        // Existed empty (a fresh volume): emptied, kept.
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let guard = FreshDataDir::new(&volume);
        std::fs::create_dir_all(volume.join("wharf")).unwrap();
        std::fs::write(volume.join("file"), b"x").unwrap();
        drop(guard);
        assert!(volume.exists());
        assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 0);
        // Held data already: untouched.
        std::fs::write(volume.join("precious"), b"x").unwrap();
        let guard = FreshDataDir::new(&volume);
        std::fs::write(volume.join("wharf-made"), b"x").unwrap();
        drop(guard);
        assert!(volume.join("precious").exists() && volume.join("wharf-made").exists());
        // Once the server is up, nothing is removed whatever happens later.
        let root = dir.path().join("served");
        let guard = FreshDataDir::new(&root);
        std::fs::create_dir_all(root.join("wharf")).unwrap();
        guard.keep();
        assert!(root.join("wharf").exists());
    }
}
