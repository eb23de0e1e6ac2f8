//! `elmer tokenizer train`: a byte-level BPE vocabulary sized for the model, with BART's
//! special tokens and framing.

use std::path::PathBuf;

use elmer::{BartTokenizer, Result, TokenizerTrainConfig};

use crate::io;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE vocabulary on text files and write tokenizer.json, vocab.json
    /// and merges.txt into --out.
    ///
    /// Ids: <s>=0 <pad>=1 </s>=2 <unk>=3, the 256 byte symbols, the merges, <mask> last.
    /// Every line of every --corpus file is one training text. The directory can be given
    /// to `pretrain --tokenizer` (the model's vocabulary then has this size) and is copied
    /// into every checkpoint trained with it.
    Train(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Corpus file (UTF-8, one text per line); give it several times for several files.
    #[arg(long, required = true)]
    pub corpus: Vec<PathBuf>,
    /// Number of ids, special tokens and the 256 byte symbols included.
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Merge a pair only if it occurs at least this often.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Lowercase the corpus before training (the tokenizer does not lowercase its input).
    #[arg(long)]
    pub lowercase: bool,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: &Command) -> Result<()> {
    match c {
        Command::Train(a) => train(a),
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    let cfg = TokenizerTrainConfig {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        lowercase: a.lowercase,
    };
    let t0 = std::time::Instant::now();
    let tok = BartTokenizer::train(&a.corpus, &cfg)?;
    tok.save_dir(&a.out)?;
    let mut out = io::Stdout::lock();
    out.line(format_args!(
        "trained a {}-id byte-level BPE vocabulary on {} file(s) in {:.1}s; <mask> = {}; wrote {}",
        tok.vocab_size(),
        a.corpus.len(),
        t0.elapsed().as_secs_f64(),
        tok.mask_id(),
        a.out.display()
    ))?;
    out.flush()
}
