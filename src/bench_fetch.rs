//! `hearth bench fetch`: how fast a model comes from the swarm's holders on 127.0.0.1, from one
//! holder and from three, beside what limits any copy of the file on this machine: `cp` (a plain
//! copy of the bytes, from the page cache) and blake3 hashing them, the verification's own cost.
//! Each figure is the fastest of `--runs` runs (a shared machine's noise only slows runs down).

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use crate::children::Children;

/// Holders in the larger swarm.
const HOLDERS_MANY: usize = 3;

pub(crate) async fn run(
    model: Option<&Path>,
    repeats: u32,
    json: bool,
    models: &Path,
) -> anyhow::Result<()> {
    let path = crate::models::locate(models, model)?;
    let size = std::fs::metadata(&path)?.len();
    let mb = size as f64 / 1e6;
    let id = hearth_kernels::hash_file(&path)?;
    let scratch = tempfile_dir("hearth-bench-fetch")?;

    // What any copy of the file costs here, and what hashing it costs.
    let mut cp = 0f64;
    let mut hash = 0f64;
    for _ in 0..repeats {
        let dest = scratch.join("copy");
        let started = Instant::now();
        std::fs::copy(&path, &dest)?;
        cp = cp.max(mb / started.elapsed().as_secs_f64());
        std::fs::remove_file(&dest)?;
        let started = Instant::now();
        hearth_kernels::hash_file(&path)?;
        hash = hash.max(mb / started.elapsed().as_secs_f64());
    }
    if !json {
        println!("{}: {mb:.1} MB", path.display());
        println!("cp: {cp:.0} MB/s; blake3: {hash:.0} MB/s");
    }
    let mut rates = Vec::new();
    for holders in [1, HOLDERS_MANY] {
        let mut swarm = Children::in_temp_dir(&format!("hearth-bench-fetch-{holders}"))?;
        let result = fetch_runs(
            &mut swarm,
            models,
            &id.to_string(),
            holders,
            repeats,
            &scratch,
        )
        .await;
        swarm.finish(result.is_err(), false).await;
        let rate = result? / 1e6;
        if !json {
            println!("from {holders} holder(s): {rate:.0} MB/s");
        }
        rates.push((holders, rate));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if json {
        println!(
            "{}",
            json!({
                "model": path, "bytes": size, "runs_per_figure": repeats,
                "cp_mb_per_s": cp, "blake3_mb_per_s": hash,
                "fetch": rates.iter().map(|(h, r)| json!({
                    "holders": h, "mb_per_s": r, "ratio_to_cp": r / cp, "ratio_to_blake3": r / hash,
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "\n{mb:.1} MB on 127.0.0.1, each figure the fastest of {repeats} runs; every block verified"
        );
        println!(
            "  {:<28} {:>8}  {:>10}  {:>14}",
            "", "MB/s", "ratio cp", "ratio blake3"
        );
        println!(
            "  {:<28} {cp:>8.0}  {:>10.2}  {:>14.2}",
            "cp (page cache to disk)",
            1.0,
            cp / hash
        );
        println!(
            "  {:<28} {hash:>8.0}  {:>10.2}  {:>14.2}",
            "blake3 of the file",
            hash / cp,
            1.0
        );
        for (holders, rate) in &rates {
            println!(
                "  {:<28} {rate:>8.0}  {:>10.2}  {:>14.2}",
                format!("fetch from {holders} holder(s)"),
                rate / cp,
                rate / hash
            );
        }
    }
    Ok(())
}

/// A swarm of `holders` nodes holding the model; the fastest of `repeats` fetches of it, bytes
/// per second.
async fn fetch_runs(
    swarm: &mut Children,
    models: &Path,
    model: &str,
    holders: usize,
    repeats: u32,
    scratch: &Path,
) -> anyhow::Result<f64> {
    let (_, client) = swarm.start_swarm(models, holders).await?;
    let mut best = 0f64;
    for run in 0..repeats {
        let dest = scratch.join(format!("fetched-{holders}-{run}"));
        let fetched = crate::swarm_fetch::fetch(&dest, model, &client, true).await?;
        best = best.max(fetched.bytes as f64 / fetched.seconds.max(1e-9));
        std::fs::remove_dir_all(&dest)?;
    }
    Ok(best)
}

/// A fresh folder under the system's temporary folder.
fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
