//! A safetensors reader that loads tensor by tensor with plain reads (no memory map), so a
//! load peaks at about the model's size rather than twice it.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::parse_err;
use crate::error::{Error, Result};

/// A safetensors file read tensor by tensor with plain reads (no memory map): loading holds
/// at most one tensor's bytes besides the model, instead of the whole mapped file (a mapped
/// file's touched pages count in the resident set until it is unmapped, which doubled the
/// peak memory of a load).
pub(crate) struct SafeFile {
    file: std::sync::Mutex<std::fs::File>,
    /// Byte offset of the data section (8 + header length).
    data_start: u64,
    meta: safetensors::tensor::Metadata,
}

impl SafeFile {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|_| {
            parse_err(
                path,
                "not a safetensors file (shorter than its 8-byte header length)",
            )
        })?;
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || 8 + n > file_len {
            return Err(parse_err(
                path,
                format!("safetensors header of {n} bytes does not fit a {file_len}-byte file"),
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(path, e))?;
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
            .map_err(|e| parse_err(path, format!("safetensors header: {e}")))?;
        let want = 8 + n + meta.data_len() as u64;
        if want != file_len {
            return Err(parse_err(
                path,
                format!(
                    "file is {file_len} bytes but its header describes {want} (truncated or \
                     corrupt)"
                ),
            ));
        }
        Ok(Self {
            file: std::sync::Mutex::new(file),
            data_start: 8 + n,
            meta,
        })
    }

    /// Tensor names with their dtype and shape.
    pub(crate) fn infos(&self, path: &Path) -> Result<Vec<(String, DType, Vec<usize>)>> {
        let mut out = Vec::new();
        for (name, info) in self.meta.tensors() {
            let dtype = safetensors_dtype(info.dtype).ok_or_else(|| {
                parse_err(path, format!("tensor `{name}` has dtype {:?}", info.dtype))
            })?;
            out.push((name, dtype, info.shape.clone()));
        }
        Ok(out)
    }

    /// Reads tensor `name` into a CPU tensor.
    pub(crate) fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let info = self
            .meta
            .info(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} not found")))?;
        let dtype = safetensors_dtype(info.dtype).ok_or_else(|| {
            candle_core::Error::Msg(format!("unsupported dtype {:?}", info.dtype))
        })?;
        let (start, end) = info.data_offsets;
        let n: usize = info.shape.iter().product();
        let offset = self.data_start + start as u64;
        let len = end - start;
        let shape = info.shape.clone();
        match dtype {
            DType::F32 => {
                Tensor::from_vec(self.read_le::<f32, 4>(offset, len, n)?, shape, &Device::Cpu)
            }
            DType::F64 => {
                Tensor::from_vec(self.read_le::<f64, 8>(offset, len, n)?, shape, &Device::Cpu)
            }
            DType::F16 => Tensor::from_vec(
                self.read_le::<u16, 2>(offset, len, n)?
                    .into_iter()
                    .map(half::f16::from_bits)
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            ),
            DType::BF16 => Tensor::from_vec(
                self.read_le::<u16, 2>(offset, len, n)?
                    .into_iter()
                    .map(half::bf16::from_bits)
                    .collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            ),
            DType::I64 => {
                Tensor::from_vec(self.read_le::<i64, 8>(offset, len, n)?, shape, &Device::Cpu)
            }
            DType::U32 => {
                Tensor::from_vec(self.read_le::<u32, 4>(offset, len, n)?, shape, &Device::Cpu)
            }
            DType::U8 => {
                Tensor::from_vec(self.read_le::<u8, 1>(offset, len, n)?, shape, &Device::Cpu)
            }
            other => candle_core::bail!("unsupported dtype {other:?}"),
        }
    }

    /// Reads `n` little-endian values of `W` bytes each at `offset`, straight into the
    /// destination vector (one buffer, no intermediate byte copy).
    fn read_le<T: LeBytes<W>, const W: usize>(
        &self,
        offset: u64,
        len: usize,
        n: usize,
    ) -> candle_core::Result<Vec<T>> {
        use std::io::{Read, Seek, SeekFrom};
        if len != n * W {
            candle_core::bail!("{len} bytes for {n} values of {W} bytes");
        }
        let mut out: Vec<T> = vec![T::default(); n];
        {
            // SAFETY: `T` is a plain number type (every bit pattern valid, no padding), so its
            // buffer may be viewed and filled as bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * W) };
            let mut f = self
                .file
                .lock()
                .map_err(|_| candle_core::Error::Msg("file lock poisoned".into()))?;
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(bytes)?;
        }
        if cfg!(target_endian = "big") {
            for v in out.iter_mut() {
                *v = T::from_le(*v);
            }
        }
        Ok(out)
    }
}

/// Plain numbers read from little-endian bytes.
trait LeBytes<const W: usize>: Copy + Default {
    /// Converts a value read in little-endian byte order to native order.
    fn from_le(v: Self) -> Self;
}

macro_rules! le_bytes {
    ($($t:ty => $w:literal),*) => {$(
        impl LeBytes<$w> for $t {
            fn from_le(v: Self) -> Self {
                <$t>::from_le_bytes(v.to_ne_bytes())
            }
        }
    )*};
}
le_bytes!(f32 => 4, f64 => 8, u16 => 2, u32 => 4, i64 => 8, u8 => 1);

fn safetensors_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        _ => return None,
    })
}
