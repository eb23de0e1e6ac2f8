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

/// Parses `last`, `soft` or `hard:<threshold>`.
fn parse_exit(s: &str) -> Result<ExitPolicy, Error> {
    match s {
        "last" => Ok(ExitPolicy::LastLayer),
        "soft" => Ok(ExitPolicy::Soft),
        _ => {
            let t = s.strip_prefix("hard:").ok_or_else(|| {
                Error::invalid_arg(
                    "--exit",
                    format!("{s:?} is not last, soft or hard:<threshold>"),
                )
            })?;
            let threshold: f64 = t.parse().map_err(|_| {
                Error::invalid_arg("--exit", format!("threshold {t:?} is not a number"))
            })?;
            if !threshold.is_finite() || threshold < 0.0 {
                return Err(Error::invalid_arg(
                    "--exit",
                    format!("threshold {threshold} must be finite and >= 0"),
                ));
            }
            Ok(ExitPolicy::Hard { threshold })
        }
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
    let policy = parse_exit(exit)?;
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
                g.text.replace('\n', " ")
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
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
