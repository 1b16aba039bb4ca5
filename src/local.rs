//! `hearth local …`: run a model on this machine alone, without a swarm. The reference path the
//! swarm's answers are checked against, and the quickest way to see a model work.

use std::path::PathBuf;

use hearth_kernels::{
    ChatMessage, ChatTemplate, Embedder, GgufModel, GgufTokenizer, MINILM, Stage, StageInput,
    StageOutput, argmax,
};
use hearth_protocol::work::UnitOutput;
use serde_json::json;
use std::io::Write;

use crate::cli::{EmbedArgs, GenerateArgs, LocalArgs, LocalCommand, ScoreArgs};
use crate::config::FileConfig;

/// The one session `hearth local` runs.
const SESSION: u64 = 0;

pub(crate) fn run(args: LocalArgs, file: &FileConfig) -> anyhow::Result<()> {
    let models = args.models.resolve(file)?;
    match args.command {
        LocalCommand::Generate(g) => generate(g, &models),
        LocalCommand::Score(s) => score(s, &models),
        LocalCommand::Embed(e) => embed(e, &models),
    }
}

/// The model at `path`, or the default LLM in the models folder, with its tokenizer and one stage
/// over all its layers.
fn open_llm(
    path: Option<PathBuf>,
    models: &std::path::Path,
) -> anyhow::Result<(GgufModel, GgufTokenizer, Stage)> {
    let path = crate::models::locate(models, path.as_deref())?;
    if !path.exists() {
        anyhow::bail!(
            "{}: no such model file (run `hearth models fetch`, or pass --model PATH)",
            path.display()
        );
    }
    let model = GgufModel::open(&path)?;
    let tokenizer = GgufTokenizer::from_model(&model)?;
    let stage = Stage::load(
        &model,
        0..model.config.layers,
        &hearth_kernels::compute_device(),
    )?;
    Ok((model, tokenizer, stage))
}

fn generate(args: GenerateArgs, models: &std::path::Path) -> anyhow::Result<()> {
    let (model, tokenizer, mut stage) = open_llm(args.model, models)?;
    let prompt = if args.chat {
        let template = ChatTemplate::from_model(&model)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the model has no chat template; drop --chat",
                model.path().display()
            )
        })?;
        let message = ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        };
        template.render(&[message], true)?
    } else {
        args.prompt.clone()
    };
    let prompt_ids = tokenizer.encode(&prompt, args.special || args.chat)?;
    if prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let valid = args.sampling.temperature >= 0.0
        && args.sampling.temperature.is_finite()
        && (0.0..=1.0).contains(&args.sampling.top_p);
    if !valid {
        anyhow::bail!("--temperature must be at least 0 and --top-p within 0..=1");
    }
    let sampling = hearth_protocol::work::Sampling {
        temperature: args.sampling.temperature,
        top_p: args.sampling.top_p,
        seed: args.sampling.seed,
    };
    let run = hearth_kernels::generate(
        &mut stage,
        &tokenizer.ends,
        &prompt_ids,
        args.max_tokens,
        SESSION,
        Some(&sampling),
    )?;
    let (generated, prefill, elapsed) = (run.token_ids, run.prefill, run.total);
    let text = tokenizer.decode(&generated)?;
    if args.json {
        let decode = elapsed.saturating_sub(prefill).as_secs_f64();
        println!(
            "{}",
            json!({
                "model": model.id,
                "prompt_ids": prompt_ids,
                "token_ids": generated,
                "text": text,
                "logits_digest": run.logits_digest,
                "kernel_path": stage.kernel_path(),
                "prefill_ms": prefill.as_secs_f64() * 1e3,
                "decode_tokens_per_s": if decode > 0.0 { (generated.len().saturating_sub(1)) as f64 / decode } else { 0.0 },
            })
        );
    } else {
        println!("{text}");
    }
    Ok(())
}

fn score(args: ScoreArgs, models: &std::path::Path) -> anyhow::Result<()> {
    let (model, tokenizer, mut stage) = open_llm(args.model, models)?;
    let prompt_ids = tokenizer.encode(&args.prompt, args.special)?;
    if prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    if let Some(bad) = args
        .ids
        .iter()
        .find(|&&id| id as usize >= model.config.vocab)
    {
        anyhow::bail!(
            "--ids: {bad} is outside the vocabulary of {}",
            model.config.vocab
        );
    }
    // Teacher forcing: the prompt, then every given id but the last, in one pass; position i's logits
    // predict given id i.
    let mut input = prompt_ids.clone();
    input.extend(args.ids.iter().take(args.ids.len().saturating_sub(1)));
    let logits = match stage.forward(SESSION, StageInput::Tokens(input), 0, true)? {
        StageOutput::Logits(l) => l,
        StageOutput::Hidden(_) => anyhow::bail!("a stage over all layers returned hidden states"),
    };
    let first = prompt_ids.len() - 1;
    let mut positions = Vec::new();
    for (i, &id) in args.ids.iter().enumerate() {
        let row: Vec<f32> = logits.get(first + i)?.to_vec1()?;
        let (best, max) = argmax(&row);
        positions
            .push(json!({ "id": id, "logit": row[id as usize], "max_logit": max, "argmax": best }));
    }
    let out = json!({ "model": model.id, "prompt_ids": prompt_ids, "positions": positions });
    if args.json {
        println!("{out}");
    } else {
        for p in &positions {
            println!(
                "id {:>6}  logit {:>9.4}  max {:>9.4}  argmax {:>6}",
                p["id"],
                p["logit"].as_f64().unwrap_or(0.0),
                p["max_logit"].as_f64().unwrap_or(0.0),
                p["argmax"]
            );
        }
    }
    Ok(())
}

/// Texts handed to the embedder at once: it batches those of equal token count among them (no
/// padding, so every text's bits are what it gets alone), so larger is faster; this bounds memory
/// and sets how often progress is shown.
const EMBED_CHUNK: usize = 1024;

fn embed(args: EmbedArgs, models: &std::path::Path) -> anyhow::Result<()> {
    // Check every input line before loading anything.
    let inputs = crate::jsonl::read_inputs(&args.input, "text")?;
    let dir = args.model.unwrap_or_else(|| {
        models.join(
            std::path::Path::new(MINILM.files[0].path)
                .parent()
                .expect("the embedder is a folder"),
        )
    });
    if !dir.join("model.safetensors").exists() {
        anyhow::bail!(
            "{}: no model.safetensors here (run `hearth models fetch`, or pass --model DIR)",
            dir.display()
        );
    }
    let embedder = Embedder::load(&dir, &hearth_kernels::compute_device())?;
    let tmp = args.output.with_extension("jsonl.partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?,
    );
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (n, batch) in inputs.chunks(EMBED_CHUNK).enumerate() {
        let texts: Vec<&str> = batch.iter().map(|(_, t)| t.as_str()).collect();
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.to_string()).collect();
        // The swarm's own line format and per-text computation, so outputs compare bit for bit.
        let vectors = UnitOutput::Embeddings(embedder.embed_each(&texts)?);
        let mut lines = String::new();
        hearth_coordinator::output_lines(&ids, &vectors, &mut lines);
        out.write_all(lines.as_bytes())?;
        if progress {
            eprint!(
                "\rembedded {}/{}",
                (n * EMBED_CHUNK + batch.len()),
                inputs.len()
            );
        }
    }
    if progress {
        eprintln!();
    }
    out.flush()?;
    drop(out);
    // Only a complete output takes the final name.
    std::fs::rename(&tmp, &args.output)?;
    Ok(())
}
