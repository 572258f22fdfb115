//! What Wharf does with distribution's configuration keys that it does not
//! implement: accept them quietly (they need nothing here), warn (ignoring
//! them is harmless but the user should know), or refuse to start (ignoring
//! them would store data elsewhere or let someone in). Every key in neither
//! Wharf's sections nor this table is unknown, most likely a typo, and an
//! error: a misspelt `rootdirectory` must not send data to the default path.

/// What becomes of a key outside Wharf's own sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Needs nothing in Wharf (metadata lives in the database, for example).
    Accepted,
    /// Ignored, with this warning.
    Warn(&'static str),
    /// Refused, with this reason.
    Refuse(&'static str),
}

/// Distribution's keys (2.8 and 3.x) by prefix; the first match wins.
const KEYS: &[(&str, Disposition)] = &[
    ("version", Disposition::Accepted),
    ("storage.cache", Disposition::Accepted),
    ("storage.redirect", Disposition::Accepted),
    ("storage.filesystem.maxthreads", Disposition::Accepted),
    ("storage.tag", Disposition::Accepted),
    ("http.secret", Disposition::Accepted),
    ("http.relativeurls", Disposition::Accepted),
    // Wharf's /healthz checks the database and the storage itself.
    ("health.storagedriver", Disposition::Accepted),
    (
        "loglevel",
        Disposition::Warn("deprecated in distribution and not read: use log.level"),
    ),
    (
        "log.hooks",
        Disposition::Warn("log hooks (mail) are not supported: nothing is mailed"),
    ),
    (
        "log.fields",
        Disposition::Warn("not supported: log lines do not carry these fields"),
    ),
    (
        "http.prefix",
        Disposition::Warn("not supported: Wharf serves /v2/ at the root of its address"),
    ),
    (
        "http.h2c",
        Disposition::Warn("not supported: HTTP/2 is served over TLS only"),
    ),
    (
        "http.tls.ciphersuites",
        Disposition::Warn("not supported: rustls's default cipher suites are used"),
    ),
    (
        "middleware",
        Disposition::Warn("not supported: blobs are served by Wharf itself, never redirected"),
    ),
    (
        "reporting",
        Disposition::Warn("not supported: nothing is reported to Bugsnag or New Relic"),
    ),
    (
        "notifications",
        Disposition::Warn("not supported yet: no events are sent"),
    ),
    (
        "redis",
        Disposition::Warn("not needed: Wharf keeps its metadata and caches in its database"),
    ),
    (
        "health",
        Disposition::Warn("not supported: /healthz checks the database and storage only"),
    ),
    (
        "compatibility",
        Disposition::Warn("not supported: Docker schema 1 manifests are refused"),
    ),
    (
        "validation",
        Disposition::Warn("not supported: manifests are validated by Wharf's own rules"),
    ),
    (
        "auth.token.autoredirect",
        Disposition::Warn("not supported: the token realm is used as configured"),
    ),
    (
        "auth.token.signingalgorithms",
        Disposition::Warn("not needed: the algorithm comes from each token's key"),
    ),
    (
        "auth.silly",
        Disposition::Refuse(
            "the silly authenticator accepts anyone; use auth.htpasswd, auth.token or auth.builtin",
        ),
    ),
    (
        "http.tls.clientcas",
        Disposition::Refuse("client certificate authentication is not supported yet"),
    ),
    (
        "http.tls.clientauth",
        Disposition::Refuse("client certificate authentication is not supported yet"),
    ),
    (
        "http.tls.letsencrypt",
        Disposition::Refuse(
            "Let's Encrypt certificates are not supported; give http.tls.certificate and http.tls.key",
        ),
    ),
    (
        "storage.s3",
        Disposition::Refuse("the S3 storage driver is not supported yet"),
    ),
    (
        "storage.azure",
        Disposition::Refuse("the Azure storage driver is not supported yet"),
    ),
    (
        "storage.gcs",
        Disposition::Refuse("the GCS storage driver is not supported yet"),
    ),
    (
        "storage.swift",
        Disposition::Refuse("the Swift storage driver is not supported"),
    ),
    (
        "storage.oss",
        Disposition::Refuse("the OSS storage driver is not supported"),
    ),
    (
        "storage.inmemory",
        Disposition::Refuse("the in-memory storage driver is not supported"),
    ),
    (
        "proxy",
        Disposition::Refuse("pull-through cache mode is not supported yet"),
    ),
];

/// The entry for `key` (a dotted path) and the prefix it matched.
pub fn disposition(key: &str) -> Option<(&'static str, Disposition)> {
    KEYS.iter()
        .find(|(prefix, _)| {
            key == *prefix
                || key
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(
            disposition("storage.s3.bucket").map(|d| d.0),
            Some("storage.s3")
        );
        assert_eq!(disposition("storage.s3x"), None);
        assert_eq!(
            disposition("health.storagedriver.enabled"),
            Some(("health.storagedriver", Disposition::Accepted))
        );
        assert!(matches!(
            disposition("health.tcp.0.addr"),
            Some(("health", Disposition::Warn(_)))
        ));
    }
}
