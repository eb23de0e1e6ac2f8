//! `elmer pretrain`: LPLM pre-training (from scratch or from a checkpoint) on a text file.

use std::path::{Path, PathBuf};

use elmer::train::CorruptionConfig;
use elmer::train::Params;
use elmer::train::{
    read_documents, split_documents, tokenize_documents, LplmConfig, LplmObjective,
};
use elmer::train::{TrainConfig, Trainer};
use elmer::{BartTokenizer, Error, Result};

use crate::{io, progress};

/// Used when no --corpus is given (WikiText-2, never committed).
const DEFAULT_CORPUS: &str = "../shared/data/corpus/wikitext-2-raw-test.txt";

#[derive(clap::Args)]
pub struct Args {
    /// Text corpus: one document per line, or blank-line separated paragraphs; give it
    /// several times for several files (default: ../shared/data/corpus/wikitext-2-raw-test.txt
    /// when present).
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// Lowercase the corpus (for lowercased downstream tasks such as the Du et al. SQuAD split).
    #[arg(long)]
    pub lowercase: bool,
    /// Output directory (checkpoints, best/, history.json).
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model size: tiny (d 64, 2+2), small (d 192, 3+3), base (d 768, 6+6).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Start from an existing BART/ELMER checkpoint directory instead of random weights.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Tokenizer directory (e.g. one written by `elmer tokenizer train`). A model trained
    /// from scratch gets its vocabulary size and <mask> id. Default: assets/tokenizer/bart-base
    /// in the working directory when it exists there, else the repository's copy (shown below).
    #[arg(long, default_value_os_t = io::default_tokenizer_dir())]
    pub tokenizer: PathBuf,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
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
    /// Exit-layer assignments per sequence (paper: 10).
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Chunk length in tokens (with <s> and </s>).
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    /// Held-out documents.
    #[arg(long, default_value_t = 64)]
    pub valid_docs: usize,
    /// Validate every N steps.
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Keep the sentence order of the corrupted source (BART's sentence shuffling off): the
    /// NAR decoder then only has to undo the span masking, whose alignment to the source is
    /// monotonic; with shuffling a small model can stay at unigram-level loss for long.
    #[arg(long)]
    pub no_sentence_shuffle: bool,
    /// Fraction of tokens masked (in Poisson spans).
    #[arg(long, default_value_t = 0.15)]
    pub mask_ratio: f64,
    /// Poisson lambda of the masked spans.
    #[arg(long, default_value_t = 3.0)]
    pub lambda: f64,
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
}

pub fn run(a: &Args) -> Result<()> {
    let corpus: Vec<PathBuf> = match a.corpus.as_slice() {
        [] if Path::new(DEFAULT_CORPUS).is_file() => vec![PathBuf::from(DEFAULT_CORPUS)],
        [] => {
            return Err(Error::invalid_arg(
                "--corpus",
                format!("no corpus given and {DEFAULT_CORPUS} is absent"),
            ))
        }
        c => c.to_vec(),
    };
    let device = io::training_device(&a.device)?;
    // Several ranks under mpirun / srun: data-parallel (feature `mpi`, `nccl` on GPUs).
    let comm = elmer::train::distributed::from_launcher_on(&device)?;
    let main_rank = comm.rank() == 0;
    let tok = BartTokenizer::from_dir(&a.tokenizer)?;
    let mut texts = Vec::new();
    for c in &corpus {
        texts.extend(read_documents(c)?);
    }
    if a.lowercase {
        for t in &mut texts {
            *t = t.to_lowercase();
        }
    }
    let docs = tokenize_documents(&tok, &texts, a.max_len)?;
    let (train, valid) = split_documents(docs, a.valid_docs, a.seed);
    let mut params = match &a.init_from {
        Some(dir) => Params::from_dir(dir, &device)?,
        None => Params::init(super::init::preset(&a.preset, &tok)?, a.seed, true, &device)?,
    };
    params.ensure_concat_head(a.seed, 0.02)?;
    let cfg = params.config().clone();
    tracing::info!(
        "corpus {}: {} documents -> {} train / {} held-out chunks of <= {} tokens; model d {} {}+{} layers, {:.2}M parameters",
        corpus
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        texts.len(),
        train.len(),
        valid.len(),
        a.max_len,
        cfg.d_model,
        cfg.encoder_layers,
        cfg.decoder_layers,
        params.num_parameters() as f64 / 1e6
    );
    let obj = LplmObjective::new(
        train,
        valid,
        LplmConfig {
            batch_size: a.batch_size,
            k: a.k,
            corruption: CorruptionConfig {
                poisson_lambda: a.lambda,
                mask_ratio: a.mask_ratio,
                sentence_shuffle: !a.no_sentence_shuffle,
                ..CorruptionConfig::default()
            },
            eval_k: 2,
            eval_batch_size: 16,
        },
        &cfg,
        a.seed,
        &device,
    )?;
    let tc = TrainConfig {
        steps: a.steps,
        lr: a.lr,
        warmup_steps: a.warmup,
        grad_accum: a.grad_accum,
        seed: a.seed,
        eval_every: a.eval_every,
        save_every: a.save_every,
        log_every: 10,
        out_dir: a.out.clone(),
        ..TrainConfig::default()
    };
    // In the run directory, so that every checkpoint-N/ of the run finds its tokenizer.
    if main_rank {
        io::copy_tokenizer(&a.tokenizer, &a.out)?;
    }
    let mut trainer = Trainer::new(params, tc)?;
    trainer
        .set_micro_batch_threads(crate::threads::micro_threads(a.micro_threads, a.grad_accum))?;
    super::log_data_parallel(comm.as_ref(), a.batch_size, a.grad_accum);
    trainer.set_collective(comm);
    let resumed = if a.no_resume { 0 } else { trainer.resume()? };
    if resumed > 0 {
        tracing::info!("resumed from step {resumed}");
    }
    if !main_rank {
        // The other ranks only train: rank 0 validates, writes and reports.
        trainer.run_until(&obj, a.stop_at.unwrap_or(a.steps))?;
        return Ok(());
    }
    let before = obj.reconstruction_accuracy(trainer.model())?;
    let bar = progress::attach_train_bar(&mut trainer, "pre-training");
    let summary = trainer.run_until(&obj, a.stop_at.unwrap_or(a.steps))?;
    bar.finish_and_clear();
    let after = obj.reconstruction_accuracy(trainer.model())?;
    let history_path = a.out.join("history.json");
    let history = serde_json::to_string(&summary.state.history).map_err(|e| Error::Parse {
        path: history_path.clone(),
        message: e.to_string(),
    })?;
    elmer::checkpoint::write_atomic(&history_path, history.as_bytes())?;
    let best = a.out.join("best");
    if best.is_dir() {
        // So that `generate --model <out>/best` finds its tokenizer.
        io::copy_tokenizer(&a.tokenizer, &best)?;
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(i, x)| format!("L{}={:.1}%", i + 1, 100.0 * x))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let first = summary.state.initial_eval_loss.unwrap_or(f64::NAN);
    let (last_step, last) = summary
        .state
        .history
        .iter()
        .rev()
        .find_map(|e| e.eval_loss.map(|l| (e.step, l)))
        .unwrap_or((0, f64::NAN));
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "reconstruction accuracy per exit layer (held-out) before this run: {}",
        fmt(&before)
    ))?;
    out.line(format_args!(
        "reconstruction accuracy per exit layer (held-out) after this run:  {}",
        fmt(&after)
    ))?;
    out.line(format_args!(
        "training throughput: {:.0} tokens/s over {:.1}s",
        summary.tokens_per_sec, summary.state.elapsed_secs
    ))?;
    out.line(format_args!(
        "held-out LPLM loss: first {first:.4} (step 0), last {last:.4} (step {last_step})"
    ))?;
    out.flush()
}
