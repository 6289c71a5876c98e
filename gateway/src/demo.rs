//! The demo page (`GET /demo`, `[http] demo`): static files built into the
//! binary, so the page loads nothing from anywhere but this node.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// `(path, content type, body)`; `switchboard.js` is the browser SDK
/// (`clients/js`) bundled with its codec (`npm run bundle` there writes it).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/demo",
        "text/html; charset=utf-8",
        include_bytes!("../assets/demo/index.html"),
    ),
    (
        "/demo/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/demo/app.js"),
    ),
    (
        "/demo/switchboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/demo/switchboard.js"),
    ),
];

/// The file at `path`, if it is one of the demo's.
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change only with the binary; a redeploy must not leave a
    // browser on an old SDK.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}
