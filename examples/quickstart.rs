//! Quickstart: questions for a few sentences from the small ELMER model that ships with the
//! crate, `models/elmer-small-squadqg`, run with the exit policy recorded in its config (hard
//! exit at the entropy threshold chosen on validation data, each source's slot as long as its
//! predicted length), then with soft exit and with the plain last layer for comparison.
//! Prints every question with the exit layer of each token and the per-sample latency at
//! batch 1. No download needed.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- path/to/model [path/to/other-model ...]
//! ```

use elmer::{BartTokenizer, ElmerModel, ExitPolicy, LoadOptions};
use elmer::{GenerationConfig, Generator};

/// Sentences in the form of the Du et al. SQuAD split (lowercased, PTB tokens).
const SENTENCES: &[&str] = &[
    "the eiffel tower was completed in 1889 and was the tallest man-made structure in the world for 41 years .",
    "oxygen is a chemical element with symbol o and atomic number 8 .",
    "the university of notre dame was founded in 1842 by father edward sorin .",
    "beyonce released her debut album , dangerously in love , in 2003 .",
    "the amazon river flows through brazil , peru and colombia before reaching the atlantic ocean .",
];

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/elmer-small-squadqg");

fn run(dir: &str, policy: Option<ExitPolicy>) -> elmer::Result<()> {
    let model = ElmerModel::from_dir(dir, &LoadOptions::default())?;
    let tok = BartTokenizer::from_dir(dir)?;
    let cfg = GenerationConfig {
        max_len: model.config().elmer_max_len.unwrap_or(32),
        policy, // None: the model's recorded policy
        batch_size: 1,
        collapse_repeats: true, // the authors' post-processing
        ..GenerationConfig::default()
    };
    // Warm-up so the timings below are steady.
    Generator::new(&model, cfg.clone())?
        .with_tokenizer(&tok)
        .generate(&SENTENCES[..1])?;
    let mut gen = Generator::new(&model, cfg)?.with_tokenizer(&tok);
    let outs = gen.generate(SENTENCES)?;
    println!(
        "\n{dir}\n  exit {} ({} decoder layers, exit layers counted from 1):",
        gen.policy().name(),
        model.num_decoder_layers()
    );
    for (s, g) in SENTENCES.iter().zip(&outs) {
        println!(
            "  {s}\n    -> {}   (exit layers {:?}, {:.1} ms)",
            g.text, g.exit_layers, g.latency_ms
        );
    }
    let ms: f64 = outs.iter().map(|g| g.latency_ms).sum::<f64>() / outs.len() as f64;
    println!("  exits: {}; {ms:.1} ms/sample at batch 1", gen.stats());
    Ok(())
}

fn main() -> elmer::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dirs: Vec<&str> = if args.is_empty() {
        vec![MODEL]
    } else {
        args.iter().map(String::as_str).collect()
    };
    for dir in &dirs {
        run(dir, None)?;
    }
    // The first model with soft exit (when it has a concat_head) and at its last layer only.
    let first = ElmerModel::from_dir(dirs[0], &LoadOptions::default())?;
    if first.has_concat_head() {
        run(dirs[0], Some(ExitPolicy::Soft))?;
    }
    run(dirs[0], Some(ExitPolicy::LastLayer))
}
