//! Hostile and slow clients against a real `wharf serve`: stalled uploads,
//! slowloris headers, readers that stop reading, too many uploads, and
//! early rejections of large bodies that every client must still be able to
//! read (over HTTP/1.1, HTTP/2 and TLS).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response as a raw client reads it.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)));
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Reads one HTTP/1.1 response (with a Content-Length body).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((source, 0))).unwrap();
    sock.connect(server).await.unwrap()
}

/// Opens an upload session, then sends the head of a 100 MB PATCH and 1 KiB
/// of its body, and stops: the connection stays open, mid-body.
async fn stall_upload(server: SocketAddr, source: [u8; 4], repo: &str) -> TcpStream {
    let mut s = connect_from(source, server).await;
    s.write_all(
        format!("POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap();
    let path = loc.find("/v2/").map(|i| &loc[i..]).unwrap().to_owned();
    s.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&[7u8; 1024]).await.unwrap();
    s
}

async fn metric(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Pushes a blob and a manifest and pulls both back; panics on any failure.
async fn push_and_pull(client: &reqwest::Client, server: &Server, repo: &str, seed: u64) {
    let layer = bytes(seed, 1 << 20);
    let ld = sha256(&layer);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
    let cd = sha256(config.as_bytes());
    for (d, body) in [(&ld, layer.clone()), (&cd, config.clone().into_bytes())] {
        let r = client
            .post(server.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "blob push");
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    });
    let r = client
        .put(server.url(&format!("/v2/{repo}/manifests/v{seed}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&m).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "manifest push");
    let r = client
        .get(server.url(&format!("/v2/{repo}/manifests/v{seed}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(server.url(&format!("/v2/{repo}/blobs/{ld}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), layer.as_slice());
}

fn config_file(dir: &std::path::Path, yaml: &str) -> String {
    let p = dir.join("config.yml");
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_owned()
}

/// More than a thousand uploads stalled mid-body, from several addresses
/// (none past the default per-address limit): other clients push and pull
/// meanwhile, and the stalled requests are answered and cut off once the
/// body-idle timeout passes, leaving their sessions usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_uploads_starve_nobody() {
    const SOURCES: u8 = 8;
    const PER_SOURCE: usize = 130;
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a slow setup (up to 5 s) and the pushes below fit
    // inside it on a loaded machine.
    let cfg = config_file(dir.path(), "http:\n  timeouts:\n    bodyidle: 12s\n");
    let server = Server::start(&dir.path().join("data"), &["--config", &cfg], &[]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let client = client();

    let started = Instant::now();
    let mut stalled = Vec::new();
    for src in 0..SOURCES {
        let source = [127, 0, 0, 2 + src];
        let batch = tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join_all(
                (0..PER_SOURCE).map(|_| stall_upload(addr, source, "stall/up")),
            ),
        )
        .await
        .expect("starting uploads hung: stalled ones hold what new ones need");
        stalled.extend(batch);
    }
    let total = stalled.len();
    assert!(total >= 1000);
    let in_progress = metric(&client, &server, "wharf_uploads_in_progress").await;
    assert_eq!(
        in_progress as usize, total,
        "every stalled upload is in progress"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "setting up took {:?}: the timeout may have cut some already",
        started.elapsed()
    );

    // Everyone else is served meanwhile, pushes and pulls alike.
    for i in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(5),
            push_and_pull(&client, &server, "other/app", i),
        )
        .await
        .expect("a push and pull hung behind the stalled uploads");
    }
    let r = client.get(server.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        metric(&client, &server, "wharf_uploads_in_progress").await as usize >= total,
        "the stalled uploads were still in flight while others were served"
    );

    // Past the body-idle timeout every stalled request is answered and its
    // connection closed.
    let answers = futures::future::join_all(stalled.into_iter().map(|mut s| async move {
        let r = tokio::time::timeout(Duration::from_secs(30), read_response(&mut s)).await;
        let status = match r {
            Ok(Ok(r)) => Some((r.status, r.code())),
            _ => None,
        };
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest))
            .await
            .is_ok();
        (status, closed)
    }))
    .await;
    for (status, closed) in &answers {
        assert_eq!(
            status.as_ref().map(|(s, c)| (*s, c.as_str())),
            Some((400, "BLOB_UPLOAD_INVALID"))
        );
        assert!(closed, "the stalled connection was not closed");
    }
    assert_eq!(
        metric(&client, &server, "wharf_uploads_in_progress").await,
        0.0
    );
    // The server is still fine.
    push_and_pull(&client, &server, "other/app", 99).await;
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

/// Past the per-address limit an upload gets 429 with the JSON body and
/// Retry-After; other addresses are not affected.
#[tokio::test]
async fn too_many_uploads_from_one_address_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "http:\n  limits:\n    uploadsperclient: 3\n  timeouts:\n    bodyidle: 30s\n",
    );
    let server = Server::start(&dir.path().join("data"), &["--config", &cfg], &[]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stall_upload(addr, [127, 0, 0, 21], "lim/a").await);
    }
    let mut s = stall_upload(addr, [127, 0, 0, 21], "lim/a").await;
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "TOOMANYREQUESTS");
    assert!(r.header("retry-after").is_some());
    assert!(
        String::from_utf8_lossy(&r.body).contains("uploadsperclient"),
        "the message says which limit"
    );
    // Another address still uploads.
    let mut other = stall_upload(addr, [127, 0, 0, 22], "lim/b").await;
    other.shutdown().await.unwrap();
    drop(held);
}

/// Connections that send their headers a byte at a time are closed after
/// the header timeout; others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "http:\n  timeouts:\n    header: 2s\n");
    let server = Server::start(&dir.path().join("data"), &["--config", &cfg], &[]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let client = client();
    let mut slow = Vec::new();
    for i in 0..600u32 {
        let mut s = connect_from([127, 0, 0, 30 + (i % 4) as u8], addr).await;
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut closed = 0;
        // One byte each per 300 ms, for 6 s: never a whole header.
        while started.elapsed() < Duration::from_secs(6) {
            for s in slow.iter_mut() {
                if s.write_all(b"a").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut eof = 0;
        for mut s in slow {
            let mut b = Vec::new();
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut b)).await
            {
                eof += 1;
            }
        }
        (closed, eof)
    });
    let started = Instant::now();
    for i in 0..3 {
        push_and_pull(&client, &server, "loris/app", i).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "normal clients waited {:?}",
        started.elapsed()
    );
    let (_closed, eof) = trickle.await.unwrap();
    assert_eq!(eof, 600, "every slowloris connection was closed");
}

/// A client that stops reading a download is cut off after the write
/// timeout.
#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), "http:\n  timeouts:\n    writeidle: 2s\n");
    let server = Server::start(&dir.path().join("data"), &["--config", &cfg], &[]);
    let client = client();
    let blob = bytes(5, 64 << 20);
    let d = sha256(&blob);
    let r = client
        .post(server.url(&format!("/v2/slow/reader/blobs/uploads/?digest={d}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(server.addr.parse().unwrap()).await.unwrap();
    s.write_all(format!("GET /v2/slow/reader/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "the connection was not closed");
    assert!(
        got.len() < blob.len(),
        "the whole blob arrived ({} bytes)",
        got.len()
    );
    // And the server still serves the blob to a reader that reads.
    let r = client
        .get(server.url(&format!("/v2/slow/reader/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), blob.len());
}

/// Six hundred downloads whose readers stopped reading hold no thread:
/// others push and pull meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_starve_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let client = client();
    let blob = bytes(8, 8 << 20);
    let d = sha256(&blob);
    let r = client
        .post(server.url(&format!("/v2/dl/big/blobs/uploads/?digest={d}")))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut stalled = Vec::new();
    for i in 0..600u32 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 40 + (i % 4) as u8], 0)))
            .unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(format!("GET /v2/dl/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        tokio::time::timeout(
            Duration::from_secs(10),
            push_and_pull(&client, &server, "dl/other", i),
        )
        .await
        .expect("a push and pull hung behind the stalled downloads");
    }
    drop(stalled);
}

/// Makes a CA and a server certificate for 127.0.0.1 with openssl; returns
/// (ca.crt, server.crt, server.key).
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.crt",
    ]);
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

fn tls_client_config(ca: &str) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends a whole request (head and body) before reading anything, as
/// Python's urllib3 does, then reads the answer.
async fn send_all_then_read<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: String,
    body_len: usize,
) -> RawResponse {
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .await
            .expect("the server broke the connection while the body was sent");
        left -= n;
    }
    s.flush().await.unwrap();
    read_response(&mut s).await.expect("no readable answer")
}

/// Anonymous blob PUTs of 1 MiB and 64 MiB over TLS to a registry with
/// access control get the 401 challenge, readable after the whole body was
/// sent (HTTP/1.1) and at once over HTTP/2; a manifest over 4 MiB gets the
/// 413 JSON answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_rejections_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = make_certs(dir.path());
    let cfg = config_file(
        dir.path(),
        &format!("http:\n  tls:\n    certificate: {crt}\n    key: {key}\nauth:\n  builtin: {{}}\n"),
    );
    let server = Server::start(
        &dir.path().join("data"),
        &["--config", &cfg],
        &[("WHARF_ADMIN_PASSWORD", "admin-password-1")],
    );
    let addr: SocketAddr = server.addr.parse().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&ca)));
    let digest = format!("sha256:{}", "0".repeat(64));
    for size in [1usize << 20, 64 << 20] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let head = format!(
            "PUT /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        );
        let r = send_all_then_read(tls, head, size).await;
        assert_eq!(r.status, 401, "{size} bytes");
        assert_eq!(r.code(), "UNAUTHORIZED");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer realm=")),
            "{:?}",
            r.headers
        );
    }
    // HTTP/2 over TLS (ALPN), through reqwest.
    let h2 = reqwest::Client::builder()
        .tls_backend_preconfigured({
            let mut c = tls_client_config(&ca);
            c.alpn_protocols = vec![b"h2".to_vec()];
            c
        })
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .put(format!(
            "https://localhost:{}/v2/team/app/blobs/uploads/?digest={digest}",
            addr.port()
        ))
        .body(vec![1u8; 64 << 20])
        .send()
        .await
        .expect("HTTP/2 answer");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
    drop(server);

    // A manifest over the limit, with a client that sends it all first.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[], &[]);
    let size = (4 << 20) + 1;
    let s = TcpStream::connect(server.addr.parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let head = format!(
        "PUT /v2/big/manifest/manifests/latest HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {size}\r\n\r\n"
    );
    let r = send_all_then_read(s, head, size).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "SIZE_INVALID");
    // The same without Content-Length (chunked), which the server can only
    // refuse once it has read past the limit.
    let mut s = TcpStream::connect(server.addr.parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    s.write_all(b"PUT /v2/big/manifest/manifests/latest HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..5 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = read_response(&mut s).await.expect("no readable answer");
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "SIZE_INVALID");
}
