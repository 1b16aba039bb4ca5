//! The HTTP client every client command shares: base URL, API key, one-line errors.

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::cli::ClientArgs;
use crate::config::{DEFAULT_API, FileConfig};

/// A coordinator's HTTP API.
pub(crate) struct Client {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

/// How long a client request may take before the command gives up.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a request that uploads a job may take.
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a streamed answer (a generation) may take in all: a prompt as long as the model's
/// context takes minutes to prefill on a small machine before the first token, and its checks as
/// long again. The coordinator bounds every step of a session itself, so this only catches a
/// coordinator that stopped answering.
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl Client {
    pub(crate) fn new(args: &ClientArgs, file: &FileConfig) -> anyhow::Result<Self> {
        let base = args
            .api
            .clone()
            .or_else(|| file.api.clone())
            .unwrap_or_else(|| DEFAULT_API.into());
        let base = base.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).with_context(|| format!("--api {base:?} is not a URL"))?;
        let api_key = args.api_key.clone().or_else(|| file.api_key.clone());
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca-cert {}: not a PEM certificate", path.display()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let http = builder.build()?;
        Ok(Self {
            base,
            api_key,
            http,
        })
    }

    /// `GET path` as JSON.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let body = self.send(self.http.get(&url), &url).await?;
        serde_json::from_slice(&body).with_context(|| format!("{url}: unexpected answer"))
    }

    /// `GET path` as bytes (JSONL answers).
    pub(crate) async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let request = self.http.post(&url).json(body).timeout(UPLOAD_TIMEOUT);
        let body = self.send(request, &url).await?;
        serde_json::from_slice(&body).with_context(|| format!("{url}: unexpected answer"))
    }

    /// `POST path` with a JSON body, the answer read as JSON lines as they arrive (a stream).
    pub(crate) async fn post_lines(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        mut each: impl FnMut(serde_json::Value),
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url).json(body).timeout(STREAM_TIMEOUT);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| {
            anyhow::Error::new(Unreachable(format!(
                "cannot reach the coordinator at {}: {}",
                self.base,
                root_cause(&e)
            )))
        })?;
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

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        url: &str,
    ) -> anyhow::Result<Vec<u8>> {
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::Error::new(Unreachable(format!(
                "cannot reach the coordinator at {}: {} (is `hearth coordinator` running? set --api or HEARTH_API)",
                self.base,
                root_cause(&e)
            )))
        })?;
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
        Ok(body.to_vec())
    }
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
