//! Manifest, tag, catalog and referrers endpoints.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use wharf_oci::manifest::MAX_MANIFEST_SIZE;
use wharf_oci::{Digest, Reference, RepoName, media};

use crate::{ApiError, ApiResult, Ctx, ErrorCode, empty, json_response, set_header};

/// The most entries one listing page returns, whatever `n` asks for.
pub const MAX_PAGE: usize = 10_000;
/// Catalog entries per page when the client does not say (as distribution).
pub const DEFAULT_CATALOG_PAGE: usize = 1000;

/// The manifest media types the client accepts, from `Accept` sent as several
/// lines or one comma-joined line. `None`: anything goes (no header, or a
/// wildcard, or only types that are not manifest types).
fn accepted_types(ctx: &Ctx) -> Option<Vec<String>> {
    let mut types = Vec::new();
    for v in ctx.headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',') {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if t == "*/*" || t == "application/*" {
                return None;
            }
            if !t.is_empty() {
                types.push(t);
            }
        }
    }
    let manifest_types = [
        media::OCI_MANIFEST,
        media::OCI_INDEX,
        media::DOCKER_MANIFEST,
        media::DOCKER_LIST,
    ];
    if types.iter().any(|t| manifest_types.contains(&t.as_str())) {
        Some(types)
    } else {
        None
    }
}

pub(crate) async fn get(ctx: Ctx, name: RepoName, reference: Reference) -> ApiResult {
    let m = ctx.st.registry.get_manifest(&name, &reference).await?;
    // Like distribution: a client that lists the manifest types it understands
    // and not this one gets a 404 rather than a document it cannot parse.
    if let Some(types) = accepted_types(&ctx)
        && !types.iter().any(|t| t == &m.media_type)
    {
        return Err(ApiError::msg(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest is {}, which the Accept header does not list",
                m.media_type
            ),
        ));
    }
    let len = m.content.len();
    let body = if ctx.method == axum::http::Method::HEAD {
        Body::empty()
    } else {
        // A GET is a pull (retention's "pulled within"); a HEAD only a check.
        ctx.st.registry.note_pull(&name, &m.digest);
        Body::from(m.content)
    };
    let mut r = Response::new(body);
    set_header(&mut r, "content-type", &m.media_type);
    set_header(&mut r, "content-length", &len.to_string());
    set_header(&mut r, "docker-content-digest", m.digest.as_str());
    set_header(&mut r, "etag", &format!("\"{}\"", m.digest));
    Ok(r)
}

pub(crate) async fn put(mut ctx: Ctx, name: RepoName, reference: Reference) -> ApiResult {
    let opts = put_options(&ctx)?;
    let too_large = || {
        ApiError::msg(
            ErrorCode::TooLarge,
            format!("manifests are limited to {MAX_MANIFEST_SIZE} bytes"),
        )
    };
    if let Some(cl) = ctx.header(header::CONTENT_LENGTH)
        && cl
            .trim()
            .parse::<u64>()
            .is_ok_and(|n| n > MAX_MANIFEST_SIZE as u64)
    {
        return Err(too_large());
    }
    let body = std::mem::take(&mut ctx.body);
    let bytes = match axum::body::to_bytes(body, MAX_MANIFEST_SIZE).await {
        Ok(b) => b,
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return Err(if over_limit {
                too_large()
            } else {
                ApiError::msg(
                    ErrorCode::ManifestInvalid,
                    format!("reading the manifest failed: {e}"),
                )
            });
        }
    };
    let content_type = ctx.header(header::CONTENT_TYPE).map(str::to_owned);
    let res = ctx
        .st
        .registry
        .put_manifest(&name, &reference, content_type.as_deref(), bytes, &opts)
        .await?;
    let mut r = empty(StatusCode::CREATED);
    set_header(
        &mut r,
        "location",
        &ctx.url(&format!("/v2/{name}/manifests/{}", res.digest)),
    );
    set_header(&mut r, "docker-content-digest", res.digest.as_str());
    if let Some(s) = res.subject {
        set_header(&mut r, "oci-subject", s.as_str());
    }
    // One `OCI-Tag` per tag when the client used `tag` parameters: that is
    // how it learns that the registry applied them.
    if !opts.tags.is_empty() {
        for t in &res.tags {
            if let Ok(v) = header::HeaderValue::from_str(t.as_str()) {
                r.headers_mut().append("oci-tag", v);
            }
        }
    }
    Ok(r)
}

/// The `digest` and `tag` query parameters of a manifest push.
fn put_options(ctx: &Ctx) -> Result<wharf_core::PutManifestOptions, ApiError> {
    let digest = match ctx.query.get("digest").filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => Some(
            d.parse::<wharf_oci::Digest>()
                .map_err(|e| ApiError::msg(ErrorCode::DigestInvalid, e.to_string()))?,
        ),
    };
    let mut tags = Vec::new();
    for t in ctx.query.get_all("tag") {
        tags.push(t.parse::<wharf_oci::Tag>().map_err(|_| {
            ApiError::msg(ErrorCode::ManifestInvalid, format!("invalid tag {t:?}"))
        })?);
    }
    const MAX_TAG_PARAMS: usize = 100;
    if tags.len() > MAX_TAG_PARAMS {
        return Err(ApiError::msg(
            ErrorCode::ManifestInvalid,
            format!("at most {MAX_TAG_PARAMS} tag parameters"),
        ));
    }
    Ok(wharf_core::PutManifestOptions { digest, tags })
}

pub(crate) async fn delete(ctx: Ctx, name: RepoName, reference: Reference) -> ApiResult {
    ctx.st.registry.delete_manifest(&name, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

/// `n` and `last` of a listing. `n` absent: `default`; over `MAX_PAGE`: capped.
fn paging(ctx: &Ctx, default: usize) -> Result<(usize, Option<String>), ApiError> {
    let n = match ctx.query.get("n") {
        None | Some("") => default,
        Some(v) => v.parse::<usize>().map_err(|_| {
            ApiError::msg(
                ErrorCode::PaginationNumberInvalid,
                format!("invalid n {v:?}"),
            )
        })?,
    };
    let last = ctx
        .query
        .get("last")
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    Ok((n.min(MAX_PAGE), last))
}

fn link(r: &mut Response, path: &str, n: usize, last: Option<&String>) {
    if let Some(last) = last {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        set_header(
            r,
            "link",
            &format!("<{path}?n={n}&last={last}>; rel=\"next\""),
        );
    }
}

pub(crate) async fn tags(ctx: Ctx, name: RepoName) -> ApiResult {
    let (n, last) = paging(&ctx, MAX_PAGE)?;
    if let Some(auth) = ctx.st.auth.as_deref()
        && let Some(p) = ctx.caller.principal(auth).await?
        && !auth
            .may_list(&p, &name)
            .await
            .map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?
    {
        return Err(ApiError::msg(
            ErrorCode::Denied,
            "listing this repository's tags is not allowed",
        ));
    }
    let page = ctx.st.registry.list_tags(&name, last.as_deref(), n).await?;
    #[derive(serde::Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    let body = serde_json::to_vec(&TagList {
        name: name.as_str(),
        tags: &page.items,
    })
    .map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?;
    let mut r = bytes_response(body);
    if page.more {
        link(
            &mut r,
            &format!("/v2/{name}/tags/list"),
            n,
            page.items.last(),
        );
    }
    Ok(r)
}

pub(crate) async fn catalog(ctx: Ctx) -> ApiResult {
    let (n, last) = paging(&ctx, DEFAULT_CATALOG_PAGE)?;
    let visibility = match ctx.st.auth.as_deref() {
        Some(auth) => match ctx.caller.principal(auth).await? {
            Some(wharf_auth::Principal::External { .. }) | None => wharf_auth::Visibility::All,
            Some(p) => auth
                .visibility(&p)
                .await
                .map_err(|e| ApiError::msg(ErrorCode::Unknown, e.to_string()))?,
        },
        None => wharf_auth::Visibility::All,
    };
    let page = match visibility {
        wharf_auth::Visibility::All => ctx.st.registry.catalog(last.as_deref(), n).await?,
        v => filtered_catalog(&ctx.st.registry, &v, last, n).await?,
    };
    let mut r = json_response(
        StatusCode::OK,
        &serde_json::json!({ "repositories": page.items }),
        None,
    );
    if page.more {
        link(&mut r, "/v2/_catalog", n, page.items.last());
    }
    Ok(r)
}

/// A catalog page of only the repositories `v` shows: pages of the full
/// catalog are read until `n` visible names are found or it ends.
async fn filtered_catalog(
    registry: &wharf_core::Registry,
    v: &wharf_auth::Visibility,
    mut last: Option<String>,
    n: usize,
) -> Result<wharf_core::Page, ApiError> {
    let mut items = Vec::new();
    loop {
        let page = registry.catalog(last.as_deref(), MAX_PAGE).await?;
        let end = !page.more;
        last = page.items.last().cloned();
        for r in page.items {
            if v.shows(&r) {
                if items.len() == n {
                    return Ok(wharf_core::Page { items, more: true });
                }
                items.push(r);
            }
        }
        if end {
            return Ok(wharf_core::Page { items, more: false });
        }
    }
}

fn bytes_response(body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    set_header(&mut r, "content-type", "application/json");
    r
}

pub(crate) async fn referrers(ctx: Ctx, name: RepoName, digest: Digest) -> ApiResult {
    let artifact_type = ctx.query.get("artifactType").filter(|a| !a.is_empty());
    let body = ctx
        .st
        .registry
        .referrers(&name, &digest, artifact_type)
        .await?;
    let mut r = Response::new(Body::from(body));
    set_header(&mut r, "content-type", media::OCI_INDEX);
    if artifact_type.is_some() {
        set_header(&mut r, "oci-filters-applied", "artifactType");
    }
    Ok(r)
}
