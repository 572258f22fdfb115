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
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }

    /// Parses the part of the path after `/v2/` (already percent-decoded).
    pub fn parse(rest: &str) -> Result<Endpoint, ApiError> {
        if rest.is_empty() {
            return Ok(Endpoint::Base);
        }
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| -> Result<RepoName, ApiError> {
            segs[..n - k]
                .join("/")
                .parse()
                .map_err(|_| ApiError::new(ErrorCode::NameInvalid))
        };
        let not_found = || ApiError::new(ErrorCode::NotFound);
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
            let r = segs[n - 1].parse::<Reference>().map_err(|e| match e {
                wharf_oci::ReferenceError::Digest(e) => {
                    ApiError::msg(ErrorCode::DigestInvalid, e.to_string())
                }
                wharf_oci::ReferenceError::Tag(_) => {
                    ApiError::msg(ErrorCode::ManifestInvalid, "invalid tag")
                }
            })?;
            return Ok(Endpoint::Manifest(repo, r));
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
        assert_eq!(code("a"), ErrorCode::NotFound);
        assert_eq!(code("a/b"), ErrorCode::NotFound);
        assert_eq!(code("tags/list"), ErrorCode::NotFound);
        assert_eq!(code("a/unknown/x"), ErrorCode::NotFound);
        assert_eq!(code("A/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("a//b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("../etc/blobs/uploads/"), ErrorCode::NameInvalid);
        assert_eq!(code("a/blobs/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(
            code("a/blobs/uploads/not-a-uuid"),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(code("a/manifests/-bad"), ErrorCode::ManifestInvalid);
        assert_eq!(code("a/manifests/sha256:zz"), ErrorCode::DigestInvalid);
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
