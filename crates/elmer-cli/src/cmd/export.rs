//! `elmer export`: a checkpoint as a self-contained model directory with f16 weights.

use std::path::PathBuf;

use candle_core::Device;
use elmer::train::Params;
use elmer::{Error, Result};

use crate::io::{self, NoTokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory to export (e.g. runs/squad-soft/best).
    #[arg(value_name = "CHECKPOINT")]
    pub checkpoint: PathBuf,
    /// Output model directory (created; existing files are replaced).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Tokenizer directory with vocab.json and merges.txt (default: the checkpoint's, else
    /// the BART tokenizer in assets/tokenizer/bart-base).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let params = Params::from_dir(&a.checkpoint, &Device::Cpu)?;
    params.save_f16(&a.out)?;
    let tok_dir = io::tokenizer_dir(&a.checkpoint, a.tokenizer.as_deref(), NoTokenizer::Bart)?;
    io::copy_tokenizer(&tok_dir, &a.out)?;
    let weights = a.out.join("model.safetensors");
    let size = std::fs::metadata(&weights)
        .map_err(|e| Error::io(&weights, e))?
        .len();
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "exported {} parameters ({:.1} MB f16) to {}",
        params.num_parameters(),
        size as f64 / 1e6,
        a.out.display()
    ))?;
    out.flush()
}
