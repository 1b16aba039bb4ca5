//! The start-up micro-benchmark behind a peer's score.
//!
//! A blocked f32 matrix product, the shape of work inference does, on one thread for a fixed time.
//! One thread, so that measuring does not take over a machine its owner is using; the score scales it
//! by the threads the node will use. It is a coarse ranking for scheduling, not a promise: the
//! scheduler learns real speeds from deadlines met.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long the benchmark runs: long enough to warm caches and ramp the clock, short enough that a
/// node starts at once.
pub const BENCHMARK_DURATION: Duration = Duration::from_millis(150);

/// Side of the square matrices multiplied: 3 × 64 × 64 f32 = 48 KiB, in L2 on any current CPU, so
/// the figure measures arithmetic rather than the memory bus.
const MATRIX_SIDE: usize = 64;

/// Measure single-thread f32 multiply-add throughput for about `duration`, in GFLOP/s.
pub fn benchmark_gflops_per_thread(duration: Duration) -> f64 {
    let n = MATRIX_SIDE;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; n * n];
    let start = Instant::now();
    let mut rounds = 0u64;
    while rounds == 0 || start.elapsed() < duration {
        matmul(black_box(&a), black_box(&b), &mut c, n);
        black_box(&mut c);
        rounds += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let flops = 2.0 * (n * n * n) as f64 * rounds as f64;
    flops / seconds / 1e9
}

/// `c = a · b` for row-major `n × n` matrices, in the i-k-j order that vectorises the inner loop.
fn matmul(a: &[f32], b: &[f32], c: &mut [f32], n: usize) {
    c.fill(0.0);
    for i in 0..n {
        let row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            for (cij, bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *cij += aik * bkj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_is_a_matrix_product() {
        // [[1,2],[3,4]] · [[5,6],[7,8]] = [[19,22],[43,50]]
        let mut c = [0f32; 4];
        matmul(&[1., 2., 3., 4.], &[5., 6., 7., 8.], &mut c, 2);
        assert_eq!(c, [19., 22., 43., 50.]);
    }

    #[test]
    fn benchmark_reports_a_positive_rate() {
        let gflops = benchmark_gflops_per_thread(Duration::from_millis(10));
        assert!(gflops.is_finite() && gflops > 0.0, "{gflops}");
    }
}
