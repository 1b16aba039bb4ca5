//! Hearth's dashboard: one page that reads the coordinator's JSON endpoints and its event stream
//! like any other client, so the coordinator does not depend on it.
//!
//! Every asset is embedded in the binary (no CDN: the page works without internet access). Charts
//! are drawn with uPlot 1.6.32 (MIT, `assets/vendor/`). The `hearth` binary mounts [`router`] beside
//! the coordinator's API:
//!
//! | path | what |
//! |---|---|
//! | `/` | the page |
//! | `/dashboard/app.js`, `/dashboard/style.css` | its script and style |
//! | `/dashboard/vendor/uPlot.iife.min.js`, `/dashboard/vendor/uPlot.min.css` | the charting library |
//!
//! What the page reads: `GET /v1/events` (a `snapshot` every second: peers, jobs, pipeline
//! sessions), and `POST /v1/session` once, with the API key the user types, which sets the HttpOnly
//! cookie the event stream then travels with (a browser's `EventSource` sends no `Authorization`
//! header). The page only reads.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// One embedded file: its path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 5] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/style.css"),
    },
    Asset {
        path: "/dashboard/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/dashboard/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/vendor/uPlot.min.css"),
    },
];

/// The dashboard's routes: the page and its assets, open to anyone who can reach the server (the
/// data behind them needs a key).
pub fn router() -> Router {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let (content_type, bytes) = (asset.content_type, asset.bytes);
        router.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    bytes,
                )
                    .into_response()
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_loads_only_local_assets() {
        for asset in &ASSETS {
            assert!(!asset.bytes.is_empty(), "{}", asset.path);
        }
        let page = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        for asset in &ASSETS[1..] {
            assert!(page.contains(asset.path), "the page loads {}", asset.path);
        }
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no CDN"
        );
        let _ = router();
    }
}
