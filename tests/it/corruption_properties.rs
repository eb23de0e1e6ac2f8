//! Property tests of the BART-style corruption on real text: the WikiText-2
//! test split tokenised with the BART byte-level BPE tokenizer.

use std::collections::HashMap;
use std::sync::OnceLock;

use elmer::train::{word_starts_from_tokens, Corrupted, CorruptionConfig, Corruptor};
use elmer::BartTokenizer;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The real corpus lives in the shared data folder beside the repository (CI has it too).
const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/corpus/wikitext-2-raw-test.txt"
);
const BOS: u32 = 0;
const PAD: u32 = 1;
const EOS: u32 = 2;
const MASK: u32 = 50264;
const VOCAB: usize = 50265;
const FULL_STOPS: [u32; 2] = [4, 479];

/// One tokenised document: framed ids and word-start flags.
struct Doc {
    ids: Vec<u32>,
    word_start: Vec<bool>,
}

fn tokenizer() -> &'static BartTokenizer {
    static TOK: OnceLock<BartTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        BartTokenizer::from_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/tokenizer/bart-base"
        ))
        .expect("BART tokenizer loads")
    })
}

fn encode(text: &str) -> Doc {
    let enc = tokenizer().inner().encode(text, true).expect("encodes");
    let tokens: Vec<&str> = enc.get_tokens().iter().map(String::as_str).collect();
    Doc {
        ids: enc.get_ids().to_vec(),
        word_start: word_starts_from_tokens(&tokens),
    }
}

/// Non-empty, non-heading lines of the WikiText-2 test split.
fn corpus() -> &'static [Doc] {
    static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let text = std::fs::read_to_string(CORPUS).expect("corpus readable");
        let docs: Vec<Doc> = text
            .lines()
            .map(str::trim)
            .filter(|l| !(l.is_empty() || (l.starts_with('=') && l.ends_with('='))))
            .map(encode)
            .collect();
        assert!(docs.len() > 1000, "only {} documents", docs.len());
        docs
    })
}

fn corruptor(cfg: CorruptionConfig) -> Corruptor {
    Corruptor::bart(cfg).expect("valid config")
}

fn is_special(t: u32) -> bool {
    matches!(t, BOS | PAD | EOS | 3 | MASK)
}

/// Rebuilds the source from `shuffled` and `spans`, using the source's own
/// replacement tokens; checks the span invariants on the way.
fn check_spans(out: &Corrupted) {
    let n = out.shuffled.len();
    let mut pos = 0;
    let mut rebuilt = Vec::new();
    let mut src = out.source.iter();
    let mut masked = 0;
    for &(start, len) in &out.spans {
        assert!(start >= pos, "spans overlap or are unsorted");
        assert!(start >= 1 && start + len < n, "span outside the content");
        assert!(
            out.shuffled[start..start + len]
                .iter()
                .all(|&t| !is_special(t)),
            "a special token was corrupted"
        );
        rebuilt.extend_from_slice(&out.shuffled[pos..start]);
        let replacement = *src.nth(start - pos).expect("source long enough");
        rebuilt.push(replacement);
        pos = start + len;
        masked += len;
    }
    rebuilt.extend_from_slice(&out.shuffled[pos..]);
    assert_eq!(
        rebuilt, out.source,
        "source is not shuffled-with-spans-replaced"
    );
    assert_eq!(masked, out.num_masked_tokens);
}

fn is_subsequence(needle: &[u32], haystack: &[u32]) -> bool {
    let mut it = haystack.iter();
    needle.iter().all(|x| it.any(|y| y == x))
}

/// Sentences of a framed document, split after runs of full stops
/// (independent re-implementation for the test).
fn sentences(ids: &[u32]) -> Vec<Vec<u32>> {
    let content = &ids[1..ids.len() - 1];
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for (i, &t) in content.iter().enumerate() {
        cur.push(t);
        let stop = FULL_STOPS.contains(&t);
        let next_stop = content.get(i + 1).is_some_and(|n| FULL_STOPS.contains(n));
        if stop && !next_stop {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether `content` is a concatenation of all of `parts` in some order
/// (backtracking; re-splitting is not enough because the last sentence of a
/// document may lack a full stop and then merges with its successor).
fn is_permutation_of(content: &[u32], parts: &[Vec<u32>]) -> bool {
    fn go(content: &[u32], parts: &[Vec<u32>], used: &mut [bool]) -> bool {
        if content.is_empty() {
            return used.iter().all(|&u| u);
        }
        for i in 0..parts.len() {
            if !used[i] && !parts[i].is_empty() && content.starts_with(&parts[i]) {
                // Skip duplicates of an already tried identical part.
                if (0..i).any(|j| !used[j] && parts[j] == parts[i]) {
                    continue;
                }
                used[i] = true;
                if go(&content[parts[i].len()..], parts, used) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    let mut used = vec![false; parts.len()];
    go(content, parts, &mut used)
}

/// Exact expected number of Poisson(lambda) draws until their sum reaches
/// `b`, for every `b` in `0..=max_b` (renewal recursion):
/// m(b) = (1 + sum_{j=1}^{b-1} p(j) m(b - j)) / (1 - p(0)).
fn expected_span_counts(lambda: f64, max_b: usize) -> Vec<f64> {
    let mut pmf = vec![(-lambda).exp()];
    for j in 1..=max_b {
        let prev = pmf[j - 1];
        pmf.push(prev * lambda / j as f64);
    }
    let mut m = vec![0.0; max_b + 1];
    for b in 1..=max_b {
        let mut acc = 1.0;
        for j in 1..b {
            acc += pmf[j] * m[b - j];
        }
        m[b] = acc / (1.0 - pmf[0]);
    }
    m
}

fn budget(ratio: f64, units: usize) -> usize {
    (ratio * units as f64).round() as usize
}

#[test]
fn tokenizer_matches_bart_ids() {
    let tok = tokenizer();
    assert_eq!(tok.token_to_id("."), Some(4));
    assert_eq!(tok.token_to_id("Ġ."), Some(479));
    assert_eq!(tok.token_to_id("<mask>"), Some(MASK));
    let doc = encode("Hello world. Bye .");
    assert_eq!(doc.ids.first(), Some(&BOS));
    assert_eq!(doc.ids.last(), Some(&EOS));
    assert!(doc.ids.contains(&4) && doc.ids.contains(&479));
}

fn mask_ratio_and_span_length(lambda: f64) {
    let docs = corpus();
    let c = corruptor(CorruptionConfig {
        poisson_lambda: lambda,
        sentence_shuffle: false,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(42);
    let (mut content, mut masked, mut total_budget) = (0usize, 0usize, 0usize);
    let mut budget_hist: HashMap<usize, usize> = HashMap::new();
    let (mut spans, mut zero_spans, mut ratio_sum, mut ratio_docs) = (0usize, 0usize, 0.0, 0usize);
    for doc in docs {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        let n = doc.ids.len() - 2;
        let b = budget(0.15, n);
        assert_eq!(out.num_masked_tokens, b, "budget not met exactly");
        content += n;
        masked += out.num_masked_tokens;
        if b > 0 {
            total_budget += b;
            *budget_hist.entry(b).or_default() += 1;
            spans += out.spans.len();
            zero_spans += out.spans.iter().filter(|s| s.1 == 0).count();
            ratio_sum += out.num_masked_tokens as f64 / n as f64;
            ratio_docs += 1;
        }
    }
    let frac = masked as f64 / content as f64;
    let mean_doc_frac = ratio_sum / ratio_docs as f64;
    let max_b = budget_hist.keys().copied().max().unwrap_or(0);
    let m = expected_span_counts(lambda, max_b);
    let expected_spans: f64 = budget_hist
        .iter()
        .map(|(&b, &count)| m[b] * count as f64)
        .sum();
    let mean_len = total_budget as f64 / spans as f64;
    let expected_len = total_budget as f64 / expected_spans;
    eprintln!(
        "lambda {lambda}: {} docs, {content} tokens, masked fraction {frac:.4} (per-doc mean {mean_doc_frac:.4}); \
         {spans} spans ({zero_spans} zero-length), mean span length {mean_len:.4}, \
         expected with truncation {expected_len:.4}, untruncated {lambda}",
        docs.len()
    );
    assert!((frac - 0.15).abs() < 0.01, "masked fraction {frac}");
    assert!(
        (mean_doc_frac - 0.15).abs() < 0.01,
        "per-doc masked fraction {mean_doc_frac}"
    );
    assert!(
        (mean_len - expected_len).abs() < 0.02 * expected_len,
        "mean span length {mean_len} vs expected {expected_len}"
    );
    let expected_zero = expected_spans * (-lambda).exp();
    assert!(
        (zero_spans as f64 - expected_zero).abs() < 0.15 * expected_zero,
        "zero-length spans {zero_spans} vs expected {expected_zero}"
    );
}

#[test]
fn mask_ratio_and_span_length_lambda_3() {
    mask_ratio_and_span_length(3.0);
}

#[test]
fn mask_ratio_and_span_length_lambda_3_5() {
    mask_ratio_and_span_length(3.5);
}

#[test]
fn structure_without_shuffle() {
    let c = corruptor(CorruptionConfig {
        sentence_shuffle: false,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(7);
    for doc in corpus() {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        assert_eq!(out.target, doc.ids);
        assert_eq!(out.shuffled, doc.ids);
        assert_eq!(out.source.first(), Some(&BOS));
        assert_eq!(out.source.last(), Some(&EOS));
        let inner = &out.source[1..out.source.len() - 1];
        assert!(inner.iter().all(|&t| t != BOS && t != EOS && t != PAD));
        assert_eq!(
            inner.iter().filter(|&&t| t == MASK).count(),
            out.spans.len()
        );
        let unmasked: Vec<u32> = out.source.iter().copied().filter(|&t| t != MASK).collect();
        assert!(is_subsequence(&unmasked, &doc.ids));
        assert_eq!(unmasked.len(), doc.ids.len() - out.num_masked_tokens);
        check_spans(&out);
    }
}

#[test]
fn structure_with_shuffle_and_all_noise() {
    let c = corruptor(CorruptionConfig {
        poisson_lambda: 3.5,
        random_token_ratio: 0.1,
        insert_ratio: 0.0,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(8);
    for doc in corpus() {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        assert_eq!(out.target, doc.ids);
        assert_eq!(out.source.first(), Some(&BOS));
        assert_eq!(out.source.last(), Some(&EOS));
        let inner = &out.shuffled[1..out.shuffled.len() - 1];
        assert_eq!(out.shuffled.len(), doc.ids.len());
        assert!(
            is_permutation_of(inner, &sentences(&doc.ids)),
            "shuffling changed the sentences"
        );
        check_spans(&out);
    }
}

#[test]
fn shuffle_preserves_sentence_multiset() {
    let c = corruptor(CorruptionConfig {
        mask_ratio: 0.0,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(9);
    let (mut multi, mut changed) = (0, 0);
    for doc in corpus() {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        assert_eq!(out.source, out.shuffled);
        assert_eq!(out.source.len(), doc.ids.len());
        assert_eq!(out.source.first(), Some(&BOS));
        assert_eq!(out.source.last(), Some(&EOS));
        let parts = sentences(&doc.ids);
        if parts.len() > 1 {
            multi += 1;
            changed += usize::from(out.source != doc.ids);
        }
        assert!(is_permutation_of(
            &out.source[1..out.source.len() - 1],
            &parts
        ));
    }
    eprintln!("shuffle: {changed}/{multi} multi-sentence documents reordered");
    assert!(
        changed * 10 > multi * 6,
        "{changed}/{multi} documents reordered"
    );
}

#[test]
fn whole_word_spans_cover_whole_words() {
    let c = corruptor(CorruptionConfig {
        whole_word: true,
        poisson_lambda: 3.5,
        sentence_shuffle: false,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(10);
    let (mut content, mut masked, mut words, mut masked_words) = (0usize, 0usize, 0usize, 0usize);
    for doc in corpus() {
        let out = c
            .corrupt(&doc.ids, Some(&doc.word_start), &mut rng)
            .expect("corrupts");
        check_spans(&out);
        let n = doc.ids.len();
        let ws = &doc.word_start;
        let mut doc_masked_words = 0;
        for &(s, l) in &out.spans {
            assert!(ws[s], "span starts inside a word");
            assert!(s + l == n - 1 || ws[s + l], "span ends inside a word");
            doc_masked_words += ws[s..s + l].iter().filter(|&&w| w).count();
        }
        let doc_words = ws[1..n - 1].iter().filter(|&&w| w).count();
        assert_eq!(doc_masked_words, budget(0.15, doc_words));
        words += doc_words;
        masked_words += doc_masked_words;
        content += n - 2;
        masked += out.num_masked_tokens;
    }
    let word_frac = masked_words as f64 / words as f64;
    let tok_frac = masked as f64 / content as f64;
    eprintln!(
        "whole word: masked word fraction {word_frac:.4}, masked token fraction {tok_frac:.4}"
    );
    assert!((word_frac - 0.15).abs() < 0.01);
    assert!((tok_frac - 0.15).abs() < 0.03);
}

#[test]
fn random_tokens_replace_spans() {
    let c = corruptor(CorruptionConfig {
        random_token_ratio: 1.0,
        sentence_shuffle: false,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(11);
    let mut replacements = std::collections::HashSet::new();
    let mut total = 0;
    for doc in corpus().iter().take(500) {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        assert!(!out.source.contains(&MASK));
        check_spans(&out);
        // Position of each replacement token in the source.
        let mut shift = 0isize;
        for &(s, l) in &out.spans {
            let at = (s as isize + shift) as usize;
            let t = out.source[at];
            assert!(!is_special(t) && (t as usize) < VOCAB);
            replacements.insert(t);
            total += 1;
            shift += 1 - l as isize;
        }
    }
    eprintln!(
        "random tokens: {} distinct out of {total}",
        replacements.len()
    );
    assert!(
        replacements.len() * 10 > total * 9,
        "replacements are not random"
    );
}

#[test]
fn partial_random_ratio() {
    let c = corruptor(CorruptionConfig {
        random_token_ratio: 0.1,
        sentence_shuffle: false,
        ..Default::default()
    });
    let mut rng = StdRng::seed_from_u64(12);
    let (mut spans, mut masks) = (0usize, 0usize);
    for doc in corpus() {
        let out = c.corrupt(&doc.ids, None, &mut rng).expect("corrupts");
        spans += out.spans.len();
        masks += out.source.iter().filter(|&&t| t == MASK).count();
    }
    let share = 1.0 - masks as f64 / spans as f64;
    eprintln!("random_token_ratio 0.1: random share {share:.4} of {spans} spans");
    assert!((share - 0.1).abs() < 0.01);
}

#[test]
fn seeds_reproduce_and_differ() {
    let c = corruptor(CorruptionConfig {
        whole_word: true,
        random_token_ratio: 0.1,
        insert_ratio: 0.05,
        poisson_lambda: 3.5,
        ..Default::default()
    });
    let docs = &corpus()[..300];
    let run = |seed: u64| -> Vec<Corrupted> {
        let mut rng = StdRng::seed_from_u64(seed);
        docs.iter()
            .map(|d| {
                c.corrupt(&d.ids, Some(&d.word_start), &mut rng)
                    .expect("corrupts")
            })
            .collect()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    let b = run(2);
    let differ = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.source != y.source)
        .count();
    let eligible = docs.iter().filter(|d| d.ids.len() > 12).count();
    assert!(differ * 100 >= eligible * 95, "{differ}/{eligible} differ");
}

#[test]
fn degenerate_documents_do_not_panic() {
    let mut texts: Vec<Doc> = ["", "a", ".", "...", " . . .", "Hi", "Hi."]
        .into_iter()
        .map(encode)
        .collect();
    for content in [
        &[][..],
        &[4],
        &[479],
        &[4, 4, 4],
        &[479, 479, 4, 479],
        &[MASK],
        &[MASK, 4, 3],
    ] {
        let mut ids = vec![BOS];
        ids.extend_from_slice(content);
        ids.push(EOS);
        let word_start = vec![true; ids.len()];
        texts.push(Doc { ids, word_start });
    }
    for mask_ratio in [0.0, 0.15, 0.5, 1.0] {
        for whole_word in [false, true] {
            let c = corruptor(CorruptionConfig {
                mask_ratio,
                whole_word,
                random_token_ratio: 0.5,
                insert_ratio: 0.5,
                poisson_lambda: 0.5,
                ..Default::default()
            });
            for doc in &texts {
                for seed in 0..10 {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let out = c
                        .corrupt(&doc.ids, Some(&doc.word_start), &mut rng)
                        .expect("corrupts");
                    assert_eq!(out.source.first(), Some(&BOS));
                    assert_eq!(out.source.last(), Some(&EOS));
                    assert_eq!(out.target, doc.ids);
                    // Insertion noise is not recorded in `spans`.
                    if out.num_inserted == 0 {
                        check_spans(&out);
                    }
                }
            }
        }
    }
    let c = corruptor(CorruptionConfig::default());
    let mut rng = StdRng::seed_from_u64(0);
    let out = c.corrupt(&[BOS, EOS], None, &mut rng).expect("corrupts");
    assert_eq!(out.source, vec![BOS, EOS]);
}

#[test]
fn tokenizer_matches_python_reference() {
    // Reference ids from Python `tokenizers.ByteLevelBPETokenizer` on the same
    // vocab.json/merges.txt with a RobertaProcessing post-processor.
    let doc = encode("\" The Heart of the Matter , \" by Laura . Hi.");
    assert_eq!(
        doc.ids,
        vec![0, 113, 20, 6924, 9, 5, 18181, 2156, 22, 30, 6939, 479, 12289, 4, 2]
    );
}
