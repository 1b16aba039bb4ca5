//! Hearth's compute side.
//!
//! Today this crate answers "what can this machine do?": it detects the host's hardware
//! ([`Hardware::detect`]), picks the device a node computes on ([`Hardware::primary_device`]), names the
//! numeric class of its kernels ([`numeric_class`]) and measures a start-up score ([`benchmark`]).
//! The node turns that into the [`hearth_protocol::Capabilities`] it advertises. Model loading and the
//! layer-range executor come next, in this crate.

mod benchmark;
mod hardware;

pub use benchmark::{BENCHMARK_DURATION, benchmark_gflops_per_thread};
pub use hardware::{Device, Hardware, KERNELS_VERSION, numeric_class};
