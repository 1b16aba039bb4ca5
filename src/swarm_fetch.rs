//! `hearth models fetch --from-swarm MODEL`: a model file fetched from the peers that hold it (as
//! the coordinator lists them), its chunks spread over them, every 16 KiB block verified against
//! the model's id before it is written ([`hearth_net::weights`]). A holder whose bytes do not
//! verify is asked no more and its chunk comes from another; its signed statement of what it sent
//! is kept as evidence. Stopped at any point, the fetch starts again with what it had.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use hearth_net::fetch::Fetch;
use hearth_net::weights::outboard_path;
use hearth_net::{NetConfig, NetEvent, Network};
use hearth_protocol::api::PeerEntry;
use hearth_protocol::{ModelId, PeerId, SecretKey};
use serde_json::{Value, json};

use crate::client::Client;

/// What one holder gave, and what the coordinator made of it.
#[derive(Default)]
struct Served {
    bytes: u64,
    failures: u32,
    /// It served bytes that do not verify: asked no more.
    lied: bool,
    /// The coordinator took the evidence and quarantined it.
    quarantined: bool,
}

/// What a fetch did.
pub(crate) struct Fetched {
    name: String,
    id: ModelId,
    pub(crate) path: PathBuf,
    /// Bytes fetched (0 when the folder held the model already).
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    served: HashMap<PeerId, Served>,
    already: bool,
}

/// Fetch `model` (a name or id the coordinator lists) into `dir`, and say what happened.
pub(crate) async fn run(
    dir: &Path,
    model: &str,
    client: &Client,
    json: bool,
) -> anyhow::Result<()> {
    let f = fetch(dir, model, client, json).await?;
    report(json, &f)
}

/// Fetch `model` into `dir` (progress on stdout unless `quiet`).
pub(crate) async fn fetch(
    dir: &Path,
    model: &str,
    client: &Client,
    quiet: bool,
) -> anyhow::Result<Fetched> {
    let listed: Value = client.get("/v1/models").await?;
    let entry = listed["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == model || m["hearth"]["id"] == model)
        .ok_or_else(|| {
            anyhow!("the swarm lists no model `{model}` (GET /v1/models shows what it has)")
        })?;
    let id: ModelId = entry["hearth"]["id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| anyhow!("the coordinator listed a model id that does not parse: {e}"))?;
    let name = entry["id"].as_str().unwrap_or(model).to_string();
    let holders: Vec<PeerId> = entry["holders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str()?.parse().ok())
        .collect();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the models folder {}", dir.display()))?;
    if let Some((path, _)) = hearth_node::scan_models(dir)?
        .into_iter()
        .find(|(_, found)| *found == id)
    {
        return Ok(Fetched {
            name,
            id,
            path,
            bytes: 0,
            seconds: 0.0,
            served: HashMap::new(),
            already: true,
        });
    }
    if holders.is_empty() {
        bail!("no peer online holds {name} ({id}); start a node that has it, then try again");
    }
    let peers: Vec<PeerEntry> = client.get("/v1/peers").await?;
    let key = {
        let mut secret = [0u8; SecretKey::BYTES];
        getrandom::fill(&mut secret).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
        SecretKey::from_bytes(&secret)
    };
    let mut net = Network::new(
        key,
        &NetConfig {
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
            mdns: false,
            agent: format!("hearth-fetch/{}", env!("CARGO_PKG_VERSION")),
            ..NetConfig::default()
        },
    )
    .map_err(|e| anyhow!("starting the swarm connection: {e}"))?;
    for holder in &holders {
        let addrs = peers
            .iter()
            .find(|p| p.peer_id == *holder)
            .map(|p| p.listen_addrs.clone())
            .unwrap_or_default();
        net.add_addrs(holder, &addrs);
    }
    if !quiet {
        println!(
            "fetching {name} ({id}) from {} holder{} into {} …",
            holders.len(),
            if holders.len() == 1 { "" } else { "s" },
            dir.display()
        );
    }
    let started = Instant::now();
    let mut fetch = Fetch::whole(dir, id, holders)?;
    let fetched = run_fetch(&mut fetch, &mut net, quiet).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut served: HashMap<PeerId, Served> = fetch
        .served()
        .iter()
        .map(|(peer, s)| {
            let s = Served {
                bytes: s.bytes,
                failures: s.failures,
                lied: s.lied,
                quarantined: false,
            };
            (*peer, s)
        })
        .collect();
    // Bad bytes, signed: the coordinator checks them and quarantines whoever sent them (kept in
    // the folder when it cannot be told).
    for e in fetch.take_evidence() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let peer = e.peer;
        let evidence = json!({
            "peer_id": peer.to_string(), "model": e.model.to_string(),
            "size": e.size, "start": e.start, "end": e.end,
            "encoded": b64.encode(&e.encoded), "signature": b64.encode(e.signature.0),
        });
        match client
            .post::<Value>("/v1/evidence/weights", &evidence)
            .await
        {
            Ok(_) => served.entry(peer).or_default().quarantined = true,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "the coordinator did not take the evidence; kept in the folder");
                let file = dir.join(format!(".{id}.evidence-{peer}.json"));
                let _ = std::fs::write(&file, evidence.to_string());
            }
        }
    }
    let path = fetched?;
    let dest = final_path(dir, &name, id);
    std::fs::rename(&path, &dest)
        .with_context(|| format!("moving {} to {}", path.display(), dest.display()))?;
    let _ = std::fs::rename(outboard_path(&path), outboard_path(&dest));
    // Its id remembered beside it, as for any model the folder holds.
    hearth_node::scan_models(dir)?;
    Ok(Fetched {
        name,
        id,
        path: dest,
        bytes: fetch.bytes_received(),
        seconds,
        served,
        already: false,
    })
}

/// Where a fetched model goes: its catalogue file name, else its listed name, else its id.
fn final_path(dir: &Path, name: &str, id: ModelId) -> PathBuf {
    if let Some(m) = hearth_kernels::CATALOG
        .iter()
        .find(|m| m.files.len() == 1 && m.files[0].blake3 == id.to_string())
    {
        return dir.join(m.files[0].path);
    }
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let file = if plain && !name.is_empty() && name != id.to_string() {
        format!("{name}.gguf")
    } else {
        format!("{id}.gguf")
    };
    let dest = dir.join(&file);
    if dest.exists() {
        dir.join(format!("{id}.gguf"))
    } else {
        dest
    }
}

fn report(json: bool, f: &Fetched) -> anyhow::Result<()> {
    if json {
        let holders: Vec<Value> = f
            .served
            .iter()
            .map(|(peer, s)| {
                json!({ "peer_id": peer.to_string(), "bytes": s.bytes, "refused_bad": s.lied,
                        "quarantined": s.quarantined, "failures": s.failures })
            })
            .collect();
        println!(
            "{}",
            json!({ "name": f.name, "id": f.id.to_string(), "path": f.path, "bytes": f.bytes,
                    "seconds": f.seconds, "already_held": f.already, "holders": holders })
        );
    } else if f.already {
        println!("{} is already in the folder: {}", f.name, f.path.display());
    } else {
        let mb = f.bytes as f64 / 1e6;
        println!(
            "{}: {mb:.1} MB in {:.1} s ({:.1} MB/s), every block verified, in {}",
            f.name,
            f.seconds,
            mb / f.seconds.max(1e-9),
            f.path.display()
        );
        for (peer, s) in &f.served {
            if s.lied {
                println!(
                    "  {peer} served bytes that do not verify: asked no more{}",
                    if s.quarantined {
                        ", and quarantined by the coordinator on the evidence"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

/// Fetch until the file is whole; its partial file's path.
async fn run_fetch(fetch: &mut Fetch, net: &mut Network, quiet: bool) -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let mut shown = Instant::now();
    loop {
        fetch.send(net);
        if fetch.is_done() {
            return Ok(fetch.path());
        }
        if fetch.is_stuck() {
            bail!(
                "no holder left to ask: {} of {} bytes fetched and kept; run the command again to resume",
                fetch.bytes_held(),
                fetch.size()
            );
        }
        let (id, answer) = match net.next().await {
            NetEvent::WorkResponse { id, response } => (id, Ok(response)),
            NetEvent::WorkFailed { id, error } => (id, Err(error)),
            _ => continue,
        };
        fetch.answered(id, answer)?;
        if !quiet && shown.elapsed().as_secs_f64() >= 1.0 && fetch.size() > 0 {
            shown = Instant::now();
            let (held, size) = (fetch.bytes_held(), fetch.size());
            println!(
                "  {:.1} of {:.1} MB ({:.0}%), {:.1} MB/s",
                held as f64 / 1e6,
                size as f64 / 1e6,
                100.0 * held as f64 / size as f64,
                held as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
    }
}
