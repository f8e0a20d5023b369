//! Listening sockets shared by servers, and the HTTP upgrade that admits a connection.
//!
//! Several servers may listen on one host:port with different paths (as in 4D, where all of
//! them live on the one web server), so a listener holds a table of routes. hyper reads the
//! upgrade request; the route's worker decides (`onConnection`) while the handshake awaits its
//! answer, which never blocks a runtime thread.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio_rustls::TlsAcceptor;

use super::static_files::Body;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::NetConfig;
use crate::event::{ConnectionHandle, Event, Request, ServerId, Status, Verdict};
use crate::event_loop::{Events, LoopId};

/// Where the connections for one path go: a server and the worker that owns it.
#[derive(Clone, Debug)]
pub struct Route {
    pub server: ServerId,
    /// The worker that owns the server: its events, and the loop its sockets run on.
    pub events: Events,
    pub runtime: tokio::runtime::Handle,
    /// Browser origins allowed to connect (`Origin` header); None: any.
    pub origins: Option<Arc<[String]>>,
}

/// What a listening socket serves besides its WebSocket routes; all the servers on one
/// host:port share it.
#[derive(Clone, Default)]
pub struct ListenOptions {
    /// Serve plain HTTP requests from this folder (canonical path).
    pub static_root: Option<PathBuf>,
    /// Accept TLS (https/wss) with this.
    pub tls: Option<TlsAcceptor>,
    /// Serve files and folders whose name starts with a dot (`.env`, `.git/`).
    pub dotfiles: bool,
}

/// A TLS acceptor for a certificate chain and its private key (PEM files).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why a server could not listen.
#[derive(Debug)]
pub enum ListenError {
    /// The host name did not resolve to an address.
    BadHost(String),
    /// The operating system refused the bind (address in use, permission…).
    Bind(SocketAddr, std::io::Error),
    /// Another server already serves this path on this host:port.
    PathTaken(SocketAddr, String),
    /// The servers on one host:port disagree on TLS or on the static folder.
    Mismatch(SocketAddr, &'static str),
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadHost(h) => write!(f, "cannot resolve host {h:?}"),
            Self::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Self::PathTaken(addr, p) => {
                write!(f, "{addr} already has a server for path {p:?}")
            }
            Self::Mismatch(addr, what) => write!(
                f,
                "the servers on {addr} must agree on {what} (it belongs to the port, not to a path)"
            ),
        }
    }
}

impl std::error::Error for ListenError {}

#[derive(Default)]
struct Routes {
    by_path: HashMap<String, RouteGroup>,
    /// The servers without a `path`: they take every path no other server claims.
    any: Option<RouteGroup>,
}

/// The open connections of a server, by id, across all the workers that serve it: what
/// `wss.connections` lists. Handles are ids plus senders, so any worker can send to any.
pub type ConnTable = RwLock<std::collections::BTreeMap<crate::event::ConnId, ConnectionHandle>>;

/// The copies of one server, one per worker (the same script runs on each): connections go
/// to them in turn.
struct RouteGroup {
    routes: Vec<Route>,
    next: std::sync::atomic::AtomicUsize,
    conns: Arc<ConnTable>,
    counts: PathCounts,
}

/// The metrics of one server path (`*` for a server without `path`): a bounded label, made
/// once per path, not per request.
#[derive(Clone)]
struct PathCounts {
    open: metrics::Gauge,
    accepted: metrics::Counter,
}

impl PathCounts {
    fn new(path: Option<&str>) -> Self {
        let path = path.unwrap_or("*").to_string();
        Self {
            open: metrics::gauge!("wshost_connections_open", "path" => path.clone()),
            accepted: metrics::counter!("wshost_connections_accepted_total", "path" => path),
        }
    }
}

impl RouteGroup {
    fn new(route: Route, path: Option<&str>) -> Self {
        Self {
            routes: vec![route],
            next: Default::default(),
            conns: Arc::default(),
            counts: PathCounts::new(path),
        }
    }

    /// The copy of the worker running `here` (the socket is on its thread), else one in turn.
    fn pick(&self, here: Option<LoopId>) -> Option<&Route> {
        if let Some(route) = self.routes.iter().find(|r| Some(r.events.worker()) == here) {
            return Some(route);
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.routes.get(n % self.routes.len().max(1))
    }

    /// Adds another worker's copy; the same worker cannot serve one path twice.
    fn join(&mut self, route: Route) -> Option<Arc<ConnTable>> {
        if self
            .routes
            .iter()
            .any(|r| r.events.worker() == route.events.worker())
        {
            return None;
        }
        self.routes.push(route);
        Some(self.conns.clone())
    }
}

impl Routes {
    fn find(&self, path: &str, here: Option<LoopId>) -> Option<(&Route, &PathCounts)> {
        let group = self.by_path.get(path).or(self.any.as_ref())?;
        Some((group.pick(here)?, &group.counts))
    }

    /// The event loops of the workers serving on this listener, each once.
    fn loops(&self) -> Vec<(LoopId, tokio::runtime::Handle)> {
        let mut loops: Vec<(LoopId, tokio::runtime::Handle)> = Vec::new();
        for route in self
            .by_path
            .values()
            .chain(&self.any)
            .flat_map(|g| &g.routes)
        {
            if !loops.iter().any(|(id, _)| *id == route.events.worker()) {
                loops.push((route.events.worker(), route.runtime.clone()));
            }
        }
        loops
    }

    fn is_empty(&self) -> bool {
        self.by_path.is_empty() && self.any.is_none()
    }
}

struct Listener {
    routes: RwLock<Routes>,
    stop: CancellationToken,
    options: ListenOptions,
    /// Which worker gets the next connection.
    next: std::sync::atomic::AtomicUsize,
    /// The host is draining (see [`Network::drain`]).
    draining: Arc<AtomicBool>,
}

impl Listener {
    /// The event loop of the worker that takes the next connection (in turn).
    fn next_loop(&self) -> Option<tokio::runtime::Handle> {
        let loops = self.routes.read().unwrap().loops();
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loops
            .get(n % loops.len().max(1))
            .map(|(_, handle)| handle.clone())
    }
}

/// The network side of a host: its listeners, and the runtime their accept loops run on
/// (connections run on the event loops of the workers).
pub struct Network {
    runtime: tokio::runtime::Handle,
    config: Arc<NetConfig>,
    tls: Arc<rustls::ClientConfig>,
    listeners: Mutex<HashMap<SocketAddr, Arc<Listener>>>,
    /// Raised when the host stops: the workers' running callbacks are interrupted.
    interrupt: crate::script::Interrupt,
    /// Set when the host drains: listeners stay open but answer upgrades with 503.
    draining: Arc<AtomicBool>,
    /// The host's topics, shared by its workers (and, with `--cluster`, by the other nodes).
    topics: Arc<crate::topics::Topics>,
    /// This host's `NODE_ID`, and the number its connection ids start with when clustered.
    node: crate::cluster::NodeId,
}

impl Network {
    /// What stops the callbacks running now on every worker of this host.
    pub fn interrupt(&self) -> &crate::script::Interrupt {
        &self.interrupt
    }

    /// Starts a drain: from now on every upgrade is answered 503, on every listener (kept
    /// open for that even when its servers stop), and `/healthz` says 503.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Fails only if the extra CA file of `config` cannot be used.
    pub fn new(runtime: tokio::runtime::Handle, config: NetConfig) -> anyhow::Result<Arc<Self>> {
        let tls = super::client::tls_config(config.extra_ca.as_deref())?;
        Ok(Arc::new(Self {
            runtime,
            config: Arc::new(config),
            tls,
            listeners: Mutex::new(HashMap::new()),
            interrupt: Default::default(),
            draining: Default::default(),
            topics: Default::default(),
            node: crate::cluster::NodeId::random(),
        }))
    }

    pub fn topics(&self) -> &Arc<crate::topics::Topics> {
        &self.topics
    }

    pub fn node(&self) -> &crate::cluster::NodeId {
        &self.node
    }

    pub(crate) fn config(&self) -> &Arc<NetConfig> {
        &self.config
    }

    pub(super) fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// Serves `path` (every path when None) on host:port for `route`, binding the port unless
    /// a listener already holds it. Returns the bound address. Callable from any thread.
    pub fn listen(
        &self,
        host: &str,
        port: u16,
        path: Option<&str>,
        route: Route,
        options: ListenOptions,
    ) -> Result<(SocketAddr, Arc<ConnTable>), ListenError> {
        let addr = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ListenError::BadHost(host.to_string()))?;
        let mut listeners = self.listeners.lock().unwrap();
        if port != 0
            && let Some(existing) = listeners.get(&addr)
        {
            if existing.options.tls.is_some() != options.tls.is_some() {
                return Err(ListenError::Mismatch(addr, "TLS"));
            }
            if options.static_root.is_some() && existing.options.static_root != options.static_root
            {
                return Err(ListenError::Mismatch(addr, "the static folder"));
            }
            let conns = add_route(&mut existing.routes.write().unwrap(), addr, path, route)?;
            return Ok((addr, conns));
        }
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|e| ListenError::Bind(addr, e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| ListenError::Bind(addr, e))?;
        let bound = std_listener
            .local_addr()
            .map_err(|e| ListenError::Bind(addr, e))?;
        let mut routes = Routes::default();
        let conns = add_route(&mut routes, bound, path, route)?;
        let listener = Arc::new(Listener {
            routes: RwLock::new(routes),
            stop: CancellationToken::new(),
            options,
            next: Default::default(),
            draining: self.draining.clone(),
        });
        listeners.insert(bound, listener.clone());
        let config = self.config.clone();
        self.runtime.spawn(async move {
            match TcpListener::from_std(std_listener) {
                Ok(l) => accept_loop(l, listener, config).await,
                Err(e) => tracing::error!("cannot listen on {bound}: {e}"),
            }
        });
        Ok((bound, conns))
    }

    /// Stops serving `path` on `addr` for `server`; the socket closes when its last route
    /// goes.
    pub fn unlisten(&self, addr: SocketAddr, path: Option<&str>, server: ServerId) {
        let mut listeners = self.listeners.lock().unwrap();
        let Some(listener) = listeners.get(&addr) else {
            return;
        };
        let empty = {
            let mut routes = listener.routes.write().unwrap();
            let group = match path {
                Some(p) => routes.by_path.get_mut(p),
                None => routes.any.as_mut(),
            };
            let gone = group.is_some_and(|g| {
                g.routes.retain(|r| r.server != server);
                g.routes.is_empty()
            });
            if gone {
                match path {
                    Some(p) => {
                        routes.by_path.remove(p);
                    }
                    None => routes.any = None,
                }
            }
            routes.is_empty()
        };
        if empty {
            // Draining, the socket stays open to answer 503 until the host exits.
            if !self.draining.load(Ordering::Relaxed) {
                listener.stop.cancel();
            }
            listeners.remove(&addr);
        }
    }
}

/// Adds `route` for `path`: a new group, or the copy of another worker joining one.
fn add_route(
    routes: &mut Routes,
    addr: SocketAddr,
    path: Option<&str>,
    route: Route,
) -> Result<Arc<ConnTable>, ListenError> {
    let slot = match path {
        Some(p) => routes.by_path.get_mut(p),
        None => routes.any.as_mut(),
    };
    if let Some(group) = slot {
        let taken = || ListenError::PathTaken(addr, path.unwrap_or("*").to_string());
        return group.join(route).ok_or_else(taken);
    }
    let group = RouteGroup::new(route, path);
    let conns = group.conns.clone();
    match path {
        Some(p) => {
            routes.by_path.insert(p.to_string(), group);
        }
        None => routes.any = Some(group),
    }
    Ok(conns)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Listener>, config: Arc<NetConfig>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                if shared.draining.load(Ordering::Relaxed) {
                    // Only a 503 to give, and the workers are ending: answered here.
                    tokio::spawn(serve(stream, peer, shared.clone(), config.clone()));
                    continue;
                }
                // The connection moves to a worker's loop: its I/O is driven there, on the
                // thread that runs its callbacks.
                let Some(worker) = shared.next_loop() else {
                    continue;
                };
                worker.spawn(serve(stream, peer, shared.clone(), config.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves one accepted connection on the event loop it was given: TLS if the port has it,
/// then HTTP (static files, or the upgrade).
async fn serve(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Listener>,
    config: Arc<NetConfig>,
) {
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return tracing::debug!("connection from {peer}: {e}"),
    };
    match shared.options.tls.clone() {
        None => serve_http(stream, peer, shared, config).await,
        Some(acceptor) => {
            let accepted =
                tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await;
            match accepted {
                Ok(Ok(tls)) => serve_http(tls, peer, shared, config).await,
                Ok(Err(e)) => tracing::debug!("TLS from {peer}: {e}"),
                Err(_) => {
                    crate::metrics::refused("handshake_timeout");
                    tracing::debug!("TLS from {peer}: handshake timed out")
                }
            }
        }
    }
}

async fn serve_http<IO>(stream: IO, peer: SocketAddr, shared: Arc<Listener>, config: Arc<NetConfig>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = config.handshake_timeout;
    // hyper answers 431 past this; it needs at least 8 KiB.
    let max_head = config.max_header_bytes.max(8192);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let config = config.clone();
        async move { Ok::<_, Infallible>(handle_request(req, peer, &shared, &config).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .max_buf_size(max_head)
        .header_read_timeout(Some(timeout))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        if e.is_timeout() {
            crate::metrics::refused("handshake_timeout");
        }
        tracing::debug!("http connection from {peer}: {e}");
    }
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(full(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // An answer that is not an upgrade ends the exchange: no keep-alive to hold sockets.
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

fn header_has_token(req: &HttpRequest<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

async fn handle_request(
    mut req: HttpRequest<Incoming>,
    peer: SocketAddr,
    shared: &Listener,
    config: &Arc<NetConfig>,
) -> Response<Body> {
    let is_upgrade = req.method() == hyper::Method::GET
        && header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    if is_upgrade && shared.draining.load(Ordering::Relaxed) {
        crate::metrics::refused("503");
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Server is stopping.\n");
    }
    if !is_upgrade && let Some(root) = &shared.options.static_root {
        return super::static_files::serve(req, root, shared.options.dotfiles).await;
    }
    if !is_upgrade {
        let mut res = plain(
            StatusCode::UPGRADE_REQUIRED,
            "This is a WebSocket endpoint.\n",
        );
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return res;
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        let mut res = plain(StatusCode::BAD_REQUEST, "Unsupported WebSocket version.\n");
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    }
    if req.version() != hyper::Version::HTTP_11 {
        // RFC 6455 4.1: the upgrade is an HTTP/1.1 request (1.0 has no Upgrade).
        return plain(
            StatusCode::BAD_REQUEST,
            "A WebSocket upgrade needs HTTP/1.1.\n",
        );
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key.\n");
    };
    // RFC 6455 4.2.1: the key is 16 bytes, base64-encoded.
    if data_encoding::BASE64
        .decode(key.as_bytes())
        .map_or(true, |k| k.len() != 16)
    {
        return plain(StatusCode::BAD_REQUEST, "Bad Sec-WebSocket-Key.\n");
    }
    let found = shared
        .routes
        .read()
        .unwrap()
        .find(req.uri().path(), crate::event_loop::current())
        .map(|(route, counts)| (route.clone(), counts.clone()));
    let Some((route, counts)) = found else {
        crate::metrics::refused("404");
        return plain(StatusCode::NOT_FOUND, "No WebSocket server on this path.\n");
    };

    if let (Some(allowed), Some(origin)) = (&route.origins, req.headers().get(header::ORIGIN)) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|a| a == origin) {
            tracing::info!("refused a connection from origin {origin:?} (not in `origins`)");
            crate::metrics::refused("origin");
            return plain(StatusCode::FORBIDDEN, "Origin not allowed.\n");
        }
    }
    let request = describe(&req, peer);
    let port = ConnectionHandle::channel(Status::Connecting, config);
    let handle = port.handle.clone();
    let (reply_tx, reply_rx) = oneshot::channel();
    let asked = route
        .events
        .deliver(Event::Connect {
            server: route.server,
            conn: handle.clone(),
            request: Box::new(request),
            reply: reply_tx,
        })
        .await;
    if !asked {
        crate::metrics::refused("503");
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Server is stopping.\n");
    }
    let mut reason = None;
    let verdict = match tokio::time::timeout(config.handshake_timeout, reply_rx).await {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => Verdict::Refuse(503),
        Err(_) => {
            tracing::warn!(
                "connection {} from {peer}: no answer from onConnection within {:?}",
                handle.id(),
                config.handshake_timeout
            );
            reason = Some("handshake_timeout");
            Verdict::Refuse(503)
        }
    };
    if let Verdict::Refuse(status) = verdict {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        crate::metrics::refused(reason.unwrap_or(match status.as_u16() {
            403 => "403",
            500 => "500",
            503 => "503",
            _ => "other",
        }));
        let mut res = Response::new(full(Bytes::from(format!(
            "Connection refused ({status}).\n"
        ))));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let events = route.events.clone();
    let ws_config = config.websocket();
    let config = config.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                counts.accepted.increment(1);
                counts.open.increment(1.0);
                super::connection::run(ws, port.handle, port.commands, events, &config).await;
                counts.open.decrement(1.0);
            }
            Err(e) => {
                tracing::debug!("connection {}: upgrade failed: {e}", handle.id());
                // `Closed` is the worker's to set, when it delivers onTerminate.
                handle.begin_closing();
                events
                    .deliver(Event::Closed {
                        conn: handle.id(),
                        code: 1006,
                        reason: String::new(),
                        clean: false,
                    })
                    .await;
            }
        }
    });

    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    res
}

/// The request as `onConnection` sees it: url, lower-case headers, decoded query, peer IP.
fn describe(req: &HttpRequest<Incoming>, peer: SocketAddr) -> Request {
    let url = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query = req
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Request {
        url,
        headers,
        query,
        remote_address: peer.ip().to_canonical().to_string(),
    }
}
