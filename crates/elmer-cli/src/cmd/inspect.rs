//! `elmer inspect`: config, parameters per part, dtype and optional tensors of a checkpoint.

use elmer::{ElmerModel, LoadOptions, Result};

use crate::io;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory or model-hub id. Default: models/elmer-small-squadqg in the
    /// working directory when it exists there, else the repository's copy (shown below).
    #[arg(long, default_value_t = io::default_model_dir())]
    pub model: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let dir = elmer::checkpoint::resolve_model_dir(&a.model)?;
    let (model, report) = ElmerModel::from_dir_with_report(&dir, &LoadOptions::default())?;
    let cfg = model.config();
    let total: usize = report.parameters.values().sum();
    let has = |n: &str| report.optional_present.iter().any(|p| p == n);
    let mut out = io::Stdout::lock();
    if a.json {
        let v = serde_json::json!({
            "dir": dir.display().to_string(),
            "format": format!("{:?}", report.format),
            "layout": format!("{:?}", report.layout),
            "stored_dtype": format!("{:?}", report.stored_dtype),
            "parameters": report.parameters,
            "parameters_total": total,
            "concat_head": has("concat_head.weight"),
            "final_logits_bias": has("final_logits_bias"),
            "offramps": cfg.elmer_offramps,
            "extra_tensors": report.extra,
            "config": cfg,
        });
        out.line(serde_json::to_string_pretty(&v).unwrap_or_default())?;
        return out.flush();
    }
    out.line(format_args!("checkpoint   {}", dir.display()))?;
    out.line(format_args!(
        "files        {}",
        report
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    out.line(format_args!(
        "format       {:?}, {:?} layout, stored as {:?}",
        report.format, report.layout, report.stored_dtype
    ))?;
    out.line(format_args!(
        "shape        d_model {}, encoder {} x {} heads, decoder {} x {} heads, ffn {}/{}, vocab {}, positions {}",
        cfg.d_model,
        cfg.encoder_layers,
        cfg.encoder_attention_heads,
        cfg.decoder_layers,
        cfg.decoder_attention_heads,
        cfg.encoder_ffn_dim,
        cfg.decoder_ffn_dim,
        cfg.vocab_size,
        cfg.max_position_embeddings
    ))?;
    out.line(format_args!(
        "activation   {}, scale_embedding {}",
        cfg.activation_function, cfg.scale_embedding
    ))?;
    out.line(format_args!(
        "special ids  bos {} pad {} eos {} mask {}",
        cfg.bos_token_id,
        cfg.pad_token_id,
        cfg.eos_token_id,
        cfg.mask_token_id()
    ))?;
    out.line(format_args!(
        "off-ramps    {:?}; detach copied states {}",
        cfg.elmer_offramps, cfg.elmer_detach_copied_states
    ))?;
    out.line(format_args!(
        "usage        exit policy {}, slot {}",
        cfg.elmer_exit_policy
            .as_deref()
            .unwrap_or("not recorded (generation uses last)"),
        cfg.elmer_max_len
            .map_or("not recorded (generate uses 64)".to_string(), |t| format!(
                "{t} tokens"
            ))
    ))?;
    for (part, n) in &report.parameters {
        out.line(format_args!("params       {part:<8} {n:>12}"))?;
    }
    out.line(format_args!("params       {:<8} {total:>12}", "total"))?;
    out.line(format_args!(
        "concat_head  {}",
        if has("concat_head.weight") {
            "present (soft exit available)"
        } else {
            "absent (soft exit unavailable)"
        }
    ))?;
    out.line(format_args!(
        "logits bias  {}",
        if has("final_logits_bias") {
            "present"
        } else {
            "absent (zeros)"
        }
    ))?;
    if report.extra.is_empty() {
        out.line("extra        none")?;
    } else {
        out.line(format_args!(
            "extra        {} unused tensor(s): {}",
            report.extra.len(),
            report.extra.join(", ")
        ))?;
    }
    out.flush()
}
