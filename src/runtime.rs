//! Process-wide settings of candle's CPU thread pool that the crate cannot pass per call.
//!
//! candle 0.11 runs its elementwise ops on a pool whose workers spin 25,000 `spin_loop`
//! hints after each op before they park (about 0.4 ms on a Zen 4 core, longer where the hint
//! is slower), reading `CANDLE_BARRIER_POOL_SPIN_LIMIT` once, when the pool starts. The
//! crate's own kernels (packed products, fused attention, the training ops) run on rayon's
//! threads in between, so on a small machine a spinning pool worker takes a core from them.

/// The spin limit [`limit_pool_spinning`] sets: `spin_loop` hints before an idle pool worker
/// parks (a few microseconds).
pub const POOL_SPIN_LIMIT: u32 = 300;

/// Sets `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`POOL_SPIN_LIMIT`] unless the variable is
/// already set (a user's own value wins); returns whether it set it. Call it first thing in
/// `main`, before any tensor operation or thread starts: candle reads the variable once,
/// and changing the environment while other threads run is not sound on every platform.
///
/// Measured on a 2-core AMD EPYC (Zen 4), alternating runs: BART-base encoder at source 128
/// 68.8 / 74.0 ms with candle's default against 60.4 / 61.8 ms; NAR last layer at source
/// 128 / slot 32 124.6 / 124.6 against 112.4 / 113.8 ms (`cargo bench --bench latency`);
/// training steps of the small preset about 10 % faster (README, "Training").
///
/// ```
/// elmer::limit_pool_spinning();
/// ```
pub fn limit_pool_spinning() -> bool {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_some() {
        return false;
    }
    std::env::set_var(
        "CANDLE_BARRIER_POOL_SPIN_LIMIT",
        POOL_SPIN_LIMIT.to_string(),
    );
    true
}
