//! Multi-head attention as in BART (`BartAttention`), used for encoder self-attention and for
//! the NAR decoder's bidirectional self-attention and cross-attention.
//!
//! Shapes: queries `[batch, tq, d]`, keys/values `[batch, heads, tk, head_dim]`, additive mask
//! broadcastable to `[batch, heads, tq, tk]` (usually `[batch, 1, 1, tk]` for padding).
//! Keys and values are exposed separately ([`Attention::key_value`]) so the decoder can compute
//! them once for all tokens while computing queries only for the tokens that have not exited
//! (paper section 3.2, hard early exit), and so cross-attention keys/values of a fixed encoder
//! output can be cached across decoder calls.

use candle_core::{DType, Tensor};

use crate::checkpoint::Weights;
use crate::error::Result;
use crate::nn::{dropout, softmax_last, Linear, Mode};
use crate::ops::fused;

/// Keys and values of one attention layer, `[batch, heads, len, head_dim]` each (on the CPU
/// in f32: `[batch, len, d]`, heads not split, as projected, for the fused attention core).
#[derive(Debug, Clone)]
pub struct KeyValue {
    /// Keys `[batch, heads, len, head_dim]` (CPU f32: `[batch, len, d]`).
    pub k: Tensor,
    /// Values `[batch, heads, len, head_dim]` (CPU f32: `[batch, len, d]`).
    pub v: Tensor,
    /// Whether `k` and `v` are `[batch, len, d]` (heads interleaved, as projected).
    pub(crate) merged: bool,
}

impl KeyValue {
    /// Keys and values split into heads, `[batch, heads, len, head_dim]` each.
    pub(crate) fn split(k: Tensor, v: Tensor) -> Self {
        Self {
            k,
            v,
            merged: false,
        }
    }
}

/// BART multi-head attention: `q_proj`, `k_proj`, `v_proj`, `out_proj` (all with bias).
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scaling: f64,
    dropout: f64,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,out}_proj.{weight,bias}`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        d_model: usize,
        num_heads: usize,
        dropout: f64,
    ) -> Result<Self> {
        let head_dim = d_model / num_heads;
        Ok(Self {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj"), true)?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj"), true)?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj"), true)?,
            out_proj: Linear::load(w, &format!("{prefix}.out_proj"), true)?,
            num_heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
            dropout,
        })
    }

    fn split_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values split into heads, `[batch, heads, len, head_dim]` each.
    fn split_pair(&self, k: &Tensor, v: &Tensor) -> candle_core::Result<KeyValue> {
        Ok(KeyValue::split(self.split_heads(k)?, self.split_heads(v)?))
    }

    /// Projects `x` `[batch, len, d]` to keys and values.
    pub fn key_value(&self, x: &Tensor) -> candle_core::Result<KeyValue> {
        let (k, v) = (self.k_proj.forward(x)?, self.v_proj.forward(x)?);
        // On the CPU in f32 the projections stay as they are for the fused core. It has no
        // attention dropout: training with dropout splits the heads here, and `attend`
        // splits them late if a merged pair meets training mode with dropout.
        let training_with_dropout = x.track_op() && self.dropout > 0.0;
        if !training_with_dropout && x.device().is_cpu() && k.dtype() == DType::F32 {
            return Ok(KeyValue { k, v, merged: true });
        }
        self.split_pair(&k, &v)
    }

    /// Keys and values split into heads whatever the device, `[batch, heads, len,
    /// head_dim]` (the autoregressive cache grows along `len`).
    pub(crate) fn key_value_split(&self, x: &Tensor) -> candle_core::Result<KeyValue> {
        self.split_pair(&self.k_proj.forward(x)?, &self.v_proj.forward(x)?)
    }

    /// Attends queries from `x_q` `[batch, tq, d]` over `kv`; returns `[batch, tq, d]`.
    pub fn attend(
        &self,
        x_q: &Tensor,
        kv: &KeyValue,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let q = self.q_proj.forward(x_q)?;
        if !kv.merged {
            return self.attend_heads(&q, kv, mask, mode);
        }
        let fused = if mode.is_train() && self.dropout > 0.0 {
            None
        } else {
            crate::ops::attention::attention(&q, &kv.k, &kv.v, mask, self.num_heads, self.scaling)?
        };
        match fused {
            Some(ctx) => self.out_proj.forward(&ctx),
            // Not a case for the fused core (attention dropout, another mask shape).
            None => self.attend_heads(&q, &self.split_pair(&kv.k, &kv.v)?, mask, mode),
        }
    }

    /// The composed path: projected queries `q` `[batch, tq, d]` over keys and values split
    /// into heads; returns `[batch, tq, d]`.
    fn attend_heads(
        &self,
        q: &Tensor,
        kv: &KeyValue,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let (b, tq, d) = q.dims3()?;
        let q = self.split_heads(q)?;
        // Scaling the scores rather than the queries (BART scales the queries): equal up to
        // rounding, and it lets inference scale, mask and normalise in one in-place pass.
        let scores = q.matmul(&kv.k.t()?)?;
        let probs = if !mode.is_train() && fused::masked_softmax_(&scores, self.scaling, mask)? {
            scores
        } else if let Some(p) = fused_train_softmax(&scores, self.scaling, mask, mode)? {
            dropout(&p, self.dropout, mode)?
        } else {
            let scores = (scores * self.scaling)?;
            let scores = match mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            dropout(&softmax_last(&scores, mode)?, self.dropout, mode)?
        };
        let ctx = probs.matmul(&kv.v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, tq, d))?;
        self.out_proj.forward(&ctx)
    }

    /// Self- or cross-attention in one call: keys/values from `x_kv`, queries from `x_q`.
    pub fn forward(
        &self,
        x_q: &Tensor,
        x_kv: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let kv = self.key_value(x_kv)?;
        self.attend(x_q, &kv, mask, mode)
    }
}

/// The training forward's softmax as one differentiable CPU op (`None`: use candle ops).
fn fused_train_softmax(
    scores: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    mode: Mode,
) -> candle_core::Result<Option<Tensor>> {
    if !mode.is_train() {
        return Ok(None);
    }
    crate::ops::training::masked_softmax(scores, scale, mask)
}
