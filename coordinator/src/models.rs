//! The models the coordinator reads itself, from its models folder: each LLM's tokenizer, chat
//! template and shape (to tokenize prompts and plan routes and step times), and the default
//! embedder's tokenizer (to count an API's usage). Pipeline sessions hold the LLM they run.
//!
//! A model is named by the catalogue, by the operator ([`ModelNames`], `hearth models add FILE
//! --name NAME`) or by its id; peers only ever say which ids they hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use hearth_kernels::{
    CATALOG, ChatTemplate, EmbedTokenizer, GgufModel, GgufTokenizer, MINILM, ModelKind, ModelNames,
    SMOLLM2,
};
use hearth_protocol::ModelId;

use crate::pipeline::LayerShape;

/// Most model files the coordinator hashes in its folder (as a node lists at most this many).
const MODEL_FILES_MAX: usize = hearth_protocol::ADVERT_MODELS_MAX;

/// Why the coordinator cannot read a model it needs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelsError {
    /// Started without `--models`.
    #[error("this coordinator has no models folder (start it with --models DIR) to {0}")]
    NoFolder(&'static str),
    /// No catalogued name, bound name or id is `wanted`.
    #[error(
        "the model `{0}` does not exist here: name a catalogued model, a name this coordinator's operator bound (`hearth models add FILE --name NAME`) or a model id (see GET /v1/models)"
    )]
    Unknown(String),
    /// `wanted` names an embedder, which does not generate.
    #[error("the model `{0}` is an embedder: it serves POST /v1/embeddings, not generation")]
    NotLlm(String),
    /// The model is known but its file is not in the coordinator's folder (and no peer that
    /// holds it is online to read its header from).
    #[error(
        "this coordinator has no copy of the model {name} ({id}) in its models folder {dir}, and no online peer holds it to read its header (tokenizer, layers) from: start a node that holds it, or put the file in the folder (`hearth models add FILE`, or `hearth models fetch` for a catalogued model)"
    )]
    NoCopy {
        name: String,
        id: ModelId,
        dir: String,
    },
    /// The LLM's file is unreadable or not a model Hearth runs.
    #[error("{0}")]
    Llm(hearth_kernels::Error),
    /// The folder or its names file could not be read.
    #[error("the models folder {0}")]
    Folder(String),
    /// The default embedder's tokenizer is missing or unreadable, or a text would not tokenize.
    #[error("{0}")]
    Embedder(hearth_kernels::Error),
}

/// An LLM as the coordinator knows it: enough to tokenize, plan and time.
pub(crate) struct Llm {
    /// Its id (blake3 of its file).
    pub(crate) id: ModelId,
    pub(crate) tokenizer: GgufTokenizer,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) layers: u32,
    pub(crate) context: usize,
    /// What one layer takes in memory, about.
    pub(crate) layer_bytes: u64,
    /// What its ranges take: a layer, and the embedding and head the ends hold besides.
    pub(crate) footprint: crate::pipeline::Footprint,
    /// One layer's arithmetic, for the time a stage is given for a step.
    pub(crate) shape: LayerShape,
    /// Width of the hidden state: a prefill's activations are `prompt × hidden × 4` bytes.
    pub(crate) hidden: usize,
}

/// A model the API lists.
pub(crate) struct Listed {
    pub(crate) id: ModelId,
    /// Catalogue or bound name, else the id.
    pub(crate) name: String,
    pub(crate) kind: ModelKind,
}

/// What a file in the folder was when it was hashed.
struct Hashed {
    len: u64,
    modified: Option<SystemTime>,
    id: ModelId,
}

/// The models folder and what was loaded from it.
pub(crate) struct Models {
    dir: Option<PathBuf>,
    /// GGUF files in the folder by path, rehashed only when their size or time changes.
    files: HashMap<PathBuf, Hashed>,
    names: ModelNames,
    llms: HashMap<ModelId, Arc<Llm>>,
    /// Files in the folder that did not load as an LLM, by what they were when tried: the
    /// dashboard asks every model's layers once a second, and a file that fails is not re-read
    /// (and rehashed) each time, only once it changes.
    unloadable: HashMap<ModelId, PathBuf>,
    embedder: Option<EmbedTokenizer>,
}

impl Models {
    /// Models from `dir` (none without one: generation and usage counts then say so).
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            files: HashMap::new(),
            names: ModelNames::default(),
            llms: HashMap::new(),
            unloadable: HashMap::new(),
            embedder: None,
        }
    }

    /// Read the names file again and hash any GGUF file that is new or changed.
    fn rescan(&mut self) -> Result<(), ModelsError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        self.names = ModelNames::load(&dir).map_err(|e| ModelsError::Folder(e.to_string()))?;
        let mut found = gguf_files(&dir);
        found.sort();
        found.truncate(MODEL_FILES_MAX);
        let mut files = HashMap::new();
        for path in found {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let (len, modified) = (meta.len(), meta.modified().ok());
            let id = match self.files.remove(&path) {
                Some(h) if h.len == len && h.modified == modified => h.id,
                _ => match hearth_kernels::model_id(&path) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "model file unreadable");
                        continue;
                    }
                },
            };
            files.insert(path, Hashed { len, modified, id });
        }
        self.files = files;
        Ok(())
    }

    fn path_of(&self, id: &ModelId) -> Option<PathBuf> {
        self.files
            .iter()
            .find(|(_, h)| h.id == *id)
            .map(|(p, _)| p.clone())
    }

    /// How many layers the LLM `id` has, if known here: loaded, or its file in the folder (loaded
    /// now); `None` for a model known only by peers' adverts whose header is not read yet.
    pub(crate) fn layers_of(&mut self, id: &ModelId) -> Option<u32> {
        if let Some(llm) = self.llms.get(id) {
            return Some(llm.layers);
        }
        let path = self.path_of(id)?;
        if self.unloadable.get(id) == Some(&path) {
            return None;
        }
        match self.llm(Some(&id.to_string())) {
            Ok(llm) => Some(llm.layers),
            Err(error) => {
                tracing::debug!(%id, %error, "its layers are unknown: it does not load");
                self.unloadable.insert(*id, path);
                None
            }
        }
    }

    /// The name the API gives `id`.
    pub(crate) fn name_of(&self, id: &ModelId) -> String {
        self.names.name_of(id).unwrap_or_else(|| id.to_string())
    }

    /// The models to list beside those peers hold: the catalogue's defaults, and every model the
    /// operator named.
    pub(crate) fn listed(&mut self, held: impl IntoIterator<Item = ModelId>) -> Vec<Listed> {
        if let Err(e) = self.rescan() {
            tracing::warn!(error = %e, "reading the models folder");
        }
        let mut ids: Vec<ModelId> = CATALOG
            .iter()
            .filter(|m| m.default)
            .filter_map(|m| m.files[0].blake3.parse().ok())
            .collect();
        for id in self.names.0.values().copied().chain(held) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.into_iter()
            .map(|id| {
                let hex = id.to_string();
                let kind = CATALOG
                    .iter()
                    .find(|m| m.files[0].blake3 == hex)
                    .map_or(ModelKind::Llm, |m| m.kind);
                Listed {
                    name: self.name_of(&id),
                    id,
                    kind,
                }
            })
            .collect()
    }

    /// The id `wanted` names: a catalogued or bound name, or an id (the default LLM when
    /// `None`).
    pub(crate) fn resolve(&mut self, wanted: Option<&str>) -> Result<ModelId, ModelsError> {
        let Some(w) = wanted else {
            return Ok(SMOLLM2.files[0]
                .blake3
                .parse()
                .expect("catalogue ids are hex"));
        };
        if let Some(id) = self.names.resolve(w) {
            return Ok(id);
        }
        self.rescan()?;
        self.names
            .resolve(w)
            .ok_or_else(|| ModelsError::Unknown(w.to_string()))
    }

    /// The LLM `wanted` names (a catalogued or bound name, or an id; the default LLM when `None`),
    /// loaded on first use from the folder, or known from a header read from peers
    /// ([`Models::add_header`]).
    pub(crate) fn llm(&mut self, wanted: Option<&str>) -> Result<Arc<Llm>, ModelsError> {
        let id = self.resolve(wanted)?;
        if let Some(llm) = self.llms.get(&id) {
            return Ok(llm.clone());
        }
        let hex = id.to_string();
        if CATALOG
            .iter()
            .any(|m| m.kind == ModelKind::Embedder && m.files[0].blake3 == hex)
        {
            return Err(ModelsError::NotLlm(wanted.unwrap_or(&hex).to_string()));
        }
        let dir = self.dir.as_ref().map_or_else(
            || "(none: --models not given)".into(),
            |d| d.display().to_string(),
        );
        if self.dir.is_some() && self.path_of(&id).is_none() {
            self.rescan()?;
        }
        let Some(path) = self.path_of(&id) else {
            return Err(ModelsError::NoCopy {
                name: self.name_of(&id),
                id,
                dir,
            });
        };
        let model = GgufModel::open(&path).map_err(ModelsError::Llm)?;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let llm = Arc::new(Self::llm_of(&model, size)?);
        self.llms.insert(id, llm.clone());
        Ok(llm)
    }

    /// A model known by its header alone (read from peers, verified against its id): what the
    /// coordinator needs of it, with no copy of the file.
    pub(crate) fn add_header(&mut self, model: &GgufModel, size: u64) -> Result<(), ModelsError> {
        let llm = Self::llm_of(model, size)?;
        self.llms.insert(model.id, Arc::new(llm));
        Ok(())
    }

    /// What the coordinator keeps of `model`, a file of `file_bytes`.
    fn llm_of(model: &GgufModel, file_bytes: u64) -> Result<Llm, ModelsError> {
        let tokenizer = GgufTokenizer::from_model(model).map_err(ModelsError::Llm)?;
        let template = ChatTemplate::from_model(model).map_err(ModelsError::Llm)?;
        let c = &model.config;
        let footprint = footprint(model, file_bytes);
        Ok(Llm {
            footprint,
            shape: LayerShape {
                hidden: c.hidden as u64,
                kv: (c.kv_heads * c.head_dim) as u64,
                ffn: c.ffn as u64,
            },
            hidden: c.hidden,
            layer_bytes: footprint.layer_bytes,
            id: model.id,
            tokenizer,
            template,
            layers: c.layers as u32,
            context: c.context,
        })
    }

    /// Tokens the default embedder reads of `texts`, in all (for an API's usage figures).
    pub(crate) fn embed_tokens(&mut self, texts: &[String]) -> Result<usize, ModelsError> {
        if self.embedder.is_none() {
            let dir = self
                .dir
                .clone()
                .ok_or(ModelsError::NoFolder("count tokens with"))?;
            let folder = std::path::Path::new(MINILM.files[0].path)
                .parent()
                .map(|p| dir.join(p))
                .unwrap_or(dir);
            self.embedder = Some(EmbedTokenizer::load(&folder).map_err(ModelsError::Embedder)?);
        }
        let tokenizer = self.embedder.as_ref().expect("loaded above");
        texts.iter().try_fold(0, |n, t| {
            Ok(n + tokenizer.count(t).map_err(ModelsError::Embedder)?)
        })
    }
}

/// What `model`'s ranges take (its file `size` bytes), from its tensor table: the bytes a stage
/// of its middle layers reads over their count, and what the first and last stages read besides
/// their layers (the header aside).
fn footprint(model: &GgufModel, size: u64) -> crate::pipeline::Footprint {
    let layers = model.config.layers;
    if layers < 3 {
        return crate::pipeline::Footprint::uniform(size / layers.max(1) as u64);
    }
    let header = model.header_bytes();
    let bytes = |r: std::ops::Range<usize>| -> u64 {
        let total: u64 = model
            .stage_ranges(size, r)
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        total.saturating_sub(header)
    };
    let layer_bytes = bytes(1..layers - 1) / (layers - 2) as u64;
    crate::pipeline::Footprint {
        layer_bytes,
        first_bytes: bytes(0..1).saturating_sub(layer_bytes),
        last_bytes: bytes(layers - 1..layers).saturating_sub(layer_bytes),
    }
}

/// The `.gguf` files in `dir` and its direct subfolders (hidden ones are fetches in progress).
fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let list = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let is_gguf = |p: &Path| p.is_file() && p.extension().is_some_and(|x| x == "gguf");
    let mut files = Vec::new();
    for path in list(dir) {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_dir() && !hidden {
            files.extend(list(&path).into_iter().filter(|p| is_gguf(p)));
        } else if is_gguf(&path) {
            files.push(path);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fetched default LLM (`hearth models fetch`; the test suite fetches it first).
    fn smollm2() -> PathBuf {
        let dir = std::env::var("HEARTH_MODELS").unwrap_or_else(|_| {
            format!(
                "{}/.cache/hearth/models",
                std::env::var("HOME").expect("HOME")
            )
        });
        let path = Path::new(&dir).join(SMOLLM2.files[0].path);
        assert!(
            path.exists(),
            "{} missing: run `hearth models fetch`",
            path.display()
        );
        path
    }

    #[test]
    fn models_are_found_by_catalogue_name_bound_name_and_id() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        // A real model that is not the catalogue's: SmolLM2 with bytes after its tensors, which
        // change its id and nothing it computes.
        let mut bytes = std::fs::read(smollm2()).expect("read");
        bytes.extend_from_slice(b"an operator's own build");
        std::fs::create_dir_all(dir.join("mine")).expect("mkdir");
        std::fs::write(dir.join("mine/own.gguf"), &bytes).expect("write");
        let id = ModelId::of_bytes(&bytes);
        let mut names = ModelNames::default();
        names.bind("house-model", id).expect("bind");
        names.save(dir).expect("save");

        let mut models = Models::new(Some(dir.to_path_buf()));
        let by_name = models.llm(Some("house-model")).expect("a bound name");
        assert_eq!(by_name.id, id);
        assert_eq!(by_name.layers, 30);
        let by_id = models.llm(Some(&id.to_string())).expect("an id");
        assert!(Arc::ptr_eq(&by_name, &by_id), "loaded once");
        assert_eq!(models.name_of(&id), "house-model");

        assert!(matches!(
            models.llm(Some("gpt-9")),
            Err(ModelsError::Unknown(_))
        ));
        assert!(matches!(
            models.llm(Some(MINILM.name)),
            Err(ModelsError::NotLlm(_))
        ));
        // Catalogued but not in this folder: the coordinator says it needs a copy.
        let missing = models.llm(None).err().expect("no SmolLM2 here");
        assert!(
            missing.to_string().contains("hearth models fetch"),
            "{missing}"
        );

        // Listed: the catalogue's defaults, the operator's model, and what peers hold, by id.
        let held = ModelId::of_bytes(b"a peer's model");
        let listed: Vec<String> = models
            .listed([held, id])
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            listed,
            vec![
                SMOLLM2.name.to_string(),
                MINILM.name.to_string(),
                "house-model".to_string(),
                held.to_string()
            ]
        );
    }
}
