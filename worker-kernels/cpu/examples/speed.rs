//! Decode and prefill speed of the kernels alone, without the rest of Hearth:
//! `cargo run --release -p hearth-cpu --example speed -- MODEL.gguf [THREADS]`. `hearth bench local`
//! is the measurement reported; this is for working on the kernels.

use std::time::Instant;

use hearth_cpu::{Gguf, Input, KernelPath, Kernels, KvCache, LlamaRange};

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: speed MODEL.gguf [THREADS]")?;
    let threads = args
        .next()
        .map_or(Ok(1), |t| t.parse().map_err(|e| format!("{e}")))?;
    let kernels = Kernels::new(KernelPath::from_env()?, threads)?;
    let g = Gguf::open(model.as_ref())?;
    let range = LlamaRange::load(&g, 0..hearth_cpu::Config::from_gguf(&g)?.layers)?;
    let prompt: Vec<u32> = (0..128).map(|i| 300 + i * 7).collect();
    for _ in 0..3 {
        let mut cache = KvCache::default();
        let t = Instant::now();
        range.forward(&kernels, &mut cache, Input::Tokens(&prompt), false)?;
        let p = 128.0 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for &t in &prompt[..64] {
            range.forward(&kernels, &mut cache, Input::Tokens(&[t]), false)?;
        }
        let d = 64.0 / t.elapsed().as_secs_f64();
        println!(
            "{} threads {}: prompt {p:.1} tok/s, decode {d:.1} tok/s",
            kernels.path(),
            kernels.threads()
        );
    }
    Ok(())
}
