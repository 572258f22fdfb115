//! Builds access control from the `auth` configuration.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use wharf_auth::{AuditLog, Auth, Mode, Settings, htpasswd::Htpasswd, token};
use wharf_meta::AuthStore;

use crate::config::{AuthConfig, AuthMode};

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
        max_failed_logins: cfg.lockout_attempts,
        failed_login_window: cfg.lockout_window,
        ..Settings::default()
    };
    let mut external_keys = Vec::new();
    let mode = match &cfg.mode {
        AuthMode::None => return Ok(None),
        AuthMode::Htpasswd { realm, path } => Mode::Htpasswd {
            realm: realm.clone(),
            file: Arc::new(Htpasswd::open(path.clone()).context("auth.htpasswd.path")?),
        },
        AuthMode::Token {
            realm,
            service,
            issuer,
            rootcertbundle,
            jwks,
        } => {
            settings.service = service.clone();
            settings.issuer = issuer.clone();
            if let Some(p) = rootcertbundle {
                let pem = std::fs::read_to_string(p)
                    .with_context(|| format!("auth.token.rootcertbundle {}", p.display()))?;
                external_keys.extend(
                    token::VerifyKey::from_cert_bundle(&pem)
                        .with_context(|| format!("auth.token.rootcertbundle {}", p.display()))?,
                );
            }
            if let Some(p) = jwks {
                let json = std::fs::read_to_string(p)
                    .with_context(|| format!("auth.token.jwks {}", p.display()))?;
                external_keys.extend(
                    token::VerifyKey::from_jwks(&json)
                        .with_context(|| format!("auth.token.jwks {}", p.display()))?,
                );
            }
            Mode::External {
                realm: realm.clone(),
            }
        }
        AuthMode::Builtin {
            service,
            issuer,
            tokenexpiration,
            refreshexpiration,
            ..
        } => {
            settings.service = service.clone();
            settings.issuer = issuer.clone();
            settings.token_ttl = *tokenexpiration;
            settings.refresh_ttl = *refreshexpiration;
            let path = signing_key_path(root);
            Mode::Builtin {
                signer: Box::new(
                    token::Signer::load_or_create(&path)
                        .with_context(|| format!("token signing key {}", path.display()))?,
                ),
            }
        }
    };
    let audit = AuditLog::spawn(store.clone(), cfg.audit_retention);
    let auth = Arc::new(Auth::new(store, mode, settings, external_keys, audit));
    if let AuthMode::Builtin {
        admin_name,
        admin_passwordfile,
        ..
    } = &cfg.mode
    {
        let given = match (std::env::var("WHARF_ADMIN_PASSWORD"), admin_passwordfile) {
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
