//! Parity of `elmer_metrics` with the Python reference scorers (rouge-score,
//! pycocoevalcap, nltk), on the fixtures in `tests/fixtures/metrics/` written by the
//! elmer repository's `scripts/fixtures/make_metric_fixtures.py`.
//!
//! Run with `--nocapture` to see the max |Rust - Python| per metric.
//! Set `PORTER_BIG_FIXTURE=/path/porter_big.json` (made with `--porter-big`) to
//! also check the stemmer on a large vocabulary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use elmer_metrics as m;

/// Fixture folder, relative to `CARGO_MANIFEST_DIR`.
const FIXTURE_DIR: &str = "tests/fixtures/metrics";
const TOL: f64 = 1e-6;

fn fixture(name: &str) -> Json {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE_DIR)
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    Json::parse(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// Collects max |diff| per metric and the failures.
#[derive(Default)]
struct Checker {
    max_diff: BTreeMap<String, (f64, usize)>,
    failures: Vec<String>,
}

impl Checker {
    fn check(&mut self, metric: &str, what: &str, got: f64, want: f64) {
        let d = (got - want).abs();
        let e = self.max_diff.entry(metric.to_string()).or_insert((0.0, 0));
        e.0 = e.0.max(d);
        e.1 += 1;
        if d.is_nan() || d > TOL {
            self.failures.push(format!(
                "{metric} {what}: rust {got} python {want} (diff {d:e})"
            ));
        }
    }

    fn finish(self, title: &str) {
        println!("== {title}: max |rust - python| per metric (values checked)");
        for (k, (d, n)) in &self.max_diff {
            println!("  {k:<36} {d:.3e}  ({n})");
        }
        if !self.failures.is_empty() {
            for f in self.failures.iter().take(40) {
                println!("FAIL {f}");
            }
            panic!("{} values differ by more than {TOL}", self.failures.len());
        }
    }
}

struct Pair {
    hyp: String,
    refs: Vec<String>,
}

fn load_pairs(doc: &Json) -> Vec<Pair> {
    doc.get("pairs")
        .arr()
        .iter()
        .map(|p| Pair {
            hyp: p.get("hyp").str().to_string(),
            refs: p
                .get("refs")
                .arr()
                .iter()
                .map(|r| r.str().to_string())
                .collect(),
        })
        .collect()
}

const ROUGE_TYPES: [&str; 4] = ["rouge1", "rouge2", "rougeL", "rougeLsum"];

fn rouge_row(s: &m::RougeScores) -> Vec<f64> {
    let mut v = Vec::with_capacity(12);
    for x in [s.rouge1, s.rouge2, s.rouge_l, s.rouge_lsum] {
        v.extend([x.precision, x.recall, x.f1]);
    }
    v
}

fn rouge_name(col: usize) -> String {
    let stem = if col >= 12 { "stem" } else { "nostem" };
    let t = ROUGE_TYPES[(col % 12) / 3];
    let f = ["precision", "recall", "f1"][col % 3];
    format!("rouge {stem} {t} {f}")
}

#[test]
fn parity_per_pair() {
    let doc = fixture("pairs.json");
    let pairs = load_pairs(&doc);
    assert!(pairs.len() >= 1000, "only {} pairs", pairs.len());
    let hyps: Vec<&str> = pairs.iter().map(|p| p.hyp.as_str()).collect();
    let refs: Vec<Vec<&str>> = pairs
        .iter()
        .map(|p| p.refs.iter().map(String::as_str).collect())
        .collect();
    let coco = m::coco_bleu(&hyps, &refs).unwrap();
    let coco_l = m::coco_rouge_l_corpus(&hyps, &refs).unwrap();
    let scorers = [m::RougeScorer::new(false), m::RougeScorer::new(true)];
    let mut c = Checker::default();
    for (i, (p, want)) in pairs.iter().zip(doc.get("pairs").arr()).enumerate() {
        let what = format!("pair {i} hyp={:?} refs={:?}", p.hyp, p.refs);
        let mut got = Vec::new();
        for s in &scorers {
            got.extend(rouge_row(&s.score_multi(&p.hyp, &p.refs).unwrap()));
        }
        for (col, w) in want.get("rouge").nums().iter().enumerate() {
            c.check(&rouge_name(col), &what, got[col], *w);
        }
        for (k, w) in want.get("coco_bleu").nums().iter().enumerate() {
            c.check(
                &format!("coco sentence bleu{}", k + 1),
                &what,
                coco.per_pair[i][k],
                *w,
            );
        }
        c.check(
            "coco rouge_l",
            &what,
            coco_l.per_pair[i],
            want.get("coco_rouge_l").num(),
        );
        let nl = m::nltk_bleu_1_to_4(&[p.hyp.as_str()], &[refs[i].clone()]).unwrap();
        for (k, w) in want.get("nltk_bleu").nums().iter().enumerate() {
            c.check(&format!("nltk sentence bleu{}", k + 1), &what, nl[k], *w);
        }
    }
    println!("pairs: {}", pairs.len());
    c.finish("per pair");
}

#[test]
fn parity_corpus() {
    let doc = fixture("pairs.json");
    let pairs = load_pairs(&doc);
    let mut c = Checker::default();
    let corpus = doc.get("corpus").obj();
    for (name, want) in corpus {
        let idx: Vec<usize> = want
            .get("indices")
            .nums()
            .iter()
            .map(|&x| x as usize)
            .collect();
        let hyps: Vec<&str> = idx.iter().map(|&i| pairs[i].hyp.as_str()).collect();
        let refs: Vec<Vec<&str>> = idx
            .iter()
            .map(|&i| pairs[i].refs.iter().map(String::as_str).collect())
            .collect();
        let what = format!("subset {name} ({} pairs)", idx.len());
        let cb = m::coco_bleu(&hyps, &refs).unwrap();
        for (k, w) in want.get("coco_bleu").nums().iter().enumerate() {
            c.check(
                &format!("coco corpus bleu{}", k + 1),
                &what,
                cb.corpus[k],
                *w,
            );
        }
        let cl = m::coco_rouge_l_corpus(&hyps, &refs).unwrap();
        c.check(
            "coco corpus rouge_l",
            &what,
            cl.score,
            want.get("coco_rouge_l").num(),
        );
        let nl = m::nltk_bleu_1_to_4(&hyps, &refs).unwrap();
        for (k, w) in want.get("nltk_bleu").nums().iter().enumerate() {
            c.check(&format!("nltk corpus bleu{}", k + 1), &what, nl[k], *w);
        }
        let mut got = rouge_row(
            &m::RougeScorer::new(false)
                .score_corpus(&hyps, &refs)
                .unwrap(),
        );
        got.extend(rouge_row(
            &m::RougeScorer::new(true)
                .score_corpus(&hyps, &refs)
                .unwrap(),
        ));
        for (col, w) in want.get("rouge_mean").nums().iter().enumerate() {
            c.check(
                &format!("corpus mean {}", rouge_name(col)),
                &what,
                got[col],
                *w,
            );
        }
        for (k, w) in want.get("distinct").nums().iter().enumerate() {
            c.check(
                &format!("distinct{}", k + 1),
                &what,
                m::distinct_n(&hyps, k + 1),
                *w,
            );
        }
        if name == "all" {
            let r = m::score_all_with(&hyps, &refs, true, None).unwrap();
            let mean = want.get("rouge_mean").nums();
            c.check("score_all rouge1_f1", &what, r.rouge1_f1, mean[12 + 2]);
            c.check("score_all rouge2_f1", &what, r.rouge2_f1, mean[12 + 5]);
            c.check("score_all rouge_l_f1", &what, r.rouge_l_f1, mean[12 + 8]);
            c.check(
                "score_all rouge_lsum_f1",
                &what,
                r.rouge_lsum_f1,
                mean[12 + 11],
            );
            let b = want.get("coco_bleu").nums();
            for (k, (got, want)) in r.bleu.iter().zip(&b).enumerate() {
                c.check(&format!("score_all bleu{}", k + 1), &what, *got, *want);
            }
            let d = want.get("distinct").nums();
            c.check("score_all distinct1", &what, r.distinct1, d[0]);
            c.check("score_all distinct2", &what, r.distinct2, d[1]);
            assert!(r.meteor.is_none());
        }
    }
    println!("corpus subsets: {}", corpus.len());
    c.finish("corpus");
}

fn check_stems(doc: &Json) -> (usize, Vec<String>) {
    let words = doc.get("words").arr();
    let stems = doc.get("stems").arr();
    assert_eq!(words.len(), stems.len());
    let mut bad = Vec::new();
    for (w, s) in words.iter().zip(stems) {
        let got = m::porter::stem(w.str());
        if got != s.str() {
            bad.push(format!("{} -> rust {got} nltk {}", w.str(), s.str()));
        }
    }
    (words.len(), bad)
}

#[test]
fn parity_porter() {
    let (n, bad) = check_stems(&fixture("porter.json"));
    println!("porter: {n} words, {} mismatches", bad.len());
    assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(40)]);
    if let Ok(path) = std::env::var("PORTER_BIG_FIXTURE") {
        let text = std::fs::read_to_string(&path).expect("PORTER_BIG_FIXTURE unreadable");
        let (n, bad) = check_stems(&Json::parse(&text).expect("bad JSON"));
        println!("porter big ({path}): {n} words, {} mismatches", bad.len());
        assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(40)]);
    }
}

// ---------------------------------------------------------------------------
// Minimal JSON reader (keeps the crate free of dev-dependencies).

#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(#[allow(dead_code)] bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(s: &str) -> Result<Json, String> {
        let mut p = Parser {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(v)
    }
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(kv) => kv
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("missing key {key}")),
            _ => panic!("not an object (looking for {key})"),
        }
    }
    fn obj(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(kv) => kv,
            _ => panic!("not an object"),
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => panic!("not an array"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            _ => panic!("not a string"),
        }
    }
    fn num(&self) -> f64 {
        match self {
            Json::Num(x) => *x,
            _ => panic!("not a number: {self:?}"),
        }
    }
    fn nums(&self) -> Vec<f64> {
        self.arr().iter().map(Json::num).collect()
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.b[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("expected {lit} at {}", self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.peek().ok_or("unexpected end")? {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    self.eat(":")?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => return Err(format!("bad object at {}", self.i)),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("bad array at {}", self.i)),
                    }
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' => self.eat("true").map(|_| Json::Bool(true)),
            b'f' => self.eat("false").map(|_| Json::Bool(false)),
            b'n' => self.eat("null").map(|_| Json::Null),
            _ => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?;
                s.parse::<f64>()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number {s:?}: {e}"))
            }
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let s = std::str::from_utf8(self.b.get(self.i..self.i + 4).ok_or("short \\u")?)
            .map_err(|e| e.to_string())?;
        self.i += 4;
        u32::from_str_radix(s, 16).map_err(|e| e.to_string())
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat("\"")?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.b.len() && self.b[self.i] != b'"' && self.b[self.i] != b'\\' {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?);
            match self.peek().ok_or("unterminated string")? {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => {
                    self.i += 1;
                    let c = self.peek().ok_or("bad escape")?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                self.eat("\\u")?;
                                let lo = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            out.push(char::from_u32(cp).ok_or("bad code point")?);
                        }
                        _ => return Err(format!("bad escape at {}", self.i)),
                    }
                }
            }
        }
    }
}
