//! Readers for the task data sets: each turns a file (or a pair of files) into
//! (source, target) text pairs, [`Example`]s, ready for tokenisation.
//!
//! Every reader returns a [`Dataset`]: the examples in file order plus a list of what was
//! skipped and why, one entry per skipped example, formatted `"{file}:{line}: {reason}"`
//! (`"{file}: record {id}: {reason}"` for SQuAD JSON). Nothing malformed is dropped
//! silently, and no reader panics on bad input. A file that cannot be read is an
//! [`Error::Io`] naming the path; a file that cannot be decoded at all (invalid UTF-8,
//! unparsable JSON document) is an [`Error::Parse`] naming the file (and the line).
//!
//! Line handling, common to all line-based readers: lines end with `\n`, and a `\r` before
//! it is dropped (CRLF files are accepted); a final line without a newline counts; a
//! trailing newline does not start an extra empty line. A line that is not valid UTF-8 is
//! an [`Error::Parse`] naming the file and its 1-based line number.
//!
//! # Formats
//!
//! - **Line pairs** ([`read_line_pairs`], [`read_split`]): the ELMER fine-tuning format, one
//!   source text per line of `{split}.src` and the matching target on the same line of
//!   `{split}.tgt`. Du et al. (2017) SQuAD question generation (`src-dev.txt` /
//!   `tgt-dev.txt`) uses the same layout. Both files must have the same number of lines.
//!   Texts are trimmed; a pair with an empty side is skipped and reported.
//! - **XSUM JSON lines** ([`read_xsum_jsonl`]): one JSON object per line with string fields
//!   `document` and `summary` (other fields such as `id` are ignored). XSUM documents hold
//!   one sentence per `\n`-separated line; in both fields every run of whitespace
//!   (newlines included) is replaced by a single space and the ends are trimmed. Blank lines
//!   are ignored; a line that is not JSON, lacks one of the two strings, or has an empty one
//!   is skipped and reported.
//! - **SQuAD JSON** ([`read_squad_json`]): answer-aware question generation. The source is
//!   `"{answer} [SEP] {context}"` with the first answer's text, the target is the question.
//!   Both layouts are read:
//!   - the official nested one, `{"data": [{"title", "paragraphs": [{"context", "qas":
//!     [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`;
//!   - the flat Hugging Face `datasets` one, `{"data": [{"id", "title"?, "context",
//!     "question", "answers": {"text": [...], "answer_start": [...]}}]}`.
//!
//!   Unanswerable questions (no answer, or `is_impossible: true`) are skipped and reported
//!   as `"{file}: record {id}: unanswerable"`.
//! - **PersonaChat** ([`read_personachat`]): the ConvAI2 OpenNMT lines. A source line is the
//!   persona sentences followed by the partner's last utterance, TAB-separated (the last
//!   field is the utterance), and the target line is the response. Consecutive lines with
//!   the same persona fields form one dialogue, whose history is rebuilt: the source text is
//!
//!   ```text
//!   {persona sentences joined by " "} [SEP] {h_1} [SEP] {h_2} ... [SEP] {current partner utterance}
//!   ```
//!
//!   where `h_1 .. h_k` are the last `k = min(max_history, available)` utterances before
//!   the current one, in dialogue order (partner utterance, response, partner utterance,
//!   response, ...). Each utterance counts as one; `max_history = 0` keeps only the current
//!   partner utterance.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::fs::{lines, read_lines};

/// Separator between the parts of a composed source text (answer / passage, persona /
/// dialogue turns).
pub const SEP: &str = "[SEP]";

/// One (source, target) text pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The model input text.
    pub source: String,
    /// The reference output text.
    pub target: String,
}

/// A read dataset plus what was skipped and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// One entry per skipped example: `"{file}:{line}: {reason}"` (SQuAD JSON:
    /// `"{file}: record {id}: {reason}"`).
    pub skipped: Vec<String>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}

/// Reads two files line by line that must have the same number of lines.
fn read_parallel(src: &Path, tgt: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let sources = read_lines(src)?;
    let targets = read_lines(tgt)?;
    if sources.len() != targets.len() {
        return Err(Error::invalid_arg(
            "tgt",
            format!(
                "line counts differ: {} has {} lines, {} has {} lines",
                src.display(),
                sources.len(),
                tgt.display(),
                targets.len()
            ),
        ));
    }
    Ok((sources, targets))
}

/// Collapses every run of whitespace to one space and trims the ends.
fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads parallel source / target files, one text per line (ELMER `{split}.src` /
/// `{split}.tgt`; Du et al. SQuAD-QG `src-*.txt` / `tgt-*.txt`).
///
/// Texts are trimmed. The files must have the same number of lines, otherwise
/// [`Error::InvalidArgument`] names both files and both counts. A pair with an empty
/// (after trimming) source or target is skipped and reported as `"{file}:{line}: empty
/// source"`, `"{file}:{line}: empty target"` or `"{src}:{line}: empty source and target"`.
pub fn read_line_pairs(src: &Path, tgt: &Path) -> Result<Dataset> {
    let (sources, targets) = read_parallel(src, tgt)?;
    let mut ds = Dataset::default();
    for (i, (s, t)) in sources.iter().zip(&targets).enumerate() {
        let line = i + 1;
        let (s, t) = (s.trim(), t.trim());
        match (s.is_empty(), t.is_empty()) {
            (false, false) => ds.examples.push(Example {
                source: s.to_owned(),
                target: t.to_owned(),
            }),
            (true, false) => ds
                .skipped
                .push(format!("{}:{line}: empty source", src.display())),
            (false, true) => ds
                .skipped
                .push(format!("{}:{line}: empty target", tgt.display())),
            (true, true) => ds
                .skipped
                .push(format!("{}:{line}: empty source and target", src.display())),
        }
    }
    Ok(ds)
}

/// Reads `dir/{split}.src` and `dir/{split}.tgt` with [`read_line_pairs`] (the ELMER data
/// directory layout: `train`, `valid`, `test`).
///
/// `split` must be a plain, non-empty file stem ([`Error::InvalidArgument`] otherwise).
pub fn read_split(dir: &Path, split: &str) -> Result<Dataset> {
    if split.is_empty() || split.contains(['/', '\\']) || split == "." || split == ".." {
        return Err(Error::invalid_arg(
            "split",
            format!("`{split}` is not a plain split name such as `train` or `test`"),
        ));
    }
    let src = dir.join(format!("{split}.src"));
    let tgt = dir.join(format!("{split}.tgt"));
    read_line_pairs(&src, &tgt)
}

/// Reads XSUM JSON lines: one `{"document": ..., "summary": ...}` object per line; the
/// document is the source, the summary the target.
///
/// Whitespace runs (the `\n` between document sentences included) become single spaces.
/// Blank lines are ignored; a line that is not valid JSON, is not an object with string
/// `document` and `summary`, or has an empty one, is skipped and reported with its line.
pub fn read_xsum_jsonl(path: &Path) -> Result<Dataset> {
    let lines = read_lines(path)?;
    let mut ds = Dataset::default();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                ds.skipped.push(format!("{at}: invalid JSON ({e})"));
                continue;
            }
        };
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(normalize_ws);
        let (document, summary) = match (field("document"), field("summary")) {
            (Some(d), Some(s)) => (d, s),
            (None, _) => {
                ds.skipped.push(format!("{at}: no string field `document`"));
                continue;
            }
            (_, None) => {
                ds.skipped.push(format!("{at}: no string field `summary`"));
                continue;
            }
        };
        if document.is_empty() {
            ds.skipped.push(format!("{at}: empty document"));
        } else if summary.is_empty() {
            ds.skipped.push(format!("{at}: empty summary"));
        } else {
            ds.examples.push(Example {
                source: document,
                target: summary,
            });
        }
    }
    Ok(ds)
}

/// One SQuAD question before it becomes an [`Example`].
struct SquadQuestion<'a> {
    id: String,
    context: Option<&'a str>,
    question: Option<&'a str>,
    /// The first answer's text; `None` if there is no answer.
    answer: Option<&'a str>,
    impossible: bool,
}

/// Reads SQuAD JSON (nested official layout or flat Hugging Face layout, see the module
/// doc) into answer-aware question generation pairs: source
/// `"{first answer} [SEP] {context}"`, target the trimmed question.
///
/// Unanswerable records (no answers, or `is_impossible: true`) are skipped and reported as
/// `"{file}: record {id}: unanswerable"`; records lacking a context, question or answer
/// text, or holding an empty one, are skipped and reported likewise. A file that is not
/// JSON, or has no `data` array, is an [`Error::Parse`].
pub fn read_squad_json(path: &Path) -> Result<Dataset> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let parse_err = |message: String| Error::Parse {
        path: path.to_path_buf(),
        message,
    };
    let root: Value =
        serde_json::from_slice(&bytes).map_err(|e| parse_err(format!("invalid JSON: {e}")))?;
    let data = root
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| parse_err("no top-level `data` array".into()))?;

    let mut ds = Dataset::default();
    let file = path.display().to_string();
    for (i, entry) in data.iter().enumerate() {
        if let Some(paragraphs) = entry.get("paragraphs") {
            let Some(paragraphs) = paragraphs.as_array() else {
                ds.skipped.push(format!(
                    "{file}: record data[{i}]: `paragraphs` is not a list"
                ));
                continue;
            };
            for (j, para) in paragraphs.iter().enumerate() {
                let context = para.get("context").and_then(Value::as_str);
                let Some(qas) = para.get("qas").and_then(Value::as_array) else {
                    ds.skipped.push(format!(
                        "{file}: record data[{i}].paragraphs[{j}]: no `qas` list"
                    ));
                    continue;
                };
                for (k, qa) in qas.iter().enumerate() {
                    let answer = qa
                        .get("answers")
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                        .and_then(|a| a.get("text"))
                        .and_then(Value::as_str);
                    add_squad_question(
                        &mut ds,
                        &file,
                        SquadQuestion {
                            id: record_id(qa, || format!("data[{i}].paragraphs[{j}].qas[{k}]")),
                            context,
                            question: qa.get("question").and_then(Value::as_str),
                            answer,
                            impossible: is_impossible(qa),
                        },
                    );
                }
            }
        } else if entry.get("context").is_some() {
            let answer = entry
                .get("answers")
                .and_then(|a| a.get("text"))
                .and_then(Value::as_array)
                .and_then(|t| t.first())
                .and_then(Value::as_str);
            add_squad_question(
                &mut ds,
                &file,
                SquadQuestion {
                    id: record_id(entry, || format!("data[{i}]")),
                    context: entry.get("context").and_then(Value::as_str),
                    question: entry.get("question").and_then(Value::as_str),
                    answer,
                    impossible: is_impossible(entry),
                },
            );
        } else {
            ds.skipped.push(format!(
                "{file}: record data[{i}]: neither `paragraphs` (nested SQuAD) nor `context` (flat)"
            ));
        }
    }

    Ok(ds)
}

/// Turns one SQuAD question into an example, or reports why it is skipped.
fn add_squad_question(ds: &mut Dataset, file: &str, q: SquadQuestion<'_>) {
    let at = format!("{file}: record {}", q.id);
    let answer = match q.answer {
        Some(a) if !q.impossible => a.trim(),
        _ => {
            ds.skipped.push(format!("{at}: unanswerable"));
            return;
        }
    };
    let context = q.context.map(str::trim).unwrap_or("");
    let question = q.question.map(str::trim).unwrap_or("");
    if answer.is_empty() {
        ds.skipped.push(format!("{at}: empty answer text"));
    } else if context.is_empty() {
        ds.skipped.push(format!("{at}: no context"));
    } else if question.is_empty() {
        ds.skipped.push(format!("{at}: no question"));
    } else {
        ds.examples.push(Example {
            source: format!("{answer} {SEP} {context}"),
            target: question.to_owned(),
        });
    }
}

/// The record's `id` (string or number), or a position-based fallback.
fn record_id(v: &Value, fallback: impl FnOnce() -> String) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => fallback(),
    }
}

fn is_impossible(v: &Value) -> bool {
    v.get("is_impossible")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// One well-formed PersonaChat line: persona fields and (partner utterance, response).
struct PersonaLine {
    persona_key: Vec<String>,
    partner: String,
    response: String,
}

/// Well-formed PersonaChat lines and the reports of the skipped ones.
type PersonaLines = (Vec<PersonaLine>, Vec<String>);

/// Parses the PersonaChat files into well-formed lines (in file order) and the
/// skipped-line reports.
fn personachat_lines(src: &Path, tgt: &Path) -> Result<PersonaLines> {
    let (sources, targets) = read_parallel(src, tgt)?;
    let mut lines = Vec::with_capacity(sources.len());
    let mut skipped = Vec::new();
    for (i, (s, t)) in sources.iter().zip(&targets).enumerate() {
        let line = i + 1;
        let Some((persona, partner)) = s.rsplit_once('\t') else {
            skipped.push(format!(
                "{}:{line}: no TAB (expected persona sentences and an utterance)",
                src.display()
            ));
            continue;
        };
        let persona_key: Vec<String> = persona
            .split('\t')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let (partner, response) = (partner.trim(), t.trim());
        if persona_key.is_empty() {
            skipped.push(format!("{}:{line}: empty persona", src.display()));
        } else if partner.is_empty() {
            skipped.push(format!("{}:{line}: empty partner utterance", src.display()));
        } else if response.is_empty() {
            skipped.push(format!("{}:{line}: empty target", tgt.display()));
        } else {
            lines.push(PersonaLine {
                persona_key,
                partner: partner.to_owned(),
                response: response.to_owned(),
            });
        }
    }
    Ok((lines, skipped))
}

/// Reads ConvAI2 / PersonaChat OpenNMT files (`source.txt`: TAB-separated persona sentences
/// then the partner's last utterance; `target.txt`: the response) and rebuilds each
/// dialogue's history.
///
/// Consecutive well-formed lines with the same persona sentences are one dialogue. The
/// source of turn `i` is `"{persona joined by ' '} [SEP] {h_1} [SEP] ... [SEP] {partner_i}"`,
/// where `h_1 ..` are the last `max_history` utterances of turns `0 .. i` of the dialogue
/// (partner utterance, response, partner utterance, ...), each utterance counting one;
/// `max_history = 0` keeps only `partner_i`. Fields are trimmed (internal spacing kept).
///
/// Line counts must match ([`Error::InvalidArgument`] naming both files). Lines without a
/// TAB, with an empty persona, partner utterance or target are skipped and reported; they
/// neither enter the history nor start a new dialogue.
pub fn read_personachat(src: &Path, tgt: &Path, max_history: usize) -> Result<Dataset> {
    let (lines, skipped) = personachat_lines(src, tgt)?;
    let mut ds = Dataset {
        examples: Vec::with_capacity(lines.len()),
        skipped,
    };
    let mut current: Option<&[String]> = None;
    let mut history: Vec<&str> = Vec::new();
    for l in &lines {
        if current != Some(l.persona_key.as_slice()) {
            current = Some(l.persona_key.as_slice());
            history.clear();
        }
        let keep = history.len().min(max_history);
        let mut parts: Vec<&str> = Vec::with_capacity(keep + 1);
        parts.extend_from_slice(&history[history.len() - keep..]);
        parts.push(&l.partner);
        let source = format!(
            "{} {SEP} {}",
            l.persona_key.join(" "),
            parts.join(&format!(" {SEP} "))
        );
        ds.examples.push(Example {
            source,
            target: l.response.clone(),
        });
        history.push(&l.partner);
        history.push(&l.response);
    }
    Ok(ds)
}

/// Number of dialogues in PersonaChat files: runs of consecutive well-formed lines with the
/// same persona sentences, as grouped by [`read_personachat`].
pub fn personachat_dialogue_count(src: &Path, tgt: &Path) -> Result<usize> {
    let (lines, _) = personachat_lines(src, tgt)?;
    let mut count = 0;
    let mut current: Option<&[String]> = None;
    for l in &lines {
        if current != Some(l.persona_key.as_slice()) {
            current = Some(l.persona_key.as_slice());
            count += 1;
        }
    }
    Ok(count)
}

/// SplitMix64: a tiny, fixed pseudo-random generator, so that a split depends on the seed
/// alone (not on the version of an external RNG crate).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=bound` (rejection sampling, no modulo bias).
    fn below_or_eq(&mut self, bound: u64) -> u64 {
        if bound == u64::MAX {
            return self.next_u64();
        }
        let n = bound + 1;
        // 2^64 mod n: values above `u64::MAX - rem` would bias the modulo.
        let rem = (u64::MAX % n + 1) % n;
        let zone = u64::MAX - rem;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % n;
            }
        }
    }
}

/// Splits off `holdout` examples chosen by a seeded shuffle; returns `(kept, held_out)`.
///
/// The choice depends only on `seed` and the number of examples (a fixed SplitMix64
/// Fisher–Yates shuffle), so it is the same on every run and platform. Both parts keep the
/// original file order; together they hold every example exactly once. A `holdout` larger
/// than the dataset holds everything out. The `skipped` list is dropped.
pub fn split_holdout(ds: Dataset, holdout: usize, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let n = ds.examples.len();
    let holdout = holdout.min(n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n).rev() {
        let j = rng.below_or_eq(i as u64) as usize;
        order.swap(i, j);
    }
    let mut held = vec![false; n];
    for &i in &order[..holdout] {
        held[i] = true;
    }
    let mut kept = Vec::with_capacity(n - holdout);
    let mut out = Vec::with_capacity(holdout);
    for (ex, h) in ds.examples.into_iter().zip(held) {
        if h {
            out.push(ex);
        } else {
            kept.push(ex);
        }
    }
    (kept, out)
}
