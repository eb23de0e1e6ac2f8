//! The ELMER non-autoregressive decoder (paper section 3): BART decoder layers with
//! bidirectional self-attention, cross-attention over the encoder output, an off-ramp after
//! every layer and the exit policies of [`super::exit`].
//!
//! Shapes: decoder input ids `[batch, T]` (`[<s>, <mask>, ..., <mask>]` for generation),
//! hidden states `[batch, T, d]`, encoder states `[batch, S, d]`, logits `[batch, T, vocab]`.
//!
//! Two execution paths:
//! - dense (last layer, soft exit, fixed exit in training): every layer runs on every token;
//!   a fixed exit keeps an exited token's state with `where` so gradients flow through the
//!   exit-layer prediction (the copies are detached when configured);
//! - sparse (hard exit, fixed exit at inference): each layer computes queries, cross-attention
//!   and the FFN only for the tokens still active (keys/values still come from every token),
//!   and each token's off-ramp is evaluated only while it is active (hard) or only at its exit
//!   layer (fixed). Exit decisions need the entropies on the host: one small read-back per layer.

use candle_core::{DType, Device, Tensor, D};

use super::attention::{Attention, KeyValue};
use super::embedding::Embeddings;
use super::encoder::FeedForward;
use super::exit::{DecodeOptions, DecoderOutput, ExitPolicy, SoftTeacher};
use super::nn::{dropout, LayerNorm, Linear, Mode, Weights};
use super::offramp::{entropy, offramp_decisions, OffRamps};
use crate::config::{ElmerConfig, OffRampKind};
use crate::error::{Error, Result};

/// One post-norm decoder layer: self-attention (bidirectional), cross-attention, FFN.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
    dropout: f64,
}

impl DecoderLayer {
    /// Loads `decoder.layers.{i}.*`.
    pub fn load(w: &Weights, prefix: &str, cfg: &ElmerConfig) -> Result<Self> {
        let attn = |name: &str| {
            Attention::load(
                w,
                &format!("{prefix}.{name}"),
                cfg.d_model,
                cfg.decoder_attention_heads,
                cfg.attention_dropout,
            )
        };
        Ok(Self {
            self_attn: attn("self_attn")?,
            self_attn_layer_norm: LayerNorm::load(w, &format!("{prefix}.self_attn_layer_norm"))?,
            encoder_attn: attn("encoder_attn")?,
            encoder_attn_layer_norm: LayerNorm::load(
                w,
                &format!("{prefix}.encoder_attn_layer_norm"),
            )?,
            ffn: FeedForward::load(w, prefix, cfg)?,
            final_layer_norm: LayerNorm::load(w, &format!("{prefix}.final_layer_norm"))?,
            dropout: cfg.dropout,
        })
    }

    /// The self-attention block.
    pub fn self_attn(&self) -> &Attention {
        &self.self_attn
    }

    /// The layer norm after self-attention.
    pub fn self_attn_layer_norm(&self) -> &LayerNorm {
        &self.self_attn_layer_norm
    }

    /// The cross-attention block.
    pub fn encoder_attn(&self) -> &Attention {
        &self.encoder_attn
    }

    /// The layer norm after cross-attention.
    pub fn encoder_attn_layer_norm(&self) -> &LayerNorm {
        &self.encoder_attn_layer_norm
    }

    /// The feed-forward block.
    pub fn ffn(&self) -> &FeedForward {
        &self.ffn
    }

    /// The layer norm after the feed-forward block.
    pub fn final_layer_norm(&self) -> &LayerNorm {
        &self.final_layer_norm
    }

    /// Cross-attention keys/values of the encoder output `[batch, S, d]`.
    pub fn cross_key_value(&self, encoder_hidden: &Tensor) -> candle_core::Result<KeyValue> {
        self.encoder_attn.key_value(encoder_hidden)
    }

    /// Runs the layer for the query rows `x_q` `[batch, tq, d]`, attending over all current
    /// states `x_all` `[batch, T, d]` (self) and the encoder (`cross`). Returns `[batch, tq, d]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x_q: &Tensor,
        x_all: &Tensor,
        self_mask: Option<&Tensor>,
        cross: &KeyValue,
        encoder_mask: Option<&Tensor>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let kv = self.self_attn.key_value(x_all)?;
        let h = self.self_attn.attend(x_q, &kv, self_mask, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        let x = self.self_attn_layer_norm.forward(&(x_q + h)?, mode)?;
        let h = self.encoder_attn.attend(&x, cross, encoder_mask, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        let x = self.encoder_attn_layer_norm.forward(&(x + h)?, mode)?;
        let h = self.ffn.forward(&x, mode)?;
        let h = dropout(&h, self.dropout, mode)?;
        self.final_layer_norm.forward(&(x + h)?, mode)
    }
}

/// Everything the decoder reads from the encoder side.
pub(crate) struct EncoderSide<'a> {
    /// Additive mask `[batch, 1, 1, S]` or `None` when no source position is padding.
    pub mask: Option<&'a Tensor>,
    /// Cross-attention keys/values per decoder layer.
    pub cross: &'a [KeyValue],
}

/// How the sparse path decides exits.
enum ExitRule {
    /// Exit when the off-ramp entropy is below the threshold.
    Entropy(f64),
    /// Exit layer per token, row-major `[batch * T]`, values in 1..=L.
    Schedule(Vec<u32>),
}

/// The NAR decoder with off-ramps.
#[derive(Debug, Clone)]
pub struct Decoder {
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    offramps: OffRamps,
    concat_head: Option<Linear>,
    detach_copied: bool,
    vocab_size: usize,
}

impl Decoder {
    /// Loads `decoder.*`, the off-ramps and (when present) `concat_head.weight`.
    pub fn load(w: &Weights, cfg: &ElmerConfig, shared: Tensor, output: Tensor) -> Result<Self> {
        let embeddings = Embeddings::load(w, "decoder", shared, cfg.embed_scale(), cfg.dropout)?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::load(w, &format!("decoder.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let concat_head = w
            .get_opt("concat_head.weight")
            .map(|t| Linear::from_tensors(t, None));
        Ok(Self {
            embeddings,
            layers,
            offramps: OffRamps::load(w, cfg, output)?,
            concat_head,
            detach_copied: cfg.elmer_detach_copied_states,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Number of decoder layers L.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Longest target slot the position table covers.
    pub fn max_len(&self) -> usize {
        self.embeddings.max_len()
    }

    /// The token + position embeddings of the decoder input.
    pub fn embeddings(&self) -> &Embeddings {
        &self.embeddings
    }

    /// The off-ramps.
    pub fn offramps(&self) -> &OffRamps {
        &self.offramps
    }

    /// Whether a soft-exit `concat_head` is loaded.
    pub fn has_concat_head(&self) -> bool {
        self.concat_head.is_some()
    }

    /// The soft-exit `concat_head` (`[d, 2d]`, no bias), when loaded.
    pub fn concat_head(&self) -> Option<&Linear> {
        self.concat_head.as_ref()
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// Decoder input embeddings `[batch, T, d]` of `ids`.
    pub(crate) fn embed(&self, ids: &Tensor, mode: Mode) -> Result<Tensor> {
        self.embeddings.forward(ids, "decoder_input_ids", mode)
    }

    /// Runs one NAR decoder pass with the policy in `opts`.
    pub(crate) fn forward(
        &self,
        enc: &EncoderSide,
        decoder_input_ids: &Tensor,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let h0 = self
            .embeddings
            .forward(decoder_input_ids, "decoder_input_ids", mode)?;
        match &opts.policy {
            ExitPolicy::LastLayer => self.forward_last(h0, enc, self_mask, opts, mode),
            ExitPolicy::Soft => self.forward_soft(h0, enc, self_mask, opts, mode),
            ExitPolicy::Fixed(exits) => {
                let sched = self.check_schedule(exits, &h0)?;
                if mode.is_train() || opts.output_offramp_logits {
                    self.forward_fixed_dense(h0, exits, enc, self_mask, opts, mode)
                } else {
                    self.forward_sparse(h0, enc, self_mask, ExitRule::Schedule(sched), opts)
                }
            }
            ExitPolicy::Hard { threshold } => {
                opts.policy.validate()?;
                if mode.is_train() {
                    return Err(Error::Unsupported(
                        "hard exit in training mode; train hard exit with deep supervision \
                         (LastLayer + output_offramp_logits) and pick the threshold at inference"
                            .into(),
                    ));
                }
                if opts.output_offramp_logits {
                    return Err(Error::Unsupported(
                        "per-layer off-ramp logits with hard exit (exited tokens' off-ramps are \
                         not computed); use LastLayer with output_offramp_logits"
                            .into(),
                    ));
                }
                self.forward_sparse(h0, enc, self_mask, ExitRule::Entropy(*threshold), opts)
            }
        }
    }

    fn check_schedule(&self, exits: &Tensor, h0: &Tensor) -> Result<Vec<u32>> {
        let (b, t, _) = h0.dims3()?;
        if exits.dims() != [b, t] {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!(
                    "fixed exit layers have shape {:?}, expected [{b}, {t}] (batch, target_len)",
                    exits.dims()
                ),
            ));
        }
        let flat: Vec<u32> = exits.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let l = self.num_layers() as u32;
        if let Some(bad) = flat.iter().find(|&&e| e == 0 || e > l) {
            return Err(Error::invalid_arg(
                "exit_layers",
                format!("exit layer {bad} is outside 1..={l}"),
            ));
        }
        Ok(flat)
    }

    fn layer(
        &self,
        i: usize,
        x_q: &Tensor,
        x_all: &Tensor,
        self_mask: Option<&Tensor>,
        enc: &EncoderSide,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        self.layers[i].forward(x_q, x_all, self_mask, &enc.cross[i], enc.mask, mode)
    }

    fn full_layers(b: usize, t: usize, l: usize, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::full(l as u32, (b, t), dev)?)
    }

    fn forward_last(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let n = self.num_layers();
        if opts.output_layer_hidden {
            let mut states = Vec::with_capacity(n);
            for i in 0..n {
                h = self.layer(i, &h, &h, self_mask, enc, mode)?;
                states.push(h.clone());
            }
            let ids = self.argmax_ids(n, &h.detach())?;
            let (b, t) = ids.dims2()?;
            return Ok(DecoderOutput {
                exit_layers: Self::full_layers(b, t, n, h.device())?,
                ids,
                logits: None,
                offramp_logits: None,
                layer_hidden: Some(states),
            });
        }
        let mut ramps = Vec::new();
        for i in 0..n {
            h = self.layer(i, &h, &h, self_mask, enc, mode)?;
            if opts.output_offramp_logits && i + 1 < n {
                ramps.push(self.offramps.logits(i + 1, &h)?);
            }
        }
        let (b, t, _) = h.dims3()?;
        let exit_layers = Self::full_layers(b, t, n, h.device())?;
        if !opts.output_logits && !opts.output_offramp_logits {
            // Generation: only the argmax is needed.
            let ids = self.argmax_ids(n, &h)?;
            return Ok(DecoderOutput {
                ids,
                exit_layers,
                logits: None,
                offramp_logits: None,
                layer_hidden: None,
            });
        }
        let logits = self.offramps.logits(n, &h)?;
        let ids = logits.argmax(D::Minus1)?;
        let offramp_logits = opts.output_offramp_logits.then(|| {
            ramps.push(logits.clone());
            ramps
        });
        Ok(DecoderOutput {
            ids,
            exit_layers,
            logits: opts.output_logits.then_some(logits),
            offramp_logits,
            layer_hidden: None,
        })
    }

    /// Argmax ids `[batch, T]` of the off-ramp after `layer` for states `h` `[batch, T, d]`.
    fn argmax_ids(&self, layer: usize, h: &Tensor) -> Result<Tensor> {
        let (b, t, d) = h.dims3()?;
        let (ids, _) = offramp_decisions(&self.offramps, layer, &h.reshape((b * t, d))?, false)?;
        Ok(ids.reshape((b, t))?)
    }

    fn forward_soft(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let concat = self.concat_head.as_ref().ok_or_else(|| {
            Error::Unsupported(
                "soft exit needs `concat_head.weight` [d_model, 2*d_model], which this checkpoint \
                 lacks; fine-tune with soft exit first (it initialises the head)"
                    .into(),
            )
        })?;
        let n = self.num_layers();
        // Logits are materialised only when asked for; otherwise the fed-back predictions
        // and the output need argmaxes only (fused kernel, no biased logits).
        let want_logits = opts.output_logits || opts.output_offramp_logits;
        let mut ramps = Vec::new();
        let mut states = Vec::new();
        let mut prev_logits: Option<Tensor> = None;
        for i in 0..n {
            if i > 0 {
                let pred = match prev_logits.take() {
                    Some(logits) => {
                        let pred = logits.argmax(D::Minus1)?;
                        if opts.output_offramp_logits {
                            ramps.push(logits);
                        }
                        pred
                    }
                    None => self.argmax_ids(i, &h.detach())?,
                };
                let pred = match (&opts.soft_teacher, mode.is_train()) {
                    (Some(SoftTeacher { gold, use_gold }), true) => {
                        use_gold.where_cond(&gold.to_dtype(DType::U32)?, &pred)?
                    }
                    _ => pred,
                };
                let e = self.embeddings.lookup(&pred)?;
                h = concat.forward(&Tensor::cat(&[&h, &e], D::Minus1)?)?;
            }
            h = self.layer(i, &h, &h, self_mask, enc, mode)?;
            if opts.output_layer_hidden {
                states.push(h.clone());
            }
            if want_logits {
                prev_logits = Some(self.offramps.logits(i + 1, &h)?);
            }
        }
        let (ids, logits) = match prev_logits {
            Some(logits) => (logits.argmax(D::Minus1)?, Some(logits)),
            None => (self.argmax_ids(n, &h.detach())?, None),
        };
        let (b, t) = ids.dims2()?;
        let offramp_logits = match (&logits, opts.output_offramp_logits) {
            (Some(l), true) => {
                ramps.push(l.clone());
                Some(ramps)
            }
            _ => None,
        };
        Ok(DecoderOutput {
            exit_layers: Self::full_layers(b, t, n, h.device())?,
            ids,
            logits: if opts.output_logits { logits } else { None },
            offramp_logits,
            layer_hidden: opts.output_layer_hidden.then_some(states),
        })
    }

    /// Dense fixed-exit pass: each token's state at its exit layer `[batch, T, d]`, plus the
    /// (copied) states after every layer when `keep_layers`. Differentiable; the copies are
    /// detached in training when configured.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fixed_exit_states(
        &self,
        mut h: Tensor,
        exits: &Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        keep_layers: bool,
        mode: Mode,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = self.num_layers();
        let (b, t, d) = h.dims3()?;
        let detach = self.detach_copied && mode.is_train();
        let mut exit_state: Option<Tensor> = None;
        let mut layers = Vec::new();
        for i in 0..n {
            let l = (i + 1) as u32;
            // Tokens that exited below layer l enter it as copies of their exit state,
            // detached when configured (no layer above the exit layer sends gradient back).
            let keep = exits.ge(l)?.unsqueeze(2)?.broadcast_as((b, t, d))?;
            let h_in = if detach {
                keep.where_cond(&h, &h.detach())?
            } else {
                h
            };
            let new = self.layer(i, &h_in, &h_in, self_mask, enc, mode)?;
            // Tokens with exit >= l take the new state; the others keep their copied state.
            h = keep.where_cond(&new, &h_in)?;
            // The (non-detached) state at each token's exit layer, for its prediction.
            exit_state = Some(match exit_state {
                None => new,
                Some(s) => exits
                    .eq(l)?
                    .unsqueeze(2)?
                    .broadcast_as((b, t, d))?
                    .where_cond(&new, &s)?,
            });
            if keep_layers {
                layers.push(h.clone());
            }
        }
        let state = exit_state.ok_or_else(|| Error::config("decoder_layers", "is zero"))?;
        Ok((state, layers))
    }

    fn forward_fixed_dense(
        &self,
        h: Tensor,
        exits: &Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        opts: &DecodeOptions,
        mode: Mode,
    ) -> Result<DecoderOutput> {
        let n = self.num_layers();
        let (b, t, _) = h.dims3()?;
        let exits = exits.to_dtype(DType::U32)?.to_device(h.device())?;
        let (state, layers) =
            self.fixed_exit_states(h, &exits, enc, self_mask, opts.output_offramp_logits, mode)?;
        let ramps = layers
            .iter()
            .enumerate()
            .map(|(i, h)| self.offramps.logits(i + 1, h))
            .collect::<Result<Vec<_>>>()?;
        let logits = match self.offramps.kind() {
            OffRampKind::Shared => self.offramps.logits(1, &state)?,
            OffRampKind::PerLayer => {
                let mut acc: Option<Tensor> = None;
                for l in 1..=n {
                    let lg = self.offramps.logits(l, &state)?;
                    let v = lg.dim(D::Minus1)?;
                    acc = Some(match acc {
                        None => lg,
                        Some(a) => exits
                            .eq(l as u32)?
                            .unsqueeze(2)?
                            .broadcast_as((b, t, v))?
                            .where_cond(&lg, &a)?,
                    });
                }
                acc.ok_or_else(|| Error::config("decoder_layers", "is zero"))?
            }
        };
        let ids = logits.argmax(D::Minus1)?;
        Ok(DecoderOutput {
            ids,
            exit_layers: exits,
            logits: opts.output_logits.then_some(logits),
            offramp_logits: opts.output_offramp_logits.then_some(ramps),
            layer_hidden: None,
        })
    }

    /// Early exit computing only what active tokens need.
    fn forward_sparse(
        &self,
        mut h: Tensor,
        enc: &EncoderSide,
        self_mask: Option<&Tensor>,
        rule: ExitRule,
        opts: &DecodeOptions,
    ) -> Result<DecoderOutput> {
        let mode = Mode::Eval;
        let n = self.num_layers();
        let (b, t, d) = h.dims3()?;
        let dev = h.device().clone();
        let mut active: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let mut ids = vec![0u32; b * t];
        let mut exits = vec![0u32; b * t];
        let mut logits_out = if opts.output_logits {
            Some(Tensor::zeros((b * t, self.vocab_size), h.dtype(), &dev)?)
        } else {
            None
        };
        for i in 0..n {
            let layer = i + 1;
            let n_active: usize = active.iter().map(Vec::len).sum();
            if n_active == 0 {
                break;
            }
            // Destination rows (flat index into [b*t]) of the active tokens, in order.
            let dst: Vec<u32> = active
                .iter()
                .enumerate()
                .flat_map(|(bi, row)| row.iter().map(move |&p| (bi * t) as u32 + p))
                .collect();
            let rows = if n_active == b * t {
                h = self.layer(i, &h, &h, self_mask, enc, mode)?;
                h.reshape((b * t, d))?
            } else {
                let a_max = active.iter().map(Vec::len).max().unwrap_or(0);
                let mut q_idx = Vec::with_capacity(b * a_max);
                let mut sel = Vec::with_capacity(n_active);
                for (bi, row) in active.iter().enumerate() {
                    let filler = row.first().copied().unwrap_or(0);
                    for j in 0..a_max {
                        let p = row.get(j).copied().unwrap_or(filler);
                        q_idx.push((bi * t) as u32 + p);
                        if j < row.len() {
                            sel.push((bi * a_max + j) as u32);
                        }
                    }
                }
                let h_flat = h.reshape((b * t, d))?;
                let q_idx = Tensor::from_vec(q_idx, b * a_max, &dev)?;
                let x_q = h_flat.index_select(&q_idx, 0)?.reshape((b, a_max, d))?;
                let out = self.layer(i, &x_q, &h, self_mask, enc, mode)?;
                let out = out.reshape((b * a_max, d))?;
                let rows = if sel.len() == b * a_max {
                    out
                } else {
                    out.index_select(&Tensor::from_vec(sel, n_active, &dev)?, 0)?
                };
                let dst_t = Tensor::from_vec(dst.clone(), (n_active, 1), &dev)?
                    .broadcast_as((n_active, d))?
                    .contiguous()?;
                h = h_flat.scatter(&dst_t, &rows, 0)?.reshape((b, t, d))?;
                rows
            };
            // Which active rows exit here, and their off-ramp logits.
            let last = layer == n;
            let (exiting, logits, row_ids): (Vec<usize>, Option<Tensor>, Vec<u32>) = match &rule {
                ExitRule::Entropy(th) if logits_out.is_none() => {
                    let (am, ent) = offramp_decisions(&self.offramps, layer, &rows, !last)?;
                    let am: Vec<u32> = am.to_vec1()?;
                    let exiting: Vec<usize> = match ent {
                        Some(ent) if !last => {
                            let ent: Vec<f32> = ent.to_vec1()?;
                            (0..n_active).filter(|&k| (ent[k] as f64) < *th).collect()
                        }
                        _ => (0..n_active).collect(),
                    };
                    let ids_k = exiting.iter().map(|&k| am[k]).collect();
                    (exiting, None, ids_k)
                }
                ExitRule::Entropy(th) => {
                    let lg = self.offramps.logits(layer, &rows)?;
                    let am: Vec<u32> = lg.argmax(D::Minus1)?.to_vec1()?;
                    let exiting: Vec<usize> = if last {
                        (0..n_active).collect()
                    } else {
                        let ent: Vec<f32> = entropy(&lg)?.to_vec1()?;
                        (0..n_active).filter(|&k| (ent[k] as f64) < *th).collect()
                    };
                    let ids_k = exiting.iter().map(|&k| am[k]).collect();
                    let lg = if exiting.is_empty() {
                        None
                    } else if exiting.len() == n_active {
                        Some(lg)
                    } else if logits_out.is_some() {
                        let idx: Vec<u32> = exiting.iter().map(|&k| k as u32).collect();
                        let idx = Tensor::from_vec(idx, exiting.len(), &dev)?;
                        Some(lg.index_select(&idx, 0)?)
                    } else {
                        None
                    };
                    (exiting, lg, ids_k)
                }
                ExitRule::Schedule(s) if logits_out.is_none() => {
                    // Ids are read off after the last layer (below): an exited token's row of
                    // `h` keeps its exit-layer state, and nothing above reads its id.
                    let exiting: Vec<usize> = (0..n_active)
                        .filter(|&k| last || s[dst[k] as usize] as usize == layer)
                        .collect();
                    (exiting, None, Vec::new())
                }
                ExitRule::Schedule(s) => {
                    let exiting: Vec<usize> = (0..n_active)
                        .filter(|&k| last || s[dst[k] as usize] as usize == layer)
                        .collect();
                    if exiting.is_empty() {
                        (exiting, None, Vec::new())
                    } else {
                        let sub = if exiting.len() == n_active {
                            rows.clone()
                        } else {
                            let idx: Vec<u32> = exiting.iter().map(|&k| k as u32).collect();
                            let idx = Tensor::from_vec(idx, exiting.len(), &dev)?;
                            rows.index_select(&idx, 0)?
                        };
                        if logits_out.is_none() {
                            let (am, _) = offramp_decisions(&self.offramps, layer, &sub, false)?;
                            (exiting, None, am.to_vec1()?)
                        } else {
                            let lg = self.offramps.logits(layer, &sub)?;
                            let am: Vec<u32> = lg.argmax(D::Minus1)?.to_vec1()?;
                            (exiting, Some(lg), am)
                        }
                    }
                }
            };
            if exiting.is_empty() {
                continue;
            }
            let mut gone = vec![false; b * t];
            for (j, &k) in exiting.iter().enumerate() {
                let flat = dst[k] as usize;
                if let Some(&id) = row_ids.get(j) {
                    ids[flat] = id;
                }
                exits[flat] = layer as u32;
                gone[flat] = true;
            }
            if let (Some(out), Some(lg)) = (logits_out.as_mut(), logits) {
                let v = self.vocab_size;
                let rows_dst: Vec<u32> = exiting.iter().map(|&k| dst[k]).collect();
                let m = rows_dst.len();
                let idx = Tensor::from_vec(rows_dst, (m, 1), &dev)?
                    .broadcast_as((m, v))?
                    .contiguous()?;
                *out = out.scatter(&idx, &lg.contiguous()?, 0)?;
            }
            for (bi, row) in active.iter_mut().enumerate() {
                row.retain(|&p| !gone[bi * t + p as usize]);
            }
        }
        if matches!(rule, ExitRule::Schedule(_)) && logits_out.is_none() {
            // Deferred off-ramps of a fixed schedule: one vocabulary pass over every token's
            // exit-layer state (shared off-ramp), or one per exit layer (per-layer off-ramps),
            // instead of one pass per layer that has exiting tokens.
            let h_flat = h.reshape((b * t, d))?;
            match self.offramps.kind() {
                OffRampKind::Shared => {
                    let (am, _) = offramp_decisions(&self.offramps, n, &h_flat, false)?;
                    ids = am.to_vec1()?;
                }
                OffRampKind::PerLayer => {
                    for layer in 1..=n {
                        let rows: Vec<u32> = (0..b * t)
                            .filter(|&f| exits[f] as usize == layer)
                            .map(|f| f as u32)
                            .collect();
                        if rows.is_empty() {
                            continue;
                        }
                        let idx = Tensor::from_vec(rows.clone(), rows.len(), &dev)?;
                        let sub = h_flat.index_select(&idx, 0)?;
                        let (am, _) = offramp_decisions(&self.offramps, layer, &sub, false)?;
                        for (&f, id) in rows.iter().zip(am.to_vec1::<u32>()?) {
                            ids[f as usize] = id;
                        }
                    }
                }
            }
        }
        Ok(DecoderOutput {
            ids: Tensor::from_vec(ids, (b, t), &dev)?,
            exit_layers: Tensor::from_vec(exits, (b, t), &dev)?,
            logits: match logits_out {
                Some(l) => Some(l.reshape((b, t, self.vocab_size))?),
                None => None,
            },
            offramp_logits: None,
            layer_hidden: None,
        })
    }
}
