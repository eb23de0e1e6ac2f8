//! The MPI engine (feature `mpi`): `MPI_Allreduce` with `MPI_SUM` over `MPI_COMM_WORLD`,
//! through the `mpi` crate on the system's Open MPI or MPICH. Buffers are copied to the
//! host (CPU tensors already are there).
//!
//! Shapes: buckets `[n]` f32, `n < 2^31`.

use std::time::Duration;

use candle_core::Tensor;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::{Collective, Watchdog};
use crate::error::{Error, Result};

/// Data-parallel collectives over MPI's world communicator. Create one per process
/// ([`MpiCollective::init`]); dropping it finalises MPI.
pub struct MpiCollective {
    watchdog: Watchdog,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    version: String,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl MpiCollective {
    /// Initialises MPI (once per process) with a watchdog that ends the process when one
    /// collective call takes longer than `timeout`.
    pub fn init(timeout: Duration) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| Error::Collective {
            engine: "MPI".into(),
            op: "initialisation".into(),
            rank: 0,
            message: "MPI was already initialised in this process".into(),
        })?;
        let world = universe.world();
        let rank = usize::try_from(world.rank()).unwrap_or(0);
        let size = usize::try_from(world.size()).unwrap_or(1);
        let version = mpi::environment::library_version()
            .ok()
            .and_then(|v| v.split([',', '\n']).next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "unknown library".into());
        Ok(Self {
            watchdog: Watchdog::start(timeout, "MPI".into(), rank),
            world,
            rank,
            size,
            version,
            _universe: universe,
        })
    }

    /// Copies rank 0's `buf` into every rank's (e.g. the NCCL unique id).
    pub fn broadcast_bytes(&self, buf: &mut [u8]) -> Result<()> {
        self.watchdog.guard("broadcast", || {
            self.world.process_at_rank(0).broadcast_into(buf)
        });
        Ok(())
    }

    /// Runs `f` (a collective operation named `op`) under the watchdog's timeout.
    #[cfg(feature = "nccl")]
    pub(crate) fn guard<T>(&self, op: &str, f: impl FnOnce() -> T) -> T {
        self.watchdog.guard(op, f)
    }

    fn error(&self, op: &str, message: impl Into<String>) -> Error {
        Error::Collective {
            engine: "MPI".into(),
            op: op.into(),
            rank: self.rank,
            message: message.into(),
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, bucket: &Tensor) -> Result<Tensor> {
        let n = bucket.elem_count();
        if i32::try_from(n).is_err() {
            return Err(self.error("all-reduce", format!("bucket of {n} values is too big")));
        }
        let send: Vec<f32> = bucket
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut recv = vec![0f32; n];
        self.watchdog.guard("all-reduce", || {
            self.world
                .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum())
        });
        Ok(Tensor::from_vec(recv, n, bucket.device())?)
    }

    fn all_reduce_sum_f64(&self, xs: &mut [f64]) -> Result<()> {
        let send = xs.to_vec();
        self.watchdog.guard("all-reduce", || {
            self.world
                .all_reduce_into(&send[..], xs, SystemOperation::sum())
        });
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.watchdog.guard("barrier", || self.world.barrier());
        Ok(())
    }

    fn name(&self) -> String {
        format!("MPI ({})", self.version)
    }
}
