//! The `elmer` command line: generate, tokenize, inspect, score.
//!
//! Build with `--features cli`. Errors are one line on stderr and a non-zero exit code.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::Device;
use clap::{Parser, Subcommand};
use elmer::generate::{GenerationConfig, Generator};
use elmer::tokenizer::BartTokenizer;
use elmer::{ElmerModel, Error, ExitPolicy, LoadOptions};

#[derive(Parser)]
#[command(
    name = "elmer",
    version,
    about = "ELMER early-exit non-autoregressive text generation"
)]
struct Cli {
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
    Generate {
        /// Checkpoint directory or model-hub id (hub ids need the `hub` feature).
        #[arg(long, default_value = elmer::DEFAULT_MODEL_DIR)]
        model: String,
        /// Tokenizer directory (default: the model directory's own tokenizer files).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Exit policy: last, hard:<entropy threshold>, or soft.
        #[arg(long, default_value = "last")]
        exit: String,
        /// Output slot length in tokens.
        #[arg(long, default_value_t = 64)]
        max_len: usize,
        /// Sources per model call.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// cpu, cuda or cuda:<ordinal>.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// One JSON object per line: text, ids, exit_layers, latency_ms.
        #[arg(long)]
        json: bool,
        /// Input file, one source per line.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Collapse consecutive repeated words (the authors' post-processing).
        #[arg(long)]
        collapse_repeats: bool,
    },
    /// Print the ids the model sees (with <s> ... </s>) for each input line.
    Tokenize {
        /// Tokenizer directory (tokenizer.json, or vocab.json + merges.txt).
        #[arg(long)]
        tokenizer: PathBuf,
        /// One JSON object per line: text, ids, tokens.
        #[arg(long)]
        json: bool,
        /// Input file, one text per line.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Describe a checkpoint: config, parameters per part, dtype, optional tensors.
    Inspect {
        /// Checkpoint directory or model-hub id.
        #[arg(long, default_value = elmer::DEFAULT_MODEL_DIR)]
        model: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    ///                        exact + stem modules always, synonyms/paraphrases only with
    ///                        --meteor-synonyms/--meteor-paraphrase (the jar uses all four; without
    ///                        the tables scores are slightly lower than the jar's)
    ///   Distinct-1/2         distinct n-grams / all n-grams x 100 over all hypotheses
    ///
    /// None of the scorers runs the PTB tokenizer first; tokenize the files yourself if your
    /// reference numbers did. ROUGE as computed by files2rouge / the ROUGE-1.5.5 Perl script is
    /// NOT what this computes: expect small differences (tokenisation, stemmer) from papers that
    /// used it (e.g. ELMER's XSUM numbers).
    #[command(verbatim_doc_comment)]
    Score {
        /// Hypotheses, one per line.
        #[arg(long, value_name = "FILE")]
        hyp: PathBuf,
        /// References, one per line, aligned with --hyp; repeat for multiple references.
        #[arg(long = "ref", value_name = "FILE", required = true)]
        refs: Vec<PathBuf>,
        /// Print one JSON object with raw values instead of the table.
        #[arg(long)]
        json: bool,
        /// ROUGE without Porter stemming (rouge-score use_stemmer=False).
        #[arg(long)]
        no_stem: bool,
        /// Directory with METEOR's english.synsets and english.exceptions
        /// (`unzip meteor-1.5.jar 'synonym/*'`): enables synonym matching.
        #[arg(long, value_name = "DIR")]
        meteor_synonyms: Option<PathBuf>,
        /// METEOR's paraphrase-en.gz (gzip or plain text): enables paraphrase matching.
        #[arg(long, value_name = "FILE")]
        meteor_paraphrase: Option<PathBuf>,
        /// Skip METEOR (the slowest scorer).
        #[arg(long, conflicts_with_all = ["meteor_synonyms", "meteor_paraphrase"])]
        no_meteor: bool,
    },
}

fn parse_device(s: &str) -> Result<Device, Error> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Device::new_cuda(i)?),
            _ => Err(Error::invalid_arg(
                "--device",
                format!("{s:?} is not cpu, cuda or cuda:<ordinal>"),
            )),
        },
    }
}

/// Reads input lines as UTF-8, naming the line that is not.
fn read_lines(input: Option<&Path>) -> Result<Vec<String>, Error> {
    let name = input.map_or("<stdin>".to_string(), |p| p.display().to_string());
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).map_err(|e| Error::io(p, e))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut lines = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let mut bytes = line.map_err(|e| Error::io(&name, e))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8(bytes).map_err(|_| Error::Parse {
            path: name.clone().into(),
            message: format!("line {} is not valid UTF-8", i + 1),
        })?;
        lines.push(text);
    }
    Ok(lines)
}

fn find_tokenizer(model_dir: &Path, explicit: Option<&Path>) -> Result<BartTokenizer, Error> {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => {
            let has = model_dir.join("tokenizer.json").is_file()
                || (model_dir.join("vocab.json").is_file()
                    && model_dir.join("merges.txt").is_file());
            if !has {
                return Err(Error::Tokenizer {
                    path: Some(model_dir.to_path_buf()),
                    message: "the model directory has no tokenizer files; pass --tokenizer <DIR>"
                        .into(),
                });
            }
            model_dir.to_path_buf()
        }
    };
    BartTokenizer::from_dir(dir)
}

#[allow(clippy::too_many_arguments)]
fn generate(
    model: &str,
    tokenizer: Option<&Path>,
    exit: &str,
    max_len: usize,
    batch_size: usize,
    device: &str,
    json: bool,
    input: Option<&Path>,
    collapse_repeats: bool,
) -> Result<(), Error> {
    let policy = exit
        .parse::<ExitPolicy>()
        .map_err(|e| e.for_argument("--exit"))?;
    let device = parse_device(device)?;
    let dir = elmer::checkpoint::resolve_model_dir(model)?;
    let model = ElmerModel::from_dir(&dir, &LoadOptions::on(device))?;
    let tok = find_tokenizer(&dir, tokenizer)?;
    let cfg = GenerationConfig {
        max_len,
        policy,
        batch_size,
        max_source_len: None,
        collapse_repeats,
    };
    let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
    let lines = read_lines(input)?;
    // Empty lines are not sent to the model: they get an empty output line (and a warning),
    // so output line i still answers input line i.
    let mut texts = Vec::new();
    let mut index = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            eprintln!(
                "warning: input line {} is empty; its output line is empty",
                i + 1
            );
        } else {
            index.push(i);
            texts.push(l.as_str());
        }
    }
    let outs = gen.generate(&texts)?;
    let mut by_line = vec![None; lines.len()];
    for (i, g) in index.into_iter().zip(outs) {
        by_line[i] = Some(g);
    }
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut total_ms = 0.0;
    let n = by_line.iter().flatten().count();
    for g in &by_line {
        let line = match (g, json) {
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
        writeln!(w, "{line}").map_err(|e| Error::io("<stdout>", e))?;
    }
    w.flush().map_err(|e| Error::io("<stdout>", e))?;
    eprintln!(
        "elmer: {n} outputs, exit {}; exits: {}; mean latency {:.2} ms/sample",
        gen.config().policy.name(),
        gen.stats(),
        total_ms / n.max(1) as f64
    );
    Ok(())
}

fn tokenize(tokenizer: &Path, json: bool, input: Option<&Path>) -> Result<(), Error> {
    let tok = BartTokenizer::from_dir(tokenizer)?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for line in read_lines(input)? {
        let ids = tok.encode(&line)?;
        let out = if json {
            let tokens: Vec<String> = ids
                .iter()
                .map(|&i| tok.id_to_token(i).unwrap_or_default())
                .collect();
            serde_json::json!({"text": line, "ids": ids, "tokens": tokens}).to_string()
        } else {
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        };
        writeln!(w, "{out}").map_err(|e| Error::io("<stdout>", e))?;
    }
    w.flush().map_err(|e| Error::io("<stdout>", e))
}

fn inspect(model: &str, json: bool) -> Result<(), Error> {
    let dir = elmer::checkpoint::resolve_model_dir(model)?;
    let (model, report) = ElmerModel::from_dir_with_report(&dir, &LoadOptions::default())?;
    let cfg = model.config();
    let total: usize = report.parameters.values().sum();
    let has = |n: &str| report.optional_present.iter().any(|p| p == n);
    if json {
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
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    println!("checkpoint   {}", dir.display());
    println!(
        "files        {}",
        report
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "format       {:?}, {:?} layout, stored as {:?}",
        report.format, report.layout, report.stored_dtype
    );
    println!(
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
    );
    println!(
        "activation   {}, scale_embedding {}",
        cfg.activation_function, cfg.scale_embedding
    );
    println!(
        "special ids  bos {} pad {} eos {} mask {}",
        cfg.bos_token_id,
        cfg.pad_token_id,
        cfg.eos_token_id,
        cfg.mask_token_id()
    );
    println!(
        "off-ramps    {:?}; detach copied states {}",
        cfg.elmer_offramps, cfg.elmer_detach_copied_states
    );
    for (part, n) in &report.parameters {
        println!("params       {part:<8} {n:>12}");
    }
    println!("params       {:<8} {total:>12}", "total");
    println!(
        "concat_head  {}",
        if has("concat_head.weight") {
            "present (soft exit available)"
        } else {
            "absent (soft exit unavailable)"
        }
    );
    println!(
        "logits bias  {}",
        if has("final_logits_bias") {
            "present"
        } else {
            "absent (zeros)"
        }
    );
    if report.extra.is_empty() {
        println!("extra        none");
    } else {
        println!(
            "extra        {} unused tensor(s): {}",
            report.extra.len(),
            report.extra.join(", ")
        );
    }
    Ok(())
}

/// Options of `elmer score`.
struct ScoreArgs<'a> {
    hyp: &'a Path,
    refs: &'a [PathBuf],
    json: bool,
    stem: bool,
    meteor_synonyms: Option<&'a Path>,
    meteor_paraphrase: Option<&'a Path>,
    meteor: bool,
}

fn score(a: &ScoreArgs) -> Result<(), Error> {
    use elmer::metrics::{score_all_with, Meteor};
    let hyps = read_lines(Some(a.hyp))?;
    let mut ref_files = Vec::with_capacity(a.refs.len());
    for p in a.refs {
        let lines = read_lines(Some(p))?;
        if lines.len() != hyps.len() {
            return Err(Error::invalid_arg(
                "--ref",
                format!(
                    "{} has {} but --hyp {} has {}; line i of every --ref file must be a \
                     reference for line i of --hyp",
                    p.display(),
                    count_lines(lines.len()),
                    a.hyp.display(),
                    count_lines(hyps.len())
                ),
            ));
        }
        ref_files.push(lines);
    }
    if hyps.is_empty() {
        return Err(Error::invalid_arg(
            "--hyp",
            format!("{} has no lines to score", a.hyp.display()),
        ));
    }
    let refs: Vec<Vec<&str>> = (0..hyps.len())
        .map(|i| ref_files.iter().map(|f| f[i].as_str()).collect())
        .collect();
    let mut modules = Vec::new();
    let meteor = if a.meteor {
        let mut m = Meteor::default();
        modules.extend(["exact", "stem"]);
        if let Some(d) = a.meteor_synonyms {
            m = m.with_synonym_dir(d).map_err(|e| Error::io(d, e))?;
            modules.push("synonym");
        }
        if let Some(f) = a.meteor_paraphrase {
            m = m.with_paraphrase_table(f).map_err(|e| Error::io(f, e))?;
            modules.push("paraphrase");
        }
        Some(m)
    } else {
        None
    };
    let r = score_all_with(&hyps, &refs, a.stem, meteor.as_ref())?;
    if a.json {
        let v = serde_json::json!({
            "num_pairs": r.num_pairs,
            "num_refs": a.refs.len(),
            "rouge_stemmed": r.rouge_stemmed,
            "rouge1_f1": r.rouge1_f1,
            "rouge2_f1": r.rouge2_f1,
            "rouge_l_f1": r.rouge_l_f1,
            "rouge_lsum_f1": r.rouge_lsum_f1,
            "bleu1": r.bleu[0],
            "bleu2": r.bleu[1],
            "bleu3": r.bleu[2],
            "bleu4": r.bleu[3],
            "rouge_l_coco": r.rouge_l_coco,
            "meteor": r.meteor,
            "meteor_modules": modules,
            "distinct1_pct": r.distinct1,
            "distinct2_pct": r.distinct2,
        });
        println!("{v}");
        return Ok(());
    }
    let rouge = format!(
        "rouge-score 0.1.2, {}",
        if r.rouge_stemmed {
            "stemmed"
        } else {
            "no stemming"
        }
    );
    let bleu = "pycocoevalcap Bleu(4), corpus";
    let mut rows: Vec<(String, Option<f64>, String)> = vec![
        (
            "ROUGE-1 F1".into(),
            Some(r.rouge1_f1 * 100.0),
            rouge.clone(),
        ),
        (
            "ROUGE-2 F1".into(),
            Some(r.rouge2_f1 * 100.0),
            rouge.clone(),
        ),
        (
            "ROUGE-L F1".into(),
            Some(r.rouge_l_f1 * 100.0),
            rouge.clone(),
        ),
        ("ROUGE-Lsum F1".into(), Some(r.rouge_lsum_f1 * 100.0), rouge),
    ];
    for (n, b) in r.bleu.iter().enumerate() {
        rows.push((format!("BLEU-{}", n + 1), Some(b * 100.0), bleu.into()));
    }
    rows.push((
        "ROUGE-L (coco)".into(),
        Some(r.rouge_l_coco * 100.0),
        "pycocoevalcap Rouge, beta 1.2".into(),
    ));
    rows.push((
        "METEOR".into(),
        r.meteor.map(|m| m * 100.0),
        if a.meteor {
            format!("pycocoevalcap METEOR 1.5, modules {}", modules.join("+"))
        } else {
            "skipped (--no-meteor)".into()
        },
    ));
    rows.push((
        "Distinct-1".into(),
        Some(r.distinct1),
        "distinct unigrams / all x 100".into(),
    ));
    rows.push((
        "Distinct-2".into(),
        Some(r.distinct2),
        "distinct bigrams / all x 100".into(),
    ));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut out = format!(
        "{} pairs, {} reference(s) each; values in percent\n",
        r.num_pairs,
        a.refs.len()
    );
    out.push_str(&format!("{:<width$}  {:>7}  scorer\n", "metric", "value"));
    for (name, value, scorer) in rows {
        let v = value.map_or("-".to_string(), |v| format!("{v:.2}"));
        out.push_str(&format!("{name:<width$}  {v:>7}  {scorer}\n"));
    }
    w.write_all(out.as_bytes())
        .and_then(|()| w.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

fn count_lines(n: usize) -> String {
    if n == 1 {
        "1 line".into()
    } else {
        format!("{n} lines")
    }
}

/// One line, whatever the error's message holds.
fn one_line(e: &Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match &cli.command {
        Command::Generate {
            model,
            tokenizer,
            exit,
            max_len,
            batch_size,
            device,
            json,
            input,
            collapse_repeats,
        } => generate(
            model,
            tokenizer.as_deref(),
            exit,
            *max_len,
            *batch_size,
            device,
            *json,
            input.as_deref(),
            *collapse_repeats,
        ),
        Command::Tokenize {
            tokenizer,
            json,
            input,
        } => tokenize(tokenizer, *json, input.as_deref()),
        Command::Inspect { model, json } => inspect(model, *json),
        Command::Score {
            hyp,
            refs,
            json,
            no_stem,
            meteor_synonyms,
            meteor_paraphrase,
            no_meteor,
        } => score(&ScoreArgs {
            hyp,
            refs,
            json: *json,
            stem: !*no_stem,
            meteor_synonyms: meteor_synonyms.as_deref(),
            meteor_paraphrase: meteor_paraphrase.as_deref(),
            meteor: !*no_meteor,
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
