//! Outgoing connections (`WebSocket.new`): connect, TLS, the upgrade request, then the same
//! reader/writer pair as accepted connections.
//!
//! Every failure (refused, DNS, TLS, HTTP refusal, timeout) becomes an `Error` event followed
//! by `Closed` with 1006; nothing is raised to the script and nothing panics.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::HeaderName;
use tokio_tungstenite::tungstenite::{self, Error as WsError};
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

use super::{NetConfig, Network, connection};
use crate::event::{ConnectionPort, ErrorKind};
use crate::event_loop::Events;

/// What the script asked for: the URL and extra upgrade-request headers.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Builds the TLS settings: the usual public roots, plus the certificates of `extra_ca` (a PEM
/// file) when given.
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("bad CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("CA file {} holds no certificate", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("bad certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Network {
    /// Connects in the background on `event_loop` (the worker's); events go to `events`
    /// (`Open`… or `Error` + `Closed`).
    pub fn connect(
        &self,
        request: ClientRequest,
        port: ConnectionPort,
        events: Events,
        event_loop: &tokio::runtime::Handle,
    ) {
        let config = self.config().clone();
        let tls = self.tls().clone();
        event_loop.spawn(async move {
            let handle = port.handle.clone();
            let id = handle.id();
            let opened = tokio::select! {
                opened = open(&request, &config, tls) => Some(opened),
                // Closed while connecting (`terminate()`, a stop): no connection, no error.
                _ = handle.overflow().cancelled() => None,
            };
            match opened {
                _ if handle.overflow().is_cancelled() => {
                    tracing::debug!("client {id} to {}: closed before it connected", request.url);
                    connection::report_end(&handle, &events, None, 1006, String::new(), false)
                        .await;
                }
                None => {}
                Some(Ok(ws)) => {
                    connection::run(ws, port.handle, port.commands, events, &config).await
                }
                Some(Err((kind, message))) => {
                    tracing::debug!("client {id} to {}: {message}", request.url);
                    let failure = Some((kind, message));
                    connection::report_end(&handle, &events, failure, 1006, String::new(), false)
                        .await;
                }
            }
        });
    }
}

type ClientStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(
    request: &ClientRequest,
    config: &NetConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<ClientStream, (ErrorKind, String)> {
    let mut req = request
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| (ErrorKind::Connect, format!("bad request: {e}")))?;
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| (ErrorKind::Connect, format!("bad header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value).map_err(|e| {
            (
                ErrorKind::Connect,
                format!("bad header value {value:?}: {e}"),
            )
        })?;
        req.headers_mut().append(name, value);
    }
    let connecting = connect_async_tls_with_config(
        req,
        Some(config.websocket()),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(config.handshake_timeout, connecting).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(describe(e)),
        Err(_) => Err((
            ErrorKind::Connect,
            format!(
                "timed out after {:?} while connecting",
                config.handshake_timeout
            ),
        )),
    }
}

/// Says which step failed, in words a script author can act on.
fn describe(e: WsError) -> (ErrorKind, String) {
    match e {
        WsError::Http(res) => (
            ErrorKind::Refused,
            format!("the server refused the upgrade: HTTP {}", res.status()),
        ),
        WsError::Tls(e) => (ErrorKind::Tls, format!("TLS failure: {e}")),
        WsError::Io(e) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                (ErrorKind::Connect, format!("connection refused: {e}"))
            }
            _ if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
                (ErrorKind::Tls, format!("TLS failure: {e}"))
            }
            _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
                (ErrorKind::Connect, format!("DNS failure: {e}"))
            }
            _ => (ErrorKind::Connect, format!("cannot connect: {e}")),
        },
        WsError::Url(e) => (ErrorKind::Connect, format!("bad URL: {e}")),
        tungstenite::Error::Protocol(e) => (
            ErrorKind::Protocol,
            format!("the server's handshake answer is invalid: {e}"),
        ),
        other => (ErrorKind::Connect, format!("cannot connect: {other}")),
    }
}
