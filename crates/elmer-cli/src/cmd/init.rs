//! `elmer init`: a model directory with freshly initialised weights of a size preset and a
//! given tokenizer, to fine-tune from scratch (e.g. the copy warm-up of
//! `scripts/train_squad_model.sh`) or to pre-train from.

use std::path::PathBuf;

use candle_core::Device;
use elmer::train::Params;
use elmer::{BartTokenizer, ElmerConfig, Error, Result};

use crate::io;

#[derive(clap::Args)]
pub struct Args {
    /// Output model directory (config.json, model.safetensors, tokenizer files). It must not
    /// exist yet, or be empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Model size: tiny (d 64, 2+2), small (d 192, 3+3), medium (d 256, 4+4), base (d 768, 6+6).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Tokenizer directory (e.g. one written by `elmer tokenizer train`): the model gets its
    /// vocabulary size and <mask> id, and the files are copied into --out. Default:
    /// assets/tokenizer/bart-base in the working directory when it exists there, else the
    /// repository's copy (shown below).
    #[arg(long, default_value_os_t = io::default_tokenizer_dir())]
    pub tokenizer: PathBuf,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The configuration of a size preset with the vocabulary and special ids of `tok`.
pub fn preset(name: &str, tok: &BartTokenizer) -> Result<ElmerConfig> {
    let (d, layers, heads, ffn, pos) = match name {
        "tiny" => (64, 2, 4, 256, 256),
        "small" => (192, 3, 6, 768, 256),
        "medium" => (256, 4, 4, 1024, 256),
        "base" => (768, 6, 12, 3072, 1024),
        other => {
            return Err(Error::invalid_arg(
                "--preset",
                format!("{other:?} is not tiny, small, medium or base"),
            ))
        }
    };
    Ok(ElmerConfig {
        d_model: d,
        encoder_layers: layers,
        decoder_layers: layers,
        encoder_attention_heads: heads,
        decoder_attention_heads: heads,
        encoder_ffn_dim: ffn,
        decoder_ffn_dim: ffn,
        max_position_embeddings: pos,
        vocab_size: tok.vocab_size(),
        pad_token_id: tok.pad_id(),
        bos_token_id: tok.bos_id(),
        eos_token_id: tok.eos_id(),
        decoder_start_token_id: tok.eos_id(),
        elmer_mask_token_id: Some(tok.mask_id()),
        ..ElmerConfig::default()
    })
}

pub fn run(a: &Args) -> Result<()> {
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .map_err(|e| Error::io(&a.out, e))?
            .next()
            .is_some()
    {
        return Err(Error::invalid_arg(
            "--out",
            format!("{} exists and is not empty", a.out.display()),
        ));
    }
    let tok = BartTokenizer::from_dir(&a.tokenizer)?;
    let mut params = Params::init(preset(&a.preset, &tok)?, a.seed, true, &Device::Cpu)?;
    params.ensure_concat_head(a.seed, 0.02)?;
    params.save(&a.out)?;
    io::copy_tokenizer(&a.tokenizer, &a.out)?;
    let cfg = params.config();
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "{}: {} preset, d {} {}+{} layers, vocabulary {}, {:.2}M parameters (seed {})",
        a.out.display(),
        a.preset,
        cfg.d_model,
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.vocab_size,
        params.num_parameters() as f64 / 1e6,
        a.seed
    ))?;
    out.flush()
}
