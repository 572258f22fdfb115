//! The OCI error envelope and the one table from error codes to HTTP statuses.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wharf_core::CoreError;

/// The error codes of the OCI Distribution Specification (plus `UNKNOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    /// An index names a child manifest the repository lacks: the request is
    /// wrong, so 400 rather than MANIFEST_UNKNOWN's usual 404.
    ManifestChildUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A listing's `n` that is not a number (distribution's code).
    PaginationNumberInvalid,
    /// A route that does not exist (outside `/v2`, and the admin API's
    /// missing records).
    NotFound,
    /// A `/v2` path that names no endpoint: the spec has no code for it.
    NoSuchEndpoint,
    /// An unsupported method on an existing route.
    MethodNotAllowed,
    /// A chunk out of order, or a blob range outside the blob.
    RangeInvalid,
    /// Admin API: a malformed or invalid request body or parameter.
    InvalidRequest,
    /// Admin API: the thing to create exists already.
    Conflict,
    /// A manifest over the size limit.
    TooLarge,
    /// Deleting a manifest that an index in the repository lists.
    ManifestReferenced,
    Unknown,
}

impl ErrorCode {
    /// The code's wire name, HTTP status and default message. A new code does
    /// not compile until it is mapped here.
    pub fn describe(self) -> (&'static str, StatusCode, &'static str) {
        use ErrorCode::*;
        match self {
            BlobUnknown => (
                "BLOB_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob unknown to registry",
            ),
            BlobUploadInvalid => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::BAD_REQUEST,
                "blob upload invalid",
            ),
            BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                StatusCode::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            DigestInvalid => (
                "DIGEST_INVALID",
                StatusCode::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "manifest references a blob unknown to the registry",
            ),
            ManifestInvalid => (
                "MANIFEST_INVALID",
                StatusCode::BAD_REQUEST,
                "manifest invalid",
            ),
            ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::NOT_FOUND,
                "manifest unknown",
            ),
            ManifestChildUnknown => (
                "MANIFEST_UNKNOWN",
                StatusCode::BAD_REQUEST,
                "index references a manifest unknown to the repository",
            ),
            NameInvalid => (
                "NAME_INVALID",
                StatusCode::BAD_REQUEST,
                "invalid repository name",
            ),
            NameUnknown => (
                "NAME_UNKNOWN",
                StatusCode::NOT_FOUND,
                "repository name not known to registry",
            ),
            SizeInvalid => (
                "SIZE_INVALID",
                StatusCode::BAD_REQUEST,
                "provided length did not match content length",
            ),
            Unauthorized => (
                "UNAUTHORIZED",
                StatusCode::UNAUTHORIZED,
                "authentication required",
            ),
            Denied => (
                "DENIED",
                StatusCode::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            Unsupported => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            TooManyRequests => (
                "TOOMANYREQUESTS",
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
            ),
            // distribution says PAGINATION_NUMBER_INVALID, which the OCI spec
            // does not list: UNSUPPORTED is its "invalid set of parameters".
            PaginationNumberInvalid => (
                "UNSUPPORTED",
                StatusCode::BAD_REQUEST,
                "invalid number of results requested",
            ),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND, "no such endpoint"),
            NoSuchEndpoint => ("UNSUPPORTED", StatusCode::NOT_FOUND, "no such endpoint"),
            // DELETE may answer 202, 400, 404 or 405 (and the auth codes):
            // 400 with UNSUPPORTED is how the spec says "not this one".
            ManifestReferenced => (
                "UNSUPPORTED",
                StatusCode::BAD_REQUEST,
                "the manifest is listed by an index; delete the index first",
            ),
            InvalidRequest => (
                "INVALID_REQUEST",
                StatusCode::BAD_REQUEST,
                "invalid request",
            ),
            Conflict => ("CONFLICT", StatusCode::CONFLICT, "already exists"),
            MethodNotAllowed => (
                "UNSUPPORTED",
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            ),
            RangeInvalid => (
                "BLOB_UPLOAD_INVALID",
                StatusCode::RANGE_NOT_SATISFIABLE,
                "requested range not satisfiable",
            ),
            TooLarge => (
                "SIZE_INVALID",
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
            ),
            Unknown => (
                "UNKNOWN",
                StatusCode::INTERNAL_SERVER_ERROR,
                "unknown error",
            ),
        }
    }
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        ApiError {
            code,
            message: None,
            headers: Vec::new(),
        }
    }

    pub fn msg(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: Some(message.into()),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((name, v));
        }
        self
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        let code = match &e {
            CoreError::BlobUnknown => ErrorCode::BlobUnknown,
            CoreError::BlobUploadUnknown => ErrorCode::BlobUploadUnknown,
            CoreError::BlobUploadInvalid(_) => ErrorCode::BlobUploadInvalid,
            CoreError::RangeNotSatisfiable { size } => {
                return ApiError::msg(ErrorCode::RangeInvalid, message)
                    .with_header(HeaderName::from_static("range"), upload_range(*size));
            }
            CoreError::DigestInvalid(_) => ErrorCode::DigestInvalid,
            CoreError::ManifestBlobUnknown(_) => ErrorCode::ManifestBlobUnknown,
            CoreError::ManifestChildUnknown(_) => ErrorCode::ManifestChildUnknown,
            CoreError::ManifestUnknown => ErrorCode::ManifestUnknown,
            CoreError::ManifestReferenced(_) => ErrorCode::ManifestReferenced,
            CoreError::ManifestInvalid(_) => ErrorCode::ManifestInvalid,
            CoreError::ManifestTooLarge => ErrorCode::TooLarge,
            CoreError::NameUnknown => ErrorCode::NameUnknown,
            CoreError::SizeInvalid(_) => ErrorCode::SizeInvalid,
            CoreError::Unsupported(_) => ErrorCode::Unsupported,
            CoreError::Body(_) => ErrorCode::BlobUploadInvalid,
            CoreError::QuotaExceeded(_) | CoreError::Immutable(_) => ErrorCode::Denied,
            CoreError::InvalidPolicy(_) => ErrorCode::InvalidRequest,
            CoreError::Busy(_) => ErrorCode::TooManyRequests,
            CoreError::Internal(_) => ErrorCode::Unknown,
        };
        ApiError::msg(code, message)
    }
}

/// The `Range` header of an upload holding `size` bytes. Distribution (and so
/// every client) uses `0-0` for an empty upload.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status, default) = self.code.describe();
        let message = self.message.as_deref().unwrap_or(default);
        if status.is_server_error() {
            // Logged once, here, inside the request's span (which has its id).
            tracing::error!(error = message, "request failed");
        }
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": message, "detail": null }]
        });
        let mut resp = (status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
