//! Prometheus metrics and the access log.
//!
//! One middleware wraps every request: it gives it an id and a tracing span,
//! counts the bytes that actually cross the wire in both directions, writes one
//! access-log line and records the request's metrics.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::{ConnInfo, EndpointLabel};

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then our handle
        // renders nothing, which the metrics test would catch.
        let _ = metrics::set_global_recorder(recorder);
        metrics::describe_counter!(
            "wharf_http_requests_total",
            "HTTP requests by endpoint, method and status"
        );
        metrics::describe_histogram!(
            "wharf_http_request_duration_seconds",
            "Time to the response head, by endpoint and method"
        );
        metrics::describe_counter!(
            "wharf_http_request_bytes_total",
            "Request body bytes received, by endpoint"
        );
        metrics::describe_counter!(
            "wharf_http_response_bytes_total",
            "Response body bytes sent, by endpoint"
        );
        metrics::describe_histogram!(
            "wharf_upload_request_duration_seconds",
            "Duration of requests that carry blob data (PATCH, PUT, monolithic POST)"
        );
        handle
    })
}

pub(crate) async fn render() -> Response {
    let mut r = handle().render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

pub(crate) async fn observe(req: Request, next: Next) -> Response {
    handle();
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let remote = req
        .extensions()
        .get::<ConnInfo>()
        .and_then(ConnInfo::client_ip)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("request", id = %request_id, method = %method, path = %path);

    let bytes_in = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bytes_in.clone();
    let req = req.map(|b| {
        Body::new(b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                counter.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            f
        }))
    });

    let mut resp = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = resp.status();
    let endpoint = resp
        .extensions()
        .get::<EndpointLabel>()
        .map(|l| l.0)
        .unwrap_or(if path.starts_with("/v2") {
            "v2"
        } else if path.starts_with("/auth/") {
            "token"
        } else if path.starts_with("/api/") {
            "admin"
        } else {
            "other"
        });
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let received = bytes_in.load(std::sync::atomic::Ordering::Relaxed);
    // Streamed bodies carry an explicit Content-Length; buffered ones know their size.
    let sent = http_body::Body::size_hint(resp.body())
        .exact()
        .filter(|n| *n > 0)
        .or_else(|| {
            resp.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .filter(|_| method != axum::http::Method::HEAD)
        .unwrap_or(0);

    let m = method.as_str().to_owned();
    let labels = [
        ("endpoint", endpoint.to_owned()),
        ("method", m.clone()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("wharf_http_requests_total", &labels).increment(1);
    metrics::histogram!("wharf_http_request_duration_seconds", "endpoint" => endpoint, "method" => m.clone())
        .record(elapsed.as_secs_f64());
    metrics::counter!("wharf_http_request_bytes_total", "endpoint" => endpoint).increment(received);
    metrics::counter!("wharf_http_response_bytes_total", "endpoint" => endpoint).increment(sent);
    if received > 0 && (endpoint == "upload" || endpoint == "upload_start") {
        metrics::histogram!("wharf_upload_request_duration_seconds").record(elapsed.as_secs_f64());
    }

    let _g = span.enter();
    let level_warn = status.is_server_error();
    macro_rules! access {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "wharf::access",
                status = status.as_u16(),
                endpoint,
                remote = %remote,
                user_agent = %user_agent,
                bytes_in = received,
                bytes_out = sent,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "{} {} {}", method, path, status.as_u16()
            )
        };
    }
    if level_warn {
        access!(warn);
    } else {
        access!(info);
    }
    drop(_g);
    resp
}
