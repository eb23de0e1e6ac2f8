//! What the subcommands share: the UTF-8 line reader, stdout writing, device parsing, the
//! default model and tokenizer directories, tokenizer finding and model loading.

use std::fmt::Display;
use std::io::{BufWriter, StdoutLock, Write};
use std::path::{Path, PathBuf};

use candle_core::Device;
use elmer::{BartTokenizer, ElmerModel, Error, LoadOptions, Result};

const MODEL_DIR: &str = "models/elmer-small-squadqg";
const REPO_MODEL_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/elmer-small-squadqg"
);
const TOKENIZER_DIR: &str = "assets/tokenizer/bart-base";
const REPO_TOKENIZER_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/tokenizer/bart-base"
);

/// `rel` when it exists relative to the working directory, else the repository's copy.
fn here_or_repo(rel: &str, repo: &str) -> PathBuf {
    if Path::new(rel).exists() {
        return PathBuf::from(rel);
    }
    let repo = Path::new(repo);
    repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf())
}

/// The model used without `--model`/`--pretrained`: `models/elmer-small-squadqg` in the
/// working directory when it exists there, else the repository's copy of it.
pub fn default_model_dir() -> String {
    here_or_repo(MODEL_DIR, REPO_MODEL_DIR)
        .display()
        .to_string()
}

/// The BART tokenizer used when a checkpoint has none: `assets/tokenizer/bart-base` in the
/// working directory when it exists there, else the repository's copy.
pub fn default_tokenizer_dir() -> PathBuf {
    here_or_repo(TOKENIZER_DIR, REPO_TOKENIZER_DIR)
}

/// Input lines (a file, or stdin when `None`), read one at a time (see
/// [`elmer::data::lines`]: UTF-8, the failing line named, `\r\n` accepted).
pub fn lines(input: Option<&Path>) -> Result<Box<dyn Iterator<Item = Result<String>>>> {
    Ok(match input {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            Box::new(elmer::data::lines(
                std::io::BufReader::new(f),
                p.to_path_buf(),
            ))
        }
        None => Box::new(elmer::data::lines(std::io::stdin().lock(), "<stdin>")),
    })
}

/// All input lines (see [`lines`]).
pub fn read_lines(input: Option<&Path>) -> Result<Vec<String>> {
    lines(input)?.collect()
}

/// Buffered stdout; write errors name `<stdout>`.
pub struct Stdout(BufWriter<StdoutLock<'static>>);

impl Stdout {
    pub fn lock() -> Self {
        Stdout(BufWriter::new(std::io::stdout().lock()))
    }

    /// Writes `s` and a newline.
    pub fn line(&mut self, s: impl Display) -> Result<()> {
        writeln!(self.0, "{s}").map_err(|e| Error::io("<stdout>", e))
    }

    /// Writes `s` as is.
    pub fn write(&mut self, s: &str) -> Result<()> {
        self.0
            .write_all(s.as_bytes())
            .map_err(|e| Error::io("<stdout>", e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.0.flush().map_err(|e| Error::io("<stdout>", e))
    }
}

/// `cpu`, `cuda` or `cuda:<ordinal>` (CUDA needs the `cuda` feature).
/// The training device for `--device`: as [`parse_device`], except that a plain `cuda`
/// under a launcher (`mpirun`, `srun`) means this rank's GPU, `cuda:<local rank>`.
pub fn training_device(s: &str) -> Result<Device> {
    match (s, elmer::train::distributed::launcher_local_rank()) {
        ("cuda", Some(local)) => Ok(Device::new_cuda(local)?),
        _ => parse_device(s),
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
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

/// Whether `dir` holds BART tokenizer files (`tokenizer.json`, or `vocab.json` + `merges.txt`).
pub fn has_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file()
        || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
}

/// What to do when a model directory has no tokenizer files and none was given.
#[derive(Clone, Copy)]
pub enum NoTokenizer {
    /// Fail, asking for `--tokenizer` (generation: a wrong vocabulary gives garbage).
    Fail,
    /// Use the BART tokenizer of [`default_tokenizer_dir`] (training checkpoints of BART-
    /// vocabulary models, which `pretrain` writes without tokenizer files).
    Bart,
}

/// The tokenizer directory for `model_dir`: `explicit` when given, else `model_dir` when it
/// holds tokenizer files, else its parent when that does (the run directory: `pretrain` and
/// `finetune` keep their tokenizer there, so every `checkpoint-N/` of a run finds it), else
/// as `missing` says.
pub fn tokenizer_dir(
    model_dir: &Path,
    explicit: Option<&Path>,
    missing: NoTokenizer,
) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if has_tokenizer(model_dir) {
        return Ok(model_dir.to_path_buf());
    }
    if let Some(run_dir) = model_dir.parent().filter(|p| has_tokenizer(p)) {
        tracing::debug!(
            "{} has no tokenizer files; using its run directory's ({})",
            model_dir.display(),
            run_dir.display()
        );
        return Ok(run_dir.to_path_buf());
    }
    match missing {
        NoTokenizer::Bart => {
            let d = default_tokenizer_dir();
            tracing::debug!(
                "{} has no tokenizer files; using {}",
                model_dir.display(),
                d.display()
            );
            Ok(d)
        }
        NoTokenizer::Fail => Err(Error::Tokenizer {
            path: Some(model_dir.to_path_buf()),
            message: "the model directory has no tokenizer files; pass --tokenizer <DIR>".into(),
        }),
    }
}

/// The tokenizer of [`tokenizer_dir`].
pub fn find_tokenizer(
    model_dir: &Path,
    explicit: Option<&Path>,
    missing: NoTokenizer,
) -> Result<BartTokenizer> {
    BartTokenizer::from_dir(tokenizer_dir(model_dir, explicit, missing)?)
}

/// Copies the tokenizer files of `from` that exist into `to` (created if missing).
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).map_err(|e| Error::io(to.join(f), e))?;
        }
    }
    Ok(())
}

/// Resolves `model` (a directory, or a model-hub id with the `hub` feature) and loads it.
pub fn load_model(model: &str, opts: &LoadOptions) -> Result<(PathBuf, ElmerModel)> {
    let dir = elmer::checkpoint::resolve_model_dir(model)?;
    let m = load_dir(&dir, opts)?;
    Ok((dir, m))
}

/// `--dtype` of the inference commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DtypeArg {
    /// f32 weights and arithmetic.
    #[default]
    F32,
    /// On CPU: the dense layers and off-ramps in bf16 (AMX-BF16 tiles where present, else
    /// AVX512_BF16; refused without it),
    /// the rest in f32. On CUDA: bf16 throughout.
    Bf16,
    /// f16 weights and activations throughout: meant for CUDA; on CPU it runs through
    /// candle's f16 kernels, slower than f32 and with f16 rounding everywhere.
    F16,
    /// CPU only: the dense layers and off-ramps with int8 weights and per-row int8
    /// activations (AVX512-VNNI; refused without it), the rest in f32.
    Int8,
}

/// Load options for `device` and `--dtype`.
pub fn load_options(device: candle_core::Device, dtype: DtypeArg) -> LoadOptions {
    LoadOptions {
        dtype: match dtype {
            DtypeArg::F32 => None,
            DtypeArg::Bf16 => Some(candle_core::DType::BF16),
            DtypeArg::F16 => Some(candle_core::DType::F16),
            DtypeArg::Int8 => None,
        },
        cpu_precision: (dtype == DtypeArg::Int8).then_some(elmer::Precision::Int8),
        ..LoadOptions::on(device)
    }
}

/// Loads the checkpoint directory `dir`.
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<ElmerModel> {
    let m = ElmerModel::from_dir(dir, opts)?;
    tracing::debug!(
        "loaded {}: d_model {}, {} decoder layers",
        dir.display(),
        m.config().d_model,
        m.num_decoder_layers()
    );
    Ok(m)
}

/// One line, whatever the error's message holds: a backtrace that candle appends when
/// `RUST_BACKTRACE` is set is dropped, the remaining lines are joined with `; `.
pub fn one_line(e: &Error) -> String {
    let is_frame = |l: &str| {
        let t = l.trim_start();
        t == "stack backtrace:"
            || t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    e.to_string()
        .lines()
        .take_while(|l| !is_frame(l))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
