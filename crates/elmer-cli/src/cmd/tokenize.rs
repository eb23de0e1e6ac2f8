//! `elmer tokenize`: the ids the model sees for each input line.

use std::path::PathBuf;

use elmer::{BartTokenizer, Result};

use crate::io;

#[derive(clap::Args)]
pub struct Args {
    /// Tokenizer directory (tokenizer.json, or vocab.json + merges.txt).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// One JSON object per line: text, ids, tokens.
    #[arg(long)]
    pub json: bool,
    /// Input file, one text per line.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let tok = BartTokenizer::from_dir(&a.tokenizer)?;
    let mut out = io::Stdout::lock();
    for line in io::read_lines(a.input.as_deref())? {
        let ids = tok.encode(&line)?;
        if a.json {
            let tokens: Vec<String> = ids
                .iter()
                .map(|&i| tok.id_to_token(i).unwrap_or_default())
                .collect();
            out.line(serde_json::json!({"text": line, "ids": ids, "tokens": tokens}))?;
        } else {
            out.line(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "))?;
        }
    }
    out.flush()
}
