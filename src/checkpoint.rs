//! Loading and saving checkpoints in the Hugging Face BART/ELMER layout.
//!
//! A checkpoint directory holds `config.json` and the weights as `model.safetensors`, sharded
//! safetensors (`model.safetensors.index.json` + shards), `pytorch_model.bin` (a zip-format
//! torch pickle) or sharded `pytorch_model.bin.index.json`. Two name layouts are accepted:
//! - `BartForConditionalGeneration` (ELMER checkpoints): `model.` prefix on the BART body,
//!   top-level `final_logits_bias` `[1, vocab]` and optional `lm_head.weight` (tied);
//! - bare `BartModel`: no prefix, no head (`final_logits_bias` is then zero).
//!
//! Canonical names used inside the crate drop the `model.` prefix (`shared.weight`,
//! `encoder.layers.0.fc1.weight`, ...); head tensors keep theirs (`final_logits_bias`,
//! `lm_head.weight`, `concat_head.weight` `[d, 2d]`, `offramps.{i}.{weight,bias}`).
//!
//! Every expected tensor is checked for presence and shape before the model is built; extra
//! tensors are listed in the [`LoadReport`] (or refused with [`LoadOptions::strict`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::{ElmerConfig, OffRampKind};
use crate::error::{Error, Result};
use crate::model::nn::Weights;
use crate::model::ElmerModel;

/// What a tensor is, for initialisation and reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Token embedding table `[vocab, d]`.
    Embedding,
    /// Learned positions `[max_pos + 2, d]`.
    Positions,
    /// Dense weight `[out, in]`.
    Weight,
    /// Dense bias `[out]`.
    Bias,
    /// Layer-norm gain `[d]`.
    NormWeight,
    /// Layer-norm bias `[d]`.
    NormBias,
    /// `final_logits_bias` `[1, vocab]`.
    LogitsBias,
}

/// One tensor the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Canonical name (no `model.` prefix).
    pub name: String,
    /// Expected shape.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: TensorKind,
    /// Whether loading fails without it.
    pub required: bool,
}

fn spec(name: String, shape: Vec<usize>, kind: TensorKind, required: bool) -> TensorSpec {
    TensorSpec {
        name,
        shape,
        kind,
        required,
    }
}

/// Canonical names the BART body uses (the part under `model.` in the head layout).
pub fn is_body_name(name: &str) -> bool {
    name.starts_with("shared.") || name.starts_with("encoder.") || name.starts_with("decoder.")
}

/// Every tensor an ELMER model with `cfg` reads, with shapes. `concat_head.weight` and
/// `final_logits_bias` are optional; per-layer off-ramps are required when configured.
pub fn expected_tensors(cfg: &ElmerConfig) -> Vec<TensorSpec> {
    use TensorKind::*;
    let d = cfg.d_model;
    let v = cfg.vocab_size;
    let mut out = vec![spec("shared.weight".into(), vec![v, d], Embedding, true)];
    let attn = |out: &mut Vec<TensorSpec>, p: &str| {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push(spec(format!("{p}.{proj}.weight"), vec![d, d], Weight, true));
            out.push(spec(format!("{p}.{proj}.bias"), vec![d], Bias, true));
        }
    };
    let norm = |out: &mut Vec<TensorSpec>, p: &str| {
        out.push(spec(format!("{p}.weight"), vec![d], NormWeight, true));
        out.push(spec(format!("{p}.bias"), vec![d], NormBias, true));
    };
    for (side, layers, ffn) in [
        ("encoder", cfg.encoder_layers, cfg.encoder_ffn_dim),
        ("decoder", cfg.decoder_layers, cfg.decoder_ffn_dim),
    ] {
        out.push(spec(
            format!("{side}.embed_positions.weight"),
            vec![cfg.max_position_embeddings + 2, d],
            Positions,
            true,
        ));
        norm(&mut out, &format!("{side}.layernorm_embedding"));
        for i in 0..layers {
            let p = format!("{side}.layers.{i}");
            attn(&mut out, &format!("{p}.self_attn"));
            norm(&mut out, &format!("{p}.self_attn_layer_norm"));
            if side == "decoder" {
                attn(&mut out, &format!("{p}.encoder_attn"));
                norm(&mut out, &format!("{p}.encoder_attn_layer_norm"));
            }
            out.push(spec(format!("{p}.fc1.weight"), vec![ffn, d], Weight, true));
            out.push(spec(format!("{p}.fc1.bias"), vec![ffn], Bias, true));
            out.push(spec(format!("{p}.fc2.weight"), vec![d, ffn], Weight, true));
            out.push(spec(format!("{p}.fc2.bias"), vec![d], Bias, true));
            norm(&mut out, &format!("{p}.final_layer_norm"));
        }
    }
    out.push(spec(
        "final_logits_bias".into(),
        vec![1, v],
        LogitsBias,
        false,
    ));
    if !cfg.tie_word_embeddings {
        out.push(spec("lm_head.weight".into(), vec![v, d], Weight, false));
    }
    out.push(spec(
        "concat_head.weight".into(),
        vec![d, 2 * d],
        Weight,
        false,
    ));
    if cfg.elmer_offramps == OffRampKind::PerLayer {
        for i in 0..cfg.decoder_layers {
            out.push(spec(
                format!("offramps.{i}.weight"),
                vec![v, d],
                Weight,
                true,
            ));
            out.push(spec(format!("offramps.{i}.bias"), vec![v], Bias, true));
        }
    }
    out
}

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
    /// Compute dtype; `None` means f32 (f16/bf16 weights are converted).
    pub dtype: Option<DType>,
    /// Refuse checkpoints with tensors the model does not use.
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            strict: false,
        }
    }
}

impl LoadOptions {
    /// Default options on `device`.
    pub fn on(device: Device) -> Self {
        Self {
            device,
            ..Self::default()
        }
    }
}

enum Source {
    Safe(SafeFile),
    Pth(candle_core::pickle::PthTensors),
}

/// A safetensors file read tensor by tensor with plain reads (no memory map): loading holds
/// at most one tensor's bytes besides the model, instead of the whole mapped file (a mapped
/// file's touched pages count in the resident set until it is unmapped, which doubled the
/// peak memory of a load).
struct SafeFile {
    file: std::sync::Mutex<std::fs::File>,
    /// Byte offset of the data section (8 + header length).
    data_start: u64,
    meta: safetensors::tensor::Metadata,
}

impl SafeFile {
    fn open(path: &Path) -> Result<Self> {
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
    fn infos(&self, path: &Path) -> Result<Vec<(String, DType, Vec<usize>)>> {
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
    fn load(&self, name: &str) -> candle_core::Result<Tensor> {
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

struct TensorFiles {
    files: Vec<PathBuf>,
    sources: Vec<Source>,
    /// stored name -> (source index, dtype, shape)
    index: BTreeMap<String, (usize, DType, Vec<usize>)>,
    format: WeightFormat,
}

fn parse_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn read_index(path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| parse_err(path, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| parse_err(path, "no \"weight_map\" object"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for v in map.values() {
        let f = v
            .as_str()
            .ok_or_else(|| parse_err(path, "weight_map values must be file names"))?;
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl TensorFiles {
    fn open(dir: &Path) -> Result<Self> {
        let candidates = [
            ("model.safetensors", WeightFormat::Safetensors),
            (
                "model.safetensors.index.json",
                WeightFormat::ShardedSafetensors,
            ),
            ("pytorch_model.bin", WeightFormat::PytorchBin),
            (
                "pytorch_model.bin.index.json",
                WeightFormat::ShardedPytorchBin,
            ),
        ];
        let (name, format) = candidates
            .iter()
            .find(|(n, _)| dir.join(n).is_file())
            .ok_or_else(|| Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no weights found (expected model.safetensors, \
                          model.safetensors.index.json, pytorch_model.bin or \
                          pytorch_model.bin.index.json)"
                    .into(),
            })?;
        let main = dir.join(name);
        let files = match format {
            WeightFormat::Safetensors | WeightFormat::PytorchBin => vec![main],
            _ => read_index(&main)?,
        };
        let mut sources = Vec::new();
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(Error::Checkpoint {
                    path: f.clone(),
                    message: "weight shard listed in the index is missing".into(),
                });
            }
            match format {
                WeightFormat::Safetensors | WeightFormat::ShardedSafetensors => {
                    let st = SafeFile::open(f)?;
                    for (name, dtype, shape) in st.infos(f)? {
                        index.insert(name, (i, dtype, shape));
                    }
                    sources.push(Source::Safe(st));
                }
                _ => {
                    let pth = candle_core::pickle::PthTensors::new(f, None)
                        .map_err(|e| parse_err(f, e))?;
                    for (name, info) in pth.tensor_infos() {
                        index.insert(
                            name.clone(),
                            (i, info.dtype, info.layout.shape().dims().to_vec()),
                        );
                    }
                    sources.push(Source::Pth(pth));
                }
            }
        }
        if index.is_empty() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("{} holds no tensors", files[0].display()),
            });
        }
        Ok(Self {
            files,
            sources,
            index,
            format: *format,
        })
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let (i, _, _) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            hint: None,
        })?;
        let file = &self.files[*i];
        let t = match &self.sources[*i] {
            Source::Safe(st) => st.load(name),
            Source::Pth(p) => p.get(name).and_then(|o| {
                o.ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} not found")))
            }),
        };
        t.map_err(|e| parse_err(file, format!("tensor `{name}`: {e}")))
    }
}

/// Reads `<mask>`'s id from tokenizer files in `dir` (`tokenizer.json` or `vocab.json`).
pub fn mask_id_from_tokenizer_files(dir: &Path) -> Option<u32> {
    let tj = dir.join("tokenizer.json");
    if let Ok(text) = std::fs::read_to_string(&tj) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(added) = v.get("added_tokens").and_then(|a| a.as_array()) {
                for t in added {
                    if t.get("content").and_then(|c| c.as_str()) == Some("<mask>") {
                        return t.get("id").and_then(|i| i.as_u64()).map(|i| i as u32);
                    }
                }
            }
            if let Some(id) = v.pointer("/model/vocab/<mask>").and_then(|i| i.as_u64()) {
                return Some(id as u32);
            }
        }
    }
    let vj = dir.join("vocab.json");
    let text = std::fs::read_to_string(vj).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("<mask>").and_then(|i| i.as_u64()).map(|i| i as u32)
}

/// Reads a checkpoint directory: config, validated weights (canonical names, on the requested
/// device and dtype) and a [`LoadReport`].
pub fn load_dir(
    dir: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(ElmerConfig, Weights, LoadReport)> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "not a directory".into(),
        });
    }
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "no config.json".into(),
        });
    }
    let mut cfg = ElmerConfig::from_file(&cfg_path)?;
    if cfg.elmer_mask_token_id.is_none() {
        if let Some(id) = mask_id_from_tokenizer_files(dir) {
            if (id as usize) < cfg.vocab_size {
                cfg.elmer_mask_token_id = Some(id);
            }
        }
    }
    let files = TensorFiles::open(dir)?;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    if opts.device.is_cpu() && dtype == DType::BF16 {
        return Err(Error::Unsupported(
            "bf16 compute on CPU (candle has no CPU bf16 matmul); load as f32".into(),
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
        let (cfg, weights, report) = load_dir(dir, opts)?;
        let weights = weights.into_inference_layout()?;
        Ok((ElmerModel::from_weights(cfg, &weights)?, report))
    }
}

/// Writes `config.json` and `model.safetensors` in the `BartForConditionalGeneration` layout
/// (`model.` prefix on the body, head tensors at top level) so transformers loads the result.
/// Both files are written atomically. `weights` uses canonical names.
pub fn save_dir(
    dir: impl AsRef<Path>,
    cfg: &ElmerConfig,
    weights: &HashMap<String, Tensor>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(weights.len());
    for (k, t) in weights {
        let name = if is_body_name(k) {
            format!("model.{k}")
        } else {
            k.clone()
        };
        named.push((name, t.to_device(&Device::Cpu)?.contiguous()?));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let bytes =
        safetensors::tensor::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| parse_err(&dir.join("model.safetensors"), e))?;
    crate::util::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    cfg.save(dir.join("config.json"))
}

/// Resolves a model argument to a local directory: an existing directory is used as is;
/// otherwise, with the `hub` feature, `id` is a model-hub repository (e.g. `RUCAIBox/elmer`)
/// fetched into the local Hugging Face cache.
pub fn resolve_model_dir(id: &str) -> Result<PathBuf> {
    let p = Path::new(id);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    #[cfg(feature = "hub")]
    {
        crate::hub::download(id)
    }
    #[cfg(not(feature = "hub"))]
    {
        Err(Error::Checkpoint {
            path: p.to_path_buf(),
            message:
                "not a local directory (build with the `hub` feature to download model-hub ids)"
                    .into(),
        })
    }
}
