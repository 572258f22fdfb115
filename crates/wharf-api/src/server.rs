//! Serving connections: plain HTTP or TLS, HTTP/1.1 and HTTP/2, with the
//! limits and timeouts that keep one client from holding what others need.
//!
//! - A client has `header` time to send a request's headers (hyper's
//!   header-read timeout, which also closes idle HTTP/1.1 keep-alives).
//! - A request body may pause at most `bodyidle` ([`crate::router`] wraps
//!   every body); a client that takes no response bytes for `writeidle` is
//!   cut off here ([`Guarded`]); a connection with no request in flight and
//!   no traffic for `idle` is closed (HTTP/2 has no header timeout).
//! - Each client address may hold `connections_per_client` connections;
//!   past that it gets `429` answers. Trusted proxies are exempt.
//! - A response that leaves part of the request body unread (an early
//!   401, 413 or 429) is followed by a *lingering close*: Wharf stops
//!   writing, then reads and discards what the client still sends until it
//!   closes or [`LINGER`] passes. Closing at once would make the kernel reset
//!   the connection and throw away the answer before the client read it
//!   (what clients saw as a broken pipe or a TLS EOF).
//!
//! Nothing here waits for the network on a thread of its own: every wait is
//! an async task, so stalled clients cost memory, never threads.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ConnInfo;

/// What Go's net/http writes when a TLS ClientHello reaches a plain-HTTP port.
/// Clients that probe HTTPS first (skopeo, podman, buildah, docker) recognise
/// it and fall back to HTTP at once.
const TLS_ON_PLAIN_PORT: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// The longest a lingering close reads what a client still sends after the
/// answer: enough for a 64 MiB body on a slow link, short enough to bound
/// what a hostile client can hold.
pub const LINGER: Duration = Duration::from_secs(30);
/// A lingering close gives up after this long without a byte.
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// How connections are served.
#[derive(Clone)]
pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub http2: bool,
    /// On shutdown, how long requests in flight may take.
    pub drain: Duration,
    /// To receive a request's headers (and the TLS handshake).
    pub header_timeout: Duration,
    /// The longest a client may take no response bytes.
    pub write_idle: Duration,
    /// A connection with nothing in flight and no traffic is closed after this.
    pub idle: Duration,
    /// Connections per client address (0: any number).
    pub connections_per_client: usize,
    /// Peers whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trusted_proxies: Arc<Vec<IpNet>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            http2: true,
            drain: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            write_idle: Duration::from_secs(60),
            idle: Duration::from_secs(120),
            connections_per_client: 4096,
            trusted_proxies: Arc::new(Vec::new()),
        }
    }
}

/// The client a request comes from: the peer, unless the peer is a trusted
/// proxy, in which case the nearest address in `Forwarded` (or else
/// `X-Forwarded-For`) that is not a trusted proxy itself.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*a)));
    if !is_trusted(&peer) {
        return canonical(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("forwarded") {
        let Ok(v) = v.to_str() else { continue };
        for element in v.split(',') {
            for pair in element.split(';') {
                let Some((k, val)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for")
                    && let Some(a) = parse_node(val.trim().trim_matches('"'))
                {
                    hops.push(a);
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers.get_all("x-forwarded-for") {
            let Ok(v) = v.to_str() else { continue };
            hops.extend(v.split(',').filter_map(|h| parse_node(h.trim())));
        }
    }
    // From the nearest hop outwards: the first one not ours is the client.
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    canonical(client)
}

/// IPv4 addresses mapped into IPv6 (a dual-stack socket's view) as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// An address from `X-Forwarded-For` or `Forwarded`: `1.2.3.4`,
/// `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|a| a.parse().ok())
}

/// Open connections per client address.
struct ConnCounts {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct ConnSlot {
    counts: Arc<ConnCounts>,
    addr: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.counts.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = g.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.addr);
            }
        }
    }
}

impl ConnCounts {
    /// A slot for one more connection from `addr`, or `None` past the limit.
    fn take(self: &Arc<Self>, addr: IpAddr) -> Option<ConnSlot> {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = g.entry(addr).or_insert(0);
        if self.limit > 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            counts: self.clone(),
            addr,
        })
    }
}

/// What a connection has been doing, for the idle timeout.
#[derive(Default)]
struct Activity {
    /// Milliseconds since `epoch` of the last byte read or written.
    last_ms: AtomicU64,
    /// Requests whose response has not been sent whole.
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A connection's byte stream with a write-stall timeout, activity tracking
/// and a lingering close (see the module doc).
pub struct Guarded<T> {
    inner: T,
    write_idle: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    activity: Arc<Activity>,
    epoch: Instant,
    linger: Linger,
}

enum Linger {
    Open,
    /// Shut down for writing; reading what is left until these expire.
    Draining {
        deadline: Pin<Box<Sleep>>,
        idle: Pin<Box<Sleep>>,
    },
    Done,
}

impl<T> Guarded<T> {
    fn new(inner: T, write_idle: Duration, activity: Arc<Activity>, epoch: Instant) -> Self {
        Guarded {
            inner,
            write_idle,
            stall: None,
            activity,
            epoch,
            linger: Linger::Open,
        }
    }

    /// A pending write: `Err(TimedOut)` once it has been pending for
    /// `write_idle`, else `Pending`.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let write_idle = self.write_idle;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write_idle)));
        if stall.as_mut().poll(cx).is_ready() {
            self.stall = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no response bytes for the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.touch(self.epoch);
        }
        Poll::Ready(r)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.stall = None;
                self.activity.touch(self.epoch);
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.stall = None;
                self.activity.touch(self.epoch);
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.linger {
                Linger::Done => return Poll::Ready(Ok(())),
                Linger::Open => {
                    if let Err(e) = ready!(Pin::new(&mut self.inner).poll_shutdown(cx)) {
                        self.linger = Linger::Done;
                        return Poll::Ready(Err(e));
                    }
                    self.linger = Linger::Draining {
                        deadline: Box::pin(tokio::time::sleep(LINGER)),
                        idle: Box::pin(tokio::time::sleep(LINGER_IDLE)),
                    };
                }
                Linger::Draining { .. } => {
                    // Read and drop until the client closes; a bounded number
                    // of reads per poll, so one client cannot hog a worker.
                    let mut scratch = [0u8; 16 * 1024];
                    for _ in 0..64 {
                        let mut rb = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                                self.linger = Linger::Done;
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Ready(Ok(())) => {
                                if let Linger::Draining { idle, .. } = &mut self.linger {
                                    idle.as_mut()
                                        .reset(tokio::time::Instant::now() + LINGER_IDLE);
                                }
                            }
                            Poll::Ready(Err(_)) => {
                                self.linger = Linger::Done;
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Pending => {
                                let Linger::Draining { deadline, idle } = &mut self.linger else {
                                    return Poll::Ready(Ok(()));
                                };
                                if deadline.as_mut().poll(cx).is_ready()
                                    || idle.as_mut().poll(cx).is_ready()
                                {
                                    self.linger = Linger::Done;
                                    return Poll::Ready(Ok(()));
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A response body that counts its request as in flight until it is sent
/// whole or dropped.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

struct InFlight(Arc<Activity>, Instant);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch(self.1);
    }
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The JSON answer to every request of a client over its connection limit.
fn too_many_connections() -> Response<Body> {
    let body = serde_json::json!({"errors": [{
        "code": "TOOMANYREQUESTS",
        "message": "too many connections from this address",
        "detail": null,
    }]});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().expect("static"));
    h.insert("retry-after", "10".parse().expect("static"));
    h.insert("connection", "close".parse().expect("static"));
    r
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting
/// and waits up to `opts.drain` for requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = if opts.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let builder = Arc::new(builder);
    let counts = Arc::new(ConnCounts {
        limit: opts.connections_per_client,
        counts: Mutex::new(HashMap::new()),
    });
    let epoch = Instant::now();
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
        let peer = canonical(remote.ip());
        let trusted = opts.trusted_proxies.clone();
        let exempt = trusted.iter().any(|n| n.contains(&peer));
        let slot = if exempt {
            None
        } else {
            Some(counts.take(peer))
        };
        let over_limit = matches!(slot, Some(None));
        let activity = Arc::new(Activity::default());
        activity.touch(epoch);
        let tls = opts.tls.clone();
        let info_tls = tls.is_some();
        let act = activity.clone();
        let svc = app.clone().map_request(move |mut req: Request<Incoming>| {
            let client = client_ip(peer, req.headers(), &trusted);
            req.extensions_mut().insert(ConnInfo {
                remote: Some(remote),
                client: Some(client),
                tls: info_tls,
            });
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            req
        });
        let act = activity.clone();
        let svc = svc.map_response(move |r: axum::response::Response| {
            r.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _guard: InFlight(act.clone(), epoch),
                })
            })
        });
        let refuse = tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(too_many_connections())
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let (header_timeout, write_idle, idle) = (opts.header_timeout, opts.write_idle, opts.idle);
        tokio::spawn(async move {
            let _slot = slot;
            if over_limit {
                tracing::debug!(%remote, "connection limit of the client address reached");
            }
            let io = Guarded::new(stream, write_idle, activity.clone(), epoch);
            match tls {
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let io = TokioIo::new(tls_stream);
                    if over_limit {
                        let conn = builder.serve_connection(io, TowerToHyperService::new(refuse));
                        let _ = watcher.watch(conn.into_owned()).await;
                    } else {
                        let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
                        run_with_idle(watcher.watch(conn.into_owned()), activity, epoch, idle)
                            .await;
                    }
                }
                None => {
                    if starts_with_tls(&io.inner, header_timeout).await {
                        answer_tls_on_plain(io.inner).await;
                        return;
                    }
                    let io = TokioIo::new(io);
                    if over_limit {
                        let conn = builder.serve_connection(io, TowerToHyperService::new(refuse));
                        let _ = watcher.watch(conn.into_owned()).await;
                    } else {
                        let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
                        run_with_idle(watcher.watch(conn.into_owned()), activity, epoch, idle)
                            .await;
                    }
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

/// Runs a connection until it ends, or until it has had nothing in flight
/// and no traffic for `idle`; then drops it.
async fn run_with_idle<F: Future>(
    conn: F,
    activity: Arc<Activity>,
    epoch: Instant,
    idle: Duration,
) {
    tokio::pin!(conn);
    let tick = (idle / 4).max(Duration::from_millis(250));
    let mut check = tokio::time::interval(tick);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = check.tick() => {
                let quiet = Duration::from_millis(
                    (epoch.elapsed().as_millis() as u64)
                        .saturating_sub(activity.last_ms.load(Ordering::Relaxed)),
                );
                if activity.in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
                    tracing::debug!("closing an idle connection");
                    return;
                }
            }
        }
    }
}

async fn starts_with_tls(stream: &TcpStream, timeout: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    )
}

async fn answer_tls_on_plain(mut stream: TcpStream) {
    let _ = stream.write_all(TLS_ON_PLAIN_PORT).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.0.0.9")]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A client cannot claim an address through an untrusted peer.
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        // Spoofed hops further left than the first untrusted one are ignored.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Without headers: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // A v4-mapped peer is treated as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(mapped, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn connection_slots_per_address() {
        let c = Arc::new(ConnCounts {
            limit: 2,
            counts: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = c.take(a).unwrap();
        let _s2 = c.take(a).unwrap();
        assert!(c.take(a).is_none());
        assert!(c.take(b).is_some());
        drop(s1);
        assert!(c.take(a).is_some());
    }
}
