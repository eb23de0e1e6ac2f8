//! The tensor names and shapes an ELMER model reads ([`expected_tensors`]), in the crate's
//! canonical naming: the BART body without the `model.` prefix (`shared.weight`,
//! `encoder.layers.0.fc1.weight`, ...), head tensors with theirs (`final_logits_bias`,
//! `lm_head.weight`, `concat_head.weight` `[d, 2d]`, `offramps.{i}.{weight,bias}`,
//! `length_head.{weight,bias}` `[max_position_embeddings + 1, d]` / `[.. + 1]`).

use crate::config::{ElmerConfig, OffRampKind};

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

/// Every tensor an ELMER model with `cfg` reads, with shapes. `concat_head.weight`,
/// `length_head.{weight,bias}` and `final_logits_bias` are optional; per-layer off-ramps are required when configured.
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
    // Optional target-length predictor (classes 0..=max target length).
    let lengths = cfg.max_position_embeddings + 1;
    out.push(spec(
        "length_head.weight".into(),
        vec![lengths, d],
        Weight,
        false,
    ));
    out.push(spec("length_head.bias".into(), vec![lengths], Bias, false));
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
