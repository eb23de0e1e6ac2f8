//! `elmer eval`: a checkpoint on a task's test split, with the paper's metrics and latency.

use std::path::{Path, PathBuf};

use candle_core::Device;
use elmer::data::Example;
use elmer::{BartTokenizer, ElmerModel, ExitPolicy, Result};
use elmer::{ExitStats, GenerationConfig, Generator};

use crate::io::{self, NoTokenizer};
use crate::progress;
use crate::tasks::{postprocess, Metric, Splits, Task, TaskName};

/// The task options of `finetune` and `eval`.
#[derive(clap::Args, Clone)]
pub struct TaskArgs {
    /// The task: its data readers, split, metric columns, default lengths and paper numbers.
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Task data (default: the task's data under ../shared/data). squad: a directory with the
    /// Du et al. src-dev.txt / tgt-dev.txt, or a SQuAD JSON file; xsum: a JSON-lines file of
    /// {document, summary}; personachat: a directory with ConvAI2 source.txt / target.txt;
    /// any task: a directory with {train,valid,test}.src/.tgt (one example per line).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output slot length (default: eval and calibrate use the model's recorded
    /// elmer_max_len, as generate does; otherwise, and for fine-tuning, the task's: squad 32,
    /// xsum 64, personachat 32).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Source truncation in tokens (default: the task's: squad 128, xsum 512, personachat 256).
    #[arg(long)]
    pub max_source_len: Option<usize>,
    /// Seed of the data split and of fine-tuning.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl TaskArgs {
    /// Reads the task's (train, valid, test) splits from `--data`.
    pub fn load(&self) -> Result<Splits> {
        let task = self.task.task();
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(task.default_data));
        let (train, valid, test) = (task.load)(&data, self.seed)?;
        tracing::info!(
            "{}: {} train / {} valid / {} test examples from {}",
            task.name,
            train.len(),
            valid.len(),
            test.len(),
            data.display()
        );
        Ok((train, valid, test))
    }
}

/// The evaluation options of `finetune` and `eval`.
#[derive(clap::Args, Clone)]
pub struct EvalOpts {
    /// File to write the generations to (one per line; those of the first exit policy).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Evaluate on at most this many test examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sources per model call when generating for the test split.
    #[arg(long, default_value_t = 32)]
    pub gen_batch_size: usize,
    /// Test examples timed one at a time for the batch-1 latency.
    #[arg(long, default_value_t = 30)]
    pub latency_samples: usize,
    /// Also evaluate last layer, soft (when the model has a concat_head) and hard exit at
    /// entropy thresholds 0/0.25/0.5/1/2/3/4/5 nats (those below ln(vocabulary size)).
    #[arg(long)]
    pub sweep: bool,
    /// Write the fraction of tokens exiting at each layer, per policy, as an SVG bar chart
    /// (the paper's Figure 2).
    #[arg(long)]
    pub exit_plot: Option<PathBuf>,
    /// Output length: auto (predicted when the model has a length head, else the slot),
    /// slot (the full --max-len slot, cut at the first </s>) or predicted (the model's
    /// length head sets each source's slot).
    #[arg(long, value_enum, default_value_t = LengthArg::Auto)]
    pub length: LengthArg,
    /// Tokens added to every predicted length (default: the model's recorded
    /// elmer_length_offset, chosen on validation data, else 0).
    #[arg(long, allow_hyphen_values = true)]
    pub length_offset: Option<i64>,
    /// Length beam: decode this many of the length head's most likely lengths per source
    /// and keep the most probable output (default: the model's recorded
    /// elmer_length_candidates, else 1).
    #[arg(long)]
    pub length_candidates: Option<usize>,
    /// Orphan subword pieces in the text: keep, or drop (a multi-piece word that is not a
    /// word of the source keeps only its first piece). Default: the model's recorded
    /// elmer_drop_orphan_pieces, else keep.
    #[arg(long, value_enum)]
    pub orphan_pieces: Option<OrphanPiecesArg>,
    /// Weight precision of the evaluated model on CPU: f32, bf16 (dense layers and
    /// off-ramps in bf16 on AMX-BF16 or AVX512_BF16, the rest f32) or int8 (dense layers and
    /// off-ramps in int8 on AVX512-VNNI, the rest f32).
    #[arg(long, value_enum, default_value_t = io::DtypeArg::F32)]
    pub dtype: io::DtypeArg,
}

/// `--orphan-pieces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OrphanPiecesArg {
    /// Text as decoded.
    Keep,
    /// Drop word-continuation pieces glued onto a word that is not in the source.
    Drop,
}

impl OrphanPiecesArg {
    /// `GenerationConfig::drop_orphan_pieces` for an optional `--orphan-pieces`.
    pub fn drop(arg: Option<Self>) -> Option<bool> {
        arg.map(|a| a == OrphanPiecesArg::Drop)
    }
}

/// `--length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LengthArg {
    /// Predicted when the model has a length head, else the slot.
    Auto,
    /// The full slot, cut at the first </s>.
    Slot,
    /// The model's length head sets each source's slot.
    Predicted,
}

impl LengthArg {
    pub fn target_length(self) -> elmer::TargetLength {
        match self {
            LengthArg::Auto => elmer::TargetLength::Auto,
            LengthArg::Slot => elmer::TargetLength::Slot,
            LengthArg::Predicted => elmer::TargetLength::Predicted,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Checkpoint to evaluate (directory or model-hub id). Default: models/elmer-small-squadqg
    /// in the working directory when it exists there, else the repository's copy (shown below).
    #[arg(long, default_value_t = io::default_model_dir())]
    pub model: String,
    /// Exit policy: last, hard:<entropy threshold>, or soft.
    #[arg(long, default_value = "soft")]
    pub exit: String,
    #[command(flatten)]
    pub eval: EvalOpts,
}

pub fn run(a: &Args) -> Result<()> {
    parse_exit(&a.exit)?;
    let (_, _, test) = a.task.load()?;
    let dir = elmer::checkpoint::resolve_model_dir(&a.model)?;
    evaluate(&a.task, &a.eval, &a.exit, &dir, &test)
}

fn parse_exit(s: &str) -> Result<ExitPolicy> {
    s.parse::<ExitPolicy>()
        .map_err(|e| e.for_argument("--exit"))
}

/// Generates for `sources` with `cfg`, returning post-processed texts and exit statistics.
pub fn generate_texts(
    model: &ElmerModel,
    tok: &BartTokenizer,
    sources: &[&str],
    cfg: GenerationConfig,
) -> Result<(Vec<String>, ExitStats)> {
    let mut gen = Generator::new(model, cfg)?.with_tokenizer(tok);
    let outs = gen.generate(sources)?;
    Ok((
        outs.iter().map(|g| postprocess(&g.text)).collect(),
        gen.stats().clone(),
    ))
}

/// Generates for `sources`, returning post-processed texts, exit statistics and the mean
/// per-sample latency at batch 1 over the first `latency_samples` sources.
fn generate_all(
    model: &ElmerModel,
    tok: &BartTokenizer,
    sources: &[&str],
    cfg: GenerationConfig,
    latency_samples: usize,
) -> Result<(Vec<String>, ExitStats, f64)> {
    let (texts, stats) = generate_texts(model, tok, sources, cfg.clone())?;
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
    Ok((texts, stats, ms / n.max(1) as f64))
}

/// Evaluates `model_dir` on `test` with exit `exit` (and the sweep), printing the table.
pub fn evaluate(
    t: &TaskArgs,
    opts: &EvalOpts,
    exit: &str,
    model_dir: &Path,
    test: &[Example],
) -> Result<()> {
    let task: &Task = t.task.task();
    let model = io::load_dir(model_dir, &io::load_options(Device::Cpu, opts.dtype))?;
    let tok = io::find_tokenizer(model_dir, None, NoTokenizer::Bart)?;
    let limit = opts.limit.unwrap_or(test.len()).min(test.len());
    let test = &test[..limit];
    let sources: Vec<&str> = test.iter().map(|e| e.source.as_str()).collect();
    let refs: Vec<String> = test.iter().map(|e| postprocess(&e.target)).collect();
    // As `generate` and `calibrate` do: the slot the model was fine-tuned with, unless given.
    let max_len = t
        .max_len
        .or(model.config().elmer_max_len)
        .unwrap_or(task.max_len);
    let max_src = t
        .max_source_len
        .unwrap_or(task.max_source_len)
        .min(model.max_source_len());
    let mut policies = vec![(exit.to_string(), parse_exit(exit)?)];
    if opts.sweep {
        if !matches!(policies[0].1, ExitPolicy::LastLayer) {
            policies.push(("last".into(), ExitPolicy::LastLayer));
        }
        if !matches!(policies[0].1, ExitPolicy::Soft) && model.has_concat_head() {
            policies.push(("soft".into(), ExitPolicy::Soft));
        }
        let max_entropy = (model.config().vocab_size as f64).ln();
        for t in [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0] {
            if t >= max_entropy {
                break;
            }
            policies.push((format!("hard:{t}"), ExitPolicy::Hard { threshold: t }));
        }
    }
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "{}: {} test examples, model {}",
        task.name,
        test.len(),
        model_dir.display()
    ))?;
    out.flush()?;
    // The generation settings of every row below (the model's recorded ones unless given).
    let gen_cfg = |policy: ExitPolicy| GenerationConfig {
        max_len,
        policy: Some(policy),
        batch_size: opts.gen_batch_size,
        max_source_len: Some(max_src),
        collapse_repeats: false,
        length: opts.length.target_length(),
        length_offset: opts.length_offset,
        length_candidates: opts.length_candidates,
        drop_orphan_pieces: OrphanPiecesArg::drop(opts.orphan_pieces),
        ..GenerationConfig::default()
    };
    {
        // Printed, so a table says what produced it.
        let g = Generator::new(&model, gen_cfg(ExitPolicy::LastLayer))?;
        let length = if g.predicts_length() {
            format!(
                "predicted {:+}, {} candidate(s)",
                g.length_offset(),
                g.length_candidates()
            )
        } else {
            "the slot, cut at </s>".to_string()
        };
        out.line(format_args!(
            "generation: slot {max_len}, length {length}, orphan pieces {}",
            if g.drops_orphan_pieces() {
                "dropped"
            } else {
                "kept"
            }
        ))?;
        out.flush()?;
    }
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
    let mut distinct_sources: Vec<&str> = sources.clone();
    distinct_sources.sort_unstable();
    distinct_sources.dedup();
    let mut diversity = Vec::new();
    let mut exit_rows = Vec::new();
    let bar = progress::bar(policies.len(), "evaluating");
    for (i, (name, policy)) in policies.into_iter().enumerate() {
        bar.set_message(format!("exit {name}"));
        let (hyps, stats, latency) = generate_all(
            &model,
            &tok,
            &sources,
            gen_cfg(policy),
            opts.latency_samples,
        )?;
        if i == 0 {
            if let Some(path) = &opts.output {
                let text = hyps.join("\n") + "\n";
                elmer::checkpoint::write_atomic(path, text.as_bytes())?;
            }
        }
        let scores = task.score(&hyps, &refs)?;
        let mut distinct_outputs: Vec<&str> = hyps.iter().map(String::as_str).collect();
        distinct_outputs.sort_unstable();
        distinct_outputs.dedup();
        diversity.push(format!(
            "exit {name}: {} distinct outputs for {} distinct sources ({:.1}%); Distinct-1 {:.2}, Distinct-2 {:.2}",
            distinct_outputs.len(),
            distinct_sources.len(),
            100.0 * distinct_outputs.len() as f64 / distinct_sources.len().max(1) as f64,
            elmer_metrics::distinct_1(&hyps),
            elmer_metrics::distinct_2(&hyps)
        ));
        exit_rows.push((name.clone(), stats.fractions()));
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
        tracing::info!("{row}");
        table.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    table.push(format!(
        "| paper ELMER-Soft (base size, V100 GPU) | {} | ~11.9 | |{}",
        task.paper
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" | "),
        " |".repeat(layers)
    ));
    out.line(table.join("\n"))?;
    out.line(diversity.join("\n"))?;
    if let Some(path) = &opts.exit_plot {
        let title = format!(
            "{}: fraction of generated tokens exiting at each layer ({} test examples)",
            task.name,
            test.len()
        );
        let svg = crate::exit_plot::exit_svg(&title, &exit_rows);
        elmer::checkpoint::write_atomic(path, svg.as_bytes())?;
    }
    out.flush()
}
