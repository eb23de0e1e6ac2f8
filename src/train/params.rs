//! Trainable parameters: every checkpoint tensor as a candle `Var`, keyed by canonical name
//! (see [`crate::checkpoint`]).
//!
//! Initialisation follows transformers' BART `_init_weights`: dense weights, embeddings and
//! positions ~ N(0, init_std) (the `<pad>` row of the token table zero), biases and
//! `final_logits_bias` zero, layer norms (1, 0). Random numbers come from a seeded `StdRng`,
//! so a run is reproducible on any device.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::checkpoint::Weights;
use crate::checkpoint::{expected_tensors, load_dir, save_dir, LoadOptions, TensorKind};
use crate::config::ElmerConfig;
use crate::error::{Error, Result};
use crate::model::ElmerModel;

/// The model's parameters as trainable variables.
pub struct Params {
    config: ElmerConfig,
    vars: BTreeMap<String, Var>,
    device: Device,
}

fn normal(shape: &[usize], std: f64, rng: &mut StdRng, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let dist =
        Normal::new(0.0f32, std as f32).map_err(|e| Error::config("init_std", e.to_string()))?;
    let data: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(data, shape, dev)?)
}

impl Params {
    /// Fresh parameters for `config` (validated), with a `concat_head` when `concat_head`.
    pub fn init(
        config: ElmerConfig,
        seed: u64,
        concat_head: bool,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let std = config.init_std;
        let mut vars = BTreeMap::new();
        for s in expected_tensors(&config) {
            let include = s.required
                || s.name == "final_logits_bias"
                || (s.name == "concat_head.weight" && concat_head);
            if !include {
                continue;
            }
            let t = match s.kind {
                TensorKind::Weight | TensorKind::Positions => {
                    normal(&s.shape, std, &mut rng, device)?
                }
                TensorKind::Embedding => {
                    let t = normal(&s.shape, std, &mut rng, device)?;
                    let pad = config.pad_token_id as usize;
                    let d = s.shape[1];
                    let zero = Tensor::zeros((1, d), DType::F32, device)?;
                    t.slice_scatter0(&zero, pad)?
                }
                TensorKind::Bias | TensorKind::NormBias | TensorKind::LogitsBias => {
                    Tensor::zeros(s.shape.as_slice(), DType::F32, device)?
                }
                TensorKind::NormWeight => Tensor::ones(s.shape.as_slice(), DType::F32, device)?,
            };
            vars.insert(s.name.clone(), Var::from_tensor(&t)?);
        }
        Ok(Self {
            config,
            vars,
            device: device.clone(),
        })
    }

    /// Parameters loaded from a checkpoint directory (f32 on `device`).
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (config, weights, _) = load_dir(dir, &LoadOptions::on(device.clone()))?;
        let mut vars = BTreeMap::new();
        for (k, t) in weights.map() {
            vars.insert(k.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        if !vars.contains_key("final_logits_bias") {
            let z = Tensor::zeros((1, config.vocab_size), DType::F32, device)?;
            vars.insert("final_logits_bias".into(), Var::from_tensor(&z)?);
        }
        Ok(Self {
            config,
            vars,
            device: device.clone(),
        })
    }

    /// Parameters from explicit tensors (canonical names).
    pub fn from_tensors(config: ElmerConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let device = tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        let mut vars = BTreeMap::new();
        for (k, t) in tensors {
            vars.insert(k.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        Ok(Self {
            config,
            vars,
            device,
        })
    }

    /// Adds a soft-exit `concat_head.weight` `[d, 2d]` ~ N(0, `std`) when absent; returns
    /// whether one was created.
    pub fn ensure_concat_head(&mut self, seed: u64, std: f64) -> Result<bool> {
        if self.vars.contains_key("concat_head.weight") {
            return Ok(false);
        }
        let d = self.config.d_model;
        let mut rng = StdRng::seed_from_u64(seed);
        let t = normal(&[d, 2 * d], std, &mut rng, &self.device)?;
        self.vars
            .insert("concat_head.weight".into(), Var::from_tensor(&t)?);
        Ok(true)
    }

    /// Adds a target-length predictor (`length_head.weight` `[max_position_embeddings + 1, d]`
    /// ~ N(0, `std`), `length_head.bias` zeros) when absent; returns whether one was created.
    pub fn ensure_length_head(&mut self, seed: u64, std: f64) -> Result<bool> {
        if self.vars.contains_key("length_head.weight") {
            return Ok(false);
        }
        let d = self.config.d_model;
        let n = self.config.max_position_embeddings + 1;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6c65_6e67_7468);
        let w = normal(&[n, d], std, &mut rng, &self.device)?;
        let b = Tensor::zeros(n, DType::F32, &self.device)?;
        self.vars
            .insert("length_head.weight".into(), Var::from_tensor(&w)?);
        self.vars
            .insert("length_head.bias".into(), Var::from_tensor(&b)?);
        Ok(true)
    }

    /// The configuration.
    pub fn config(&self) -> &ElmerConfig {
        &self.config
    }

    /// Mutable configuration (dropout etc.; shapes must not change).
    pub fn config_mut(&mut self) -> &mut ElmerConfig {
        &mut self.config
    }

    /// Device of the parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All variables by canonical name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A model whose tensors are these variables: gradients of its outputs reach them, and
    /// optimizer updates (in place) are seen by it.
    pub fn model(&self) -> Result<ElmerModel> {
        let map: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        ElmerModel::from_weights(self.config.clone(), &Weights::new(map))
    }

    /// Current values (detached copies) by canonical name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Writes `config.json` + `model.safetensors` (Hugging Face layout, atomically).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_dir(dir, &self.config, &self.tensors())
    }

    /// Writes the weights as f16 (for shipping small models).
    pub fn save_f16(&self, dir: impl AsRef<Path>) -> Result<()> {
        let mut t = self.tensors();
        for v in t.values_mut() {
            *v = v.to_dtype(DType::F16)?;
        }
        save_dir(dir, &self.config, &t)
    }
}
