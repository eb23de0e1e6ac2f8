//! `elmer finetune`: exit fine-tuning on a task, then evaluation of the best checkpoint.

use std::path::PathBuf;

use candle_core::Device;
use elmer::train::Params;
use elmer::train::{tokenize_pairs, FinetuneMode, FinetuneObjective};
use elmer::train::{TrainConfig, Trainer};
use elmer::Result;

use super::eval::{evaluate, EvalOpts, TaskArgs};
use crate::io::{self, NoTokenizer};
use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Checkpoint to fine-tune from (directory or model-hub id). Default:
    /// models/elmer-small-squadqg in the working directory when it exists there, else the
    /// repository's copy (shown below).
    #[arg(long, default_value_t = io::default_model_dir())]
    pub pretrained: String,
    /// Exit to fine-tune for: soft (soft-exit loss, gold mixing 0.3), hard (deep supervision
    /// of every off-ramp) or last (last layer only).
    #[arg(long, default_value = "soft")]
    pub exit: String,
    /// Output directory: checkpoints, best/ (default: runs/squad-qg-<exit>, runs/xsum-<exit>
    /// or runs/personachat-<exit>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Peak learning rate (warm-up over the first 10 % of the steps, then linear decay).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Training pairs per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Validate (and checkpoint) every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Ignore an existing checkpoint in --out.
    #[arg(long)]
    pub no_resume: bool,
    #[command(flatten)]
    pub eval: EvalOpts,
}

pub fn run(a: &Args) -> Result<()> {
    let task = a.task.task.task();
    let mode = FinetuneMode::parse(&a.exit).map_err(|e| e.for_argument("--exit"))?;
    let (train, valid, test) = a.task.load()?;
    let device = Device::Cpu;
    let pre_dir = elmer::checkpoint::resolve_model_dir(&a.pretrained)?;
    let tok_dir = io::tokenizer_dir(&pre_dir, None, NoTokenizer::Bart)?;
    let tok = elmer::BartTokenizer::from_dir(&tok_dir)?;
    let mut params = Params::from_dir(&pre_dir, &device)?;
    if matches!(mode, FinetuneMode::Soft { .. }) && params.ensure_concat_head(a.task.seed, 0.02)? {
        tracing::info!("initialised concat_head (N(0, 0.02))");
    }
    let max_len = a.task.max_len.unwrap_or(task.max_len);
    let max_src = a
        .task
        .max_source_len
        .unwrap_or(task.max_source_len)
        .min(params.config().max_position_embeddings);
    let train_pairs = tokenize_pairs(&tok, &train, max_src, max_len)?;
    let valid_pairs = tokenize_pairs(&tok, &valid, max_src, max_len)?;
    tracing::info!(
        "{}: fine-tuning {} ({:.2}M parameters) with {} exit on {} pairs, validating on {}",
        task.name,
        pre_dir.display(),
        params.num_parameters() as f64 / 1e6,
        a.exit,
        train_pairs.len(),
        valid_pairs.len()
    );
    let cfg = params.config().clone();
    let obj = FinetuneObjective::new(
        train_pairs,
        valid_pairs,
        mode,
        a.batch_size,
        32,
        &cfg,
        &device,
    )?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", task.name, a.exit)));
    let tc = TrainConfig {
        steps: a.steps,
        lr: a.lr,
        warmup_steps: (a.steps / 10).max(1),
        grad_accum: a.grad_accum,
        seed: a.task.seed,
        eval_every: a.eval_every,
        save_every: a.eval_every,
        log_every: 10,
        out_dir: out.clone(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(params, tc)?;
    if !a.no_resume {
        let r = trainer.resume()?;
        if r > 0 {
            tracing::info!("resumed from step {r}");
        }
    }
    let bar = progress::attach_train_bar(&mut trainer, "fine-tuning");
    let summary = trainer.run(&obj)?;
    bar.finish_and_clear();
    let best = out.join("best");
    io::copy_tokenizer(&tok_dir, &best)?;
    tracing::info!(
        "best validation loss {:?}; training took {:.1}s",
        summary.state.best_eval,
        summary.state.elapsed_secs
    );
    let policy = match mode {
        FinetuneMode::Soft { .. } => "soft",
        FinetuneMode::Hard => "hard:0.5",
        FinetuneMode::Last => "last",
    };
    evaluate(&a.task, &a.eval, policy, &best, &test)
}
