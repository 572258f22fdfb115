//! A real Wharf API on 127.0.0.1:0 with the embedded backends, for tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;
use wharf_api::{ApiConfig, AppState};
use wharf_core::{CoreConfig, Registry};

pub struct TestRegistryBuilder {
    data: Option<PathBuf>,
    delete_enabled: bool,
    delete_referrers: bool,
    sparse_manifests: bool,
    auth: Option<AuthSetup>,
    api: ApiConfig,
    serve: wharf_api::server::ServeOptions,
}

/// Access control for a test registry.
pub enum AuthSetup {
    /// Built-in users, with administrator `admin` / [`ADMIN_PASSWORD`].
    Builtin { lockout_attempts: u32 },
    /// An htpasswd file.
    Htpasswd(PathBuf),
    /// Tokens from an external issuer (`iss` "ext-issuer", service "ext-registry").
    External(Vec<wharf_auth::token::VerifyKey>),
}

pub const ADMIN_PASSWORD: &str = "admin-password";

pub struct TestRegistry {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub client: reqwest::Client,
    pub data: PathBuf,
    pub auth: Option<Arc<wharf_auth::Auth>>,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRegistry {
    pub fn builder() -> TestRegistryBuilder {
        TestRegistryBuilder {
            data: None,
            delete_enabled: true,
            delete_referrers: true,
            sparse_manifests: false,
            auth: None,
            api: ApiConfig::default(),
            serve: wharf_api::server::ServeOptions::default(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A bodiless request to `path`.
    pub async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .send()
            .await
            .unwrap()
    }

    /// The status of a bodiless request to `path`.
    pub async fn status(&self, method: reqwest::Method, path: &str) -> u16 {
        self.client
            .request(method, self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Stops the server and waits until it has let go of the data directory.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self._tmp.take()
    }
}

impl TestRegistryBuilder {
    /// Use an existing data directory (to test restarts).
    pub fn data(mut self, p: &Path) -> Self {
        self.data = Some(p.to_owned());
        self
    }

    pub fn auth(mut self, a: AuthSetup) -> Self {
        self.auth = Some(a);
        self
    }

    pub fn sparse_manifests(mut self, on: bool) -> Self {
        self.sparse_manifests = on;
        self
    }

    pub fn delete_referrers(mut self, on: bool) -> Self {
        self.delete_referrers = on;
        self
    }

    pub fn delete_enabled(mut self, on: bool) -> Self {
        self.delete_enabled = on;
        self
    }

    /// Settings of the API layer (limits, timeouts of bodies).
    pub fn api(mut self, f: impl FnOnce(&mut ApiConfig)) -> Self {
        f(&mut self.api);
        self
    }

    /// Settings of the connection layer (timeouts, connection limits).
    pub fn serve(mut self, f: impl FnOnce(&mut wharf_api::server::ServeOptions)) -> Self {
        f(&mut self.serve);
        self
    }

    pub async fn spawn(self) -> TestRegistry {
        let (tmp, data) = match self.data {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(data.join("wharf")).unwrap();
        let blobs = wharf_store::fs::FsBlobStore::open(&data).unwrap();
        let meta = wharf_meta::sqlite::SqliteMeta::open(&data.join("wharf/meta.db"))
            .await
            .unwrap();
        let meta = Arc::new(meta);
        let auth = match self.auth {
            None => None,
            Some(setup) => {
                let mut settings = wharf_auth::Settings::default();
                let mut external_keys = Vec::new();
                let mode = match setup {
                    AuthSetup::Builtin { lockout_attempts } => {
                        settings.max_failed_logins = lockout_attempts;
                        // Unknown names get twice the allowance (as the
                        // defaults, 10 and 30, roughly do).
                        settings.max_unknown_logins = lockout_attempts.saturating_mul(2);
                        // Blocks that outlast a slow test run (the default
                        // first one is 1 s).
                        settings.login_delay = std::time::Duration::from_secs(60);
                        wharf_auth::Mode::Builtin {
                            signer: Box::new(
                                wharf_auth::token::Signer::load_or_create(
                                    &data.join("wharf/token-signing.pem"),
                                )
                                .unwrap(),
                            ),
                        }
                    }
                    AuthSetup::Htpasswd(p) => wharf_auth::Mode::Htpasswd {
                        realm: "test-realm".into(),
                        file: Arc::new(wharf_auth::htpasswd::Htpasswd::open(p).unwrap()),
                    },
                    AuthSetup::External(ref keys) => {
                        settings.issuer = "ext-issuer".into();
                        settings.service = "ext-registry".into();
                        external_keys = keys.clone();
                        wharf_auth::Mode::External {
                            realm: "https://auth.example.com/token".into(),
                        }
                    }
                };
                let audit =
                    wharf_auth::AuditLog::spawn(meta.clone(), std::time::Duration::from_secs(3600));
                let a = Arc::new(wharf_auth::Auth::new(
                    meta.clone(),
                    mode,
                    settings,
                    external_keys,
                    audit,
                ));
                if matches!(a.mode(), wharf_auth::Mode::Builtin { .. }) {
                    a.bootstrap_admin("admin", Some(ADMIN_PASSWORD.into()))
                        .await
                        .unwrap();
                }
                Some(a)
            }
        };
        let registry = Arc::new(Registry::new(
            Arc::new(blobs),
            meta,
            CoreConfig {
                delete_enabled: self.delete_enabled,
                delete_referrers: self.delete_referrers,
                sparse_manifests: self.sparse_manifests,
            },
        ));
        let app = wharf_api::router(Arc::new(AppState::new(
            registry.clone(),
            self.api,
            auth.clone(),
        )));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let opts = self.serve;
        // The server's own connection handling, as `wharf serve` runs it.
        let task = tokio::spawn(async move {
            wharf_api::server::serve(listener, app, opts, async {
                let _ = rx.await;
            })
            .await;
        });
        TestRegistry {
            addr,
            registry,
            client: http_client(),
            data,
            auth,
            _tmp: tmp,
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

/// An HTTP client. The workspace builds reqwest without a default TLS
/// provider (the binary names ring explicitly), so install ring first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex(&sha2::Sha512::digest(data)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The OCI error code of a response body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_owned()
}

impl TestRegistry {
    /// Pushes a blob in one request; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "push_blob {repo}");
        d
    }

    /// Pushes an image manifest with a config and one layer; returns (manifest
    /// digest, manifest bytes).
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (String, Vec<u8>) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer of {seed}").repeat(100);
        let cd = self.push_blob(repo, config.as_bytes()).await;
        let ld = self.push_blob(repo, layer.as_bytes()).await;
        let m = image_manifest(&cd, config.len(), &[(&ld, layer.len())], None);
        let r = self.put_manifest(repo, tag, &m, OCI_MANIFEST).await;
        assert_eq!(r.status(), 201, "push_image {repo}:{tag}");
        (sha256(&m), m)
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        body: &[u8],
        ct: &str,
    ) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", ct)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub fn image_manifest(
    config: &str,
    config_size: usize,
    layers: &[(&str, usize)],
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d,"size":s}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":config,"size":config_size},
        "layers": layers,
    });
    if let Some((d, s)) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s});
    }
    serde_json::to_vec(&m).unwrap()
}
