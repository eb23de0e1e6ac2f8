//! Threads per process when a launcher starts several ranks on one machine.
//!
//! candle's CPU kernels use as many threads as the machine has cores; `mpirun -np 2` on two
//! cores then runs four busy threads, and candle's spinning thread pool makes that slow:
//! LPLM pre-training of the small preset (2-core AMD EPYC, 2 ranks x batch 16) ran at 640
//! tokens/s with the default, 2,669 with one thread per rank, against 1,749 for one process
//! with two threads and the same global batch. So each rank gets its share of the cores.

/// Sets `CANDLE_NUM_THREADS` and `RAYON_NUM_THREADS` to cores / ranks on this machine when a
/// launcher started several local ranks and neither variable is set. Call before any thread
/// starts.
pub fn share_cores_between_local_ranks() {
    let Some(local) = elmer::train::distributed::launcher_local_size().filter(|&n| n > 1) else {
        return;
    };
    if std::env::var_os("CANDLE_NUM_THREADS").is_some()
        || std::env::var_os("RAYON_NUM_THREADS").is_some()
    {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let per = (cores / local).max(1).to_string();
    std::env::set_var("CANDLE_NUM_THREADS", &per);
    std::env::set_var("RAYON_NUM_THREADS", &per);
}

/// With `--micro-threads N > 1` and at most N cores, every micro-batch thread runs its
/// kernels on one core, so candle's elementwise pool gets no workers
/// (`CANDLE_NUM_THREADS=1`) unless the variable is set. Call before any tensor operation.
pub fn single_threaded_kernels_for_micro_threads(micro_threads: usize) {
    if micro_threads > 1
        && process_cores() <= micro_threads
        && std::env::var_os("CANDLE_NUM_THREADS").is_none()
    {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// The cores this process may use: `RAYON_NUM_THREADS` when set (as under MPI), else the
/// machine's.
fn process_cores() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |c| c.get()))
}

/// Micro-batch threads of a training command: `--micro-threads` when given, else one per
/// micro-batch (`grad_accum`) up to the cores this process may use; each then gets its share
/// of the cores.
pub fn micro_threads(arg: Option<usize>, grad_accum: usize) -> usize {
    arg.unwrap_or_else(|| grad_accum.clamp(1, process_cores().max(1)))
}
