//! Parsing of `/v2/...` paths into endpoints.
//!
//! Repository names contain `/`, so the path is parsed from the right: the
//! last one or two segments say which endpoint it is, everything before them is
//! the name.

use wharf_oci::{Digest, Reference, RepoName};

use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/manifests/<reference>` whose reference is neither a valid
    /// tag nor a valid digest: it names nothing stored (404 on reads and
    /// deletes), and cannot be pushed to (400).
    ManifestBadRef(RepoName, BadRef),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

/// Why a manifest reference is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRef {
    Tag,
    /// Looks like a digest (has a `:`) but is not a valid one.
    Digest(String),
}

impl BadRef {
    /// The answer to a push to this reference.
    pub fn put_error(&self) -> ApiError {
        match self {
            BadRef::Tag => ApiError::msg(ErrorCode::ManifestInvalid, "invalid tag"),
            BadRef::Digest(e) => ApiError::msg(ErrorCode::DigestInvalid, e.clone()),
        }
    }
}

impl Endpoint {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) | Endpoint::ManifestBadRef(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }

    /// Parses the part of the path after `/v2/`, as sent (percent-encoded):
    /// each segment is decoded on its own, so an encoded `/` cannot make a
    /// segment look like two (it makes the name, digest or session id
    /// invalid instead).
    pub fn parse(rest: &str) -> Result<Endpoint, ApiError> {
        let not_found = || ApiError::new(ErrorCode::NoSuchEndpoint);
        let decoded: Vec<std::borrow::Cow<'_, str>> = rest
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8())
            .collect::<Result<_, _>>()
            .map_err(|_| not_found())?;
        let segs: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        if segs == [""] {
            return Ok(Endpoint::Base);
        }
        if segs == ["_catalog"] {
            return Ok(Endpoint::Catalog);
        }
        let n = segs.len();
        let name = |k: usize| -> Result<RepoName, ApiError> {
            // A component holding an encoded `/` is no component.
            if segs[..n - k].iter().any(|s| s.contains('/')) {
                return Err(ApiError::new(ErrorCode::NameInvalid));
            }
            segs[..n - k]
                .join("/")
                .parse()
                .map_err(|_| ApiError::new(ErrorCode::NameInvalid))
        };
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Endpoint::Tags(name(2)?));
        }
        // `…/blobs/uploads` and `…/blobs/uploads/`
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Ok(Endpoint::UploadStart(name(2)?));
        }
        if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let id = segs[n - 1];
            if id.is_empty() {
                return Ok(Endpoint::UploadStart(name(3)?));
            }
            // Our ids are UUIDs; anything else cannot name an upload of ours.
            return match uuid::Uuid::parse_str(id) {
                Ok(u) => Ok(Endpoint::Upload(name(3)?, u.hyphenated().to_string())),
                Err(_) => {
                    name(3)?;
                    Err(ApiError::new(ErrorCode::BlobUploadUnknown))
                }
            };
        }
        if n >= 3 && segs[n - 2] == "manifests" {
            let repo = name(2)?;
            return Ok(match segs[n - 1].parse::<Reference>() {
                Ok(r) => Endpoint::Manifest(repo, r),
                Err(wharf_oci::ReferenceError::Digest(e)) => {
                    Endpoint::ManifestBadRef(repo, BadRef::Digest(e.to_string()))
                }
                Err(wharf_oci::ReferenceError::Tag(_)) => {
                    Endpoint::ManifestBadRef(repo, BadRef::Tag)
                }
            });
        }
        if n >= 3 && (segs[n - 2] == "blobs" || segs[n - 2] == "referrers") {
            let repo = name(2)?;
            let d = segs[n - 1]
                .parse::<Digest>()
                .map_err(|e| ApiError::msg(ErrorCode::DigestInvalid, e.to_string()))?;
            return Ok(if segs[n - 2] == "blobs" {
                Endpoint::Blob(repo, d)
            } else {
                Endpoint::Referrers(repo, d)
            });
        }
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn ok(p: &str) -> Endpoint {
        Endpoint::parse(p).unwrap_or_else(|e| panic!("{p}: {e:?}"))
    }

    fn code(p: &str) -> ErrorCode {
        Endpoint::parse(p).unwrap_err().code
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(ok(""), Endpoint::Base);
        assert_eq!(ok("_catalog"), Endpoint::Catalog);
        assert!(matches!(ok("a/b/c/tags/list"), Endpoint::Tags(n) if n.as_str() == "a/b/c"));
        assert!(
            matches!(ok("a/manifests/latest"), Endpoint::Manifest(n, Reference::Tag(_)) if n.as_str() == "a")
        );
        assert!(matches!(
            ok(&format!("a/b/manifests/{D}")),
            Endpoint::Manifest(_, Reference::Digest(_))
        ));
        assert!(matches!(ok(&format!("a/blobs/{D}")), Endpoint::Blob(n, _) if n.as_str() == "a"));
        assert!(
            matches!(ok("a/b/blobs/uploads/"), Endpoint::UploadStart(n) if n.as_str() == "a/b")
        );
        assert!(matches!(ok("a/b/blobs/uploads"), Endpoint::UploadStart(n) if n.as_str() == "a/b"));
        let id = "0f7e2a8c-1b3d-4e5f-8a9b-0c1d2e3f4a5b";
        assert!(matches!(ok(&format!("x/blobs/uploads/{id}")), Endpoint::Upload(_, u) if u == id));
        assert!(matches!(
            ok(&format!("x/referrers/{D}")),
            Endpoint::Referrers(..)
        ));
    }

    #[test]
    fn names_that_look_like_endpoints() {
        // Components named like endpoint keywords belong to the name.
        assert!(matches!(ok("blobs/tags/list"), Endpoint::Tags(n) if n.as_str() == "blobs"));
        assert!(
            matches!(ok("manifests/manifests/latest"), Endpoint::Manifest(n, _) if n.as_str() == "manifests")
        );
        assert!(
            matches!(ok(&format!("blobs/uploads/blobs/{D}")), Endpoint::Blob(n, _) if n.as_str() == "blobs/uploads")
        );
        assert!(
            matches!(ok("tags/list/tags/list"), Endpoint::Tags(n) if n.as_str() == "tags/list")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(code("a"), ErrorCode::NoSuchEndpoint);
        assert_eq!(code("a/b"), ErrorCode::NoSuchEndpoint);
        assert_eq!(code("tags/list"), ErrorCode::NoSuchEndpoint);
        assert_eq!(code("a/unknown/x"), ErrorCode::NoSuchEndpoint);
        assert_eq!(code("a/%ff/tags/list"), ErrorCode::NoSuchEndpoint);
        // An encoded slash stays inside its segment.
        assert_eq!(
            code("a/blobs/uploads/..%2F..%2Fetc"),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(code("a%2Fb/tags/list"), ErrorCode::NameInvalid);
        assert!(matches!(
            ok("a/manifests/x%2Fy"),
            Endpoint::ManifestBadRef(_, BadRef::Tag)
        ));
        assert!(matches!(ok("a/b%2Dc/tags/list"), Endpoint::Tags(n) if n.as_str() == "a/b-c"));
        assert_eq!(code("A/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("a//b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("../etc/blobs/uploads/"), ErrorCode::NameInvalid);
        assert_eq!(code("a/blobs/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("a/blobs/uploads/not-a-uuid"),
            ErrorCode::BlobUploadUnknown
        );
    }

    #[test]
    fn invalid_manifest_references_are_an_endpoint() {
        // The answer depends on the method: see `BadRef`.
        assert!(
            matches!(ok("a/manifests/-bad"), Endpoint::ManifestBadRef(n, BadRef::Tag) if n.as_str() == "a")
        );
        let long = "t".repeat(129);
        assert!(matches!(
            ok(&format!("a/manifests/{long}")),
            Endpoint::ManifestBadRef(_, BadRef::Tag)
        ));
        assert!(matches!(
            ok("a/b/manifests/sha256:zz"),
            Endpoint::ManifestBadRef(_, BadRef::Digest(_))
        ));
        assert_eq!(code("A/manifests/-bad"), ErrorCode::NameInvalid);
    }

    proptest! {
        #[test]
        fn never_panics(p in "[a-z0-9/:._-]{0,80}") {
            let _ = Endpoint::parse(&p);
        }

        #[test]
        fn never_panics_on_anything(p in "\\PC{0,80}") {
            let _ = Endpoint::parse(&p);
        }
    }
}
