//! `elmer calibrate`: choose again, on a task's validation split, the generation settings a
//! model directory records in its `config.json` (the length offset and length beam of a
//! length head, the hard-exit threshold), without training.
//!
//! The same choices `elmer finetune` makes after training ([`super::validation`]): the length
//! offset (-2..=+6 tokens) with the best validation score under the model's policy, whether
//! to drop orphan subword pieces (the better validation score), then, for
//! a hard-exit model, the largest entropy threshold whose score stays within
//! `--hard-max-loss` of the last layer's (with the new offset). Useful after `export`, or to
//! try a length beam (`--length-candidates`) on a trained model.

use std::path::PathBuf;

use candle_core::Device;
use elmer::{ElmerConfig, ExitPolicy, LoadOptions, Result};

use super::eval::TaskArgs;
use super::validation::Validation;
use crate::io::{self, NoTokenizer};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Model directory whose config.json is rewritten (atomically).
    #[arg(long)]
    pub model: PathBuf,
    /// The exit policy the settings are chosen for: last, soft or hard:<t> (default: the
    /// model's recorded elmer_exit_policy, else last). With hard, the threshold is chosen
    /// again after the offset.
    #[arg(long)]
    pub exit: Option<String>,
    /// Length beam to record (elmer_length_candidates) and to choose the offset with; default
    /// the model's recorded one, else 1.
    #[arg(long)]
    pub length_candidates: Option<usize>,
    /// Hard exit: the largest threshold of 0.1..7.0 nats whose validation score stays within
    /// this fraction of the last layer's.
    #[arg(long, default_value_t = 0.05)]
    pub hard_max_loss: f64,
    /// Sources per model call when generating for the validation split.
    #[arg(long, default_value_t = 32)]
    pub gen_batch_size: usize,
}

pub fn run(a: &Args) -> Result<()> {
    let task = a.task.task.task();
    if a.length_candidates == Some(0) {
        return Err(elmer::Error::invalid_arg(
            "--length-candidates",
            "must be at least 1",
        ));
    }
    let dir = &a.model;
    let path = dir.join("config.json");
    let opts = LoadOptions::on(Device::Cpu);
    let model = io::load_dir(dir, &opts)?;
    let tok = io::find_tokenizer(dir, None, NoTokenizer::Bart)?;
    let policy = match &a.exit {
        Some(e) => e
            .parse::<ExitPolicy>()
            .map_err(|e| e.for_argument("--exit"))?,
        None => model
            .recorded_policy()
            .cloned()
            .unwrap_or(ExitPolicy::LastLayer),
    };
    if matches!(policy, ExitPolicy::Soft) && !model.has_concat_head() {
        return Err(elmer::Error::invalid_arg(
            "--exit",
            "soft exit needs a concat_head, which this model lacks",
        ));
    }
    if !model.has_length_head() && a.length_candidates.is_some_and(|k| k > 1) {
        return Err(elmer::Error::invalid_arg(
            "--length-candidates",
            "a length beam needs a length head, which this model lacks",
        ));
    }
    let candidates = a
        .length_candidates
        .or(model.config().elmer_length_candidates)
        .unwrap_or(1);
    let (_, valid, _) = a.task.load()?;
    if valid.is_empty() {
        return Err(elmer::Error::invalid_arg(
            "--data",
            "the task's validation split is empty: nothing to choose settings on",
        ));
    }
    let max_len = a
        .task
        .max_len
        .or(model.config().elmer_max_len)
        .unwrap_or(task.max_len);
    let max_src = a
        .task
        .max_source_len
        .unwrap_or(task.max_source_len)
        .min(model.max_source_len());
    let before = ElmerConfig::from_file(&path)?;
    let mut cfg = before.clone();
    let validation = Validation::new(
        task,
        &tok,
        &valid,
        max_len,
        max_src,
        a.gen_batch_size,
        None,
        Some(candidates),
        None,
        elmer::TargetLength::Auto,
    );
    let mut offset = None;
    if model.has_length_head() {
        let off = validation.choose_length_offset(&model, &policy)?;
        cfg.elmer_length_offset = Some(off);
        cfg.elmer_length_candidates = (candidates > 1).then_some(candidates);
        offset = Some(off);
    }
    cfg.elmer_drop_orphan_pieces = Some(validation.choose_orphan_pieces(&model, &policy, offset)?);
    cfg.save(&path)?;
    if let ExitPolicy::Hard { .. } = policy {
        // With the offset just recorded (the reloaded model reads it).
        let model = io::load_dir(dir, &opts)?;
        let chosen = validation.hard_policy(&model, a.hard_max_loss)?;
        cfg.elmer_exit_policy = Some(chosen);
    } else if a.exit.is_some() {
        cfg.elmer_exit_policy = Some(policy.name());
    }
    cfg.save(&path)?;
    let show = |c: &ElmerConfig| {
        format!(
            "exit {}, length offset {}, length candidates {}, drop orphan pieces {}",
            c.elmer_exit_policy.as_deref().unwrap_or("(none)"),
            c.elmer_length_offset
                .map_or("(none)".to_string(), |o| format!("{o:+}")),
            c.elmer_length_candidates.unwrap_or(1),
            c.elmer_drop_orphan_pieces.unwrap_or(false)
        )
    };
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "{}: chosen on {} validation examples of {}",
        path.display(),
        valid.len(),
        task.name
    ))?;
    out.line(format_args!("before: {}", show(&before)))?;
    out.line(format_args!("after:  {}", show(&cfg)))?;
    out.flush()
}
