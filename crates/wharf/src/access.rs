//! Builds access control from the `auth` configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use wharf_auth::{AuditLog, Auth, Mode, Settings, htpasswd::Htpasswd, token};
use wharf_meta::AuthStore;

use crate::config::{Auth as AuthConfig, AuthMode};

/// Where the token signing key lives in the data directory.
pub fn signing_key_path(root: &Path) -> std::path::PathBuf {
    root.join("wharf/token-signing.pem")
}

pub async fn build(
    cfg: &AuthConfig,
    store: Arc<dyn AuthStore>,
    root: &Path,
) -> anyhow::Result<Option<Arc<Auth>>> {
    let mut settings = Settings {
        max_failed_logins: cfg.lockout.attempts,
        failed_login_window: cfg.lockout.window,
        max_unknown_logins: cfg.lockout.unknownattempts,
        login_delay: cfg.lockout.delay,
        max_login_delay: cfg.lockout.maxdelay,
        ..Settings::default()
    };
    let mut external_keys = Vec::new();
    let mode = match cfg.mode() {
        AuthMode::None => return Ok(None),
        AuthMode::Htpasswd(h) => {
            let path = h.path.clone().context("auth.htpasswd.path is required")?;
            Mode::Htpasswd {
                realm: h.realm.clone(),
                file: Arc::new(Htpasswd::open(path).context("auth.htpasswd.path")?),
            }
        }
        AuthMode::Token(t) => {
            settings.service = t.service.clone();
            settings.issuer = t.issuer.clone();
            if let Some(p) = &t.rootcertbundle {
                let pem = std::fs::read_to_string(p)
                    .with_context(|| format!("auth.token.rootcertbundle {}", p.display()))?;
                external_keys.extend(
                    token::VerifyKey::from_cert_bundle(&pem)
                        .with_context(|| format!("auth.token.rootcertbundle {}", p.display()))?,
                );
            }
            if let Some(p) = &t.jwks {
                let json = std::fs::read_to_string(p)
                    .with_context(|| format!("auth.token.jwks {}", p.display()))?;
                external_keys.extend(
                    token::VerifyKey::from_jwks(&json)
                        .with_context(|| format!("auth.token.jwks {}", p.display()))?,
                );
            }
            Mode::External {
                realm: t.realm.clone(),
            }
        }
        AuthMode::Builtin(b) => {
            settings.service = b.service.clone();
            settings.issuer = b.issuer.clone();
            settings.token_ttl = b.tokenexpiration;
            settings.refresh_ttl = b.refreshexpiration;
            let path = signing_key_path(root);
            Mode::Builtin {
                signer: Box::new(
                    token::Signer::load_or_create(&path)
                        .with_context(|| format!("token signing key {}", path.display()))?,
                ),
            }
        }
    };
    let audit = AuditLog::spawn(store.clone(), cfg.audit.retention);
    let auth = Arc::new(Auth::new(store, mode, settings, external_keys, audit));
    if let AuthMode::Builtin(b) = cfg.mode() {
        let admin_name = &b.admin.name;
        let given = match (std::env::var("WHARF_ADMIN_PASSWORD"), &b.admin.passwordfile) {
            (Ok(p), _) if !p.is_empty() => Some(p),
            (_, Some(f)) => {
                let p = std::fs::read_to_string(f)
                    .with_context(|| format!("auth.builtin.admin.passwordfile {}", f.display()))?;
                let p = p.trim_end_matches(['\n', '\r']).to_owned();
                if p.is_empty() {
                    bail!("auth.builtin.admin.passwordfile {} is empty", f.display());
                }
                Some(p)
            }
            _ => None,
        };
        if !wharf_auth::valid_user_name(admin_name) {
            bail!("auth.builtin.admin.name {admin_name:?} is not a valid user name");
        }
        if let Some(pw) = auth
            .bootstrap_admin(admin_name, given)
            .await
            .context("creating the administrator")?
        {
            // Printed once, to the terminal, never to the log.
            println!(
                "created administrator {admin_name:?} with password: {pw}\n(change it with `wharf user passwd {admin_name}`; it is not shown again)"
            );
        }
    }
    Ok(Some(auth))
}
