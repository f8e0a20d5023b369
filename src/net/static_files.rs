//! Static files on the WebSocket port (tower-http's `ServeDir`): content types, `index.html`
//! for a folder, 404, HEAD and conditional GET come from it. This module adds one rule it
//! does not have: no path may lead out of the folder, through `..` (ServeDir refuses those
//! too) or through a symbolic link; and files or folders whose name starts with a dot
//! (`.env`, `.git/`) are not served unless the server says so (`staticDotfiles`).

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_http::services::ServeDir;

pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Serves `req` from the folder `root` (canonical); `dotfiles`: serve hidden names too.
pub async fn serve(req: Request<Incoming>, root: &Path, dotfiles: bool) -> Response<Body> {
    if !stays_inside(req.uri().path(), root) || (!dotfiles && hidden(req.uri().path())) {
        return not_found();
    }
    let service = ServeDir::new(root).append_index_html_on_directories(true);
    match service.oneshot(req).await {
        Ok(res) => res.map(|b| b.map_err(std::io::Error::other).boxed_unsync()),
        Err(never) => match never {},
    }
}

fn not_found() -> Response<Body> {
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from_static(b"Not found.\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}

/// True if a part of the (decoded) URL path starts with a dot.
fn hidden(url_path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(url_path).decode_utf8_lossy();
    decoded.split('/').any(|part| part.starts_with('.'))
}

/// True if the file the URL path names (after decoding) is inside `root`, symbolic links
/// resolved. A path that does not exist is left to ServeDir (a 404).
fn stays_inside(url_path: &str, root: &Path) -> bool {
    let decoded = percent_encoding::percent_decode_str(url_path).decode_utf8_lossy();
    if decoded.contains('\0') || decoded.contains('\\') {
        return false;
    }
    let mut candidate = PathBuf::from(root);
    for part in Path::new(decoded.trim_start_matches('/')).components() {
        match part {
            Component::Normal(p) => candidate.push(p),
            Component::CurDir => {}
            _ => return false,
        }
    }
    match candidate.canonicalize() {
        Ok(real) => real.starts_with(root),
        Err(_) => true,
    }
}
