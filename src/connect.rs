//! `wshost connect URL`: a WebSocket client for poking a server by hand, as `wscat` or
//! `websocat` do.
//!
//! Lines read from stdin (typed or piped) go out as text messages; each incoming message is
//! printed on stdout, a binary one as its length and first bytes in hex. The end of stdin
//! (Ctrl-D) closes with 1000. What happens to the connection (connected, closed with its
//! code) goes to stderr, so that stdout holds only the messages. It owns no script and no
//! host: it is a plain tokio-tungstenite client.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Time for the TCP connection, TLS and the upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the server to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a binary message shown in hex.
const HEX_SHOWN: usize = 16;

/// Connects to `url` with the extra upgrade headers (`NAME:VALUE` each) and runs the session.
/// Exit code: 0 after a clean close, 1 when it could not connect or the connection was lost,
/// 2 for a bad URL or header; the reason is one line on stderr.
pub fn run(url: &str, headers: &[String]) -> ExitCode {
    let request = match upgrade_request(url, headers) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let session = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(session(url, request)));
    match session {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn upgrade_request(url: &str, headers: &[String]) -> anyhow::Result<Request> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        bail!("{url:?} is not a ws:// or wss:// URL");
    }
    let mut request = url
        .into_client_request()
        .map_err(|e| anyhow!("bad URL {url:?}: {e}"))?;
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            bail!("--header {header:?}: expected NAME:VALUE");
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| anyhow!("--header {header:?}: bad name: {e}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| anyhow!("--header {header:?}: bad value: {e}"))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

async fn session(url: &str, request: Request) -> anyhow::Result<()> {
    // The same TLS settings as scripts' clients: rustls with the usual public roots.
    let tls = crate::net::tls_config(None)?;
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector));
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(e)) => bail!("cannot connect to {url}: {}", why(e)),
        Err(_) => bail!("cannot connect to {url}: no answer within {CONNECT_TIMEOUT:?}"),
    };
    eprintln!("connected to {url} (lines typed are sent; Ctrl-D closes)");
    let (mut sink, mut stream) = ws.split();
    let mut lines = stdin_lines();
    let mut close_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            line = lines.recv(), if close_deadline.is_none() => match line {
                Some(line) => sink.send(Message::text(line)).await.context("cannot send")?,
                None => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    sink.send(Message::Close(Some(frame))).await.context("cannot close")?;
                    close_deadline = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                }
            },
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => print_line(text.as_str()),
                Some(Ok(Message::Binary(bytes))) => print_line(&binary_line(&bytes)),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Reading on sends our answer to a close the server started.
                    while stream.next().await.is_some() {}
                    eprintln!("closed: {code}{}", if reason.is_empty() { String::new() } else { format!(" {reason}") });
                    return Ok(());
                }
                Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
                Some(Err(e)) => bail!("connection lost: {e}"),
                None => bail!("connection lost: it ended without a close frame"),
            },
            _ = tokio::time::sleep_until(close_deadline.unwrap_or_else(tokio::time::Instant::now)),
                if close_deadline.is_some() => {
                bail!("the server did not answer the close frame within {CLOSE_TIMEOUT:?}");
            }
        }
    }
}

/// Says which step failed, in one line.
fn why(e: WsError) -> String {
    match e {
        WsError::Http(response) => {
            format!("the server refused the upgrade: HTTP {}", response.status())
        }
        WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".into()
        }
        WsError::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Lines of stdin, read on a thread of their own: a blocked read must not keep the process
/// alive once the connection has ended. The channel closes at the end of stdin.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if tx.blocking_send(text.to_string()).is_err() {
                break;
            }
        }
    });
    rx
}

/// `[binary 5 bytes: 68 65 6c 6c 6f]`, the first bytes only of a long one.
fn binary_line(bytes: &[u8]) -> String {
    let mut hex: Vec<String> = bytes
        .iter()
        .take(HEX_SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > HEX_SHOWN {
        hex.push("…".into());
    }
    format!("[binary {} bytes: {}]", bytes.len(), hex.join(" "))
}

/// One message on stdout; a closed stdout (`| head`) is not an error worth a panic.
fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}
