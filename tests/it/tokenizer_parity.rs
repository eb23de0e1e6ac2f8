//! Parity of `BartTokenizer` with Hugging Face transformers on the fixtures written by
//! `scripts/fixtures/make_tokenizer_fixtures.py` (ids from transformers 4.57.6 slow + fast
//! `BartTokenizer`, decoded strings from transformers 5.24).

use std::path::{Path, PathBuf};

use elmer::BartTokenizer;
use serde::Deserialize;

// Paths relative to CARGO_MANIFEST_DIR; adjust when moving these tests into the main crate.
/// Directory holding `bart_base.jsonl` and `tiny_random_bart.jsonl`.
const FIXTURE_DIR: &str = "tests/fixtures/tokenizer";
/// Committed bart-base tokenizer: vocab.json, merges.txt and tokenizer.json.
const ASSET_DIR: &str = "assets/tokenizer/bart-base";
/// Shared (not committed) bart-base vocab: vocab.json + merges.txt only. Skipped if absent.
const SHARED_VOCAB_DIR: &str = "../shared/data/tokenizer/bart-base";
/// Shared tiny-random-bart checkpoint (tokenizer.json + vocab.json + merges.txt). Skipped if absent.
const TINY_DIR: &str = "tests/fixtures/tiny-random-bart";

#[derive(Debug, Deserialize)]
struct Line {
    source: String,
    text: String,
    /// transformers 4.x slow BartTokenizer.
    ids: Vec<u32>,
    /// transformers 4.x BartTokenizerFast.
    ids_fast: Vec<u32>,
    truncated_ids_16: Vec<u32>,
    #[serde(default)]
    truncated_ids_16_fast: Option<Vec<u32>>,
    decoded: String,
    decoded_truncated_16: String,
    #[serde(default)]
    decoded_cleanup: Option<String>,
    roundtrip: bool,
}

fn path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn load_fixture(name: &str) -> Vec<Line> {
    let p = path(FIXTURE_DIR).join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", p.display(), i + 1))
        })
        .collect()
}

fn shared_dir(rel: &str) -> Option<PathBuf> {
    let p = path(rel);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

/// Checks every fixture line against `tok`; `fast` selects the fast-tokenizer ids as the
/// reference (they differ from the slow ones only where a byte is missing from a tiny vocab).
fn check(tok: &BartTokenizer, lines: &[Line], fast: bool, what: &str) {
    let mut failures = Vec::new();
    let mut roundtrips = 0;
    for (i, l) in lines.iter().enumerate() {
        let mut fail = |field: &str, got: String, want: String| {
            failures.push(format!(
                "line {} [{}] {:?}: {field}\n   got  {got}\n   want {want}",
                i + 1,
                l.source,
                l.text.chars().take(80).collect::<String>()
            ))
        };
        let want_ids = if fast { &l.ids_fast } else { &l.ids };
        let want_trunc = match (&l.truncated_ids_16_fast, fast) {
            (Some(t), true) => t,
            _ => &l.truncated_ids_16,
        };
        let ids = tok.encode(&l.text).expect("encode");
        if &ids != want_ids {
            fail("ids", format!("{ids:?}"), format!("{want_ids:?}"));
        }
        let trunc = tok.encode_truncated(&l.text, 16).expect("encode_truncated");
        if &trunc != want_trunc {
            fail(
                "truncated_16",
                format!("{trunc:?}"),
                format!("{want_trunc:?}"),
            );
        }
        let dec = tok.decode(&l.ids).expect("decode");
        if dec != l.decoded {
            fail("decoded", format!("{dec:?}"), format!("{:?}", l.decoded));
        }
        let dec = tok.decode(&l.truncated_ids_16).expect("decode");
        if dec != l.decoded_truncated_16 {
            fail(
                "decoded_truncated_16",
                format!("{dec:?}"),
                format!("{:?}", l.decoded_truncated_16),
            );
        }
        let want_clean = l.decoded_cleanup.as_ref().unwrap_or(&l.decoded);
        let clean = tok.decode_with(&l.ids, true, true).expect("decode_with");
        if &clean != want_clean {
            fail(
                "decoded_cleanup",
                format!("{clean:?}"),
                format!("{want_clean:?}"),
            );
        }
        if l.roundtrip {
            roundtrips += 1;
            let back = tok.decode(&ids).expect("decode");
            if back != l.text {
                fail("roundtrip", format!("{back:?}"), format!("{:?}", l.text));
            }
        }
    }
    eprintln!(
        "{what}: {} lines compared, {roundtrips} round-trips checked, {} mismatches",
        lines.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{what}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_is_large_and_slow_equals_fast() {
    let lines = load_fixture("bart_base.jsonl");
    assert!(lines.len() >= 1200, "{} lines", lines.len());
    let diff = lines.iter().filter(|l| l.ids != l.ids_fast).count();
    assert_eq!(diff, 0, "slow/fast transformers differ on bart-base lines");
}

#[test]
fn bart_base_tokenizer_json_parity() {
    let tok = BartTokenizer::from_dir(path(ASSET_DIR)).expect("load assets (tokenizer.json)");
    check(
        &tok,
        &load_fixture("bart_base.jsonl"),
        false,
        "bart-base tokenizer.json",
    );
}

#[test]
fn bart_base_vocab_merges_parity() {
    let dir = path(ASSET_DIR);
    let tok = BartTokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))
        .expect("load vocab+merges");
    check(
        &tok,
        &load_fixture("bart_base.jsonl"),
        false,
        "bart-base vocab+merges",
    );
}

#[test]
fn shared_bart_base_dir_parity() {
    let Some(dir) = shared_dir(SHARED_VOCAB_DIR) else {
        return;
    };
    // No tokenizer.json there: from_dir takes the vocab.json + merges.txt path.
    let tok = BartTokenizer::from_dir(dir).expect("load shared vocab");
    check(
        &tok,
        &load_fixture("bart_base.jsonl"),
        false,
        "shared bart-base dir",
    );
}

#[test]
fn bart_base_specials_and_known_ids() {
    let tok = BartTokenizer::from_dir(path(ASSET_DIR)).expect("load");
    assert_eq!(
        (tok.bos_id(), tok.pad_id(), tok.eos_id(), tok.unk_id()),
        (0, 1, 2, 3)
    );
    assert_eq!(tok.mask_id(), 50264);
    assert_eq!(tok.vocab_size(), 50265);
    assert_eq!(tok.token_to_id("Ġthe"), Some(5));
    assert_eq!(tok.id_to_token(4).as_deref(), Some("."));
    assert_eq!(tok.encode("Hello world").unwrap(), vec![0, 31414, 232, 2]);
    assert_eq!(
        tok.encode("The quick brown fox jumps over the lazy dog.")
            .unwrap(),
        vec![0, 133, 2119, 6219, 23602, 13855, 81, 5, 22414, 2335, 4, 2]
    );
    // <mask> swallows the space before it.
    assert_eq!(
        tok.encode("Hello <mask> world").unwrap(),
        vec![0, 31414, 50264, 232, 2]
    );
    assert_eq!(
        tok.decode(&[0, 31414, 50264, 232, 2]).unwrap(),
        "Hello world"
    );
    assert_eq!(
        tok.decode_with(&[0, 31414, 50264, 232, 2], false, false)
            .unwrap(),
        "<s>Hello<mask> world</s>"
    );
}

#[test]
fn bart_base_batch_matches_single() {
    let tok = BartTokenizer::from_dir(path(ASSET_DIR)).expect("load");
    let lines = load_fixture("bart_base.jsonl");
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let full = tok.encode_batch(&texts, None).expect("batch");
    let trunc = tok.encode_batch(&texts, Some(16)).expect("batch");
    assert_eq!(full.len(), lines.len());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(full.ids[i], l.ids, "line {}", i + 1);
        assert_eq!(trunc.ids[i], l.truncated_ids_16, "line {}", i + 1);
    }
    let p = trunc.padded(tok.pad_id());
    assert_eq!(p.batch, lines.len());
    assert_eq!(p.seq_len, 16);
    for (i, row) in trunc.ids.iter().enumerate() {
        let r = &p.ids[i * 16..(i + 1) * 16];
        let m = &p.attention_mask[i * 16..(i + 1) * 16];
        assert_eq!(&r[..row.len()], &row[..]);
        assert!(r[row.len()..].iter().all(|&x| x == tok.pad_id()));
        assert_eq!(m.iter().sum::<u32>() as usize, row.len());
        assert_eq!(*row.last().unwrap(), tok.eos_id());
    }
}

#[test]
fn encoding_is_thread_safe() {
    let tok = BartTokenizer::from_dir(path(ASSET_DIR)).expect("load");
    let lines = load_fixture("bart_base.jsonl");
    std::thread::scope(|s| {
        for chunk in lines.chunks(lines.len().div_ceil(4)) {
            let tok = &tok;
            s.spawn(move || {
                for l in chunk {
                    assert_eq!(tok.encode(&l.text).unwrap(), l.ids);
                }
            });
        }
    });
}

#[test]
fn tiny_random_bart_parity() {
    let Some(dir) = shared_dir(TINY_DIR) else {
        return;
    };
    let lines = load_fixture("tiny_random_bart.jsonl");
    assert_eq!(lines.len(), 50);
    // tokenizer.json path (from_dir prefers it).
    let tok = BartTokenizer::from_dir(&dir).expect("load tiny tokenizer.json");
    assert_eq!(tok.mask_id(), 4);
    assert_eq!(tok.vocab_size(), 1000);
    check(&tok, &lines, true, "tiny-random-bart tokenizer.json");
    // vocab.json + merges.txt path, built like BartTokenizerFast.
    let tok = BartTokenizer::from_files(dir.join("vocab.json"), dir.join("merges.txt"))
        .expect("load tiny vocab+merges");
    assert_eq!(tok.mask_id(), 4);
    check(&tok, &lines, true, "tiny-random-bart vocab+merges");
}
