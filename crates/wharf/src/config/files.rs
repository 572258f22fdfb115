//! Checks of the files a configuration names: that they exist, can be read
//! and hold what they should (a certificate and the key that matches it, an
//! htpasswd file, certificate bundles). `wharf config check` and `wharf
//! serve` run the same checks, so the server refuses exactly what the check
//! calls an error, before it creates or opens anything.

use std::path::Path;

use super::{Config, Report};

/// Adds to `report` what is wrong with the files `c` names.
pub fn check(c: &Config, report: &mut Report) {
    if let Some(t) = c.http.tls.files() {
        check_tls(&t, report);
    }
    if let Some(h) = &c.auth.htpasswd
        && let Some(p) = &h.path
        && readable_file("auth.htpasswd.path", p, report)
    {
        match wharf_auth::htpasswd::Htpasswd::open(p.clone()) {
            Ok(f) if f.is_empty() => report.warn(
                "auth.htpasswd.path",
                format!("{} has no users: nobody can log in", p.display()),
            ),
            Ok(_) => {}
            Err(e) => report.error("auth.htpasswd.path", e),
        }
    }
    if let Some(t) = &c.auth.token {
        if let Some(p) = &t.rootcertbundle
            && readable_file("auth.token.rootcertbundle", p, report)
        {
            match std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|pem| {
                    wharf_auth::token::VerifyKey::from_cert_bundle(&pem).map_err(Into::into)
                }) {
                Ok(keys) if keys.is_empty() => report.error(
                    "auth.token.rootcertbundle",
                    format!("{} holds no certificate", p.display()),
                ),
                Ok(_) => {}
                Err(e) => report.error(
                    "auth.token.rootcertbundle",
                    format!("{}: {e:#}", p.display()),
                ),
            }
        }
        if let Some(p) = &t.jwks
            && readable_file("auth.token.jwks", p, report)
        {
            match std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|j| wharf_auth::token::VerifyKey::from_jwks(&j).map_err(Into::into))
            {
                Ok(keys) if keys.is_empty() => report.error(
                    "auth.token.jwks",
                    format!("{} holds no usable key", p.display()),
                ),
                Ok(_) => {}
                Err(e) => report.error("auth.token.jwks", format!("{}: {e:#}", p.display())),
            }
        }
    }
    if let Some(b) = &c.auth.builtin
        && let Some(p) = &b.admin.passwordfile
        && readable_file("auth.builtin.admin.passwordfile", p, report)
    {
        match std::fs::read_to_string(p) {
            Ok(s) if s.trim_end_matches(['\n', '\r']).is_empty() => {
                report.error(
                    "auth.builtin.admin.passwordfile",
                    format!("{} is empty", p.display()),
                );
            }
            Ok(_) => {}
            Err(e) => report.error(
                "auth.builtin.admin.passwordfile",
                format!("{}: {e}", p.display()),
            ),
        }
    }
    check_data_dir(c.storage.root(), report);
}

/// Whether `p` is a regular file this process can read; if not, why goes
/// into the report.
fn readable_file(key: &str, p: &Path, report: &mut Report) -> bool {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.error(key, format!("{} does not exist", p.display()));
            false
        }
        Err(e) => {
            report.error(key, format!("{}: {e}", p.display()));
            false
        }
        Ok(m) if m.is_dir() => {
            report.error(key, format!("{} is a directory, not a file", p.display()));
            false
        }
        Ok(_) => match std::fs::File::open(p) {
            Ok(_) => true,
            Err(e) => {
                report.error(key, format!("{} cannot be read: {e}", p.display()));
                false
            }
        },
    }
}

fn check_tls(t: &super::TlsFiles, report: &mut Report) {
    let cert_ok = readable_file("http.tls.certificate", &t.certificate, report);
    let key_ok = readable_file("http.tls.key", &t.key, report);
    if !(cert_ok && key_ok) {
        return;
    }
    match crate::tls::server_config(t, true) {
        Ok(_) => {}
        Err(e) => report.error("http.tls", format!("{e:#}")),
    }
    match crate::tls::validity(&t.certificate) {
        Ok(Some(problem)) => report.warn("http.tls.certificate", problem),
        Ok(None) => {}
        Err(e) => report.error("http.tls.certificate", format!("{e:#}")),
    }
}

/// The data directory must be a directory this process can write, or be
/// creatable: checked without creating anything.
fn check_data_dir(root: &Path, report: &mut Report) {
    const KEY: &str = "storage.filesystem.rootdirectory";
    let mut probe = root;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if !m.is_dir() => {
                report.error(KEY, format!("{} is not a directory", probe.display()));
                return;
            }
            Ok(_) => {
                if !writable(probe) {
                    let what = if probe == root {
                        "cannot be written by this user".to_owned()
                    } else {
                        format!(
                            "does not exist and {} cannot be written by this user",
                            probe.display()
                        )
                    };
                    report.error(KEY, format!("{}: {what}", root.display()));
                }
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                report.error(
                    KEY,
                    format!("{}: a part of it is not a directory", root.display()),
                );
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => return,
            },
            Err(e) => {
                report.error(KEY, format!("{}: {e}", probe.display()));
                return;
            }
        }
    }
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access only reads the NUL-terminated path it is given.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}
