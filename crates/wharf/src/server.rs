//! Listening, TLS, the plain-port answer to TLS clients, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use wharf_api::ConnInfo;

/// What Go's net/http writes when a TLS ClientHello reaches a plain-HTTP port.
/// Clients that probe HTTPS first (skopeo, podman, buildah, docker) recognise
/// it and fall back to HTTP at once.
const TLS_ON_PLAIN_PORT: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to send its first bytes or finish TLS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the first of `addrs` that works for each address family asked for.
/// `[::]` takes IPv4 as well on Linux, so a following `0.0.0.0` of the same
/// port is skipped when the IPv6 bind succeeded.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<TcpListener> {
    let mut last_err = None;
    for a in addrs {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some((a, e)),
        }
    }
    match last_err {
        Some((a, e)) => Err(e).with_context(|| format!("listening on {a}")),
        None => bail!("no address to listen on"),
    }
}

pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub http2: bool,
    pub drain: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting
/// and waits up to `opts.drain` for requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let builder = if opts.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            remote: Some(remote),
            tls: opts.tls.is_some(),
        };
        let svc = app
            .clone()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(info);
                req
            });
        let svc = TowerToHyperService::new(svc);
        let builder = builder.clone();
        let tls = opts.tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let tls_stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    if starts_with_tls(&stream).await {
                        answer_tls_on_plain(stream).await;
                        return;
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(opts.drain) => {
            tracing::warn!(drain = ?opts.drain, "drain timeout passed; closing remaining connections")
        }
    }
}

async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    )
}

async fn answer_tls_on_plain(mut stream: TcpStream) {
    let _ = stream.write_all(TLS_ON_PLAIN_PORT).await;
    let _ = stream.shutdown().await;
}
