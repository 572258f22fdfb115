//! Blob and upload endpoints.

use std::ops::RangeInclusive;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use wharf_core::ByteStream;
use wharf_core::{ChunkRange, MountResult, UploadState};
use wharf_oci::{Digest, RepoName};

use crate::error::upload_range;
use crate::{ApiError, ApiResult, Ctx, ErrorCode, empty, set_header};

fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream()
        .map_err(std::io::Error::other)
        .boxed()
}

fn upload_accepted(ctx: &Ctx, name: &RepoName, s: &UploadState, status: StatusCode) -> Response {
    let mut r = empty(status);
    set_header(
        &mut r,
        "location",
        &ctx.url(&format!("/v2/{name}/blobs/uploads/{}", s.id)),
    );
    set_header(&mut r, "docker-upload-uuid", &s.id);
    set_header(&mut r, "range", &upload_range(s.size));
    r
}

fn blob_created(ctx: &Ctx, name: &RepoName, d: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    set_header(
        &mut r,
        "location",
        &ctx.url(&format!("/v2/{name}/blobs/{d}")),
    );
    set_header(&mut r, "docker-content-digest", d.as_str());
    r
}

fn digest_param(ctx: &Ctx, key: &str) -> Result<Option<Digest>, ApiError> {
    ctx.query
        .get(key)
        .map(|v| {
            v.parse().map_err(|e: wharf_oci::DigestError| {
                ApiError::msg(ErrorCode::DigestInvalid, e.to_string())
            })
        })
        .transpose()
}

/// Parses a blob `Range` request header. `Ok(None)`: serve the whole blob (no
/// header, or a form we choose to ignore as RFC 9110 allows). `Err`: 416.
fn parse_range(h: Option<&str>, size: u64) -> Result<Option<RangeInclusive<u64>>, ()> {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last n bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        return Ok(Some(size.saturating_sub(n)..=size - 1));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Ok(None),
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some(start..=end.min(size - 1)))
}

/// Parses an upload chunk's `Content-Range`: `a-b`, `bytes=a-b` or `bytes a-b/total`.
fn parse_content_range(h: Option<&str>) -> Result<Option<ChunkRange>, ApiError> {
    let Some(h) = h else { return Ok(None) };
    let bad = || {
        ApiError::msg(
            ErrorCode::RangeInvalid,
            format!("invalid Content-Range {h:?}"),
        )
    };
    let s = h.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or("");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = a.trim().parse::<u64>().map_err(|_| bad())?;
    let end = b.trim().parse::<u64>().map_err(|_| bad())?;
    Ok(Some(ChunkRange { start, end }))
}

/// Whether the request carries a body worth appending.
fn has_body(ctx: &Ctx) -> bool {
    match ctx.header(header::CONTENT_LENGTH) {
        Some(cl) => cl.trim() != "0",
        None => ctx.headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub(crate) async fn get(ctx: Ctx, name: RepoName, digest: Digest) -> ApiResult {
    let reg = &ctx.st.registry;
    let size = reg.blob_size(&name, &digest).await?;
    let head = ctx.method == axum::http::Method::HEAD;
    let range = match parse_range(ctx.header(header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            return Err(ApiError::new(ErrorCode::RangeInvalid)
                .with_header(header::CONTENT_RANGE, format!("bytes */{size}")));
        }
    };
    let (status, len) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end() - r.start() + 1),
        None => (StatusCode::OK, size),
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(reg.open_blob(&name, &digest, range.clone()).await?.stream)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set_header(&mut r, "content-length", &len.to_string());
    set_header(&mut r, "content-type", "application/octet-stream");
    set_header(&mut r, "docker-content-digest", digest.as_str());
    set_header(&mut r, "accept-ranges", "bytes");
    set_header(&mut r, "etag", &format!("\"{digest}\""));
    set_header(&mut r, "cache-control", "max-age=31536000");
    if let Some(rg) = range {
        set_header(
            &mut r,
            "content-range",
            &format!("bytes {}-{}/{size}", rg.start(), rg.end()),
        );
    }
    Ok(r)
}

pub(crate) async fn delete(ctx: Ctx, name: RepoName, digest: Digest) -> ApiResult {
    ctx.st.registry.delete_blob(&name, &digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

pub(crate) async fn start(mut ctx: Ctx, name: RepoName) -> ApiResult {
    let reg = ctx.st.registry.clone();
    if let Some(mount) = digest_param(&ctx, "mount")? {
        let from = ctx
            .query
            .get("from")
            .map(|f| {
                f.parse::<RepoName>()
                    .map_err(|_| ApiError::msg(ErrorCode::NameInvalid, "invalid from repository"))
            })
            .transpose()?;
        // Mount only from where the caller may pull; elsewhere it gets a plain
        // upload session, which tells nothing about the blob. Without `from`,
        // only a caller who may see everything mounts from anywhere.
        let allowed = match &from {
            Some(f) => {
                ctx.caller
                    .may(ctx.st.auth.as_deref(), f, wharf_auth::Actions::PULL)
                    .await
            }
            None => match &ctx.caller {
                crate::auth::Caller::Open => true,
                crate::auth::Caller::Basic(p) => p.is_admin(),
                crate::auth::Caller::Bearer(_) => false,
            },
        };
        if !allowed {
            let s = reg.start_upload(&name).await?;
            return Ok(upload_accepted(&ctx, &name, &s, StatusCode::ACCEPTED));
        }
        return Ok(match reg.mount(&name, &mount, from.as_ref()).await? {
            MountResult::Mounted { digest } => blob_created(&ctx, &name, &digest),
            MountResult::Session(s) => upload_accepted(&ctx, &name, &s, StatusCode::ACCEPTED),
        });
    }
    if let Some(digest) = digest_param(&ctx, "digest")? {
        let _slot = ctx.st.uploads.acquire(ctx.addr)?;
        let body = body_stream(std::mem::take(&mut ctx.body));
        reg.upload_monolithic(&name, &digest, body).await?;
        return Ok(blob_created(&ctx, &name, &digest));
    }
    let s = reg.start_upload(&name).await?;
    Ok(upload_accepted(&ctx, &name, &s, StatusCode::ACCEPTED))
}

pub(crate) async fn status(ctx: Ctx, name: RepoName, id: String) -> ApiResult {
    let s = ctx.st.registry.upload_status(&name, &id).await?;
    Ok(upload_accepted(&ctx, &name, &s, StatusCode::NO_CONTENT))
}

pub(crate) async fn patch(mut ctx: Ctx, name: RepoName, id: String) -> ApiResult {
    let range = parse_content_range(ctx.header(header::CONTENT_RANGE))?;
    let _slot = ctx.st.uploads.acquire(ctx.addr)?;
    let body = body_stream(std::mem::take(&mut ctx.body));
    let s = ctx
        .st
        .registry
        .append_chunk(&name, &id, range, body)
        .await?;
    Ok(upload_accepted(&ctx, &name, &s, StatusCode::ACCEPTED))
}

pub(crate) async fn put(mut ctx: Ctx, name: RepoName, id: String) -> ApiResult {
    let digest = match digest_param(&ctx, "digest")? {
        Some(d) => d,
        None => {
            // An unknown session is the first thing wrong with the request.
            ctx.st.registry.upload_status(&name, &id).await?;
            return Err(ApiError::msg(
                ErrorCode::DigestInvalid,
                "the digest query parameter is required",
            ));
        }
    };
    let range = parse_content_range(ctx.header(header::CONTENT_RANGE))?;
    let _slot = has_body(&ctx)
        .then(|| ctx.st.uploads.acquire(ctx.addr))
        .transpose()?;
    let body = has_body(&ctx).then(|| body_stream(std::mem::take(&mut ctx.body)));
    ctx.st
        .registry
        .complete_upload(&name, &id, &digest, range, body)
        .await?;
    Ok(blob_created(&ctx, &name, &digest))
}

pub(crate) async fn cancel(ctx: Ctx, name: RepoName, id: String) -> ApiResult {
    ctx.st.registry.cancel_upload(&name, &id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some(0..=4)));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some(5..=9)));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Ok(Some(5..=9)));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some(7..=9)));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Ok(Some(0..=9)));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Err(()));
        assert_eq!(parse_range(Some("bytes=4-2"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range(Some("0-9")).unwrap(),
            Some(ChunkRange { start: 0, end: 9 })
        );
        assert_eq!(
            parse_content_range(Some("bytes=10-19")).unwrap(),
            Some(ChunkRange { start: 10, end: 19 })
        );
        assert_eq!(
            parse_content_range(Some("bytes 10-19/100")).unwrap(),
            Some(ChunkRange { start: 10, end: 19 })
        );
        assert!(parse_content_range(Some("x")).is_err());
        assert!(parse_content_range(Some("-5")).is_err());
    }

    proptest! {
        #[test]
        fn range_is_inside_blob(h in "\\PC{0,30}", size in 0u64..1000) {
            if let Ok(Some(r)) = parse_range(Some(&h), size) {
                prop_assert!(r.start() <= r.end() && *r.end() < size);
            }
            let _ = parse_content_range(Some(&h));
        }
    }
}
