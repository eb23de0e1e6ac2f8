//! The NCCL engine (feature `nccl`, which brings `cuda` and `mpi`): one process per GPU,
//! gradient buckets summed on the GPUs with `ncclAllReduce` (cudarc's bindings, the ones
//! candle's CUDA backend is built on). The NCCL unique id is created by rank 0 and
//! broadcast over MPI, the standard rendezvous; MPI also carries the few host-side numbers
//! (losses, token counts, validation results) and barriers.
//!
//! Shapes: buckets `[n]` f32 on this rank's CUDA device.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{Collective, MpiCollective};
use crate::error::{Error, Result};

/// Data-parallel collectives over NCCL, one process per GPU.
pub struct NcclCollective {
    comm: Comm,
    device: Device,
    host: MpiCollective,
}

impl NcclCollective {
    /// Joins the NCCL communicator of every rank of `host` on `device` (this rank's GPU,
    /// e.g. `cuda:<local rank>`).
    pub fn init(device: &Device, host: MpiCollective) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::Unsupported(format!(
                "NCCL needs a CUDA device, not {device:?}"
            )));
        };
        let err = |op: &str, e: String| Error::Collective {
            engine: "NCCL".into(),
            op: op.into(),
            rank: host.rank(),
            message: e,
        };
        let mut bytes = [0u8; 128];
        if host.rank() == 0 {
            let id = Id::new().map_err(|e| err("unique id", format!("{e:?}")))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        host.broadcast_bytes(&mut bytes)?;
        let internal = bytes.map(|b| b as core::ffi::c_char);
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            host.rank(),
            host.world_size(),
            Id::uninit(internal),
        )
        .map_err(|e| err("communicator", format!("{e:?}")))?;
        Ok(Self {
            comm,
            device: device.clone(),
            host,
        })
    }
}

/// `ncclAllReduce` (sum) of a contiguous f32 CUDA tensor into a new one.
struct AllReduce<'a> {
    comm: &'a Comm,
}

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs a CUDA tensor")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = l.shape().elem_count();
        let dev = s.device().clone();
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("NCCL all-reduce of a strided bucket".into()))?;
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        // SAFETY: every element is written by the all-reduce before it is read.
        let mut dst = unsafe { dev.alloc::<f32>(n) }?;
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn world_size(&self) -> usize {
        self.host.world_size()
    }

    fn all_reduce_sum(&self, bucket: &Tensor) -> Result<Tensor> {
        let b = bucket
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let out = b.apply_op1_no_bwd(&AllReduce { comm: &self.comm })?;
        // NCCL runs on the stream: a dead peer shows up here, under the watchdog.
        self.host
            .guard("all-reduce", || self.device.synchronize())?;
        Ok(out)
    }

    fn all_reduce_sum_f64(&self, xs: &mut [f64]) -> Result<()> {
        self.host.all_reduce_sum_f64(xs)
    }

    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }

    fn name(&self) -> String {
        format!("NCCL (rendezvous over {})", self.host.name())
    }
}
