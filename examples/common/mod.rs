//! Shared driver of the task examples (`xsum`, `squad`, `personachat`): the same modes,
//! options and report for every task.
//!
//! Modes:
//! - `finetune`: fine-tune `--pretrained` with `--exit soft|hard|last` on the task's train
//!   split, select the best checkpoint on validation loss, then evaluate it;
//! - `eval`: generate for the test split with `--exit last|hard:<t>|soft`, write the
//!   generations (`--output`), print the paper's metrics and per-sample latency at batch 1;
//!   `--sweep` reports exit fractions and quality at hard thresholds 0.0/0.25/0.5/0.75/1.0;
//! - `generate`: one output per line of `--input` (or stdin).
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::Parser;
use elmer::data::Example;
use elmer::generate::{collapse_repeated_words, ExitStats, GenerationConfig, Generator};
use elmer::metrics::{coco_bleu, coco_rouge_l_corpus, distinct_1, distinct_2, Meteor, RougeScorer};
use elmer::train::finetune::{tokenize_pairs, FinetuneMode, FinetuneObjective};
use elmer::train::params::Params;
use elmer::train::trainer::{TrainConfig, Trainer};
use elmer::{BartTokenizer, ElmerModel, Error, ExitPolicy, LoadOptions, Result};

/// (train, valid, test) examples.
pub type Splits = (Vec<Example>, Vec<Example>, Vec<Example>);

/// Metric columns a task reports (the paper's).
#[derive(Clone, Copy, PartialEq)]
pub enum Metric {
    Rouge1,
    Rouge2,
    RougeL,
    RougeLCoco,
    Bleu(usize),
    Meteor,
    Distinct(usize),
}

impl Metric {
    fn name(&self) -> String {
        match self {
            Metric::Rouge1 => "ROUGE-1".into(),
            Metric::Rouge2 => "ROUGE-2".into(),
            Metric::RougeL => "ROUGE-L".into(),
            Metric::RougeLCoco => "ROUGE-L".into(),
            Metric::Bleu(n) => format!("BLEU-{n}"),
            Metric::Meteor => "METEOR".into(),
            Metric::Distinct(n) => format!("Distinct-{n}"),
        }
    }
}

/// A task: where its data is and how it is scored.
pub struct Task {
    pub name: &'static str,
    /// Default `--data` (read from ../shared, never committed).
    pub default_data: &'static str,
    /// Reads (train, valid, test) from `--data`.
    pub load: fn(&Path, u64) -> Result<Splits>,
    pub metrics: &'static [Metric],
    /// The paper's ELMER-Soft numbers for the same columns, for the report.
    pub paper: &'static [f64],
    /// Default source truncation (tokens).
    pub max_source_len: usize,
    /// Default output slot.
    pub max_len: usize,
}

#[derive(Parser, Clone)]
pub struct Args {
    /// finetune, eval or generate.
    #[arg(long, default_value = "eval")]
    pub mode: String,
    /// Checkpoint to fine-tune from (directory or hub id).
    #[arg(long, default_value = elmer::DEFAULT_MODEL_DIR)]
    pub pretrained: String,
    /// Checkpoint to evaluate or generate with (default: --pretrained, or the fine-tuned best).
    #[arg(long)]
    pub model: Option<String>,
    /// Task data (file or directory; default: the task's data under ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Exit: for finetune soft|hard|last; for eval/generate last|hard:<t>|soft.
    #[arg(long, default_value = "soft")]
    pub exit: String,
    /// Output slot length.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Source truncation in tokens.
    #[arg(long)]
    pub max_source_len: Option<usize>,
    /// Fine-tuning output directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File to write generations to (one per line).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Input file for generate mode (default stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Fine-tuning steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Training batch size.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Validate every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Evaluate on at most this many test examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Batch size for generation in eval.
    #[arg(long, default_value_t = 32)]
    pub gen_batch_size: usize,
    /// Examples timed one at a time for the batch-1 latency.
    #[arg(long, default_value_t = 30)]
    pub latency_samples: usize,
    /// Also sweep hard-exit thresholds 0.0/0.25/0.5/0.75/1.0.
    #[arg(long)]
    pub sweep: bool,
    /// Ignore an existing checkpoint in --out.
    #[arg(long)]
    pub no_resume: bool,
}

/// The authors' post-processing before scoring: collapse repeated words, lowercase.
pub fn postprocess(s: &str) -> String {
    collapse_repeated_words(s).to_lowercase()
}

/// Scores `hyps` against single references with the task's columns (x100 except Distinct).
pub fn score(task: &Task, hyps: &[String], refs: &[String]) -> Result<Vec<f64>> {
    let refs_multi: Vec<Vec<&str>> = refs.iter().map(|r| vec![r.as_str()]).collect();
    let need_rouge = task
        .metrics
        .iter()
        .any(|m| matches!(m, Metric::Rouge1 | Metric::Rouge2 | Metric::RougeL));
    let rouge = if need_rouge {
        Some(RougeScorer::new(false).score_corpus(hyps, &refs_multi)?)
    } else {
        None
    };
    let bleu = coco_bleu(hyps, &refs_multi)?;
    let mut out = Vec::new();
    for m in task.metrics {
        out.push(match m {
            Metric::Rouge1 => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge1.f1),
            Metric::Rouge2 => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge2.f1),
            Metric::RougeL => 100.0 * rouge.as_ref().map_or(0.0, |r| r.rouge_l.f1),
            Metric::RougeLCoco => 100.0 * coco_rouge_l_corpus(hyps, &refs_multi)?.score,
            Metric::Bleu(n) => 100.0 * bleu.corpus[n - 1],
            Metric::Meteor => {
                let h: Vec<&str> = hyps.iter().map(String::as_str).collect();
                100.0 * Meteor::default().score_corpus(&h, &refs_multi)?
            }
            Metric::Distinct(1) => distinct_1(hyps),
            Metric::Distinct(_) => distinct_2(hyps),
        });
    }
    Ok(out)
}

fn data_path(task: &Task, args: &Args) -> PathBuf {
    args.data
        .clone()
        .unwrap_or_else(|| PathBuf::from(task.default_data))
}

fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).map_err(|e| Error::io(to.join(f), e))?;
        }
    }
    Ok(())
}

fn tokenizer_for(dir: &Path) -> Result<BartTokenizer> {
    if dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file() {
        BartTokenizer::from_dir(dir)
    } else {
        BartTokenizer::from_dir("assets/tokenizer/bart-base")
    }
}

#[allow(clippy::too_many_arguments)]
/// Generates for `sources`, returning post-processed texts, exit statistics and the mean
/// per-sample latency at batch 1 over the first `latency_samples` sources.
pub fn generate_all(
    model: &ElmerModel,
    tok: &BartTokenizer,
    sources: &[&str],
    policy: ExitPolicy,
    max_len: usize,
    max_source_len: usize,
    batch_size: usize,
    latency_samples: usize,
) -> Result<(Vec<String>, ExitStats, f64)> {
    let cfg = GenerationConfig {
        max_len,
        policy: policy.clone(),
        batch_size,
        max_source_len: Some(max_source_len),
        collapse_repeats: false,
    };
    let mut gen = Generator::new(model, cfg.clone())?.with_tokenizer(tok);
    let outs = gen.generate(sources)?;
    let stats = gen.stats().clone();
    let mut one = Generator::new(
        model,
        GenerationConfig {
            batch_size: 1,
            ..cfg
        },
    )?
    .with_tokenizer(tok);
    let n = latency_samples.min(sources.len());
    let mut ms = 0.0;
    if n > 0 {
        // One warm-up call, then timed batch-1 calls.
        one.generate(&sources[..1])?;
        for s in &sources[..n] {
            ms += one.generate(&[s])?[0].latency_ms;
        }
    }
    Ok((
        outs.iter().map(|g| postprocess(&g.text)).collect(),
        stats,
        ms / n.max(1) as f64,
    ))
}

fn evaluate(task: &Task, args: &Args, model_dir: &Path, test: &[Example]) -> Result<()> {
    let model = ElmerModel::from_dir(model_dir, &LoadOptions::on(Device::Cpu))?;
    let tok = tokenizer_for(model_dir)?;
    let limit = args.limit.unwrap_or(test.len()).min(test.len());
    let test = &test[..limit];
    let sources: Vec<&str> = test.iter().map(|e| e.source.as_str()).collect();
    let refs: Vec<String> = test.iter().map(|e| postprocess(&e.target)).collect();
    let max_len = args.max_len.unwrap_or(task.max_len);
    let max_src = args
        .max_source_len
        .unwrap_or(task.max_source_len)
        .min(model.max_source_len());
    let mut policies = vec![(
        args.exit.clone(),
        args.exit
            .parse::<ExitPolicy>()
            .map_err(|e| e.for_argument("--exit"))?,
    )];
    if args.sweep {
        if !matches!(policies[0].1, ExitPolicy::LastLayer) {
            policies.push(("last".into(), ExitPolicy::LastLayer));
        }
        if !matches!(policies[0].1, ExitPolicy::Soft) && model.has_concat_head() {
            policies.push(("soft".into(), ExitPolicy::Soft));
        }
        for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
            policies.push((format!("hard:{t}"), ExitPolicy::Hard { threshold: t }));
        }
    }
    println!(
        "{}: {} test examples, model {}",
        task.name,
        test.len(),
        model_dir.display()
    );
    let cols: Vec<String> = task.metrics.iter().map(Metric::name).collect();
    let layers = model.num_decoder_layers();
    let mut table = vec![
        format!(
            "| exit | {} | ms/sample (batch 1) | mean exit layer | {} |",
            cols.join(" | "),
            (1..=layers)
                .map(|l| format!("exit L{l}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        format!("|---|{}", "---|".repeat(cols.len() + 2 + layers)),
    ];
    for (i, (name, policy)) in policies.into_iter().enumerate() {
        let (hyps, stats, latency) = generate_all(
            &model,
            &tok,
            &sources,
            policy,
            max_len,
            max_src,
            args.gen_batch_size,
            args.latency_samples,
        )?;
        if i == 0 {
            if let Some(out) = &args.output {
                let text = hyps.join("\n") + "\n";
                elmer::util::write_atomic(out, text.as_bytes())?;
            }
        }
        let scores = score(task, &hyps, &refs)?;
        let row = format!(
            "| {name} | {} | {latency:.1} | {:.2} | {} |",
            scores
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" | "),
            stats.mean_layer(),
            stats
                .fractions()
                .iter()
                .map(|f| format!("{:.1}%", 100.0 * f))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        eprintln!("{row}");
        table.push(row);
    }
    table.push(format!(
        "| paper ELMER-Soft (base size, V100 GPU) | {} | ~11.9 | |{}",
        task.paper
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" | "),
        " |".repeat(layers)
    ));
    println!("{}", table.join("\n"));
    Ok(())
}

fn finetune(
    task: &Task,
    args: &Args,
    train: Vec<Example>,
    valid: Vec<Example>,
    test: &[Example],
) -> Result<()> {
    let device = Device::Cpu;
    let pre_dir = elmer::checkpoint::resolve_model_dir(&args.pretrained)?;
    let tok = tokenizer_for(&pre_dir)?;
    let mut params = Params::from_dir(&pre_dir, &device)?;
    let mode = FinetuneMode::parse(&args.exit)?;
    if matches!(mode, FinetuneMode::Soft { .. }) && params.ensure_concat_head(args.seed, 0.02)? {
        eprintln!("initialised concat_head (N(0, 0.02))");
    }
    let max_len = args.max_len.unwrap_or(task.max_len);
    let max_src = args
        .max_source_len
        .unwrap_or(task.max_source_len)
        .min(params.config().max_position_embeddings);
    let train_pairs = tokenize_pairs(&tok, &train, max_src, max_len)?;
    let valid_pairs = tokenize_pairs(&tok, &valid, max_src, max_len)?;
    eprintln!(
        "{}: fine-tuning {} ({:.2}M parameters) with {} exit on {} pairs, validating on {}",
        task.name,
        pre_dir.display(),
        params.num_parameters() as f64 / 1e6,
        args.exit,
        train_pairs.len(),
        valid_pairs.len()
    );
    let cfg = params.config().clone();
    let obj = FinetuneObjective::new(
        train_pairs,
        valid_pairs,
        mode,
        args.batch_size,
        32,
        &cfg,
        &device,
    )?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", task.name, args.exit)));
    let tc = TrainConfig {
        steps: args.steps,
        lr: args.lr,
        warmup_steps: (args.steps / 10).max(1),
        grad_accum: args.grad_accum,
        seed: args.seed,
        eval_every: args.eval_every,
        save_every: args.eval_every,
        log_every: 10,
        out_dir: out.clone(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(params, tc)?;
    if !args.no_resume {
        let r = trainer.resume()?;
        if r > 0 {
            eprintln!("resumed from step {r}");
        }
    }
    let summary = trainer.run(&obj)?;
    let best = out.join("best");
    copy_tokenizer(&tok_dir(&pre_dir), &best)?;
    eprintln!(
        "best validation loss {:?}; training took {:.1}s",
        summary.state.best_eval, summary.state.elapsed_secs
    );
    let policy = match mode {
        FinetuneMode::Soft { .. } => "soft".to_string(),
        FinetuneMode::Hard => "hard:0.5".to_string(),
        FinetuneMode::Last => "last".to_string(),
    };
    let eval_args = Args {
        exit: policy,
        ..args.clone()
    };
    evaluate(task, &eval_args, &best, test)
}

fn tok_dir(dir: &Path) -> PathBuf {
    if dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file() {
        dir.to_path_buf()
    } else {
        PathBuf::from("assets/tokenizer/bart-base")
    }
}

fn generate_mode(task: &Task, args: &Args) -> Result<()> {
    let dir =
        elmer::checkpoint::resolve_model_dir(args.model.as_deref().unwrap_or(&args.pretrained))?;
    let model = ElmerModel::from_dir(&dir, &LoadOptions::default())?;
    let tok = tokenizer_for(&dir)?;
    let lines: Vec<String> = match &args.input {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::io(p, e))?
            .lines()
            .map(String::from)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("<stdin>", e))?,
    };
    let sources: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (hyps, stats, latency) = generate_all(
        &model,
        &tok,
        &sources,
        args.exit
            .parse::<ExitPolicy>()
            .map_err(|e| e.for_argument("--exit"))?,
        args.max_len.unwrap_or(task.max_len),
        args.max_source_len.unwrap_or(task.max_source_len),
        args.gen_batch_size,
        args.latency_samples.min(5),
    )?;
    let mut w = std::io::stdout().lock();
    for h in hyps {
        writeln!(w, "{h}").map_err(|e| Error::io("<stdout>", e))?;
    }
    eprintln!("exits: {stats}; {latency:.1} ms/sample at batch 1");
    Ok(())
}

/// Entry point of every task example.
pub fn main_for(task: Task) {
    let args = Args::parse();
    if let Err(e) = run(&task, &args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(task: &Task, args: &Args) -> Result<()> {
    match args.mode.as_str() {
        "generate" => generate_mode(task, args),
        "eval" | "finetune" => {
            let data = data_path(task, args);
            let (train, valid, test) = (task.load)(&data, args.seed)?;
            eprintln!(
                "{}: {} train / {} valid / {} test examples from {}",
                task.name,
                train.len(),
                valid.len(),
                test.len(),
                data.display()
            );
            if args.mode == "finetune" {
                finetune(task, args, train, valid, &test)
            } else {
                let dir = elmer::checkpoint::resolve_model_dir(
                    args.model.as_deref().unwrap_or(&args.pretrained),
                )?;
                evaluate(task, args, &dir, &test)
            }
        }
        other => Err(Error::invalid_arg(
            "--mode",
            format!("{other:?} is not finetune, eval or generate"),
        )),
    }
}

/// Reports skipped (malformed) lines of a dataset on stderr.
pub fn report_skipped(ds: &elmer::data::Dataset) {
    for s in ds.skipped.iter().take(10) {
        eprintln!("skipped {s}");
    }
    if ds.skipped.len() > 10 {
        eprintln!("... and {} more skipped", ds.skipped.len() - 10);
    }
}
