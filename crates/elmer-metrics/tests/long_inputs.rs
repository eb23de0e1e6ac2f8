//! Long and hostile inputs: the LCS-based scores and METEOR finish in linear memory on
//! long pairs, and the corpus functions reject texts past `MAX_SEGMENT_WORDS` with an error
//! naming the pair and the side.
//!
//! The exactness of the linear-memory LCS and of the bounded METEOR search against the
//! quadratic versions is checked on random inputs by the unit tests (`src/lcs.rs`,
//! `src/rouge.rs`, `src/meteor.rs`). The 30,000-word METEOR run takes ~1 s in a release
//! build and much longer in debug, so it is `#[ignore]`d:
//!
//! ```text
//! cargo test --release -p elmer-metrics --test long_inputs -- --include-ignored
//! ```

#[path = "support/long_text.rs"]
mod long_text;

use elmer_metrics::{
    coco_rouge_l, coco_rouge_l_corpus, score_all, score_all_with, Meteor, MetricsError,
    RougeScorer, Side, MAX_SEGMENT_WORDS,
};

fn in_unit(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

#[test]
fn rouge_and_coco_rouge_l_on_a_30k_word_single_line_pair() {
    let (hyp, reference) = long_text::long_pair(30_000, 1, false);
    let s = RougeScorer::new(false)
        .score_corpus(&[hyp.as_str()], &[vec![reference.as_str()]])
        .expect("under the cap");
    assert!(in_unit(s.rouge_l.f1), "{:?}", s.rouge_l);
    // One line: the summary-level LCS is the LCS.
    assert_eq!(s.rouge_l, s.rouge_lsum);
    assert!(s.rouge_l.f1 < s.rouge1.f1);
    let c = coco_rouge_l_corpus(&[hyp.as_str()], &[vec![reference.as_str()]]).expect("coco");
    assert!(in_unit(c.score), "{}", c.score);
}

#[test]
fn rouge_lsum_on_a_long_multi_line_pair() {
    let (hyp, reference) = long_text::long_pair(5_000, 2, true);
    assert!(hyp.lines().count() > 50 && reference.lines().count() > 50);
    let s = RougeScorer::new(false).score(&hyp, &reference);
    assert!(in_unit(s.rouge_lsum.f1));
    // Sentence-level matching recovers the local reorderings that one LCS cannot.
    assert!(s.rouge_lsum.f1 > s.rouge_l.f1, "{:?}", s);
}

#[test]
fn meteor_on_a_2k_word_pair() {
    let (hyp, reference) = long_text::long_pair(2_000, 3, false);
    let s = Meteor::default()
        .score_corpus(&[hyp.as_str()], &[vec![reference.as_str()]])
        .expect("under the cap");
    assert!(in_unit(s), "{s}");
}

#[test]
#[ignore = "~1 s in release, much longer in debug: run with --release --include-ignored"]
fn meteor_on_a_30k_word_pair_finishes() {
    let (hyp, reference) = long_text::long_pair(30_000, 1, false);
    let t = std::time::Instant::now();
    let s = Meteor::default()
        .score_corpus(&[hyp.as_str()], &[vec![reference.as_str()]])
        .expect("under the cap");
    eprintln!("METEOR on 30,000 words: {s:.6} in {:.2?}", t.elapsed());
    assert!(in_unit(s), "{s}");
    let t = std::time::Instant::now();
    let r = score_all(&[hyp.as_str()], &[vec![reference.as_str()]]).expect("score_all");
    eprintln!("score_all on 30,000 words in {:.2?}", t.elapsed());
    assert_eq!(r.meteor, Some(s));
}

/// `n` words `w` (one character each, so the same count for every tokenizer).
fn words(n: usize) -> String {
    vec!["w"; n].join(" ")
}

#[test]
fn over_the_cap_is_an_error_naming_pair_and_side() {
    let long = words(MAX_SEGMENT_WORDS + 1);
    let too_long = |index, side| MetricsError::SegmentTooLong {
        index,
        side,
        words: MAX_SEGMENT_WORDS + 1,
        max: MAX_SEGMENT_WORDS,
    };
    // The hypothesis of pair 1.
    let hyps = ["a b", long.as_str()];
    let refs = [vec!["a b"], vec!["c"]];
    let want = Err(too_long(1, Side::Hypothesis));
    assert_eq!(score_all(&hyps, &refs).map(|_| ()), want);
    assert_eq!(score_all_with(&hyps, &refs, false, None).map(|_| ()), want);
    let rouge = RougeScorer::new(true);
    assert_eq!(rouge.score_corpus(&hyps, &refs).map(|_| ()), want);
    assert_eq!(rouge.score_pairs(&hyps, &refs).map(|_| ()), want);
    assert_eq!(coco_rouge_l_corpus(&hyps, &refs).map(|_| ()), want);
    assert_eq!(
        Meteor::default().score_corpus(&hyps, &refs).map(|_| ()),
        want
    );
    // Reference 1 of pair 0.
    let hyps = ["a b", "c"];
    let refs = [vec!["a", long.as_str()], vec!["c"]];
    let want = Err(too_long(0, Side::Reference(1)));
    assert_eq!(score_all(&hyps, &refs).map(|_| ()), want);
    assert_eq!(rouge.score_multi(hyps[0], &refs[0]).map(|_| ()), want);
    assert_eq!(coco_rouge_l(hyps[0], &refs[0]).map(|_| ()), want);
    assert_eq!(
        Meteor::default().score_corpus(&hyps, &refs).map(|_| ()),
        want
    );
    // The message names the pair, the side and both numbers.
    let msg = too_long(3, Side::Reference(2)).to_string();
    for part in [
        "pair 3",
        "reference 2",
        &format!("{}", MAX_SEGMENT_WORDS + 1),
    ] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(too_long(0, Side::Hypothesis)
        .to_string()
        .contains("hypothesis"));
}

#[test]
fn at_the_cap_is_accepted() {
    let long = words(MAX_SEGMENT_WORDS);
    let r = score_all(&[long.as_str()], &[vec!["x y"]]).expect("exactly at the cap");
    assert_eq!(r.rouge1_f1, 0.0);
    assert_eq!(r.meteor, Some(0.0));
    // The single-pair functions without a Result have no cap.
    let longer = words(MAX_SEGMENT_WORDS + 10);
    let s = RougeScorer::new(false).score(&longer, "w");
    assert!(s.rouge_l.precision > 0.0);
    assert!(Meteor::default().score_segment(&longer, &["w"]) > 0.0);
}
