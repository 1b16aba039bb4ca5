//! Turning the host's hardware into the capabilities a node advertises.

use std::collections::BTreeMap;

use hearth_kernels::{Hardware, numeric_class};
use hearth_protocol::{Capabilities, KernelFamily, ModelId};

/// The capabilities of this host: its primary device, `threads` worker threads (the free cores when
/// `None`), a score from the start-up benchmark (`gflops_per_thread` × threads), and `models`.
pub fn capabilities(
    hardware: &Hardware,
    threads: Option<u32>,
    gflops_per_thread: f64,
    models: Vec<ModelId>,
) -> Capabilities {
    let device = hardware.primary_device();
    let threads = threads
        .unwrap_or_else(hearth_kernels::free_cores)
        .clamp(1, hardware.cpu_cores.max(1));
    let numeric_class = [KernelFamily::Llm, KernelFamily::Embed]
        .into_iter()
        .map(|family| (family, numeric_class(family, hardware, &device)))
        .collect::<BTreeMap<_, _>>();
    Capabilities {
        backend: device.backend,
        device: device.name,
        memory_total_bytes: device.memory_total_bytes,
        memory_free_bytes: device.memory_free_bytes.min(device.memory_total_bytes),
        threads,
        cpu_model: hardware.cpu_model.clone(),
        cpu_cores: hardware.cpu_cores,
        cpu_features: hardware.cpu_features.clone(),
        host_memory_total_bytes: hardware.memory_total_bytes,
        os: hardware.os.clone(),
        arch: hardware.arch.clone(),
        score: (gflops_per_thread * f64::from(threads) * 100.0).round() / 100.0,
        numeric_class,
        models,
    }
}
