//! `elmer score`: ROUGE, BLEU, METEOR and Distinct of a hypothesis file against references.

use std::path::PathBuf;

use elmer::{Error, Result};
use elmer_metrics::{score_all_with, Meteor, MeteorStats};

use crate::{io, progress};

#[derive(clap::Args)]
pub struct Args {
    /// Hypotheses, one per line.
    #[arg(long, value_name = "FILE")]
    pub hyp: PathBuf,
    /// References, one per line, aligned with --hyp; repeat for multiple references.
    #[arg(long = "ref", value_name = "FILE", required = true)]
    pub refs: Vec<PathBuf>,
    /// Print one JSON object with raw values instead of the table.
    #[arg(long)]
    pub json: bool,
    /// ROUGE without Porter stemming (rouge-score use_stemmer=False).
    #[arg(long)]
    pub no_stem: bool,
    /// METEOR 1.5's meteor-1.5.jar (as pycocoevalcap installs it, with data/paraphrase-en.gz
    /// next to it): its synonym and paraphrase tables, read in place; METEOR then equals the
    /// jar's score.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["meteor_synonyms", "meteor_paraphrase"])]
    pub meteor_jar: Option<PathBuf>,
    /// Directory with METEOR's english.synsets and english.exceptions
    /// (`unzip meteor-1.5.jar 'synonym/*'`): enables synonym matching.
    #[arg(long, value_name = "DIR")]
    pub meteor_synonyms: Option<PathBuf>,
    /// METEOR's paraphrase-en.gz (gzip or plain text): enables paraphrase matching.
    #[arg(long, value_name = "FILE")]
    pub meteor_paraphrase: Option<PathBuf>,
    /// Skip METEOR (the slowest scorer).
    #[arg(long, conflicts_with_all = ["meteor_jar", "meteor_synonyms", "meteor_paraphrase"])]
    pub no_meteor: bool,
}

pub fn run(a: &Args) -> Result<()> {
    let hyps = io::read_lines(Some(&a.hyp))?;
    let mut ref_files = Vec::with_capacity(a.refs.len());
    for p in &a.refs {
        let lines = io::read_lines(Some(p))?;
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
    let (meteor, modules) = meteor_scorer(a)?;
    let mut r = score_all_with(&hyps, &refs, !a.no_stem, None)?;
    if let Some(m) = &meteor {
        r.meteor = Some(corpus_meteor(m, &hyps, &refs));
    }
    let mut out = io::Stdout::lock();
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
        out.line(v)?;
        return out.flush();
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
        if meteor.is_some() {
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
    let mut table = format!(
        "{} pairs, {} reference(s) each; values in percent\n",
        r.num_pairs,
        a.refs.len()
    );
    table.push_str(&format!("{:<width$}  {:>7}  scorer\n", "metric", "value"));
    for (name, value, scorer) in rows {
        let v = value.map_or("-".to_string(), |v| format!("{v:.2}"));
        table.push_str(&format!("{name:<width$}  {v:>7}  {scorer}\n"));
    }
    out.write(&table)?;
    out.flush()
}

/// The METEOR scorer the flags ask for (none with --no-meteor) and its modules.
fn meteor_scorer(a: &Args) -> Result<(Option<Meteor>, Vec<&'static str>)> {
    if a.no_meteor {
        return Ok((None, Vec::new()));
    }
    let mut m = Meteor::default();
    let mut modules = vec!["exact", "stem"];
    if let Some(jar) = &a.meteor_jar {
        let s = progress::spinner(&format!("reading METEOR tables from {}", jar.display()));
        // The message starts with the path at fault.
        m = m
            .with_jar(jar)
            .map_err(|e| Error::invalid_arg("--meteor-jar", e.to_string()))?;
        s.finish_and_clear();
        modules.extend(["synonym", "paraphrase"]);
    }
    if let Some(d) = &a.meteor_synonyms {
        m = m.with_synonym_dir(d).map_err(|e| Error::io(d, e))?;
        modules.push("synonym");
    }
    if let Some(f) = &a.meteor_paraphrase {
        m = m.with_paraphrase_table(f).map_err(|e| Error::io(f, e))?;
        modules.push("paraphrase");
    }
    Ok((Some(m), modules))
}

/// Corpus METEOR (the jar's aggregate statistics, as `Meteor::score_corpus`), one segment at
/// a time behind a progress bar: the slowest scorer.
fn corpus_meteor(m: &Meteor, hyps: &[String], refs: &[Vec<&str>]) -> f64 {
    let bar = progress::bar(hyps.len(), "METEOR");
    let mut total = MeteorStats::default();
    for (h, r) in hyps.iter().zip(refs) {
        total.add(&m.segment_stats(h, r));
        bar.inc(1);
    }
    bar.finish_and_clear();
    total.score(m.params())
}

fn count_lines(n: usize) -> String {
    if n == 1 {
        "1 line".into()
    } else {
        format!("{n} lines")
    }
}
