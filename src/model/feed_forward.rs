//! The position-wise feed-forward block of every encoder and decoder layer (BART):
//! `fc2(dropout(act(fc1(x))))`.
//!
//! Shapes: `[.., d] -> [.., ffn_dim] -> [.., d]`.

use candle_core::Tensor;

use crate::checkpoint::Weights;
use crate::config::{Activation, ElmerConfig};
use crate::error::Result;
use crate::nn::{dropout, Linear, Mode};

/// Position-wise feed-forward block `fc2(act(fc1(x)))` with activation dropout.
#[derive(Debug, Clone)]
pub struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    activation_dropout: f64,
}

impl FeedForward {
    /// Loads `{prefix}.fc1` and `{prefix}.fc2`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ElmerConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(w, &format!("{prefix}.fc1"), true)?,
            fc2: Linear::load(w, &format!("{prefix}.fc2"), true)?,
            act: cfg.activation()?,
            activation_dropout: cfg.activation_dropout,
        })
    }

    /// `[.., d] -> [.., d]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward_act(x, self.act)?;
        let h = dropout(&h, self.activation_dropout, mode)?;
        self.fc2.forward(&h)
    }
}
