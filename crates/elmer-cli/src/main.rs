//! The `elmer` command line: one argument parser for generation, tokenization, checkpoint
//! inspection, scoring, LPLM pre-training, task fine-tuning and evaluation, and export.
//!
//! Errors are one line on stderr (`error: ...`) and a non-zero exit code; usage errors come
//! from the argument parser (exit code 2). Logs and warnings go to stderr through `tracing`
//! (`RUST_LOG` honoured); progress bars are drawn on stderr only when it is a terminal.

mod alloc;
mod cmd;
mod exit_plot;
mod io;
mod logging;
mod progress;
mod tasks;
mod threads;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "elmer",
    version,
    about = "ELMER early-exit non-autoregressive text generation",
    after_help = "Logs go to stderr: info for elmer by default, -v debug (every logged training \
                  step), -vv trace; RUST_LOG, when set, replaces that filter (e.g. \
                  RUST_LOG=elmer=debug). Progress bars are drawn only when stderr is a terminal."
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, global = true, display_order = 1000)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one output per input line (stdin when no --input), in input order.
    ///
    /// Output line i answers input line i. An empty (or all-whitespace) input line is not
    /// sent to the model: it gets a warning on stderr and an empty output line (with --json,
    /// an object with empty text/ids/exit_layers and "skipped": "empty input line").
    /// A summary (outputs, exit policy, per-layer exit fractions, mean latency) goes to stderr.
    Generate(cmd::generate::Args),
    /// Print the ids the model sees (with <s> ... </s>) for each input line.
    Tokenize(cmd::tokenize::Args),
    /// Tokenizer tools: `tokenizer train` learns a vocabulary sized for the model.
    #[command(subcommand)]
    Tokenizer(cmd::tokenizer::Command),
    /// Describe a checkpoint: config, parameters per part, dtype, optional tensors.
    Inspect(cmd::inspect::Args),
    /// Score hypotheses against references: ROUGE, BLEU, METEOR, Distinct
    ///
    /// One text per line; line i of every --ref file is a reference for line i of --hyp
    /// (give --ref several times for multiple references). All files must have the same
    /// number of lines. Prints one aligned table, values in percent with 2 decimals as in
    /// papers, or with --json one object with raw values (0..1 for ROUGE/BLEU/METEOR;
    /// Distinct is already in percent, hence the `_pct` keys).
    ///
    /// Which public scorer each number matches:
    ///   ROUGE-1/2/L/Lsum F1  Google rouge-score 0.1.2 (rouge_scorer, use_stemmer=True unless
    ///                        --no-stem), mean over pairs, best reference per pair; each line
    ///                        is one sentence for Lsum, so Lsum equals L here
    ///   BLEU-1..4            pycocoevalcap 1.2 Bleu(4): corpus BLEU, closest reference length,
    ///                        whitespace tokens, case-sensitive
    ///   ROUGE-L (coco)       pycocoevalcap 1.2 Rouge: LCS F-measure with beta 1.2, mean over pairs
    ///   METEOR               pycocoevalcap METEOR 1.5 (meteor-1.5.jar -l en -norm): corpus score;
    ///                        exact + stem modules always, synonyms + paraphrases with
    ///                        --meteor-jar (the jar's own tables: then the score is the jar's),
    ///                        or separately with --meteor-synonyms/--meteor-paraphrase (without
    ///                        the tables scores are slightly lower than the jar's)
    ///   Distinct-1/2         distinct n-grams / all n-grams x 100 over all hypotheses
    ///
    /// None of the scorers runs the PTB tokenizer first; tokenize the files yourself if your
    /// reference numbers did. ROUGE as computed by files2rouge / the ROUGE-1.5.5 Perl script is
    /// NOT what this computes: expect small differences (tokenisation, stemmer) from papers that
    /// used it (e.g. ELMER's XSUM numbers).
    #[command(verbatim_doc_comment)]
    Score(cmd::score::Args),
    /// Write a model directory with freshly initialised weights (a size preset, a tokenizer).
    ///
    /// To fine-tune from scratch (`finetune --pretrained <out>`) or pre-train from it. At this
    /// CPU budget, fine-tuning a fresh model beats fine-tuning one whose short LPLM run never
    /// trained its cross-attention (see scripts/train_squad_model.sh).
    Init(cmd::init::Args),
    /// LPLM pre-training of an ELMER model (from scratch or from a checkpoint) on a text file.
    ///
    /// Resumes from --out when it holds a checkpoint (unless --no-resume). Checkpoints,
    /// best/ (lowest held-out loss, with the tokenizer) and history.json go to --out; the
    /// held-out reconstruction accuracy per exit layer before and after, the throughput and
    /// the first and last held-out LPLM loss are printed on stdout.
    Pretrain(cmd::pretrain::Args),
    /// Fine-tune on a task (--task squad|xsum|personachat), then evaluate the best checkpoint.
    ///
    /// Trains --pretrained with --exit soft (soft-exit loss, creates a concat_head when the
    /// checkpoint has none), hard (deep supervision of every off-ramp) or last on the task's
    /// train split, keeps the checkpoint with the lowest validation loss in <out>/best (with
    /// its tokenizer), resumes from --out unless --no-resume, then runs `eval` on it with the
    /// matching exit policy (soft, hard:0.5, last).
    Finetune(cmd::finetune::Args),
    /// Evaluate a checkpoint on a task's test split with the paper's metrics.
    ///
    /// Generates for the test split (--task squad|xsum|personachat), scores the post-processed
    /// outputs (repeated words collapsed, lower-cased) with the task's columns (squad: ROUGE-L,
    /// BLEU-4, METEOR, coco-caption style; xsum: ROUGE-1/2/L, rouge-score without stemming;
    /// personachat: BLEU-1/2, Distinct-1/2), measures the per-sample latency at batch 1 and
    /// prints a Markdown table with the exit-layer fractions and the paper's ELMER-Soft row.
    /// --sweep adds last layer, soft and hard exit at thresholds 0.0/0.25/0.5/0.75/1.0.
    Eval(cmd::eval::Args),
    /// Export a checkpoint as a self-contained model directory with f16 weights.
    ///
    /// Writes config.json, model.safetensors (f16, transformers layout), vocab.json and
    /// merges.txt (from the checkpoint, else from --tokenizer, else the BART tokenizer in
    /// assets/tokenizer/bart-base).
    Export(cmd::export::Args),
    /// Choose again, on a task's validation split, the generation settings a model directory
    /// records (length offset and length beam of a length head, hard-exit threshold), as
    /// `finetune` does after training; rewrites its config.json.
    Calibrate(cmd::calibrate::Args),
}

fn main() -> ExitCode {
    alloc::keep_freed_memory();
    threads::share_cores_between_local_ranks();
    elmer::limit_pool_spinning();
    let cli = Cli::parse();
    let micro_threads = match &cli.command {
        Command::Finetune(a) => threads::micro_threads(a.micro_threads, a.grad_accum),
        Command::Pretrain(a) => threads::micro_threads(a.micro_threads, a.grad_accum),
        _ => 1,
    };
    threads::single_threaded_kernels_for_micro_threads(micro_threads);
    logging::init(cli.verbose);
    let res = match &cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Tokenizer(c) => cmd::tokenizer::run(c),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Pretrain(a) => cmd::pretrain::run(a),
        Command::Finetune(a) => cmd::finetune::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
    };
    progress::clear();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not a log event: the one error line is printed whatever RUST_LOG says.
            eprintln!("error: {}", io::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
