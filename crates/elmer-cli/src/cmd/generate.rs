//! `elmer generate`: one output per input line, in input order.

use std::path::PathBuf;

use elmer::generate::{Generation, GenerationConfig, Generator};
use elmer::{Error, ExitPolicy, LoadOptions, Result};

use crate::io::{self, NoTokenizer};
use crate::progress;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory or model-hub id (hub ids need the `hub` feature). Default:
    /// models/elmer-small-squadqg in the working directory when it exists there, else the
    /// repository's copy (the default shown is the one in use).
    #[arg(long, default_value_t = io::default_model_dir())]
    pub model: String,
    /// Tokenizer directory (default: the model directory's own tokenizer files).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Exit policy: last, hard:<entropy threshold>, or soft.
    #[arg(long, default_value = "last")]
    pub exit: String,
    /// Output slot length in tokens.
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    /// Sources per model call.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:<ordinal>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// One JSON object per line: text, ids, exit_layers, latency_ms.
    #[arg(long)]
    pub json: bool,
    /// Input file, one source per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Collapse consecutive repeated words (the authors' post-processing).
    #[arg(long)]
    pub collapse_repeats: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let policy = a
        .exit
        .parse::<ExitPolicy>()
        .map_err(|e| e.for_argument("--exit"))?;
    let device = io::parse_device(&a.device)?;
    let (dir, model) = io::load_model(&a.model, &LoadOptions::on(device))?;
    let tok = io::find_tokenizer(&dir, a.tokenizer.as_deref(), NoTokenizer::Fail)?;
    let cfg = GenerationConfig {
        max_len: a.max_len,
        policy,
        batch_size: a.batch_size,
        max_source_len: None,
        collapse_repeats: a.collapse_repeats,
    };
    let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
    let lines = io::read_lines(a.input.as_deref())?;
    // Empty lines are not sent to the model: they get an empty output line (and a warning),
    // so output line i still answers input line i.
    let mut sources = Vec::new();
    let mut index = Vec::new();
    let max_source_len = gen.max_source_len();
    let vocab = model.config().vocab_size;
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            tracing::warn!("input line {} is empty; its output line is empty", i + 1);
            continue;
        }
        let ids = tok.encode_truncated(l, max_source_len)?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::invalid_arg(
                "--tokenizer",
                format!(
                    "input line {} has token id {bad}, outside the model's vocabulary \
                     ({vocab}): the tokenizer is not the model's",
                    i + 1
                ),
            ));
        }
        index.push(i);
        sources.push(ids);
    }
    let by_line = generate_batches(&mut gen, &sources, &index, lines.len())?;

    let mut out = io::Stdout::lock();
    let mut total_ms = 0.0;
    let n = by_line.iter().flatten().count();
    for g in &by_line {
        let line = match (g, a.json) {
            (Some(g), true) => {
                total_ms += g.latency_ms;
                serde_json::json!({
                    "text": g.text,
                    "ids": g.ids,
                    "exit_layers": g.exit_layers,
                    "latency_ms": g.latency_ms,
                })
                .to_string()
            }
            (Some(g), false) => {
                total_ms += g.latency_ms;
                g.text.replace(['\n', '\r'], " ")
            }
            (None, true) => serde_json::json!({
                "text": "", "ids": [], "exit_layers": [], "latency_ms": 0.0, "skipped": "empty input line"
            })
            .to_string(),
            (None, false) => String::new(),
        };
        out.line(line)?;
    }
    out.flush()?;
    tracing::info!(
        "elmer: {n} outputs, exit {}; exits: {}; mean latency {:.2} ms/sample",
        gen.config().policy.name(),
        gen.stats(),
        total_ms / n.max(1) as f64
    );
    Ok(())
}

/// Generates for `sources` (framed ids; `index[k]` is the input line of `sources[k]`) one
/// model batch at a time, with a progress bar, and returns the outputs by input line.
///
/// The batches are the ones `Generator::generate` makes (longest first, ties in input
/// order, `batch_size` each), so the outputs, latencies and exit statistics are the same.
fn generate_batches(
    gen: &mut Generator<'_>,
    sources: &[Vec<u32>],
    index: &[usize],
    num_lines: usize,
) -> Result<Vec<Option<Generation>>> {
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by(|&a, &b| sources[b].len().cmp(&sources[a].len()).then(a.cmp(&b)));
    let bar = progress::bar(sources.len(), "generating");
    let mut by_line = vec![None; num_lines];
    for chunk in order.chunks(gen.config().batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&k| sources[k].clone()).collect();
        for (&k, g) in chunk.iter().zip(gen.generate_ids(&batch)?) {
            by_line[index[k]] = Some(g);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(by_line)
}
