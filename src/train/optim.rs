//! AdamW (decoupled weight decay, Loshchilov & Hutter), the linear warm-up / linear decay
//! learning-rate schedule, and global-norm gradient clipping.
//!
//! The optimizer keeps its moments by parameter name so they can be saved with a checkpoint
//! and restored exactly on resume.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::train::params::Params;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (not applied to biases, layer norms and position tables).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether weight decay applies to the parameter `name` (dense weights and embeddings only).
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight")
        && !name.contains("layer_norm")
        && !name.contains("layernorm")
        && !name.contains("embed_positions")
}

/// AdamW over named parameters.
#[derive(Debug, Clone)]
pub struct AdamW {
    cfg: AdamWConfig,
    step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
        }
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr` to the parameters named in `grads`.
    pub fn step(
        &mut self,
        params: &Params,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (name, g) in grads {
            let var = params
                .vars()
                .get(name)
                .ok_or_else(|| Error::invalid_arg("grads", format!("unknown parameter {name}")))?;
            let m = match self.m.get(name) {
                Some(m) => ((m * b1)? + (g * (1.0 - b1))?)?,
                None => (g * (1.0 - b1))?,
            };
            let g2 = g.sqr()?;
            let v = match self.v.get(name) {
                Some(v) => ((v * b2)? + (g2 * (1.0 - b2))?)?,
                None => (g2 * (1.0 - b2))?,
            };
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let theta = var.as_tensor();
            let theta = if decays(name) && self.cfg.weight_decay > 0.0 {
                (theta * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                theta.clone()
            };
            let new = (theta - (update * lr)?)?;
            var.set(&new.detach())?;
            self.m.insert(name.clone(), m.detach());
            self.v.insert(name.clone(), v.detach());
        }
        Ok(())
    }

    /// Moments as named tensors (`m.<name>`, `v.<name>`) for a checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.to_device(&Device::Cpu)?);
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.to_device(&Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`state_tensors`](Self::state_tensors) and the step count.
    pub fn load_state(
        &mut self,
        tensors: HashMap<String, Tensor>,
        step: u64,
        device: &Device,
    ) -> Result<()> {
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            let t = t.to_device(device)?;
            if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t);
            } else {
                return Err(Error::Checkpoint {
                    path: "optimizer.safetensors".into(),
                    message: format!("unexpected tensor {k}"),
                });
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl LinearSchedule {
    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let s = step as f64 + 1.0;
        if self.warmup > 0 && step < self.warmup {
            return self.peak * s / self.warmup as f64;
        }
        let rest = (self.total.saturating_sub(self.warmup)).max(1) as f64;
        let done = (step.saturating_sub(self.warmup)) as f64;
        (self.peak * (1.0 - done / rest)).max(0.0)
    }
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.values() {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Rescales `grads` so their global norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_and_decays() {
        let s = LinearSchedule {
            peak: 1.0,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(110), 0.0);
        assert_eq!(s.lr(500), 0.0);
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut g = BTreeMap::new();
        g.insert(
            "a".to_string(),
            Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap(),
        );
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let n = clip_grad_norm(&mut g, 10.0).unwrap();
        assert!((n - 1.0).abs() < 1e-5);
    }

    #[test]
    fn decay_excludes_biases_and_norms() {
        assert!(decays("encoder.layers.0.fc1.weight"));
        assert!(decays("shared.weight"));
        assert!(!decays("encoder.layers.0.fc1.bias"));
        assert!(!decays("encoder.layers.0.final_layer_norm.weight"));
        assert!(!decays("encoder.layernorm_embedding.weight"));
        assert!(!decays("encoder.embed_positions.weight"));
    }
}
