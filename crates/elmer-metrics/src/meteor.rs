//! METEOR 1.5 (Denkowski & Lavie, 2014), as reported by the non-autoregressive
//! generation papers: `meteor-1.5.jar - - -stdio -l en -norm` driven by
//! `pycocoevalcap.meteor.Meteor`, whose reported number is the jar's aggregate
//! `EVAL` score (METEOR of the *summed* sufficient statistics, not a mean of
//! segment scores).
//!
//! # What is reproduced
//!
//! * **Normalisation** (`-norm`): the jar's `Normalizer.normalizeLine` for English
//!   with punctuation kept (Moses-style tokenisation, quote/dash normalisation, dashes
//!   between words removed, English contractions split right, non-breaking prefixes,
//!   `U.S.` -> `US`), then lower-casing, then whitespace tokenisation.
//! * **Matchers** (in this order; module index = weight index):
//!   0. exact (always), 1. stem (always; Snowball English / Porter2, the
//!   `org.tartarus.snowball.ext.englishStemmer` the jar uses), 2. synonym (WordNet
//!   synsets + WordNet morphology, only with the synonym table: [`Meteor::with_jar`],
//!   [`Meteor::with_jar_synonyms`] or [`Meteor::with_synonym_dir`]), 3. paraphrase
//!   (phrase table, only with [`Meteor::with_jar`] or [`Meteor::with_paraphrase_table`]).
//!   Like the jar, a stem/synonym match is only added for *different* surface words,
//!   every module proposes all its candidate matches, and when hypothesis and
//!   reference are token-identical only the exact module runs.
//! * **Alignment**: the jar's left-to-right beam search (beam 40) over reference
//!   positions. One-to-one matches that are the only candidate for both words are fixed
//!   first. Partial alignments are ranked by (more weighted matched words, fewer chunks,
//!   smaller summed |ref pos - hyp pos|), with the search weights exact 1.0 and 0.5 for
//!   every other module, accumulated in an `int` exactly like the Java code (so a single
//!   one-word stem/synonym match adds `floor(x + 0.5) - x`), and including the jar's
//!   quirk of charging the distance of a newly chosen match to the *parent* path.
//!   Java's `Collections.sort` is stable and so is ours.
//! * **Long segments**: the search is the jar's, but its work and memory are bounded
//!   (the jar's are not: it copies every partial alignment in full and keeps every
//!   candidate match, and needs minutes and gigabytes for a few thousand words). Partial
//!   alignments share structure instead of being copied, and each matcher proposes at
//!   most [`MAX_CANDIDATES_PER_WORD`] matches per reference word (those nearest the
//!   diagonal), which only ever applies when a word occurs more than that many times in
//!   one hypothesis; below it the alignment is exactly the jar's. A 30,000-word pair
//!   aligns in about a second (release build, exact + stem). The corpus functions
//!   reject texts longer than [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS).
//! * **Score** (per segment and for the corpus):
//!
//!   ```text
//!   P = Σ_m w_m (δ·hc_m + (1-δ)·hf_m) / (δ·|hyp content| + (1-δ)·|hyp function|)
//!   R = Σ_m w_m (δ·rc_m + (1-δ)·rf_m) / (δ·|ref content| + (1-δ)·|ref function|)
//!   Fmean = 1 / ((1-α)/P + α/R)
//!   frag  = 0 if every word of both sides is matched in a single chunk,
//!           else chunks / ((matched hyp words + matched ref words) / 2)
//!   METEOR = max(0, Fmean · (1 - γ · frag^β)),   NaN -> 0
//!   ```
//!
//!   with `hc_m/hf_m` (`rc_m/rf_m`) the hypothesis (reference) content / function words
//!   matched by module `m`, function words from the jar's 92-entry English list, and the
//!   English "rank" (default) parameters α 0.85, β 0.20, γ 0.60, δ 0.75, weights
//!   1.0 0.6 0.8 0.6.
//! * **Multiple references**: every reference is aligned; the statistics of the first
//!   reference with the strictly highest segment score are kept (as `MeteorScorer`).
//! * **Corpus**: statistics are summed over segments (`MeteorStats.addStats`, which does
//!   not add the chunk of a perfectly matched segment) and scored once.
//!
//! # Behaviour on edge cases
//!
//! * Empty (or whitespace/punctuation-free-empty) hypothesis or reference: length 0, so
//!   P or R is 0/0 and the segment scores 0 (the jar gives the same). Its lengths still
//!   enter the corpus statistics (an empty hypothesis lowers corpus recall).
//! * No references: the segment scores 0 and contributes nothing to the corpus.
//! * Case: everything is lower-cased after normalisation (`-norm`), so case never matters.
//!   Without `-norm` semantics (see [`MeteorParams::normalize`] = false) the text is only
//!   whitespace-tokenised and compared case-sensitively, like the jar without flags.
//! * Unicode: the normaliser's letter classes are the jar's (ASCII, Latin-1, Latin
//!   Extended-A, Cyrillic); other non-space symbols (CJK, emoji, ...) become single-char
//!   tokens; Unicode spaces listed by the jar are collapsed. Words are compared as Rust
//!   strings (the jar compares `String.hashCode()`s, so it could in theory conflate two
//!   colliding words; we never do).
//!
//! # Tables
//!
//! Neither table is bundled (they are the jar's LGPL / WordNet data). With
//! `pip install pycocoevalcap`:
//! * simplest: [`Meteor::from_jar`]`("…/pycocoevalcap/meteor/meteor-1.5.jar")` reads both,
//!   the synonyms from inside the jar and `data/paraphrase-en.gz` from next to it (see
//!   [`Meteor::with_jar`] for the layout); the result equals the jar on the parity fixtures;
//! * or, from extracted files: synonyms with [`Meteor::with_synonym_dir`] on the directory
//!   of `unzip meteor-1.5.jar 'synonym/*'` (it must contain `english.synsets` and
//!   `english.exceptions`, the jar's WordNet 3.0 derived files: `word\nsynset ids...\n`
//!   pairs and `base\nforms...\n` pairs), paraphrases with
//!   [`Meteor::with_paraphrase_table`] on `pycocoevalcap/meteor/data/paraphrase-en.gz`
//!   (gzip or plain text; records of three lines: probability, reference phrase,
//!   paraphrase).
//!
//! Loading the English paraphrase table (5.3 M pairs) takes about 4 s (release build) and
//! ~400 MB of memory; the synonym table well under a second.
//!
//! Without tables the score is the jar's exact+stem METEOR with the full-configuration
//! weights, which is systematically a little *lower* than the pycocoevalcap number.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::jar::ZipArchive;
use crate::meteor_norm::{java_lowercase, tokenize, Normalizer};
use crate::porter_meteor::stem;

/// File of WordNet 3.0 synsets in the directory given to [`Meteor::with_synonym_dir`].
pub const SYNONYM_SYNSETS: &str = "english.synsets";
/// File of WordNet morphological exceptions, next to [`SYNONYM_SYNSETS`].
pub const SYNONYM_EXCEPTIONS: &str = "english.exceptions";
/// Entry of the synonym synsets inside `meteor-1.5.jar`.
pub const JAR_SYNSETS_ENTRY: &str = "synonym/english.synsets";
/// Entry of the synonym exceptions inside `meteor-1.5.jar`.
pub const JAR_EXCEPTIONS_ENTRY: &str = "synonym/english.exceptions";
/// Where the jar looks for the English paraphrase table, relative to the directory that
/// holds the jar (`Constants.getDefaultParaFileURL`); [`Meteor::with_jar`] also accepts
/// an entry of this name inside the jar.
pub const PARAPHRASE_EN: &str = "data/paraphrase-en.gz";
/// Largest synonym entry accepted from a jar (the real ones are 3.7 MB and 89 kB).
const MAX_SYNONYM_ENTRY: u64 = 256 << 20;

/// The Snowball English stemmer METEOR's stem module uses (input lower-cased).
pub fn snowball_stem(word: &str) -> String {
    stem(word)
}

/// Module slots (index into weights / statistics).
const EXACT: usize = 0;
const STEM: usize = 1;
const SYNONYM: usize = 2;
const PARAPHRASE: usize = 3;
const N_MODULES: usize = 4;

/// Weights used *inside the alignment search* (`MeteorScorer.loadConfiguration`).
const SEARCH_WEIGHTS: [f64; N_MODULES] = [1.0, 0.5, 0.5, 0.5];

/// The jar's `function/english.words`.
const FUNCTION_WORDS: &[&str] = &[
    "the", ",", ".", "to", "of", "and", "a", "in", "that", "for", "\"", "is", "on", "'s", "it",
    "with", "was", "as", "said", "at", "he", "by", "be", "from", "have", "has", "are", "his",
    "but", "an", "this", "not", "i", "will", "\u{2019}", "they", ")", "-rrb-", "(", "-lrb-", "who",
    "their", "had", "we", "which", "were", "been", "more", "or", "s", "its", "would", "about",
    "new", "one", "after", "you", ":", "also", "up", "when", "there", "than", "$", "all", "out",
    "her", "people", "she", "year", "two", "-", "can", "if", "last", "first", "\u{201C}", "over",
    "other", "\u{201D}", "into", "some", "what", "so", "--", "no", "time", "years", "could", "?",
    "'t", "\u{2014}", "'", "",
];

/// METEOR parameters. [`Default`] is METEOR 1.5 English, default ("rank") task.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteorParams {
    /// Precision/recall balance α (Fmean = PR / (αP + (1-α)R)).
    pub alpha: f64,
    /// Fragmentation exponent β.
    pub beta: f64,
    /// Maximum fragmentation penalty γ.
    pub gamma: f64,
    /// Content (δ) vs function (1-δ) word weight.
    pub delta: f64,
    /// Module weights: exact, stem, synonym, paraphrase.
    pub weights: [f64; 4],
    /// Alignment beam size (jar default 40).
    pub beam_size: usize,
    /// Apply `-norm` (tokenise, normalise punctuation, lower-case). Default true.
    pub normalize: bool,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams {
            alpha: 0.85,
            beta: 0.20,
            gamma: 0.60,
            delta: 0.75,
            weights: [1.0, 0.6, 0.8, 0.6],
            beam_size: 40,
            normalize: true,
        }
    }
}

/// METEOR sufficient statistics of one segment (or a sum of segments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeteorStats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_total_matches: f64,
    pub reference_total_matches: f64,
    pub test_stage_content: [f64; 4],
    pub reference_stage_content: [f64; 4],
    pub test_stage_function: [f64; 4],
    pub reference_stage_function: [f64; 4],
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl MeteorStats {
    fn is_perfect(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// `MeteorStats.addStats`: sum, except that the chunk of a perfectly matched
    /// segment is not added.
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        self.test_total_matches += o.test_total_matches;
        self.reference_total_matches += o.reference_total_matches;
        for m in 0..N_MODULES {
            self.test_stage_content[m] += o.test_stage_content[m];
            self.reference_stage_content[m] += o.reference_stage_content[m];
            self.test_stage_function[m] += o.test_stage_function[m];
            self.reference_stage_function[m] += o.reference_stage_function[m];
        }
        if !o.is_perfect() {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    /// `MeteorScorer.computeMetrics`: the METEOR score of these statistics.
    pub fn score(&self, p: &MeteorParams) -> f64 {
        let d = p.delta;
        let tw_len = d * (self.test_length - self.test_function_words)
            + (1.0 - d) * self.test_function_words;
        let rw_len = d * (self.reference_length - self.reference_function_words)
            + (1.0 - d) * self.reference_function_words;
        let mut tw = 0.0;
        let mut rw = 0.0;
        for m in 0..N_MODULES {
            tw += self.test_stage_content[m] * p.weights[m] * d;
        }
        for m in 0..N_MODULES {
            rw += self.reference_stage_content[m] * p.weights[m] * d;
        }
        for m in 0..N_MODULES {
            tw += self.test_stage_function[m] * p.weights[m] * (1.0 - d);
        }
        for m in 0..N_MODULES {
            rw += self.reference_stage_function[m] * p.weights[m] * (1.0 - d);
        }
        let precision = tw / tw_len;
        let recall = rw / rw_len;
        let fmean = 1.0 / (((1.0 - p.alpha) / precision) + (p.alpha / recall));
        let frag = if self.is_perfect() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let penalty = p.gamma * frag.powf(p.beta);
        let score = fmean * (1.0 - penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}

/// WordNet synonym dictionary in the jar's format (`synonym/english.*`).
#[derive(Debug, Default)]
struct SynonymDictionary {
    word_to_bases: HashMap<String, Vec<String>>,
    word_to_synsets: HashMap<String, HashSet<u32>>,
}

const MORPH_SUFX: [&str; 20] = [
    "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed",
    "ing", "ing", "er", "est", "er", "est",
];
const MORPH_ADDR: [&str; 20] = [
    "", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e", "e",
];

impl SynonymDictionary {
    fn load(dir: &Path) -> io::Result<Self> {
        let read = |name: &str| {
            let p = dir.join(name);
            File::open(&p)
                .and_then(read_lines)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let exc = read(SYNONYM_EXCEPTIONS)?;
        let syn = read(SYNONYM_SYNSETS)?;
        Self::from_lines(&exc, &syn)
    }

    /// Builds the dictionary from the lines of `english.exceptions` and `english.synsets`.
    fn from_lines(exc: &[String], syn: &[String]) -> io::Result<Self> {
        let mut d = SynonymDictionary::default();
        for pair in exc.chunks(2) {
            let (base, forms) = (&pair[0], pair.get(1).map(String::as_str).unwrap_or(""));
            for form in forms.split_whitespace() {
                d.word_to_bases
                    .entry(form.to_string())
                    .or_default()
                    .push(base.clone());
            }
        }
        for pair in syn.chunks(2) {
            let ids = pair.get(1).map(String::as_str).unwrap_or("");
            let mut set = HashSet::new();
            for t in ids.split_whitespace() {
                let id = t.parse::<u32>().map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad synset id {t:?}: {e}"),
                    )
                })?;
                set.insert(id);
            }
            d.word_to_synsets.insert(pair[0].clone(), set);
        }
        Ok(d)
    }

    /// `getSynSets(word) ∪ getStemSynSets(word)`.
    fn all_synsets(&self, word: &str) -> HashSet<u32> {
        let mut s = self.word_to_synsets.get(word).cloned().unwrap_or_default();
        if let Some(bases) = self.word_to_bases.get(word) {
            for b in bases {
                if let Some(x) = self.word_to_synsets.get(b) {
                    s.extend(x);
                }
            }
        } else if let Some(x) = self.word_to_synsets.get(&self.morph(word)) {
            s.extend(x);
        }
        s
    }

    /// WordNet 3 morphology as implemented in `SynonymDictionary.morph`.
    fn morph(&self, word: &str) -> String {
        let end = if word.ends_with("ful") { "ful" } else { "" };
        if word.ends_with("ss") || word.encode_utf16().count() <= 2 {
            return word.to_string();
        }
        for (suf, add) in MORPH_SUFX.iter().zip(MORPH_ADDR.iter()) {
            if let Some(stem) = word.strip_suffix(suf) {
                let cand = format!("{stem}{add}");
                if self.word_to_synsets.contains_key(&cand) {
                    return cand + end;
                }
            }
        }
        String::new()
    }
}

/// Paraphrase table as a prefix trie over reference phrases (`ParaphraseTransducer`).
#[derive(Debug, Default)]
struct ParaphraseTable {
    vocab: HashMap<String, u32>,
    /// (state, word) -> state; state 0 is the root.
    trans: HashMap<(u32, u32), u32>,
    /// Paraphrase indices emitted at each state, in file order.
    emit: HashMap<u32, Vec<u32>>,
    paraphrases: Vec<Vec<u32>>,
    n_states: u32,
}

impl ParaphraseTable {
    fn load(path: &Path) -> io::Result<Self> {
        File::open(path)
            .and_then(Self::from_reader)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Reads the table from `r`: gzip (detected by its magic bytes) or plain text.
    fn from_reader(mut r: impl Read) -> io::Result<Self> {
        let mut magic = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            match r.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let gz = got == 2 && magic == [0x1f, 0x8b];
        let r = io::Cursor::new(magic).take(got as u64).chain(r);
        let reader: Box<dyn BufRead + '_> = if gz {
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(BufReader::new(r)),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, r))
        };
        let mut t = ParaphraseTable {
            n_states: 1,
            ..Default::default()
        };
        let mut lines = reader.lines();
        while let Some(prob) = lines.next() {
            prob?;
            let (Some(r), Some(p)) = (lines.next(), lines.next()) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated paraphrase record",
                ));
            };
            let (r, p) = (r?, p?);
            let rw: Vec<u32> = r.split_whitespace().map(|w| t.map(w)).collect();
            let pw: Vec<u32> = p.split_whitespace().map(|w| t.map(w)).collect();
            let mut state = 0u32;
            for w in rw {
                let next = t.n_states;
                let s = *t.trans.entry((state, w)).or_insert(next);
                if s == next {
                    t.n_states += 1;
                }
                state = s;
            }
            let idx = t.paraphrases.len() as u32;
            t.emit.entry(state).or_default().push(idx);
            t.paraphrases.push(pw);
        }
        Ok(t)
    }

    fn map(&mut self, w: &str) -> u32 {
        let n = self.vocab.len() as u32;
        *self.vocab.entry(w.to_string()).or_insert(n)
    }

    fn translate(&self, w: &str) -> Option<u32> {
        self.vocab.get(w).copied()
    }

    /// `(phrase length, paraphrase index)` for reference phrases starting at `start`.
    fn paths(&self, words: &[Option<u32>], start: usize) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        let mut state = 0u32;
        for (i, w) in words[start..].iter().enumerate() {
            let Some(w) = w else { break };
            let Some(&s) = self.trans.get(&(state, *w)) else {
                break;
            };
            state = s;
            if let Some(e) = self.emit.get(&state) {
                out.extend(e.iter().map(|&j| (i + 1, j)));
            }
        }
        out
    }
}

fn read_lines(r: impl Read) -> io::Result<Vec<String>> {
    BufReader::new(r).lines().collect()
}

/// Directory holding `jar` (`File.getParent`, `.` for a bare file name).
fn jar_dir(jar: &Path) -> &Path {
    match jar.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Prefixes `e` with `jar: entry `name`` unless it already names the jar.
fn in_entry(jar: &Path, name: &str, e: io::Error) -> io::Error {
    let p = jar.display().to_string();
    if e.to_string().starts_with(&p) {
        e
    } else {
        io::Error::new(e.kind(), format!("{p}: entry `{name}`: {e}"))
    }
}

fn synonyms_from_jar(z: &mut ZipArchive) -> io::Result<SynonymDictionary> {
    let jar = z.path().to_path_buf();
    let mut read = |name: &str| -> io::Result<Vec<String>> {
        match z.entry(name, MAX_SYNONYM_ENTRY)? {
            Some(r) => read_lines(r).map_err(|e| in_entry(&jar, name, e)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a METEOR 1.5 jar: no entry `{name}`", jar.display()),
            )),
        }
    };
    let exc = read(JAR_EXCEPTIONS_ENTRY)?;
    let syn = read(JAR_SYNSETS_ENTRY)?;
    SynonymDictionary::from_lines(&exc, &syn).map_err(|e| in_entry(&jar, JAR_SYNSETS_ENTRY, e))
}

mod align;
#[cfg(test)]
mod reference;

/// A segment with at most this many candidate matches (all matchers together) is
/// aligned with all of them, exactly as by `meteor-1.5.jar`: 1,048,576.
///
/// The alignment search costs about `beam × candidates` (40 × this, well under a
/// second); a long segment whose frequent words (`the`, `,`) occur thousands of times on
/// both sides has far more candidates, quadratic in its length. Such a segment is
/// aligned with at most [`MAX_CANDIDATES_PER_WORD`] candidates per reference word and
/// matcher instead. Segments of a few thousand words stay below this (a 3,000-word pair
/// of natural text has about 200,000 candidates), and so does every segment of the
/// parity fixtures (at most 28 words).
pub const FULL_SEARCH_CANDIDATES: usize = 1 << 20;

/// In a segment with more than [`FULL_SEARCH_CANDIDATES`] candidate matches, at most this
/// many per reference word and matcher enter METEOR's alignment search: 64.
///
/// A matcher then keeps, for each reference word, the candidates whose hypothesis
/// position is nearest to the reference position scaled to the hypothesis length (ties
/// to the earlier one), listed in the jar's order; the paraphrase matcher's two
/// directions count separately, and each examines at most `4 ×` this many occurrences of
/// a paraphrase's first word per phrase, nearest first. The cap changes nothing for a
/// reference word whose matches (hypothesis occurrences of the same word; for stems and
/// synonyms, of the matching words) number at most 64. Above it the alignment can
/// differ from the jar's: on a 30,000-word pair of natural-like text (exact + stem,
/// `examples/long_pair.rs`) the score is 0.3911 instead of the 0.3929 of the unbounded
/// search, in 1.2 s and 54 MB instead of 6 s and 380 MB (release build).
///
/// The jar itself bounds only the search, by its beam of [`MeteorParams::beam_size`]
/// (40) partial alignments per reference position, not the candidates, and copies every
/// partial alignment in full (its match and used-word arrays), so it needs minutes and
/// gigabytes on segments of a few thousand words; so did this crate before.
pub const MAX_CANDIDATES_PER_WORD: usize = 64;

/// One candidate match: `len` reference words at `start` aligned to `match_len`
/// hypothesis words at `match_start` (Java `Match`: line2 = reference, line1 = test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Match {
    module: u8,
    start: u32,
    len: u32,
    match_start: u32,
    match_len: u32,
}

/// METEOR scorer. Cheap to share (`&self` methods, no interior mutability).
#[derive(Debug)]
pub struct Meteor {
    params: MeteorParams,
    normalizer: NormalizerBox,
    function_words: HashSet<&'static str>,
    synonyms: Option<SynonymDictionary>,
    paraphrase: Option<ParaphraseTable>,
}

struct NormalizerBox(Normalizer);

impl std::fmt::Debug for NormalizerBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Normalizer(en)")
    }
}

impl Default for Meteor {
    fn default() -> Self {
        Meteor::new(MeteorParams::default())
    }
}

impl Meteor {
    /// Scorer with exact + stem matching (no tables) and the given parameters.
    pub fn new(params: MeteorParams) -> Self {
        Meteor {
            params,
            normalizer: NormalizerBox(Normalizer::default()),
            function_words: FUNCTION_WORDS.iter().copied().collect(),
            synonyms: None,
            paraphrase: None,
        }
    }

    /// Enable the synonym module from a directory holding the jar's
    /// `english.synsets` and `english.exceptions` (`unzip meteor-1.5.jar 'synonym/*'`).
    pub fn with_synonym_dir(mut self, dir: impl AsRef<Path>) -> io::Result<Self> {
        self.synonyms = Some(SynonymDictionary::load(dir.as_ref())?);
        Ok(self)
    }

    /// Enable the paraphrase module from `paraphrase-en.gz` (gzip or plain text).
    pub fn with_paraphrase_table(mut self, path: impl AsRef<Path>) -> io::Result<Self> {
        self.paraphrase = Some(ParaphraseTable::load(path.as_ref())?);
        Ok(self)
    }

    /// The jar's full English configuration: `Meteor::default().with_jar(jar)`.
    pub fn from_jar(jar: impl AsRef<Path>) -> io::Result<Self> {
        Meteor::default().with_jar(jar)
    }

    /// Enable the synonym and paraphrase modules with the tables of a METEOR 1.5
    /// distribution, read in place (nothing is extracted or bundled), so that the score
    /// is the jar's `-l en -norm` score with all four modules.
    ///
    /// What is read, and from where (as `meteor-1.5.jar` itself finds them):
    ///
    /// ```text
    /// meteor-1.5.jar                      a zip archive
    /// ├── synonym/english.synsets         WordNet synsets    (JAR_SYNSETS_ENTRY)
    /// ├── synonym/english.exceptions      WordNet exceptions (JAR_EXCEPTIONS_ENTRY)
    /// └── (function/, nonbreaking/, stem/, edu/cmu/meteor/*.class: not needed,
    ///      the English function words and prefixes are built in)
    /// data/paraphrase-en.gz               next to the jar    (PARAPHRASE_EN)
    /// ```
    ///
    /// The paraphrase table is **not** inside the jar: the jar opens
    /// `<directory of the jar>/data/paraphrase-en.gz`, which is where pycocoevalcap
    /// installs it (`pycocoevalcap/meteor/{meteor-1.5.jar, data/paraphrase-en.gz}`).
    /// A `data/paraphrase-en.gz` entry inside the jar (a repackaged jar) is used first
    /// when present. Use [`Meteor::with_jar_synonyms`] for a jar without its `data/`.
    ///
    /// Loading takes about 4 s and ~400 MB (release build), nearly all of it the
    /// paraphrase table; build one scorer and share it.
    ///
    /// # Errors
    ///
    /// An [`io::Error`] whose message starts with the path at fault: the jar cannot be
    /// opened (`NotFound`, ...), is not a (supported) zip or is corrupt (`InvalidData`),
    /// has no `synonym/english.synsets` / `synonym/english.exceptions` entry, i.e. is not
    /// a METEOR 1.5 jar (`InvalidData`, naming the entry), or no paraphrase table is
    /// found (`NotFound`, naming both places looked at). A corrupt or hostile archive is
    /// an error, never a panic: offsets are bounds-checked, sizes capped and CRC-32s
    /// verified.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use elmer_metrics::Meteor;
    ///
    /// // pip install pycocoevalcap; the jar is in site-packages/pycocoevalcap/meteor/
    /// let meteor = Meteor::from_jar("/path/to/pycocoevalcap/meteor/meteor-1.5.jar")?;
    /// let corpus = meteor
    ///     .score_corpus(&["the cat sat on the mat"], &[vec!["a cat was sitting on the mat"]])
    ///     .expect("one reference list per hypothesis");
    /// println!("METEOR {corpus:.4}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn with_jar(mut self, jar: impl AsRef<Path>) -> io::Result<Self> {
        let jar = jar.as_ref();
        let mut z = ZipArchive::open(jar)?;
        self.synonyms = Some(synonyms_from_jar(&mut z)?);
        if let Some(r) = z.entry(PARAPHRASE_EN, u64::MAX)? {
            let t = ParaphraseTable::from_reader(r).map_err(|e| in_entry(jar, PARAPHRASE_EN, e))?;
            self.paraphrase = Some(t);
            return Ok(self);
        }
        let beside = jar_dir(jar).join(PARAPHRASE_EN);
        if !beside.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no paraphrase table: neither an entry `{PARAPHRASE_EN}` in the jar \
                     nor a file {} next to it (use with_jar_synonyms for synonyms only)",
                    jar.display(),
                    beside.display()
                ),
            ));
        }
        self.paraphrase = Some(ParaphraseTable::load(&beside)?);
        Ok(self)
    }

    /// Enable only the synonym module, from the `synonym/english.synsets` and
    /// `synonym/english.exceptions` entries of `meteor-1.5.jar` (the jar run with
    /// `-m "exact stem synonym"`, but with the full-configuration weights).
    /// Errors as [`Meteor::with_jar`].
    pub fn with_jar_synonyms(mut self, jar: impl AsRef<Path>) -> io::Result<Self> {
        let mut z = ZipArchive::open(jar.as_ref())?;
        self.synonyms = Some(synonyms_from_jar(&mut z)?);
        Ok(self)
    }

    /// Whether the synonym module is enabled.
    pub fn has_synonyms(&self) -> bool {
        self.synonyms.is_some()
    }

    /// Whether the paraphrase module is enabled.
    pub fn has_paraphrases(&self) -> bool {
        self.paraphrase.is_some()
    }

    /// The parameters in use.
    pub fn params(&self) -> &MeteorParams {
        &self.params
    }

    /// Normalised, lower-cased tokens as the scorer sees them.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        if self.params.normalize {
            tokenize(&java_lowercase(&self.normalizer.0.normalize(text)))
        } else {
            tokenize(text)
        }
    }

    /// Segment METEOR of `hyp` against its best reference (0 when `refs` is empty).
    pub fn score_segment(&self, hyp: &str, refs: &[&str]) -> f64 {
        self.segment_stats(hyp, refs).score(&self.params)
    }

    /// Sufficient statistics of the best reference (first with the highest score).
    ///
    /// Any length is accepted here (no [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS)
    /// check); time and memory stay bounded as described at [`MAX_CANDIDATES_PER_WORD`].
    pub fn segment_stats(&self, hyp: &str, refs: &[&str]) -> MeteorStats {
        let h = self.tokens(hyp);
        let r: Vec<Vec<String>> = refs.iter().map(|r| self.tokens(r)).collect();
        self.best_stats(&h, &r)
    }

    fn best_stats(&self, h: &[String], refs: &[Vec<String>]) -> MeteorStats {
        let mut best: Option<(f64, MeteorStats)> = None;
        for r in refs {
            let st = self.align_stats(h, r);
            let sc = st.score(&self.params);
            let better = match &best {
                None => sc > -1.0,
                Some((b, _)) => sc > *b,
            };
            if better {
                best = Some((sc, st));
            }
        }
        best.map(|b| b.1).unwrap_or_default()
    }

    /// Corpus METEOR (aggregate statistics, the number pycocoevalcap reports).
    ///
    /// Errors with [`MetricsError::LengthMismatch`](crate::MetricsError::LengthMismatch)
    /// when `hyps.len() != refs.len()`, and with
    /// [`MetricsError::SegmentTooLong`](crate::MetricsError::SegmentTooLong) (pair index,
    /// side, length) when a hypothesis or reference has more than
    /// [`MAX_SEGMENT_WORDS`](crate::MAX_SEGMENT_WORDS) normalised tokens; every text is
    /// checked before any is aligned.
    pub fn score_corpus(
        &self,
        hyps: &[&str],
        refs: &[Vec<&str>],
    ) -> Result<f64, crate::MetricsError> {
        self.corpus(hyps, refs).map(|(s, _)| s)
    }

    /// Corpus METEOR and the segment scores; errors as [`Self::score_corpus`], as text.
    pub fn try_score_corpus(
        &self,
        hyps: &[&str],
        refs: &[Vec<&str>],
    ) -> Result<(f64, Vec<f64>), String> {
        self.corpus(hyps, refs).map_err(|e| match e {
            crate::MetricsError::LengthMismatch { hyps, refs } => {
                format!("METEOR: {hyps} hypotheses but {refs} reference lists")
            }
            e => e.to_string(),
        })
    }

    fn corpus(
        &self,
        hyps: &[&str],
        refs: &[Vec<&str>],
    ) -> Result<(f64, Vec<f64>), crate::MetricsError> {
        use crate::{MetricsError, Side};
        if hyps.len() != refs.len() {
            return Err(MetricsError::LengthMismatch {
                hyps: hyps.len(),
                refs: refs.len(),
            });
        }
        let mut tokens = Vec::with_capacity(hyps.len());
        for (index, (h, rs)) in hyps.iter().zip(refs).enumerate() {
            let h = self.tokens(h);
            MetricsError::check_length(index, Side::Hypothesis, h.len())?;
            let mut r = Vec::with_capacity(rs.len());
            for (k, x) in rs.iter().enumerate() {
                let t = self.tokens(x);
                MetricsError::check_length(index, Side::Reference(k), t.len())?;
                r.push(t);
            }
            tokens.push((h, r));
        }
        let mut total = MeteorStats::default();
        let mut segs = Vec::with_capacity(hyps.len());
        for (h, r) in &tokens {
            let st = self.best_stats(h, r);
            segs.push(st.score(&self.params));
            total.add(&st);
        }
        Ok((total.score(&self.params), segs))
    }

    /// Align tokenised `test` (hypothesis, line1) and `reference` (line2) and return
    /// the statistics (`Aligner.align` + `MeteorScorer.getMeteorStats`).
    fn align_stats(&self, w1: &[String], w2: &[String]) -> MeteorStats {
        let matches = align::align(self, w1, w2);
        self.stats(w1, w2, &matches)
    }

    /// `MeteorScorer.getMeteorStats` of the alignment `matches` (one optional match per
    /// reference position).
    fn stats(&self, w1: &[String], w2: &[String], matches: &[Option<Match>]) -> MeteorStats {
        let (n1, n2) = (w1.len(), w2.len());
        // Statistics.
        let fw1: Vec<bool> = w1
            .iter()
            .map(|w| self.function_words.contains(java_lowercase(w).as_str()))
            .collect();
        let fw2: Vec<bool> = w2
            .iter()
            .map(|w| self.function_words.contains(java_lowercase(w).as_str()))
            .collect();
        let mut st = MeteorStats {
            test_length: n1 as f64,
            reference_length: n2 as f64,
            test_function_words: fw1.iter().filter(|&&b| b).count() as f64,
            reference_function_words: fw2.iter().filter(|&&b| b).count() as f64,
            ..Default::default()
        };
        for m in matches.iter().flatten() {
            let module = m.module as usize;
            for k in m.match_start..m.match_start + m.match_len {
                if fw1[k as usize] {
                    st.test_stage_function[module] += 1.0;
                } else {
                    st.test_stage_content[module] += 1.0;
                }
            }
            for k in m.start..m.start + m.len {
                if fw2[k as usize] {
                    st.reference_stage_function[module] += 1.0;
                } else {
                    st.reference_stage_content[module] += 1.0;
                }
            }
        }
        // getCountAndChunks
        let mut chunks = 0;
        let mut idx = 0;
        let mut last_end: i64 = -1;
        while idx < n2 {
            match matches[idx] {
                None => {
                    if last_end != -1 {
                        chunks += 1;
                        last_end = -1;
                    }
                    idx += 1;
                }
                Some(m) => {
                    if last_end != -1 && m.match_start as i64 != last_end {
                        chunks += 1;
                    }
                    idx = (m.start + m.len) as usize;
                    last_end = (m.match_start + m.match_len) as i64;
                }
            }
        }
        if last_end != -1 {
            chunks += 1;
        }
        st.chunks = chunks as f64;
        for m in 0..N_MODULES {
            st.test_total_matches += st.test_stage_content[m] + st.test_stage_function[m];
            st.reference_total_matches +=
                st.reference_stage_content[m] + st.reference_stage_function[m];
        }
        st.test_word_matches = st.test_total_matches;
        st.reference_word_matches = st.reference_total_matches;
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_one_minus_nothing() {
        let m = Meteor::default();
        let s = m.score_segment("The cat sat on the mat.", &["the cat sat on the mat ."]);
        assert!((s - 1.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn empty_inputs_score_zero() {
        let m = Meteor::default();
        assert_eq!(m.score_segment("", &["a b"]), 0.0);
        assert_eq!(m.score_segment("a b", &[""]), 0.0);
        assert_eq!(m.score_segment("a b", &[]), 0.0);
        assert_eq!(m.score_corpus(&[], &[]).unwrap(), 0.0);
    }

    #[test]
    fn stem_match_counts() {
        let m = Meteor::default();
        let a = m.score_segment("the cats ran", &["the cat ran"]);
        let b = m.score_segment("the dog ran", &["the cat ran"]);
        assert!(a > b);
    }

    /// Small synonym and paraphrase tables in the jar's formats.
    fn with_tables(params: MeteorParams, syn: bool, para: bool) -> Meteor {
        let mut m = Meteor::new(params);
        if syn {
            let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
            let exc = lines("run\nran\ngood\nbetter best");
            let synsets = lines(
                "cat\n1\ndog\n2 5\nhound\n2\nbig\n3\nlarge\n3 5\nrun\n4\nsprint\n4\ngood\n6\nfine\n6",
            );
            m.synonyms = Some(SynonymDictionary::from_lines(&exc, &synsets).expect("synonyms"));
        }
        if para {
            let table = "0.5\nbig dog\nlarge hound\n0.4\nthe cat\na cat\n0.3\nrun\nsprints\n\
                         0.2\na\nthe\n0.2\nlarge\nbig\n0.1\nthe big dog\na hound\n\
                         0.1\nfine\nvery good\n0.1\ngood\nfine\n";
            m.paraphrase =
                Some(ParaphraseTable::from_reader(table.as_bytes()).expect("paraphrases"));
        }
        m
    }

    const VOCAB: &[&str] = &[
        "the", "a", "cat", "cats", "dog", "dogs", "hound", "big", "large", "run", "ran", "runs",
        "sprint", "sprints", "good", "better", "fine", "very", ",", ".",
    ];

    fn random_words(state: &mut u64, len: usize, vocab: usize) -> Vec<String> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                VOCAB[(*state % vocab as u64) as usize].to_string()
            })
            .collect()
    }

    /// The bounded, shared-structure search picks exactly the alignment of the direct port
    /// of the jar (`reference.rs`) on random segments below the candidate cap: all module
    /// combinations, several beam sizes (beam 1 and 2 prune the hardest).
    #[test]
    fn alignment_equals_the_direct_port_of_the_jar() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for (syn, para) in [(false, false), (true, false), (false, true), (true, true)] {
            for beam in [1, 2, 3, 40] {
                let m = with_tables(
                    MeteorParams {
                        beam_size: beam,
                        ..Default::default()
                    },
                    syn,
                    para,
                );
                for case in 0..40 {
                    let vocab = 3 + case % (VOCAB.len() - 2);
                    let n1 = (case * 7) % 37;
                    let n2 = (case * 11 + 3) % 41;
                    let w1 = random_words(&mut state, n1, vocab);
                    let mut w2 = random_words(&mut state, n2, vocab);
                    if case % 13 == 0 {
                        w2 = w1.clone(); // identical: exact module only
                    }
                    let new = align::align(&m, &w1, &w2);
                    let old = reference::align(&m, &w1, &w2);
                    assert_eq!(new, old, "syn {syn} para {para} beam {beam} case {case}");
                }
            }
        }
    }

    /// The same on longer segments (up to 150 words; no word near 64 occurrences).
    #[test]
    fn alignment_equals_the_direct_port_on_longer_segments() {
        let mut state = 0xDEAD_BEEF_u64;
        let m = with_tables(MeteorParams::default(), true, true);
        for case in 0..3 {
            let w1 = random_words(&mut state, 100 + case * 20, VOCAB.len());
            let w2 = random_words(&mut state, 150 - case * 15, VOCAB.len());
            assert_eq!(
                align::align(&m, &w1, &w2),
                reference::align(&m, &w1, &w2),
                "case {case}"
            );
        }
    }

    /// Past `FULL_SEARCH_CANDIDATES` the candidates are capped: a 1,100-word segment of
    /// one repeated word (1.2 M candidate pairs) still aligns into one chunk.
    #[test]
    fn capped_search_on_a_repeated_word() {
        let m = Meteor::default();
        let n = 1_100;
        assert!(n * (n - 1) > FULL_SEARCH_CANDIDATES);
        let mut hyp = vec!["a".to_string(); n - 1];
        hyp.push("b".to_string());
        let reference = vec!["a".to_string(); n];
        let matches = align::align(&m, &hyp, &reference);
        assert_eq!(matches.iter().flatten().count(), n - 1);
        let st = m.stats(&hyp, &reference, &matches);
        assert_eq!(st.chunks, 1.0);
        // Fmean ~ 1, fragmentation penalty 0.6 * (1/1099)^0.2 = 0.148.
        assert!(
            (st.score(&m.params) - 0.852).abs() < 1e-3,
            "{}",
            st.score(&m.params)
        );
    }

    #[test]
    fn corpus_errors_name_pair_and_side() {
        let m = Meteor::default();
        let long = "w ".repeat(crate::MAX_SEGMENT_WORDS + 1);
        let e = m.score_corpus(&["a", "b"], &[vec!["a"], vec!["c", &long]]);
        assert_eq!(
            e,
            Err(crate::MetricsError::SegmentTooLong {
                index: 1,
                side: crate::Side::Reference(1),
                words: crate::MAX_SEGMENT_WORDS + 1,
                max: crate::MAX_SEGMENT_WORDS,
            })
        );
        let e = m.try_score_corpus(&[&long], &[vec!["a"]]).unwrap_err();
        assert!(e.contains("pair 0") && e.contains("hypothesis"), "{e}");
        let e = m.try_score_corpus(&["a"], &[]).unwrap_err();
        assert_eq!(e, "METEOR: 1 hypotheses but 0 reference lists");
    }
}
