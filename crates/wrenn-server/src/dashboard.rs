//! The web dashboard: static files compiled into the binary and served under `/dashboard/`
//! (`/` redirects there).
//!
//! Design: the front end is plain JavaScript modules with no build step
//! (`crates/wrenn-server/dashboard/`); third-party code (xterm.js) is vendored by
//! `scripts/vendor-dashboard.sh`. It talks to the public API with the `X-API-Key` header, and
//! to the PTY WebSocket with the key in `Sec-WebSocket-Protocol` (see [`crate::auth`]).
//!
//! Every file is answered with `Cache-Control: no-cache` and a content-hash `ETag`, so a
//! browser revalidates (a 304 costs one round trip) and never runs files older than the binary.
//! The Content-Security-Policy allows scripts, connections and fonts from this origin only.
//!
//! Limitations: `style-src` allows inline styles because xterm.js injects `<style>` elements
//! for its theme and cell sizes; scripts stay restricted to `'self'`.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Where the dashboard lives.
pub const PREFIX: &str = "/dashboard/";

/// The policy of every dashboard response.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// One file of the dashboard.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../dashboard/", $path)),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/main.js", "text/javascript; charset=utf-8"),
    asset!("js/api.js", "text/javascript; charset=utf-8"),
    asset!("js/dom.js", "text/javascript; charset=utf-8"),
    asset!("js/chart.js", "text/javascript; charset=utf-8"),
    asset!("js/capsules.js", "text/javascript; charset=utf-8"),
    asset!("js/capsule.js", "text/javascript; charset=utf-8"),
    asset!("js/terminal.js", "text/javascript; charset=utf-8"),
    asset!("js/files.js", "text/javascript; charset=utf-8"),
    asset!("js/templates.js", "text/javascript; charset=utf-8"),
    asset!("js/usage.js", "text/javascript; charset=utf-8"),
    asset!("js/keys.js", "text/javascript; charset=utf-8"),
    asset!("vendor/xterm/xterm.mjs", "text/javascript; charset=utf-8"),
    asset!("vendor/xterm/xterm.css", "text/css; charset=utf-8"),
    asset!("vendor/xterm/LICENSE", "text/plain; charset=utf-8"),
    asset!(
        "vendor/addon-fit/addon-fit.mjs",
        "text/javascript; charset=utf-8"
    ),
    asset!("vendor/addon-fit/LICENSE", "text/plain; charset=utf-8"),
];

/// The dashboard's routes; merge them into the API router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PREFIX) }))
        .route("/dashboard", get(|| async { Redirect::to(PREFIX) }))
        .route("/dashboard/", get(index))
        .route("/dashboard/{*path}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

/// The file at `path` (relative to the dashboard), honouring `If-None-Match`.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some((asset, etag)) = lookup(path) else {
        return ApiError::NotFound(format!("no dashboard file {path:?}")).into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    for (name, value) in [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The asset and its ETag (a quoted prefix of its SHA-256), computed once.
fn lookup(path: &str) -> Option<(&'static Asset, &'static str)> {
    static TAGS: OnceLock<HashMap<&'static str, (&'static Asset, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                (a.path, (a, format!("\"{hex}\"")))
            })
            .collect()
    });
    tags.get(path).map(|(a, tag)| (*a, tag.as_str()))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn get(path: &str, etag: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(tag) = etag {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        serve(path, &headers)
    }

    #[tokio::test]
    async fn index_has_type_policy_and_etag() {
        let r = get("index.html", None);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self';"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"<!doctype html>"));

        let tag = h[header::ETAG].to_str().unwrap();
        let again = get("index.html", Some(&format!("\"x\", {tag}")));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        let other = get("index.html", Some("\"stale\""));
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn every_asset_is_served_with_its_type() {
        for a in ASSETS {
            let r = get(a.path, None);
            assert_eq!(r.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[tokio::test]
    async fn unknown_files_are_json_404s() {
        for path in ["nope.js", "../Cargo.toml", "js/", ""] {
            let r = get(path, None);
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "not_found");
        }
    }
}
