//! The web client's built assets, embedded in natterd and served from the side-port: `/` (and
//! `/index.html`), `/app.js` and `/app.css`. They are `clients/web/dist/`, built from
//! `clients/web/src/` by `scripts/build-web.sh` and checked in (`scripts/build-web.sh --check`
//! catches drift), so a natterd built on a machine without Node.js still serves a working page.
//!
//! The page talks to the side-port on its own origin (no CORS needed) and learns the WebSocket
//! URL from `GET /v1/endpoints`; its WebSocket carries the page's origin, which natterd's default
//! `--ws-origin` (any) admits. Tokens travel in the `Hello` frame, not in cookies, so another
//! site's page cannot ride on a user's session (no cross-site WebSocket hijacking).

use crate::http::api::{Request, Response};
use crate::http::error::HttpError;

/// One embedded file: its path on the side-port, its `Content-Type` and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the page. Each path is served `GET`-only; the page itself is at `/`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../clients/web/dist/index.html"),
    },
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../clients/web/dist/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../clients/web/dist/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../../clients/web/dist/app.css"),
    },
];

/// The answer for `req` if its path is one of the page's files (a query is ignored), else `None`
/// (the request goes on to the API routes). Another method than `GET` gets 405 with `Allow: GET`.
pub(crate) fn handle(req: &Request<'_>) -> Option<Response> {
    let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
    let asset = ASSETS.iter().find(|a| a.path == path)?;
    if req.method != "GET" {
        return Some(Response {
            allow: Some("GET"),
            ..Response::error(HttpError::MethodNotAllowed)
        });
    }
    Some(Response {
        status: 200,
        body: asset.body.to_owned(),
        content_type: asset.content_type,
        allow: None,
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn get(method: &'static str, path: &'static str) -> Option<Response> {
        handle(&Request {
            method,
            path,
            authorization: None,
            body: b"",
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
        })
    }

    #[test]
    fn the_page_and_its_assets_are_served_and_reference_each_other() {
        let page = get("GET", "/").unwrap_or_else(|| panic!("/ is served"));
        assert_eq!(page.status, 200);
        assert!(page.content_type.starts_with("text/html"));
        // Every file the page names is served, with a fitting type.
        for (name, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
            assert!(
                page.body.contains(&format!("\"{name}\"")),
                "index.html names {name}"
            );
            let asset = get("GET", name).unwrap_or_else(|| panic!("{name} is served"));
            assert_eq!(asset.status, 200);
            assert!(
                asset.content_type.starts_with(kind),
                "{name}: {}",
                asset.content_type
            );
            assert!(!asset.body.is_empty());
        }
        assert_eq!(get("GET", "/?from=bookmark").map(|r| r.body), Some(page.body));
    }

    #[test]
    fn other_methods_are_refused_and_other_paths_fall_through() {
        let post = get("POST", "/app.js").unwrap_or_else(|| panic!("answered"));
        assert_eq!((post.status, post.allow), (405, Some("GET")));
        assert!(get("GET", "/v1/endpoints").is_none());
        assert!(get("GET", "/app.js.map").is_none());
        assert!(get("GET", "//").is_none());
    }
}
