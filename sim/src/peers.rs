//! The simulated peers: what each is and advertises, and the generator behind their choices.

use super::*;

/// A simulated peer. What only heartbeats and pipeline receipts need is boxed, so the table of a
/// hundred thousand peers that every event touches stays small.
pub(crate) struct SimPeer {
    pub(crate) id: PeerId,
    pub(crate) key: Box<SecretKey>,
    pub(crate) group: usize,
    /// What it advertises, and the network its connection comes from.
    pub(crate) capabilities: Box<Capabilities>,
    pub(crate) network: String,
    /// Its numeric class for embeddings (one per backend).
    pub(crate) class: Arc<str>,
    /// The offer made from what the registry holds of it, kept while its adverts do not change
    /// (a coordinator would keep it per registry record the same way).
    pub(crate) offer: Option<Arc<Offer>>,
    pub(crate) adverts: u64,
    pub(crate) ms_per_item: f64,
    pub(crate) online: bool,
    pub(crate) crashed: bool,
    pub(crate) busy: bool,
    pub(crate) epoch: u32,
    pub(crate) valid: u32,
    pub(crate) quarantined_at: Option<u64>,
}

/// xorshift64*: small, seedable, the same everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Every simulated peer's LLM class (one: the simulated model is exact).
pub(crate) const SIM_LLM_CLASS: &str = "k0/llm/sim";

/// The sharded jobs' model.
pub(crate) fn embed_model() -> ModelId {
    ModelId::of_bytes(b"sim model")
}

/// The pipelines' model.
pub(crate) fn llm_model() -> ModelId {
    ModelId::of_bytes(b"sim llm")
}

/// What a simulated peer advertises: both models, a class per family, and a benchmark score
/// that puts a peer at 10 ms per input at the coordinator's reference score.
pub(crate) fn capabilities(embed_class: &str, ms_per_item: f64) -> Capabilities {
    Capabilities {
        backend: Backend::Cpu,
        device: String::new(),
        memory_total_bytes: u64::MAX / 2,
        memory_free_bytes: u64::MAX / 2,
        threads: 1,
        cpu_model: String::new(),
        cpu_cores: 1,
        cpu_features: Vec::new(),
        host_memory_total_bytes: u64::MAX / 2,
        os: String::new(),
        arch: String::new(),
        score: 200.0 / ms_per_item,
        numeric_class: BTreeMap::from([
            (KernelFamily::Embed, embed_class.to_string()),
            (KernelFamily::Llm, SIM_LLM_CLASS.to_string()),
        ]),
        models: vec![embed_model(), llm_model()],
    }
}
