//! Loading a checkpoint directory: config, weights checked for presence and shape, name
//! layouts and tied copies resolved, a [`LoadReport`] of what was found.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::files::TensorFiles;
use super::names::{expected_tensors, is_body_name, TensorSpec};
use super::Weights;
use crate::config::ElmerConfig;
use crate::error::{Error, Result};
use crate::model::ElmerModel;
use crate::model_dir::ModelDir;
use crate::ops::packed::Precision;

/// Weight file format found in a checkpoint directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `model.safetensors`.
    Safetensors,
    /// `model.safetensors.index.json` + shards.
    ShardedSafetensors,
    /// `pytorch_model.bin`.
    PytorchBin,
    /// `pytorch_model.bin.index.json` + shards.
    ShardedPytorchBin,
}

/// Name layout of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLayout {
    /// `BartForConditionalGeneration`: `model.` prefix on the body.
    ConditionalGeneration,
    /// Bare `BartModel`: no prefix.
    BareModel,
}

/// How loading went: what was found, converted and left unused.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Checkpoint directory.
    pub dir: PathBuf,
    /// Weight files read.
    pub files: Vec<PathBuf>,
    /// Their format.
    pub format: WeightFormat,
    /// Their name layout.
    pub layout: NameLayout,
    /// Dtype the weights were stored in (the most common one).
    pub stored_dtype: DType,
    /// Dtype the model computes in.
    pub dtype: DType,
    /// Optional tensors found: `final_logits_bias`, `lm_head.weight`, `concat_head.weight`.
    pub optional_present: Vec<String>,
    /// Tied copies of the shared embedding that were recognised and skipped.
    pub tied_copies: Vec<String>,
    /// Tensors in the checkpoint the model does not use (names as stored).
    pub extra: Vec<String>,
    /// Parameter count per part (`encoder`, `decoder`, `shared`, `head`).
    pub parameters: BTreeMap<String, usize>,
}

/// Options for [`ElmerModel::from_dir`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device to place the weights on.
    pub device: Device,
    /// Compute dtype; `None` means f32 (f16/bf16 weights are converted). On CPU,
    /// `Some(DType::BF16)` (with [`crate::ElmerModel::from_dir`]) is mixed precision: the
    /// dense layers and the off-ramps' vocabulary projection are stored in bf16 and run on
    /// AMX-BF16 tiles where the CPU has them (Intel Xeon since Sapphire Rapids, on Linux),
    /// else on AVX512_BF16 dot products (activations rounded to bf16 per product, sums and
    /// all other work in f32); a CPU without AVX512_BF16 gets [`Error::Unsupported`].
    pub dtype: Option<DType>,
    /// Refuse checkpoints with tensors the model does not use.
    pub strict: bool,
    /// Load weights that hold NaN or infinite values. Off by default: such a checkpoint
    /// generates garbage (an all-`<s>` output) without any other sign, so loading it is an
    /// [`Error::Checkpoint`] naming the file and tensor unless this is set.
    pub allow_non_finite: bool,
    /// On a CPU with AVX-512F in f32: also keep the off-ramps' vocabulary table packed for
    /// the f32 kernels (on by default). The off-ramp projection then runs 1.4-1.5x faster
    /// (every layer computes one under soft and hard exit), at the cost of a second copy
    /// of the table: `vocab x d x 4` bytes, 154 MB at BART-base's size. `false` saves that
    /// memory. bf16 and int8 always pack the table (their copy is the reduced one).
    pub pack_offramp_table: bool,
    /// On CPU, the precision of the dense layers and off-ramps (packed at load time):
    /// `None` follows `dtype` (bf16 for `Some(DType::BF16)`, else f32).
    /// `Some(Precision::Int8)` quantizes their weights to int8 (one scale per output column)
    /// and the activations entering them per row on every call, with products summed
    /// exactly in i32 on AVX512-VNNI (Intel Xeon since Ice Lake, AMD EPYC since Zen 4); a
    /// CPU without it gets [`Error::Unsupported`], as does a non-CPU device or a `dtype`
    /// other than f32 with it. Everything else (attention, layer norm, softmax, the
    /// embeddings) stays f32. See [`Self::cpu_supports`]. Applied by
    /// [`crate::ElmerModel::from_dir`]; [`load_dir`] returns f32 weights, which
    /// [`Weights::into_inference_layout_as`] packs in a chosen precision.
    pub cpu_precision: Option<Precision>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            strict: false,
            allow_non_finite: false,
            pack_offramp_table: true,
            cpu_precision: None,
        }
    }
}

impl LoadOptions {
    /// Whether this CPU runs bf16 inference (`dtype: Some(DType::BF16)` on CPU): the same as
    /// [`Self::cpu_supports`]`(Precision::Bf16)`.
    pub fn cpu_bf16_supported() -> bool {
        Self::cpu_supports(Precision::Bf16)
    }

    /// Whether this CPU runs inference in `precision` (`cpu_precision: Some(precision)`):
    /// f32 packing needs AVX-512F (without it f32 runs on candle's gemm), bf16 also
    /// AVX512_BF16, int8 AVX512-VNNI (checked at run time), and `ELMER_CPU_KERNELS` is not
    /// `portable`.
    pub fn cpu_supports(precision: Precision) -> bool {
        crate::ops::packed::available(precision)
    }

    /// The packed precision these options ask for on CPU (see [`Self::cpu_precision`]), or
    /// why the combination is invalid.
    pub(crate) fn resolved_cpu_precision(&self) -> Result<Option<Precision>> {
        let from_dtype = (self.dtype == Some(DType::BF16)).then_some(Precision::Bf16);
        match (self.cpu_precision, from_dtype) {
            (None, p) => Ok(p.filter(|_| self.device.is_cpu())),
            // f32 is the default on every device: nothing to check.
            (Some(Precision::F32), None) => Ok(None),
            (Some(p), _) if !self.device.is_cpu() => Err(Error::invalid_arg(
                "cpu_precision",
                format!(
                    "{} packed weights are a CPU inference path; the device is {:?}",
                    p.name(),
                    self.device
                ),
            )),
            (Some(p), Some(q)) if p != q => Err(Error::invalid_arg(
                "cpu_precision",
                format!("{} contradicts dtype {:?}", p.name(), self.dtype),
            )),
            (Some(p), _) if !matches!(self.dtype, None | Some(DType::F32) | Some(DType::BF16)) => {
                Err(Error::invalid_arg(
                    "cpu_precision",
                    format!(
                        "{} needs f32 activations, not dtype {:?}",
                        p.name(),
                        self.dtype
                    ),
                ))
            }
            (Some(p), _) => Ok(Some(p)),
        }
    }

    /// Default options on `device`.
    pub fn on(device: Device) -> Self {
        Self {
            device,
            ..Self::default()
        }
    }
}

/// Reads a checkpoint directory: config, validated weights (canonical names, on the requested
/// device and dtype) and a [`LoadReport`].
pub fn load_dir(
    dir: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(ElmerConfig, Weights, LoadReport)> {
    let dir = dir.as_ref();
    let md = ModelDir::open(dir)?;
    let cfg = md.load_config()?;
    let files = TensorFiles::open(&md)?;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    if opts.device.is_cpu() && dtype == DType::BF16 {
        return Err(Error::Unsupported(
            "bf16 tensors on CPU (candle has no CPU bf16 matmul): load f32 weights, or use \
             ElmerModel::from_dir with dtype bf16 for mixed-precision inference"
                .into(),
        ));
    }
    let layout = if files.index.keys().any(|k| k.starts_with("model.")) {
        NameLayout::ConditionalGeneration
    } else {
        NameLayout::BareModel
    };
    let stored_name = |canon: &str| -> String {
        if layout == NameLayout::ConditionalGeneration && is_body_name(canon) {
            format!("model.{canon}")
        } else {
            canon.to_string()
        }
    };
    // Candidate stored names per canonical name, most preferred first.
    let aliases = |canon: &str| -> Vec<String> {
        let mut v = vec![stored_name(canon)];
        match canon {
            "shared.weight" => {
                v.push(stored_name("encoder.embed_tokens.weight"));
                v.push(stored_name("decoder.embed_tokens.weight"));
            }
            "concat_head.weight" => {
                v.push("model.concat_head.weight".into());
                v.push(stored_name("decoder.concat_head.weight"));
            }
            _ => {}
        }
        v.push(canon.to_string());
        v.dedup();
        v
    };
    let layout_hint = match layout {
        NameLayout::ConditionalGeneration => "BartForConditionalGeneration layout",
        NameLayout::BareModel => "bare BartModel layout",
    };
    let mut used: Vec<String> = Vec::new();
    let mut map = HashMap::new();
    let mut optional_present = Vec::new();
    let mut dtype_counts: BTreeMap<String, (usize, DType)> = BTreeMap::new();
    let specs = expected_tensors(&cfg);
    for s in &specs {
        let found = aliases(&s.name)
            .into_iter()
            .find(|n| files.index.contains_key(n));
        let Some(stored) = found else {
            if s.required {
                return Err(Error::MissingTensor {
                    name: stored_name(&s.name),
                    hint: Some(format!("{layout_hint}, {}", dir.display())),
                });
            }
            continue;
        };
        let (_, st_dtype, shape) = &files.index[&stored];
        if *shape != s.shape {
            return Err(Error::TensorShape {
                name: stored.clone(),
                expected: s.shape.clone(),
                actual: shape.clone(),
            });
        }
        let e = dtype_counts
            .entry(format!("{st_dtype:?}"))
            .or_insert((0, *st_dtype));
        e.0 += 1;
        let t = files.load(&stored)?;
        let t = match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(dtype)?,
            other => {
                return Err(Error::Parse {
                    path: files.files[files.index[&stored].0].clone(),
                    message: format!("tensor `{stored}` has non-float dtype {other:?}"),
                })
            }
        };
        if !opts.allow_non_finite {
            check_finite(&t, &stored, &files.files[files.index[&stored].0])?;
        }
        let t = t.to_device(&opts.device)?;
        if !s.required {
            optional_present.push(s.name.clone());
        }
        used.push(stored);
        map.insert(s.name.clone(), t);
    }
    // Tied copies of the embedding and the tied lm_head are expected, not extra.
    let mut tied_copies = Vec::new();
    let mut extra = Vec::new();
    for name in files.index.keys() {
        if used.contains(name) {
            continue;
        }
        let canon = name.strip_prefix("model.").unwrap_or(name);
        let tied = matches!(
            canon,
            "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight"
        ) || (name == "lm_head.weight" && cfg.tie_word_embeddings)
            // transformers registers this buffer in older checkpoints.
            || canon.ends_with("embed_positions._float_tensor");
        if tied {
            tied_copies.push(name.clone());
        } else {
            extra.push(name.clone());
        }
    }
    if opts.strict && !extra.is_empty() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "{} tensor(s) the model does not use (strict mode): {}",
                extra.len(),
                extra.join(", ")
            ),
        });
    }
    let stored_dtype = dtype_counts
        .values()
        .max_by_key(|(n, _)| *n)
        .map(|(_, d)| *d)
        .unwrap_or(DType::F32);
    let parameters = count_parameters(&specs, &map);
    let report = LoadReport {
        dir: dir.to_path_buf(),
        files: files.files.clone(),
        format: files.format,
        layout,
        stored_dtype,
        dtype,
        optional_present,
        tied_copies,
        extra,
        parameters,
    };
    Ok((cfg, Weights::new(map), report))
}

/// Fails when `t` holds a NaN or an infinity, naming the tensor and its file.
fn check_finite(t: &Tensor, name: &str, file: &Path) -> Result<()> {
    // In chunks of 1M values, so the check adds 4 MB to a load's peak memory, not a tensor.
    const CHUNK: usize = 1 << 20;
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    let mut bad = 0usize;
    for start in (0..n).step_by(CHUNK) {
        let part = flat.narrow(0, start, CHUNK.min(n - start))?;
        let v: Vec<f32> = part.to_dtype(DType::F32)?.to_vec1()?;
        bad += v.iter().filter(|x| !x.is_finite()).count();
    }
    if bad == 0 {
        return Ok(());
    }
    Err(Error::Checkpoint {
        path: file.to_path_buf(),
        message: format!(
            "tensor `{name}` holds {bad} NaN or infinite value(s); set \
             LoadOptions::allow_non_finite to load it anyway"
        ),
    })
}

fn count_parameters(
    specs: &[TensorSpec],
    map: &HashMap<String, Tensor>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in specs {
        if let Some(t) = map.get(&s.name) {
            let part = if s.name.starts_with("encoder.") {
                "encoder"
            } else if s.name.starts_with("decoder.") {
                "decoder"
            } else if s.name == "shared.weight" {
                "shared"
            } else {
                "head"
            };
            *out.entry(part.to_string()).or_insert(0) += t.elem_count();
        }
    }
    out
}

impl ElmerModel {
    /// Loads a checkpoint directory (see the [module docs](crate::checkpoint)).
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        Ok(Self::from_dir_with_report(dir, opts)?.0)
    }

    /// Loads a checkpoint directory and returns what was found with the model.
    pub fn from_dir_with_report(
        dir: impl AsRef<Path>,
        opts: &LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        // bf16 / int8 on CPU: f32 activations, the dense layers and the off-ramp projection
        // in reduced precision (packed for the AMX / AVX512_BF16 / VNNI kernels).
        let reduced = opts.resolved_cpu_precision()?;
        if let Some(p) = reduced {
            crate::ops::packed::require(p)?;
        }
        let load_opts = LoadOptions {
            dtype: if reduced.is_some() {
                Some(DType::F32)
            } else {
                opts.dtype
            },
            ..opts.clone()
        };
        let (cfg, weights, report) = load_dir(dir, &load_opts)?;
        let weights = match reduced {
            Some(p) => weights.into_inference_layout_precision(p, true)?,
            None => {
                weights.into_inference_layout_precision(Precision::F32, opts.pack_offramp_table)?
            }
        };
        Ok((ElmerModel::from_weights(cfg, &weights)?, report))
    }
}
