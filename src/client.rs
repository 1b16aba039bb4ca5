//! The HTTP client every client command shares: base URL, API key, one-line errors.

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::cli::ClientArgs;
use crate::config::{DEFAULT_API, FileConfig};

/// A coordinator's HTTP API: one URL, or every member of a coordinator group (a request goes to
/// the one that answered last, and on to the next when it cannot be reached; a follower sends it
/// on to the leader itself).
pub(crate) struct Client {
    bases: Vec<String>,
    /// The base that answered last.
    current: std::sync::atomic::AtomicUsize,
    api_key: Option<String>,
    http: reqwest::Client,
}

/// How long a client request may take before the command gives up.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Redirects followed for one request (a follower sends it to its leader: one).
const REDIRECTS_MAX: u32 = 3;

/// How long a request that uploads a job may take.
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a streamed answer (a generation) may take in all: a prompt as long as the model's
/// context takes minutes to prefill on a small machine before the first token, and its checks as
/// long again. The coordinator bounds every step of a session itself, so this only catches a
/// coordinator that stopped answering.
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl Client {
    pub(crate) fn new(args: &ClientArgs, file: &FileConfig) -> anyhow::Result<Self> {
        let mut bases: Vec<String> = if args.api.is_empty() {
            vec![file.api.clone().unwrap_or_else(|| DEFAULT_API.into())]
        } else {
            args.api.clone()
        };
        for base in &mut bases {
            *base = base.trim().trim_end_matches('/').to_string();
            reqwest::Url::parse(base).with_context(|| format!("--api {base:?} is not a URL"))?;
        }
        let api_key = args.api_key.clone().or_else(|| file.api_key.clone());
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-cert {}: not a PEM certificate", path.display()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder.build()?;
        Ok(Self {
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            api_key,
            http,
        })
    }

    /// Send the request `build` makes for a base URL, to the current base and then each other in
    /// turn while one cannot be reached (or, a group's follower, knows no leader yet).
    async fn send_any(
        &self,
        path: &str,
        idempotent: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(String, reqwest::Response)> {
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.bases.len() {
            let i = (start + k) % self.bases.len();
            let base = &self.bases[i];
            let url = format!("{base}{path}");
            match self.follow(&url, &build).await {
                Ok(response) if no_leader(&response) => {
                    last = Some(anyhow::Error::new(Unreachable(format!(
                        "the coordinator group at {base} has no leader right now (an election is under way)"
                    ))));
                }
                Ok(response) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok((url, response));
                }
                // Sent and then lost (a timeout, a reset): a GET is asked again elsewhere, but a
                // POST may have been carried out, so it is not sent twice.
                Err(e) if !e.is_connect() && !idempotent => {
                    return Err(anyhow::Error::new(e).context(format!("{url}: no answer")));
                }
                Err(e) => {
                    last = Some(anyhow::Error::new(Unreachable(format!(
                        "cannot reach the coordinator at {base}: {} (is `hearth coordinator` running? set --api or HEARTH_API)",
                        root_cause(&e)
                    ))));
                }
            }
        }
        Err(last.expect("at least one base"))
    }

    /// `GET path` as JSON.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (url, body) = self.send(path, true, |url| self.http.get(url)).await?;
        serde_json::from_slice(&body).with_context(|| format!("{url}: unexpected answer"))
    }

    /// `GET path` as bytes (JSONL answers).
    pub(crate) async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.send(path, true, |url| self.http.get(url))
            .await
            .map(|(_, body)| body)
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let (url, body) = self
            .send(path, false, |url| {
                self.http.post(url).json(body).timeout(UPLOAD_TIMEOUT)
            })
            .await?;
        serde_json::from_slice(&body).with_context(|| format!("{url}: unexpected answer"))
    }

    /// `DELETE path`, answer as JSON.
    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let (url, body) = self
            .send(path, false, |url| {
                self.http.delete(url).timeout(UPLOAD_TIMEOUT)
            })
            .await?;
        serde_json::from_slice(&body).with_context(|| format!("{url}: unexpected answer"))
    }

    /// `POST path` with a JSON body, the answer read as JSON lines as they arrive (a stream).
    pub(crate) async fn post_lines(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        mut each: impl FnMut(serde_json::Value),
    ) -> anyhow::Result<()> {
        let (url, mut response) = self
            .send_any(path, false, |url| {
                self.http.post(url).json(body).timeout(STREAM_TIMEOUT)
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            bail!("{url}: {status}: {message}");
        }
        let mut pending = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice(&line) {
                    each(value);
                }
            }
        }
        Ok(())
    }

    /// Send `build(url)` with the API key, following a group follower's redirects to its
    /// leader (at most [`REDIRECTS_MAX`]) with the key kept: reqwest drops it when the port
    /// changes, and the member that answers is the group the key is for.
    async fn follow(
        &self,
        url: &str,
        build: &impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let mut url = url.to_string();
        let mut hops = 0;
        loop {
            let mut request = build(&url);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await?;
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .filter(|l| l.starts_with("http://") || l.starts_with("https://"));
            let redirect = matches!(
                response.status(),
                reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
            );
            match location {
                Some(next) if redirect && hops < REDIRECTS_MAX => {
                    url = next.to_string();
                    hops += 1;
                }
                _ => return Ok(response),
            }
        }
    }

    async fn send(
        &self,
        path: &str,
        idempotent: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<(String, Vec<u8>)> {
        let (url, response) = self.send_any(path, idempotent, build).await?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            bail!("{url}: {status}: {message}");
        }
        Ok((url, body.to_vec()))
    }
}

/// A coordinator group's follower that knows no leader yet: 503 with
/// [`hearth_coordinator::group::NO_LEADER_HEADER`].
fn no_leader(response: &reqwest::Response) -> bool {
    response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
        && response
            .headers()
            .contains_key(hearth_coordinator::group::NO_LEADER_HEADER)
}

/// "The coordinator did not answer at all" (as opposed to answering no), with the message to show.
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `error` means the coordinator could not be reached.
pub(crate) fn is_unreachable(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Unreachable>().is_some()
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
