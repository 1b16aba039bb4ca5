//! For fuzzing only (feature `fuzzing`): the coordinator's real HTTP API (router, authentication,
//! body limits, every handler's parsing and validation) over a stand-in for the event loop, which
//! answers each command plainly. `coordinator/fuzz`'s `api` target sends it arbitrary requests.

use std::path::Path;

use axum::Router;
use hearth_protocol::api::SwarmInfo;
use tokio::sync::mpsc;

use crate::http::{Auth, Command, router};
use crate::keys::Keys;
use crate::work::Unavailable;

/// The API over a stand-in event loop (spawned on the current Tokio runtime), with its keys in
/// `data_dir`; returns the router and the admin key.
pub fn api(data_dir: &Path, open: bool) -> crate::Result<(Router, String)> {
    let keys = std::sync::Arc::new(Keys::open(data_dir)?);
    let (admin, _) = crate::keys::admin_key(data_dir)?;
    let (commands, mut rx) = mpsc::channel(crate::limits::COMMAND_QUEUE_MAX);
    tokio::spawn(async move {
        while let Some(command) = rx.recv().await {
            answer(command);
        }
    });
    let auth = Auth {
        keys,
        open,
        logins: Default::default(),
    };
    Ok((router(commands, auth, None), admin))
}

/// What an empty swarm answers: nothing known, nothing routable; a job is taken and fails (no peer
/// could run it), so the handlers that wait for one finish.
fn answer(command: Command) {
    let peer = hearth_protocol::SecretKey::from_bytes(&[7; 32])
        .public()
        .peer_id();
    match command {
        Command::Peers(reply) => drop(reply.send(Vec::new())),
        Command::Swarm(reply) => drop(reply.send(SwarmInfo {
            peer_id: peer,
            addrs: Vec::new(),
            protocol_version: hearth_protocol::PROTOCOL_VERSION,
            reachability: Default::default(),
        })),
        Command::Submit(_, reply) => drop(reply.send(Ok(1))),
        Command::Generate(_, _, reply) => drop(reply.send(Err(
            crate::sessions::Refusal::Unavailable("no route: no peer holds the model".into()),
        ))),
        Command::Jobs(reply) => drop(reply.send(Vec::new())),
        Command::Job { id, reply, .. } | Command::Cancel { id, reply } => {
            let status = (id == 1).then(|| crate::JobView {
                status: crate::JobStatus {
                    id: 1,
                    state: crate::JobState::Failed,
                    units_total: 1,
                    units_done: 0,
                    units_failed: 1,
                    units_running: 0,
                    executions: 1,
                    rejected: 0,
                },
                kind: "embed",
                model: hearth_protocol::ModelId::of_bytes(b"stand-in"),
                inputs: 1,
                unit_size: 1,
                replicas: None,
                submitted_ms: 0,
                units: None,
            });
            drop(reply.send(status))
        }
        Command::Output { id, reply, .. } => drop(reply.send(Err(if id == 1 {
            Unavailable::NotDone(crate::JobState::Failed)
        } else {
            Unavailable::NotFound
        }))),
        Command::EmbedTokens(texts, reply) => drop(reply.send(Ok(texts.len()))),
        Command::Sessions(reply) => drop(reply.send(Vec::new())),
        Command::Models(reply) => drop(
            reply.send(
                crate::models::Models::new(None)
                    .listed([])
                    .into_iter()
                    .map(|m| crate::http::ModelEntry {
                        id: m.id,
                        name: m.name,
                        kind: m.kind,
                        holders: Vec::new(),
                        layers: None,
                    })
                    .collect(),
            ),
        ),
        Command::Revoke(_, reply) => drop(reply.send(Ok(()))),
        Command::WeightsEvidence(_, reply) => drop(reply.send(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    async fn post(router: &Router, key: &str, path: &str, body: &str) -> StatusCode {
        let request = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    /// What the `api` fuzz target relies on: the stand-in answers every command, so requests end
    /// with the status a live coordinator with an empty swarm gives.
    #[tokio::test]
    async fn the_stand_in_answers_like_an_empty_swarm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (router, admin) = api(dir.path(), false).expect("api");
        let chat =
            r#"{"model":"smollm2-135m-instruct-q4_1","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            post(&router, &admin, "/v1/chat/completions", chat).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let embed = r#"{"model":"all-minilm-l6-v2","input":["a","b"]}"#;
        assert_eq!(
            post(&router, &admin, "/v1/embeddings", embed).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            post(&router, &admin, "/v1/embeddings", "{").await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&router, "hk_wrong", "/v1/embeddings", embed).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
