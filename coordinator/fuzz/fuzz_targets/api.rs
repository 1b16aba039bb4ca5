//! The coordinator's HTTP API with arbitrary requests: every endpoint that takes a body or a path
//! parameter, with no key, the admin key, or garbage, and arbitrary bytes for the body. Authentication,
//! body limits, JSON parsing and each handler's validation run as in a live coordinator; the event
//! loop is a stand-in that answers like an empty swarm (`hearth_coordinator::fuzzing`). Nothing may
//! panic or hang, and a request never earns a 500: bad input is the client's error.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    admin: String,
    _dir: tempfile::TempDir,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (router, admin) = runtime
            .block_on(async { hearth_coordinator::fuzzing::api(dir.path(), true) })
            .expect("api");
        Api {
            runtime,
            router,
            admin,
            _dir: dir,
        }
    })
}

const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/v1/jobs"),
    ("POST", "/v1/generate"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/coop/revocations"),
    ("POST", "/v1/session"),
    ("GET", "/v1/jobs/"),
    ("GET", "/v1/models"),
    ("GET", "/v1/peers"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (method, path) = ENDPOINTS[usize::from(selector) % ENDPOINTS.len()];
    let api = api();
    let mut uri = path.to_string();
    let mut body = rest;
    if path.ends_with('/') {
        // A path parameter and query: the next bytes, as far as they make a URI.
        let n = rest
            .first()
            .map_or(0, |n| usize::from(*n % 32))
            .min(rest.len().saturating_sub(1));
        let param: String = rest
            .get(1..=n)
            .unwrap_or_default()
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect();
        uri.push_str(&param);
        uri.push_str("?units=true");
        body = &[];
    }
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(&uri)
        .header(header::CONTENT_TYPE, "application/json");
    match selector / 32 % 4 {
        0 => {}
        1 | 2 => request = request.header(header::AUTHORIZATION, format!("Bearer {}", api.admin)),
        _ => request = request.header(header::AUTHORIZATION, "Bearer hk_0000"),
    }
    let request = request.body(Body::from(body.to_vec())).expect("request");
    let router = api.router.clone();
    let status = api.runtime.block_on(async move {
        let response = tokio::time::timeout(Duration::from_secs(5), router.oneshot(request))
            .await
            .expect("the API answers within 5 s")
            .expect("infallible");
        let status = response.status();
        // Streams end: the stand-in swarm has nothing to stream.
        tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .expect("the body ends within 5 s")
            .expect("the body reads");
        status
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri}: {:?}",
        String::from_utf8_lossy(body)
    );
});
