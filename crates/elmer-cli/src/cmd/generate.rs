//! `elmer generate`: one output per input line, in input order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;

use elmer::{Error, ExitPolicy, Result};
use elmer::{Generation, GenerationConfig, Generator};

use super::eval::LengthArg;
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
    /// Exit policy: last, hard:<entropy threshold>, or soft. Default: the policy recorded in
    /// the model's config.json (`elmer_exit_policy`, the one it was fine-tuned for, with its
    /// threshold chosen on validation data), else last.
    #[arg(long)]
    pub exit: Option<String>,
    /// Output slot length in tokens. Default: the slot the model was fine-tuned with
    /// (`elmer_max_len` in its config.json), else 64.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Sources per model call.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:<ordinal>.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight precision: f32, bf16 (on CPU: dense layers and off-ramps in bf16 on AMX-BF16 or
    /// AVX512_BF16, the rest f32), int8 (CPU: dense layers and off-ramps in int8 on
    /// AVX512-VNNI, the rest f32) or f16 (all of it; meant for CUDA, slower on CPU).
    #[arg(long, value_enum, default_value_t = io::DtypeArg::F32)]
    pub dtype: io::DtypeArg,
    /// One JSON object per line: text, ids, exit_layers, latency_ms.
    #[arg(long)]
    pub json: bool,
    /// Input file, one source per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Collapse consecutive repeated words (the authors' post-processing).
    #[arg(long)]
    pub collapse_repeats: bool,
    /// Output length: auto (predicted when the model has a length head, else the slot),
    /// slot (the full --max-len slot, cut at the first </s>) or predicted.
    #[arg(long, value_enum, default_value_t = LengthArg::Auto)]
    pub length: LengthArg,
    /// Tokens added to every predicted length (default: the model's recorded
    /// elmer_length_offset, else 0).
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
    pub orphan_pieces: Option<super::eval::OrphanPiecesArg>,
}

pub fn run(a: &Args) -> Result<()> {
    let policy = a
        .exit
        .as_deref()
        .map(|e| {
            e.parse::<ExitPolicy>()
                .map_err(|e| e.for_argument("--exit"))
        })
        .transpose()?;
    let device = io::parse_device(&a.device)?;
    let (dir, model) = io::load_model(&a.model, &io::load_options(device, a.dtype))?;
    let tok = io::find_tokenizer(&dir, a.tokenizer.as_deref(), NoTokenizer::Fail)?;
    let cfg = GenerationConfig {
        max_len: a.max_len.or(model.config().elmer_max_len).unwrap_or(64),
        policy,
        batch_size: a.batch_size,
        collapse_repeats: a.collapse_repeats,
        length: a.length.target_length(),
        length_offset: a.length_offset,
        length_candidates: a.length_candidates,
        drop_orphan_pieces: super::eval::OrphanPiecesArg::drop(a.orphan_pieces),
        ..GenerationConfig::default()
    };
    let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
    tracing::debug!(
        "exit policy {}, slot {} tokens",
        gen.policy().name(),
        gen.config().max_len
    );
    let max_source_len = gen.max_source_len();
    // A tokenizer whose ids fit the model cannot produce an out-of-vocabulary line.
    let vocab = model.config().vocab_size;
    if let Some(top) = tok.inner().get_vocab(true).values().max() {
        if *top as usize >= vocab {
            return Err(Error::invalid_arg(
                "--tokenizer",
                format!(
                    "the tokenizer has id {top}, outside the model's vocabulary ({vocab}): \
                     it is not the model's tokenizer"
                ),
            ));
        }
    }
    // Empty lines are not sent to the model: they get an empty output line (and a warning),
    // so output line i still answers input line i. `pending` holds, in input order, the
    // lines read but not yet answered: `None` for a skipped line, `Some(n)` for line n.
    let pending = RefCell::new(VecDeque::<Option<usize>>::new());
    let mut line_no = 0usize;
    let texts = io::lines(a.input.as_deref())?.filter_map(|l| {
        line_no += 1;
        match l {
            Ok(l) if l.trim().is_empty() => {
                tracing::warn!("input line {line_no} is empty; its output line is empty");
                pending.borrow_mut().push_back(None);
                None
            }
            Ok(l) => {
                pending.borrow_mut().push_back(Some(line_no));
                Some(Ok(l))
            }
            Err(e) => Some(Err(e)),
        }
    });
    let mut out = io::Stdout::lock();
    let bar = progress::counter("generating");
    let (mut n, mut truncated, mut total_ms) = (0usize, 0usize, 0.0f64);
    let write_skipped = |out: &mut io::Stdout| -> Result<()> {
        while pending.borrow().front() == Some(&None) {
            pending.borrow_mut().pop_front();
            out.line(render(None, a.json))?;
        }
        Ok(())
    };
    // `Generator::generate_each` reads and answers the input a window at a time, so memory
    // stays flat over any number of lines and each finished window is on stdout (flushed)
    // before the next one is read.
    gen.generate_each(texts, |_, g| {
        write_skipped(&mut out)?;
        let line = pending
            .borrow_mut()
            .pop_front()
            .flatten()
            .unwrap_or_default();
        if g.source_truncated {
            truncated += 1;
            tracing::warn!(
                "input line {line} has more than {max_source_len} tokens; cut to the first \
                 {max_source_len} (the model's position table)"
            );
        }
        total_ms += g.latency_ms;
        n += 1;
        out.line(render(Some(&g), a.json))?;
        if pending.borrow().iter().all(Option::is_none) {
            out.flush()?; // the window is done
        }
        bar.inc(1);
        Ok(())
    })?;
    write_skipped(&mut out)?;
    bar.finish_and_clear();
    out.flush()?;
    if truncated > 0 {
        tracing::warn!(
            "{truncated} input line(s) were longer than {max_source_len} tokens and were cut"
        );
    }
    tracing::info!(
        "elmer: {n} outputs, exit {}; exits: {}; mean latency {:.2} ms/sample",
        gen.policy().name(),
        gen.stats(),
        total_ms / n.max(1) as f64
    );
    Ok(())
}

/// One output line: the text, or with `json` the object; `None` is a skipped empty input.
fn render(g: Option<&Generation>, json: bool) -> String {
    match (g, json) {
        (Some(g), true) => serde_json::json!({
            "text": g.text,
            "ids": g.ids,
            "exit_layers": g.exit_layers,
            "latency_ms": g.latency_ms,
        })
        .to_string(),
        (Some(g), false) => g.text.replace(['\n', '\r'], " "),
        (None, true) => serde_json::json!({
            "text": "", "ids": [], "exit_layers": [], "latency_ms": 0.0, "skipped": "empty input line"
        })
        .to_string(),
        (None, false) => String::new(),
    }
}
