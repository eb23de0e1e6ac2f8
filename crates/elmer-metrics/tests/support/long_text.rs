//! Deterministic long (hypothesis, reference) pairs for the long-input tests and the
//! `long_pair` example: Zipf-distributed words over a 5,000-word pseudo-vocabulary whose
//! top ranks are real English function words and punctuation, a reference of `words`
//! words, and a hypothesis made from it by dropping, substituting, inserting, inflecting
//! (`+s`, a stem match) and swapping words, so that the alignment is non-trivial and the
//! frequent words occur thousands of times on both sides.

#![allow(dead_code)]

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const FUNCTION: &[&str] = &[
    "the", ",", ".", "of", "and", "a", "to", "in", "that", "is", "for", "it", "was", "on", "with",
    "he", "as", "at", "by", "his",
];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "si", "po", "de", "fa", "gu", "be", "zo", "vi", "ha", "ju",
    "re", "mo", "ti", "na",
];

/// The vocabulary, most frequent first.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = FUNCTION.iter().map(|s| s.to_string()).collect();
    let mut i = 0usize;
    while v.len() < 5_000 {
        let (a, b, c) = (i % 20, (i / 20) % 20, (i / 400) % 20);
        let w = match i % 3 {
            0 => format!("{}{}", SYLLABLES[a], SYLLABLES[b]),
            1 => format!("{}{}{}", SYLLABLES[a], SYLLABLES[b], SYLLABLES[c]),
            _ => format!("{}{}n", SYLLABLES[b], SYLLABLES[a]),
        };
        if !v.contains(&w) {
            v.push(w);
        }
        i += 1;
    }
    v
}

/// A Zipf(1) sampler over `vocabulary()`.
pub struct Zipf {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new() -> Self {
        let words = vocabulary();
        let mut cdf = Vec::with_capacity(words.len());
        let mut acc = 0.0;
        for r in 0..words.len() {
            acc += 1.0 / (r + 1) as f64;
            cdf.push(acc);
        }
        Zipf { words, cdf }
    }

    pub fn sample<'a>(&'a self, rng: &mut Rng) -> &'a str {
        let total = *self.cdf.last().expect("non-empty");
        let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let i = self
            .cdf
            .partition_point(|&c| c < x)
            .min(self.words.len() - 1);
        &self.words[i]
    }
}

/// `(hypothesis, reference)` with a reference of `words` words; when `lines` is true a
/// `'\n'` follows every sentence-ending `"."` (ROUGE-Lsum sentences), otherwise the
/// texts are single lines.
pub fn long_pair(words: usize, seed: u64, lines: bool) -> (String, String) {
    let z = Zipf::new();
    let mut rng = Rng(seed);
    let mut reference: Vec<String> = Vec::with_capacity(words);
    while reference.len() < words {
        let w = z.sample(&mut rng);
        // Every other "." is dropped: a sentence end every ~55 words.
        if w == "." && rng.chance(0.5) {
            continue;
        }
        reference.push(w.to_string());
    }
    let mut hyp: Vec<String> = Vec::with_capacity(words + words / 10);
    for w in &reference {
        if rng.chance(0.06) {
            continue; // dropped
        }
        if rng.chance(0.06) {
            hyp.push(z.sample(&mut rng).to_string()); // substituted
            continue;
        }
        if rng.chance(0.04) && w.len() > 3 {
            hyp.push(format!("{w}s")); // inflected: a stem match
        } else {
            hyp.push(w.clone());
        }
        if rng.chance(0.04) {
            hyp.push(z.sample(&mut rng).to_string()); // inserted
        }
    }
    for i in 1..hyp.len() {
        if rng.chance(0.03) {
            hyp.swap(i - 1, i);
        }
    }
    let join = |ws: &[String]| {
        let mut s = String::new();
        for w in ws {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push(' ');
            }
            s.push_str(w);
            if lines && w == "." {
                s.push('\n');
            }
        }
        s
    };
    (join(&hyp), join(&reference))
}
