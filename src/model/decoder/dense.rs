//! The dense decoder passes: every layer runs on every token (last-layer exit, soft exit,
//! and the differentiable fixed-exit pass of LPLM training).

use candle_core::{DType, Tensor, D};

use super::{Decoder, EncoderSide};
use crate::config::OffRampKind;
use crate::error::{Error, Result};
use crate::model::exit::{DecodeOptions, DecoderOutput, SoftTeacher};
use crate::model::offramp::offramp_decisions;
use crate::nn::Mode;

impl Decoder {
    pub(super) fn forward_last(
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

    pub(super) fn forward_soft(
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

    pub(super) fn forward_fixed_dense(
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
}
