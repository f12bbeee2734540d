//! What the benchmark binaries share: percentiles and `RATIO` lines.

use std::time::Duration;

pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
}

/// p50 and p99 of the samples (nearest rank); `v` must not be empty.
pub fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1e3)
}

/// `RATIO metric ours=… baseline=… speedup=…`: baseline / ours, so above
/// 1.0 means we are faster.
pub fn ratio(metric: &str, ours: Duration, base: Duration) {
    let speedup = base.as_secs_f64() / ours.as_secs_f64().max(1e-9);
    println!(
        "RATIO {metric} ours={} baseline={} speedup={speedup:.1}",
        ms(ours),
        ms(base)
    );
}
