//! Data-parallel training on an existing collective engine: every rank holds the whole model
//! and computes the gradients of its own micro-batches; the gradients are summed across
//! ranks (in buckets of a few MB) before clipping and the AdamW step, so every rank applies
//! the same update and the weights stay identical without ever being sent.
//!
//! Which rank does what: with world size W and `grad_accum` A, optimizer step `s` has W x A
//! micro-batches, numbered `m = rank * A + a`; micro-batch `m` draws its data, corruption,
//! exit layers and dropout from RNGs seeded by `(seed, s, m)`, exactly as micro-batch `m` of
//! a single process with `grad_accum` W x A would. So W ranks follow the trajectory of one
//! process with W x A accumulation (the same batches, the same sums, up to the order of float
//! additions), and resuming from a checkpoint is exact as long as W x A stays the same.
//! Rank 0 alone validates (the result is shared), logs and writes checkpoints; every rank
//! resumes from the same checkpoint (the output directory must be on a file system all ranks
//! see).
//!
//! Engines, behind the [`Collective`] trait:
//! - [`SingleProcess`]: a world of one (no communication);
//! - `MpiCollective` (feature `mpi`): MPI over the system's Open MPI or MPICH, for CPU
//!   clusters, launched with `mpirun` / `srun`;
//! - `NcclCollective` (feature `nccl`): NCCL across GPUs, one process per GPU, the NCCL id
//!   shared by rank 0 over MPI.
//!
//! A rank that dies or hangs must not leave the others waiting forever: the engines here run
//! a watchdog that ends the process with a clear message when one collective call takes
//! longer than the timeout ([`collective_timeout`]); the launcher then stops the job.
//!
//! Shapes: gradient buckets are flat `[n]` f32 tensors on the model's device.

use std::collections::BTreeMap;
#[cfg(feature = "mpi")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "mpi")]
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

#[cfg(feature = "mpi")]
mod mpi_engine;
#[cfg(feature = "mpi")]
pub use mpi_engine::MpiCollective;
#[cfg(feature = "nccl")]
mod nccl_engine;
#[cfg(feature = "nccl")]
pub use nccl_engine::NcclCollective;

/// A communication engine summing buffers across the ranks of a data-parallel job.
pub trait Collective {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Sums the flat f32 tensor `bucket` (`[n]`) over all ranks; every rank gets the sum, on
    /// `bucket`'s device.
    fn all_reduce_sum(&self, bucket: &Tensor) -> Result<Tensor>;

    /// Sums `xs` over all ranks in place (losses, token counts, validation results).
    fn all_reduce_sum_f64(&self, xs: &mut [f64]) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// The engine, for logs (e.g. "MPI (Open MPI v4.1.4)").
    fn name(&self) -> String;
}

/// A world of one process: every operation is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, bucket: &Tensor) -> Result<Tensor> {
        Ok(bucket.clone())
    }

    fn all_reduce_sum_f64(&self, _xs: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> String {
        "single process".into()
    }
}

/// Default bytes per all-reduce call: gradients are packed into buckets of about this size.
pub const DEFAULT_BUCKET_BYTES: usize = 4 << 20;

/// What one gradient all-reduce did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReduceStats {
    /// Collective calls (buckets).
    pub calls: usize,
    /// Bytes each rank contributed.
    pub bytes: usize,
    /// Wall time, seconds (packing, the calls and unpacking).
    pub secs: f64,
}

/// Sums the gradients `grads` of the variables `names` (the same names, in the same order,
/// on every rank) across ranks, in buckets of about `bucket_bytes`. A variable without a
/// gradient on this rank contributes zeros; one without a gradient on every rank stays
/// absent (as in a single process). Gradients are f32.
pub(crate) fn all_reduce_gradients(
    comm: &dyn Collective,
    names: &[(String, Vec<usize>)],
    grads: &mut BTreeMap<String, Tensor>,
    bucket_bytes: usize,
    device: &candle_core::Device,
) -> Result<ReduceStats> {
    let start = Instant::now();
    let mut stats = ReduceStats::default();
    if comm.world_size() == 1 {
        return Ok(stats);
    }
    // Which variables have a gradient anywhere.
    let mut present: Vec<f64> = names
        .iter()
        .map(|(n, _)| f64::from(u8::from(grads.contains_key(n))))
        .collect();
    comm.all_reduce_sum_f64(&mut present)?;
    let mut pending: Vec<(&str, &[usize])> = Vec::new();
    let mut parts: Vec<Tensor> = Vec::new();
    let mut pending_bytes = 0usize;
    let flush = |pending: &mut Vec<(&str, &[usize])>,
                 parts: &mut Vec<Tensor>,
                 grads: &mut BTreeMap<String, Tensor>,
                 stats: &mut ReduceStats|
     -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let bucket = Tensor::cat(parts, 0)?;
        stats.calls += 1;
        stats.bytes += bucket.elem_count() * 4;
        let summed = comm.all_reduce_sum(&bucket)?;
        let mut offset = 0;
        for (name, shape) in pending.drain(..) {
            let n: usize = shape.iter().product();
            let g = summed.narrow(0, offset, n)?.reshape(shape)?;
            offset += n;
            grads.insert(name.to_string(), g);
        }
        parts.clear();
        Ok(())
    };
    for ((name, shape), p) in names.iter().zip(&present) {
        if *p == 0.0 {
            continue;
        }
        let g = match grads.get(name) {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
            None => Tensor::zeros(shape.iter().product::<usize>(), DType::F32, device)?,
        };
        pending_bytes += g.elem_count() * 4;
        parts.push(g);
        pending.push((name, shape));
        if pending_bytes >= bucket_bytes {
            flush(&mut pending, &mut parts, grads, &mut stats)?;
            pending_bytes = 0;
        }
    }
    flush(&mut pending, &mut parts, grads, &mut stats)?;
    stats.secs = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// The longest one collective call may take before the watchdog ends the process:
/// `ELMER_COLLECTIVE_TIMEOUT` seconds when set, else 1800 s. Waiting ranks sit in a call
/// while rank 0 validates, so it must exceed the validation time.
pub fn collective_timeout() -> Result<Duration> {
    match std::env::var("ELMER_COLLECTIVE_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(1800)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::invalid_arg(
                    "ELMER_COLLECTIVE_TIMEOUT",
                    format!("{v:?} is not a positive number of seconds"),
                )
            }),
    }
}

/// The job's world size as the launcher announced it in the environment (`mpirun` of Open
/// MPI: `OMPI_COMM_WORLD_SIZE`; MPICH / Intel MPI / `srun --mpi=pmi2`: `PMI_SIZE`; `srun`:
/// `SLURM_STEP_NUM_TASKS`), with the variable's name; `None` outside a launcher.
pub fn launcher_world_size() -> Option<(usize, &'static str)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .into_iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map(|n| (n, k))
        })
}

/// This process's rank as the launcher announced it (`OMPI_COMM_WORLD_RANK`, `PMI_RANK`,
/// `SLURM_PROCID` under `srun`); `None` outside a launcher. Lets a program quiet its
/// logging on ranks other than 0 before the engine starts.
pub fn launcher_rank() -> Option<usize> {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    var("OMPI_COMM_WORLD_RANK")
        .or_else(|| var("PMI_RANK"))
        .or_else(|| {
            var("SLURM_STEP_NUM_TASKS")
                .is_some()
                .then(|| var("SLURM_PROCID"))
                .flatten()
        })
}

/// The engine for this process: MPI when a launcher started several ranks (feature `mpi`),
/// else [`SingleProcess`]. Several ranks without the `mpi` feature is an error, so that a
/// job never trains W unrelated copies of the model.
pub fn from_launcher() -> Result<Box<dyn Collective>> {
    match launcher_world_size() {
        Some((n, var)) if n > 1 => {
            #[cfg(feature = "mpi")]
            {
                let _ = var;
                Ok(Box::new(MpiCollective::init(collective_timeout()?)?))
            }
            #[cfg(not(feature = "mpi"))]
            Err(Error::Unsupported(format!(
                "the launcher started {n} ranks ({var}={n}) but this build has no MPI \
                 engine: build with `--features mpi`"
            )))
        }
        _ => Ok(Box::new(SingleProcess)),
    }
}

/// This process's rank among those on its machine (`OMPI_COMM_WORLD_LOCAL_RANK`,
/// `MPI_LOCALRANKID`, `SLURM_LOCALID`): the GPU it should use. `None` outside a launcher.
pub fn launcher_local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .into_iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
}

/// How many ranks the launcher started on this machine (`OMPI_COMM_WORLD_LOCAL_SIZE`,
/// `MPI_LOCALNRANKS`, `SLURM_NTASKS_PER_NODE`); `None` outside a launcher.
pub fn launcher_local_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .into_iter()
    .find_map(|k| std::env::var(k).ok()?.trim().parse::<usize>().ok())
}

/// Like [`from_launcher`], for training on `device`: on a CUDA device with several ranks
/// the engine is NCCL (feature `nccl`), its id shared over MPI; elsewhere MPI.
///
/// `ELMER_COLLECTIVE` forces an engine even for a single rank (`nccl`, `mpi`, or `single`
/// for none), e.g. to check that a one-rank NCCL run equals a plain one; an engine this
/// build lacks is an error.
pub fn from_launcher_on(device: &candle_core::Device) -> Result<Box<dyn Collective>> {
    let several = launcher_world_size().is_some_and(|(n, _)| n > 1);
    let forced = std::env::var("ELMER_COLLECTIVE").ok();
    #[cfg_attr(feature = "nccl", allow(unused_variables))]
    let missing = |name: &str, feature: &str| {
        Error::Unsupported(format!(
            "ELMER_COLLECTIVE={name} needs a build with `--features {feature}`"
        ))
    };
    match forced.as_deref().map(str::trim) {
        None | Some("") => {}
        Some("single") => {
            if several {
                return Err(Error::invalid_arg(
                    "ELMER_COLLECTIVE",
                    "\"single\" with several ranks would train unrelated copies",
                ));
            }
            return Ok(Box::new(SingleProcess));
        }
        Some("mpi") => {
            #[cfg(feature = "mpi")]
            return Ok(Box::new(MpiCollective::init(collective_timeout()?)?));
            #[cfg(not(feature = "mpi"))]
            return Err(missing("mpi", "mpi"));
        }
        Some("nccl") => {
            #[cfg(feature = "nccl")]
            {
                let host = MpiCollective::init(collective_timeout()?)?;
                return Ok(Box::new(NcclCollective::init(device, host)?));
            }
            #[cfg(not(feature = "nccl"))]
            return Err(missing("nccl", "nccl"));
        }
        Some(other) => {
            return Err(Error::invalid_arg(
                "ELMER_COLLECTIVE",
                format!("{other:?} is not nccl, mpi or single"),
            ))
        }
    }
    if device.is_cuda() && several {
        #[cfg(feature = "nccl")]
        {
            let host = MpiCollective::init(collective_timeout()?)?;
            return Ok(Box::new(NcclCollective::init(device, host)?));
        }
        #[cfg(not(feature = "nccl"))]
        tracing::warn!(
            "several ranks on CUDA devices without the `nccl` feature: gradients go through \
             MPI on the host"
        );
    }
    from_launcher()
}

/// Ends the process with a clear message when an armed collective call runs past its
/// timeout (a rank died or hangs); the launcher then stops the other ranks.
#[cfg(feature = "mpi")]
pub(crate) struct Watchdog {
    armed: Arc<Mutex<Option<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

#[cfg(feature = "mpi")]
impl Watchdog {
    /// Starts the watchdog thread for `engine` on `rank`.
    pub(crate) fn start(timeout: Duration, engine: String, rank: usize) -> Self {
        let armed: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (armed.clone(), stop.clone());
        let tick = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                let expired = a
                    .lock()
                    .ok()
                    .and_then(|g| g.as_ref().map(|(t, op)| (t.elapsed(), op.clone())))
                    .filter(|(e, _)| *e > timeout);
                if let Some((_, op)) = expired {
                    eprintln!(
                        "error: {engine} {op} on rank {rank} did not complete within {:.0} s: \
                         another rank died or hangs; ending this rank so the launcher stops \
                         the job (ELMER_COLLECTIVE_TIMEOUT sets the limit)",
                        timeout.as_secs_f64()
                    );
                    std::process::exit(70);
                }
            }
        });
        Self { armed, stop }
    }

    /// Runs `f` (one collective call named `op`) under the timeout.
    pub(crate) fn guard<T>(&self, op: &str, f: impl FnOnce() -> T) -> T {
        if let Ok(mut g) = self.armed.lock() {
            *g = Some((Instant::now(), op.to_string()));
        }
        let out = f();
        if let Ok(mut g) = self.armed.lock() {
            *g = None;
        }
        out
    }
}

#[cfg(feature = "mpi")]
impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A fake world of `n` ranks that all hold this rank's values.
    struct Scaled {
        n: usize,
        calls: std::cell::Cell<usize>,
    }

    impl Collective for Scaled {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            self.n
        }
        fn all_reduce_sum(&self, b: &Tensor) -> Result<Tensor> {
            self.calls.set(self.calls.get() + 1);
            Ok((b * self.n as f64)?)
        }
        fn all_reduce_sum_f64(&self, xs: &mut [f64]) -> Result<()> {
            xs.iter_mut().for_each(|x| *x *= self.n as f64);
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> String {
            "scaled".into()
        }
    }

    #[test]
    fn buckets_round_trip_every_gradient_and_keep_absent_ones_absent() {
        let dev = Device::Cpu;
        let names: Vec<(String, Vec<usize>)> = vec![
            ("a".into(), vec![3, 4]),
            ("b".into(), vec![5]),
            ("c".into(), vec![2, 2]),
            ("d".into(), vec![7]),
        ];
        let mut grads = BTreeMap::new();
        for (i, (n, s)) in names.iter().enumerate() {
            if n == "c" {
                continue; // no gradient anywhere
            }
            let len: usize = s.iter().product();
            let v: Vec<f32> = (0..len).map(|j| (i * 100 + j) as f32).collect();
            grads.insert(n.clone(), Tensor::from_vec(v, s.as_slice(), &dev).unwrap());
        }
        let before = grads.clone();
        for (bucket, calls) in [(1usize, 3usize), (40, 2), (1 << 20, 1)] {
            let comm = Scaled {
                n: 2,
                calls: Default::default(),
            };
            let mut g = before.clone();
            let st = all_reduce_gradients(&comm, &names, &mut g, bucket, &dev).unwrap();
            assert_eq!(comm.calls.get(), calls, "bucket {bucket}");
            assert_eq!(st.calls, calls);
            assert_eq!(st.bytes, (12 + 5 + 7) * 4);
            assert!(!g.contains_key("c"));
            for (k, t) in &before {
                let want: Vec<f32> = (t * 2.0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(g[k].dims(), t.dims(), "{k}");
                assert_eq!(g[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            }
        }
        // One rank: nothing moves.
        let mut g = before.clone();
        let st = all_reduce_gradients(&SingleProcess, &names, &mut g, 1, &dev).unwrap();
        assert_eq!(st.calls, 0);
        assert_eq!(g.len(), before.len());
    }

    #[test]
    fn timeout_setting_is_checked() {
        // Only the parser: the variable is process-wide, so set and read it in one test.
        std::env::set_var("ELMER_COLLECTIVE_TIMEOUT", "2.5");
        assert_eq!(collective_timeout().unwrap(), Duration::from_millis(2500));
        std::env::set_var("ELMER_COLLECTIVE_TIMEOUT", "-1");
        let e = collective_timeout().unwrap_err();
        assert!(e.to_string().contains("ELMER_COLLECTIVE_TIMEOUT"), "{e}");
        std::env::remove_var("ELMER_COLLECTIVE_TIMEOUT");
        assert_eq!(collective_timeout().unwrap(), Duration::from_secs(1800));
    }
}
