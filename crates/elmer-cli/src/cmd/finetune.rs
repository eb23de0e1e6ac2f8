//! `elmer finetune`: exit fine-tuning on a task, then evaluation of the best checkpoint.
//!
//! The best checkpoint is chosen on the validation split by the task's metrics (text
//! generated with the exit being fine-tuned) unless `--select-by loss`; its `config.json`
//! then records how the model is meant to be used: `elmer_exit_policy` (for hard exit, the
//! entropy threshold chosen on validation data) and `elmer_max_len` (the slot).

use std::path::{Path, PathBuf};

use candle_core::Device;
use elmer::train::Params;
use elmer::train::{tokenize_pairs, FinetuneMode, FinetuneObjective};
use elmer::train::{TrainConfig, Trainer};
use elmer::{ElmerConfig, ExitPolicy, Result};

use super::eval::{evaluate, EvalOpts, TaskArgs};
use super::validation::Validation;
use crate::io::{self, NoTokenizer};
use crate::progress;

/// `--train-slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainSlot {
    /// The slot generation uses (`--max-len` positions, all attended): the model learns to
    /// end the text with `</s>` itself.
    Generation,
    /// A slot as long as each target (the decoder mask gives the length away; what
    /// generation never sees).
    Target,
}

/// `--select-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SelectBy {
    /// The mean of the task's quality metrics on text generated for the validation split.
    Score,
    /// The validation loss.
    Loss,
}

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
    /// of every off-ramp), last (last layer only) or soft+hard (alternating soft-exit and
    /// deep-supervision steps: best/ records soft, best-hard/ the same weights with the
    /// hard-exit threshold).
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
    /// Micro-batches of a step run at the same time, each on one core with single-threaded
    /// kernels: the same steps as one after the other, faster on few cores (on 2 cores
    /// `--batch-size 16 --grad-accum 2` trains a global batch of 32 about 1.25x faster than
    /// `--batch-size 32`). Default: one per micro-batch, at most one per core (under MPI: per
    /// core of the rank), each with its share of the cores; with one core each,
    /// CANDLE_NUM_THREADS=1 unless it is set.
    #[arg(long)]
    pub micro_threads: Option<usize>,
    /// Validate (and checkpoint) every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Length-bucketed batches: each batch is a chunk of similar source lengths out of a
    /// random pool of this many batches (1: plain random batches).
    #[arg(long, default_value_t = 16)]
    pub bucket_pool: usize,
    /// Label smoothing of the training cross-entropies (0: none).
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Glancing training (GLAT): for a row the model gets w tokens wrong on, ceil(ratio * w)
    /// gold tokens replace <mask> in the decoder input and leave the loss (0: off).
    /// Generation is unchanged (all <mask>).
    #[arg(long, default_value_t = 0.0)]
    pub glance: f64,
    /// Order-agnostic cross-entropy (OAXE) in this share of the training rows: a row's
    /// target words are matched to the slot positions the model finds most likely before
    /// the loss, so a right word at a shifted position is not penalised (</s> keeps its
    /// place); the other rows keep the gold order. Counters the one-template answer of
    /// position-wise cross-entropy; costs one extra forward pass per micro-batch (0: off,
    /// 1: every row).
    #[arg(long, default_value_t = 0.0)]
    pub oaxe: f64,
    /// With --oaxe: keep each target's first and last words in place (the question word
    /// and the `?`), matching only the words between them to positions.
    #[arg(long)]
    pub oaxe_fixed_ends: bool,
    /// With --oaxe: nats charged per place a target word moves from its gold order when
    /// words are matched to positions (0: plain OAXE; large: the gold order).
    #[arg(long, default_value_t = 0.0)]
    pub oaxe_distortion: f64,
    /// Train a target-length predictor (created when the checkpoint has none) with this
    /// weight on its cross-entropy (CMLM: 0.1; 0: off). Generation then decodes each
    /// source's predicted length (see --length), so it goes with --train-slot target.
    #[arg(long, default_value_t = 0.0)]
    pub length_loss: f64,
    /// Decoder slot in training: generation (the --max-len slot generation uses, the model
    /// places </s> itself) or target (each target's own length, given away by the mask).
    #[arg(long, value_enum, default_value_t = TrainSlot::Generation)]
    pub train_slot: TrainSlot,
    /// How best/ is chosen: score (the task's ROUGE/BLEU/METEOR mean on text generated for
    /// the validation split with the exit being trained; last layer for hard) or loss.
    #[arg(long, value_enum, default_value_t = SelectBy::Score)]
    pub select_by: SelectBy,
    /// Hard exit: the entropy threshold recorded in best/config.json is the largest of
    /// 0.1..7.0 nats (below ln(vocabulary size)) whose validation score stays within this
    /// fraction of the last layer's.
    #[arg(long, default_value_t = 0.05)]
    pub hard_max_loss: f64,
    /// Stop after this many steps of the --steps schedule (a run in sittings: the
    /// learning-rate schedule stays that of --steps; rerun without it, or with a later one,
    /// to go on from the last checkpoint).
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Ignore an existing checkpoint in --out.
    #[arg(long)]
    pub no_resume: bool,
    /// Training device: cpu, cuda or cuda:<ordinal>. Under mpirun / srun, cuda means each
    /// rank's own GPU (cuda:<local rank>), and gradients go over NCCL (feature `nccl`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub eval: EvalOpts,
}

/// Copies the files of model directory `from` (config, weights, tokenizer) into a fresh `to`.
fn copy_model_dir(from: &Path, to: &Path) -> Result<()> {
    let err = |p: &Path, e| elmer::Error::io(p, e);
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| err(to, e))?;
    }
    std::fs::create_dir_all(to).map_err(|e| err(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| err(from, e))? {
        let p = entry.map_err(|e| err(from, e))?.path();
        if p.is_file() {
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, to.join(name)).map_err(|e| err(&p, e))?;
            }
        }
    }
    Ok(())
}

/// The policy whose validation text judges checkpoints of `mode`: soft exit when it trains
/// soft exit, else the last layer (hard exit's threshold is chosen afterwards).
fn selection_policy(mode: FinetuneMode) -> ExitPolicy {
    match mode {
        FinetuneMode::Soft { .. } | FinetuneMode::SoftAndHard { .. } => ExitPolicy::Soft,
        FinetuneMode::Hard | FinetuneMode::Last => ExitPolicy::LastLayer,
    }
}

/// Records the exit policy and slot in `dir/config.json`.
fn record_usage(dir: &Path, policy: &str, max_len: usize) -> Result<()> {
    let path = dir.join("config.json");
    let mut cfg = ElmerConfig::from_file(&path)?;
    cfg.elmer_exit_policy = Some(policy.to_string());
    cfg.elmer_max_len = Some(max_len);
    cfg.save(&path)
}

pub fn run(a: &Args) -> Result<()> {
    let task = a.task.task.task();
    let mode = FinetuneMode::parse(&a.exit).map_err(|e| e.for_argument("--exit"))?;
    if a.length_loss > 0.0 && a.train_slot == TrainSlot::Generation {
        return Err(elmer::Error::invalid_arg(
            "--length-loss",
            "a length predictor goes with --train-slot target (the decoder must learn to read \
             the length off the slot it is given)",
        ));
    }
    let device = io::training_device(&a.device)?;
    // Several ranks under mpirun / srun: data-parallel (feature `mpi`, `nccl` on GPUs).
    let comm = elmer::train::distributed::from_launcher_on(&device)?;
    let main_rank = comm.rank() == 0;
    let (train, valid, test) = a.task.load()?;
    let pre_dir = elmer::checkpoint::resolve_model_dir(&a.pretrained)?;
    let tok_dir = io::tokenizer_dir(&pre_dir, None, NoTokenizer::Bart)?;
    let tok = elmer::BartTokenizer::from_dir(&tok_dir)?;
    let mut params = Params::from_dir(&pre_dir, &device)?;
    if tok.vocab_size() > params.config().vocab_size {
        return Err(elmer::Error::invalid_arg(
            "--pretrained",
            format!(
                "the tokenizer in {} has {} ids but the model's vocabulary has {}: put the \
                 model's own tokenizer files (tokenizer.json or vocab.json + merges.txt) in \
                 its directory",
                tok_dir.display(),
                tok.vocab_size(),
                params.config().vocab_size
            ),
        ));
    }
    if mode.uses_soft_exit() && params.ensure_concat_head(a.task.seed, 0.02)? {
        tracing::info!("initialised concat_head (N(0, 0.02))");
    }
    if a.length_loss > 0.0 && params.ensure_length_head(a.task.seed, 0.02)? {
        tracing::info!("initialised length_head (N(0, 0.02), bias 0)");
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
    // --length-offset applies to the validation text of training too (before the offset is
    // chosen, checkpoints of a length head are judged with it).
    let validation = Validation::new(
        task,
        &tok,
        &valid,
        max_len,
        max_src,
        a.eval.gen_batch_size,
        a.eval.length_offset,
        a.eval.length_candidates,
        super::eval::OrphanPiecesArg::drop(a.eval.orphan_pieces),
        a.eval.length.target_length(),
    );
    let mut obj = FinetuneObjective::new(
        train_pairs,
        valid_pairs,
        mode,
        a.batch_size,
        32,
        &cfg,
        &device,
    )?
    .with_label_smoothing(a.label_smoothing)
    .map_err(|e| e.for_argument("--label-smoothing"))?
    .with_length_buckets(a.bucket_pool)
    .map_err(|e| e.for_argument("--bucket-pool"))?
    .with_glancing(a.glance)
    .map_err(|e| e.for_argument("--glance"))?
    .with_order_agnostic(a.oaxe)
    .map_err(|e| e.for_argument("--oaxe"))?
    .with_order_agnostic_fixed_ends(a.oaxe_fixed_ends)
    .with_order_agnostic_distortion(a.oaxe_distortion)
    .map_err(|e| e.for_argument("--oaxe-distortion"))?
    .with_length_loss(a.length_loss)
    .map_err(|e| e.for_argument("--length-loss"))?
    .with_generation_slot(match a.train_slot {
        TrainSlot::Generation => Some(max_len),
        TrainSlot::Target => None,
    })?;
    if a.select_by == SelectBy::Score {
        obj = obj.with_validation_scorer(validation.clone().scorer(selection_policy(mode)));
    }
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
    // In the run directory, so that every checkpoint-N/ of the run finds its tokenizer.
    if main_rank {
        io::copy_tokenizer(&tok_dir, &out)?;
    }
    let mut trainer = Trainer::new(params, tc)?;
    trainer
        .set_micro_batch_threads(crate::threads::micro_threads(a.micro_threads, a.grad_accum))?;
    super::log_data_parallel(comm.as_ref(), a.batch_size, a.grad_accum);
    trainer.set_collective(comm);
    if !a.no_resume {
        let r = trainer.resume()?;
        if r > 0 {
            tracing::info!("resumed from step {r}");
        }
    }
    if !main_rank {
        // The other ranks only train: rank 0 validates, writes, chooses and evaluates.
        trainer.run_until(&obj, a.stop_at.unwrap_or(a.steps))?;
        return Ok(());
    }
    let bar = progress::attach_train_bar(&mut trainer, "fine-tuning");
    let summary = trainer.run_until(&obj, a.stop_at.unwrap_or(a.steps))?;
    bar.finish_and_clear();
    let best = out.join("best");
    io::copy_tokenizer(&tok_dir, &best)?;
    tracing::info!(
        "best validation loss {:?}, best validation score {:?}; training took {:.1}s",
        summary.state.best_eval,
        summary.state.best_score,
        summary.state.elapsed_secs
    );
    if summary.state.step < a.steps {
        tracing::info!(
            "stopped at step {} of {} (--stop-at); run again to go on",
            summary.state.step,
            a.steps
        );
        return Ok(());
    }
    // A length head: the offset added to its predictions, chosen on validation data with
    // the policy best/ was selected by; then whether to drop orphan subword pieces; both
    // recorded before the threshold is chosen with them.
    {
        let model = io::load_dir(&best, &elmer::LoadOptions::on(Device::Cpu))?;
        let path = best.join("config.json");
        let mut cfg = ElmerConfig::from_file(&path)?;
        let mut offset = None;
        // (Not with --length slot: then generation never reads the head.)
        if model.has_length_head() && a.eval.length != super::eval::LengthArg::Slot {
            let off = validation.choose_length_offset(&model, &selection_policy(mode))?;
            cfg.elmer_length_offset = Some(off);
            cfg.elmer_length_candidates = a.eval.length_candidates.filter(|&k| k > 1);
            offset = Some(off);
            tracing::info!("recorded length offset {off:+} in best/config.json");
        }
        let drop = match super::eval::OrphanPiecesArg::drop(a.eval.orphan_pieces) {
            Some(d) => d,
            None => validation.choose_orphan_pieces(&model, &selection_policy(mode), offset)?,
        };
        cfg.elmer_drop_orphan_pieces = Some(drop);
        cfg.save(&path)?;
        tracing::info!("recorded drop orphan pieces {drop} in best/config.json");
    }
    let hard_policy = || -> Result<String> {
        let model = io::load_dir(&best, &elmer::LoadOptions::on(Device::Cpu))?;
        validation.hard_policy(&model, a.hard_max_loss)
    };
    let policy = match mode {
        FinetuneMode::Soft { .. } | FinetuneMode::SoftAndHard { .. } => "soft".to_string(),
        FinetuneMode::Last => "last".to_string(),
        FinetuneMode::Hard => hard_policy()?,
    };
    if matches!(mode, FinetuneMode::SoftAndHard { .. }) {
        let hard = hard_policy()?;
        // Built beside it and renamed into place, so best-hard/ is never half-written.
        let tmp = out.join(".tmp-best-hard");
        copy_model_dir(&best, &tmp)?;
        record_usage(&tmp, &hard, max_len)?;
        let dir = out.join("best-hard");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| elmer::Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| elmer::Error::io(&dir, e))?;
        tracing::info!("recorded exit policy {hard} in {}", dir.display());
    }
    record_usage(&best, &policy, max_len)?;
    tracing::info!("recorded exit policy {policy} and slot {max_len} in best/config.json");
    evaluate(&a.task, &a.eval, &policy, &best, &test)
}
