//! Static files and TLS on the WebSocket port: content types, 404, traversal attempts, HEAD and
//! conditional GET, https and wss with a certificate made at test time.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use common::*;

/// A folder to serve, with a secret file beside it (outside) and a link pointing to it.
fn site() -> (tempfile::TempDir, String) {
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("site");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(root.join("style.css"), "h1{}").unwrap();
    std::fs::write(root.join("app.js"), "let x = 1;").unwrap();
    std::fs::write(root.join("data.json"), "{}").unwrap();
    std::fs::write(root.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(root.join("sub/index.html"), "<p>sub</p>").unwrap();
    std::fs::write(top.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(top.path().join("secret.txt"), root.join("link.txt")).unwrap();
    let root = root.to_string_lossy().into_owned();
    (top, root)
}

/// A raw HTTP/1.1 request (the path is sent as is); returns the whole answer.
fn http(port: u16, method: &str, path: &str, headers: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The server may close at once (plain HTTP to a TLS port): then the answer is empty.
    let _ = write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    );
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn static_files_with_types_index_404_head_and_conditional_get() {
    let (_keep, root) = site();
    let host = Host::start_with("scripts/echo.rhai", &["--static", &root]);
    let p = host.port;
    for (path, ctype, body) in [
        ("/", "text/html", "<h1>home</h1>"),
        ("/index.html", "text/html", "<h1>home</h1>"),
        ("/style.css", "text/css", "h1{}"),
        ("/app.js", "text/javascript", "let x = 1;"),
        ("/data.json", "application/json", "{}"),
        ("/sub/", "text/html", "<p>sub</p>"),
    ] {
        let a = http(p, "GET", path, "");
        assert_eq!(status(&a), 200, "{path}: {a}");
        assert!(
            header(&a, "content-type").unwrap().starts_with(ctype),
            "{path}: {a}"
        );
        assert!(a.ends_with(body), "{path}: {a}");
    }
    assert_eq!(
        header(&http(p, "GET", "/logo.png", ""), "content-type"),
        Some("image/png")
    );
    assert_eq!(status(&http(p, "GET", "/missing.html", "")), 404);

    let head = http(p, "HEAD", "/style.css", "");
    assert_eq!(status(&head), 200);
    assert_eq!(header(&head, "content-length"), Some("4"));
    assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");

    let first = http(p, "GET", "/style.css", "");
    let modified = header(&first, "last-modified").expect("last-modified");
    let again = http(
        p,
        "GET",
        "/style.css",
        &format!("If-Modified-Since: {modified}\r\n"),
    );
    assert_eq!(status(&again), 304, "{again}");

    // The WebSocket server still answers on the same port.
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "still a socket").await;
    assert_eq!(recv_text(&mut ws).await, "still a socket");
}

#[test]
fn no_path_leads_out_of_the_folder() {
    let (_keep, root) = site();
    let host = Host::start_with("scripts/echo.rhai", &["--static", &root]);
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "/sub/../../secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/..\\secret.txt",
        "/link.txt",
        "/%00/index.html",
    ] {
        let a = http(host.port, "GET", path, "");
        assert!(matches!(status(&a), 400 | 404), "{path}: {a}");
        assert!(!a.contains("top secret"), "{path} leaked: {a}");
    }
}

#[test]
fn the_chat_script_serves_its_page() {
    let host = Host::start("scripts/chat.rhai");
    let a = http(host.port, "GET", "/", "");
    assert_eq!(status(&a), 200);
    assert!(a.contains("<title>"), "{a}");
    assert!(a.contains("new WebSocket"), "{a}");
}

/// A certificate for localhost made now: (cert file, key file, the dir holding them).
fn certificate() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let (cert, key) = (s(&cert), s(&key));
    (dir, cert, key)
}

fn client_tls(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test]
async fn https_and_wss_with_a_certificate_made_at_test_time() {
    let (_keep, root) = site();
    let (_certs, cert, key) = certificate();
    let host = Host::start_with(
        "scripts/echo.rhai",
        &["--static", &root, "--tls-cert", &cert, "--tls-key", &key],
    );
    assert!(
        host.stderr().contains("listening on wss://"),
        "{}",
        host.stderr()
    );
    let tls = client_tls(&cert);

    // wss: the WebSocket over TLS.
    let url = format!("wss://localhost:{}/", host.port);
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
    )
    .await
    .unwrap();
    send_text(&mut ws, "over tls").await;
    assert_eq!(recv_text(&mut ws).await, "over tls");

    // https: a page over TLS.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", host.port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.ends_with("<h1>home</h1>"), "{answer}");

    // Plain HTTP on the TLS port gets nothing served.
    let plain = http(host.port, "GET", "/", "");
    assert!(!plain.contains("home"), "{plain}");
}

#[test]
fn a_missing_certificate_is_a_usage_error() {
    let (status, _, stderr) = run_cli(&[
        "run",
        "scripts/echo.rhai",
        "--tls-cert",
        "no/cert.pem",
        "--tls-key",
        "no/key.pem",
    ]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("no/cert.pem"), "{stderr}");
}
