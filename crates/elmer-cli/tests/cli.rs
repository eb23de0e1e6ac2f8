//! End-to-end tests of the `elmer` binary: every subcommand, run from the repository root
//! on the committed fixtures (`tests/fixtures` of the repository) and on tiny files made in
//! temporary directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::{Device, Tensor};
use elmer::metrics::{score_all, score_all_with, Meteor};
use elmer::{BartTokenizer, ElmerModel, ExitPolicy, LoadOptions};
use elmer::{GenerationConfig, Generator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const TINY: &str = "tests/fixtures/tiny-random-bart";
const CG: &str = "tests/fixtures/model/cg";

const LINES: [&str; 5] = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "numbers 1 2 3 4 5 6 7 8 9 10 11 12",
    "a",
];

/// The repository root (fixture paths above are relative to it).
fn root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// Runs the binary in `cwd` with `args` and `env`, feeding `stdin` (empty when `None`);
/// `RUST_LOG` is cleared unless `env` sets it.
fn elmer_in(cwd: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elmer"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run elmer");
    {
        let mut i = child.stdin.take().unwrap();
        // The command may exit before reading stdin (errors): ignore a broken pipe.
        let _ = i.write_all(stdin.unwrap_or(b""));
    }
    child.wait_with_output().unwrap()
}

/// Runs the binary from the repository root with `args`, feeding `stdin`.
fn elmer(args: &[&str], stdin: Option<&[u8]>) -> Output {
    elmer_in(&root(), &[], args, stdin)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

/// Asserts a failure with one `error:` line on stderr and returns that line.
#[track_caller]
fn fails(o: Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stdout(&o));
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("error:"), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(&o));
    lines[0].to_string()
}

fn write(dir: &Path, name: &str, content: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

fn lines_file(dir: &Path, name: &str, lines: &[&str]) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    write(dir, name, s.as_bytes())
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The JSON lines without `latency_ms` (a timing).
fn without_latency(vs: &[Value]) -> Vec<Value> {
    vs.iter()
        .map(|v| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("latency_ms");
            v
        })
        .collect()
}

/// A copy of tiny-random-bart with a random `concat_head.weight` [16, 32] and the
/// cross-attention value projections scaled by `cross_scale` (30 makes outputs depend on the
/// source; the original's argmaxes are the same for every input).
fn tiny_copy(cross_scale: f64) -> tempfile::TempDir {
    let tiny = root().join(TINY);
    let (cfg, w, _) = elmer::checkpoint::load_dir(&tiny, &LoadOptions::default()).unwrap();
    let d = cfg.d_model;
    let mut rng = StdRng::seed_from_u64(7);
    let data: Vec<f32> = (0..d * 2 * d)
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    let mut map = w.map().clone();
    for (k, t) in map.iter_mut() {
        if k.contains("encoder_attn.v_proj") {
            *t = (t.clone() * cross_scale).unwrap();
        }
    }
    map.insert(
        "concat_head.weight".into(),
        Tensor::from_vec(data, (d, 2 * d), &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    elmer::checkpoint::save_dir(dir.path(), &cfg, &map).unwrap();
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn library_texts(dir: &str, policy: ExitPolicy, texts: &[&str]) -> Vec<(String, Vec<u32>)> {
    let model = ElmerModel::from_dir(root().join(dir), &LoadOptions::default()).unwrap();
    let tok = BartTokenizer::from_dir(root().join(dir)).unwrap();
    let cfg = GenerationConfig {
        policy: Some(policy),
        ..GenerationConfig::default()
    };
    let mut g = Generator::new(&model, cfg).unwrap().with_tokenizer(&tok);
    g.generate(texts)
        .unwrap()
        .into_iter()
        .map(|g| (g.text, g.ids))
        .collect()
}

#[test]
fn generate_json_is_one_object_per_line_in_input_order() {
    let sens = tiny_copy(30.0);
    let sens_dir = sens.path().display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let input = lines_file(tmp.path(), "in.txt", &LINES);
    for model in [TINY, sens_dir.as_str()] {
        let o = ok(elmer(
            &["generate", "--model", model, "--input", &input, "--json"],
            None,
        ));
        let vs = json_lines(&o);
        assert_eq!(vs.len(), LINES.len());
        let lib = library_texts(model, ExitPolicy::LastLayer, &LINES);
        for (v, (text, ids)) in vs.iter().zip(&lib) {
            let obj = v.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["exit_layers", "ids", "latency_ms", "text"]);
            let got_ids = u32s(&v["ids"]);
            let layers = u32s(&v["exit_layers"]);
            assert!(!got_ids.contains(&2), "{got_ids:?}");
            assert_eq!(layers.len(), got_ids.len());
            assert!(layers.iter().all(|l| (1..=2).contains(l)));
            assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
            assert_eq!(v["text"].as_str().unwrap(), text);
            assert_eq!(&got_ids, ids);
        }
        // Same output from stdin.
        let from_stdin = ok(elmer(
            &["generate", "--model", model, "--json"],
            Some(std::fs::read(&input).unwrap().as_slice()),
        ));
        assert_eq!(
            without_latency(&json_lines(&from_stdin)),
            without_latency(&vs)
        );
        // Plain output: one line per input line, the texts.
        let plain = ok(elmer(
            &["generate", "--model", model, "--input", &input],
            None,
        ));
        let texts: Vec<&str> = vs.iter().map(|v| v["text"].as_str().unwrap()).collect();
        assert_eq!(stdout(&plain).lines().collect::<Vec<_>>(), texts);
        // The summary goes to stderr.
        assert!(stderr(&plain).contains("5 outputs"), "{}", stderr(&plain));
    }
    // On the source-sensitive copy the outputs differ between lines (order is meaningful).
    let o = ok(elmer(
        &["generate", "--model", &sens_dir, "--input", &input],
        None,
    ));
    let out = stdout(&o);
    let distinct: std::collections::HashSet<&str> = out.lines().collect();
    assert!(distinct.len() > 2, "{out}");
}

#[test]
fn generate_exit_policies_batch_size_and_max_len() {
    let tmp = tempfile::tempdir().unwrap();
    let input = lines_file(tmp.path(), "in.txt", &LINES);
    let sens = tiny_copy(30.0);
    let sens_dir = sens.path().display().to_string();
    let run = |model: &str, extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["generate", "--model", model, "--input", &input, "--json"];
        args.extend_from_slice(extra);
        json_lines(&ok(elmer(&args, None)))
    };
    let layers =
        |vs: &[Value]| -> Vec<u32> { vs.iter().flat_map(|v| u32s(&v["exit_layers"])).collect() };

    // hard:0.5 is above no entropy of this random model (all near ln 1000): last layer.
    let last = run(TINY, &[]);
    let hard = run(TINY, &["--exit", "hard:0.5"]);
    assert_eq!(without_latency(&hard), without_latency(&last));
    let hard_all = run(TINY, &["--exit", "hard:100"]);
    assert!(layers(&hard_all).iter().all(|&l| l == 1));

    // Soft exit on the concat_head copies.
    let plain_copy = tiny_copy(1.0);
    for dir in [plain_copy.path().display().to_string(), sens_dir.clone()] {
        let soft = run(&dir, &["--exit", "soft"]);
        assert_eq!(soft.len(), LINES.len());
        assert!(layers(&soft).iter().all(|&l| l == 2));
        let lib = library_texts(&dir, ExitPolicy::Soft, &LINES);
        let texts: Vec<&str> = soft.iter().map(|v| v["text"].as_str().unwrap()).collect();
        assert_eq!(texts, lib.iter().map(|x| x.0.as_str()).collect::<Vec<_>>());
    }

    // Batch size does not change the output.
    for (model, exit) in [
        (TINY, "last"),
        (sens_dir.as_str(), "soft"),
        (sens_dir.as_str(), "last"),
    ] {
        let b1 = run(model, &["--exit", exit, "--batch-size", "1"]);
        let b4 = run(model, &["--exit", exit, "--batch-size", "4"]);
        assert_eq!(without_latency(&b1), without_latency(&b4), "{model} {exit}");
    }

    // --max-len caps the ids.
    for v in run(TINY, &["--max-len", "5"]) {
        assert!(u32s(&v["ids"]).len() <= 5);
    }
    // --collapse-repeats is accepted and keeps the ids.
    let c = run(TINY, &["--collapse-repeats"]);
    for (a, b) in c.iter().zip(&last) {
        assert_eq!(a["ids"], b["ids"]);
    }
}

#[test]
fn empty_input_line_gives_empty_output_line_and_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let input = lines_file(tmp.path(), "in.txt", &["Hello world", "", "  ", "a"]);
    let plain = ok(elmer(
        &["generate", "--model", TINY, "--input", &input],
        None,
    ));
    let out = stdout(&plain);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].is_empty() && lines[2].is_empty());
    assert!(!lines[0].is_empty());
    let err = stderr(&plain);
    assert!(err.contains("warning: input line 2 is empty"), "{err}");
    assert!(err.contains("warning: input line 3 is empty"), "{err}");
    let json = ok(elmer(
        &["generate", "--model", TINY, "--input", &input, "--json"],
        None,
    ));
    let vs = json_lines(&json);
    assert_eq!(vs.len(), 4);
    for v in &vs[1..3] {
        assert_eq!(v["skipped"], "empty input line");
        assert_eq!(v["text"], "");
        assert!(v["ids"].as_array().unwrap().is_empty());
    }
    assert!(vs[0].get("skipped").is_none());
    // The skipped lines do not shift the others.
    let alone = json_lines(&ok(elmer(
        &["generate", "--model", TINY, "--json"],
        Some(b"a\n"),
    )));
    assert_eq!(without_latency(&alone)[0], without_latency(&vs)[3]);
    // CRLF line ends are accepted.
    let crlf = ok(elmer(
        &["generate", "--model", TINY],
        Some(b"Hello world\r\na\r\n"),
    ));
    let crlf_out = stdout(&crlf);
    assert_eq!(crlf_out.lines().collect::<Vec<_>>(), [lines[0], lines[3]]);
}

#[test]
fn errors_are_one_line_and_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let input = lines_file(tmp.path(), "in.txt", &LINES);
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--input", &input];
        args.extend_from_slice(extra);
        elmer(&args, None)
    };
    let e = fails(gen(&["--model", "/nonexistent/model/dir"]));
    assert!(e.contains("/nonexistent/model/dir"), "{e}");
    let e = fails(gen(&["--model", tmp.path().to_str().unwrap()]));
    assert!(e.contains("config.json"), "{e}");
    for bad in ["hard:x", "hard:-1", "fast", "hard:", "hard:nan", "Hard:0.5"] {
        let e = fails(gen(&["--model", TINY, "--exit", bad]));
        assert!(e.contains("--exit"), "{bad}: {e}");
    }
    let e = fails(gen(&["--model", TINY, "--device", "bogus"]));
    assert!(e.contains("bogus"), "{e}");
    let e = fails(gen(&["--model", TINY, "--exit", "soft"]));
    assert!(e.contains("concat_head"), "{e}");
    let e = fails(gen(&["--model", TINY, "--max-len", "0"]));
    assert!(e.contains("max_len"), "{e}");
    let e = fails(gen(&["--model", TINY, "--max-len", "101"]));
    assert!(e.contains("max_len"), "{e}");
    let e = fails(gen(&["--model", TINY, "--batch-size", "0"]));
    assert!(e.contains("batch_size"), "{e}");
    let e = fails(gen(&["--model", CG]));
    assert!(e.contains("tokenizer"), "{e}");

    // Invalid UTF-8 on line 2, from a file and from stdin.
    let bad = write(tmp.path(), "bad.txt", b"fine\nnot \xff utf8\n");
    let e = fails(elmer(&["generate", "--model", TINY, "--input", &bad], None));
    assert!(e.contains("bad.txt") && e.contains("line 2"), "{e}");
    let e = fails(elmer(
        &["generate", "--model", TINY],
        Some(b"fine\nnot \xff utf8\n"),
    ));
    assert!(e.contains("<stdin>") && e.contains("line 2"), "{e}");
    let e = fails(elmer(
        &[
            "generate",
            "--model",
            TINY,
            "--input",
            "/nonexistent/in.txt",
        ],
        None,
    ));
    assert!(e.contains("/nonexistent/in.txt"), "{e}");

    // Score: mismatched line counts name both files and counts.
    let hyp = lines_file(tmp.path(), "hyp.txt", &["a b", "c d", "e"]);
    let r = lines_file(tmp.path(), "ref.txt", &["a b", "c d"]);
    let e = fails(elmer(&["score", "--hyp", &hyp, "--ref", &r], None));
    assert!(
        e.contains("ref.txt")
            && e.contains("hyp.txt")
            && e.contains("2 lines")
            && e.contains("3 lines"),
        "{e}"
    );
}

#[test]
fn tokenize_prints_model_ids() {
    let o = ok(elmer(
        &["tokenize", "--tokenizer", "assets/tokenizer/bart-base"],
        Some(b"Hello world\n"),
    ));
    assert_eq!(stdout(&o), "0 31414 232 2\n");
    let o = ok(elmer(
        &[
            "tokenize",
            "--tokenizer",
            "assets/tokenizer/bart-base",
            "--json",
        ],
        Some(b"Hello world\n"),
    ));
    let vs = json_lines(&o);
    assert_eq!(vs.len(), 1);
    assert_eq!(vs[0]["text"], "Hello world");
    assert_eq!(u32s(&vs[0]["ids"]), [0, 31414, 232, 2]);
    let tokens: Vec<&str> = vs[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["<s>", "Hello", "\u{120}world", "</s>"]);
}

#[test]
fn inspect_reports_parameters_and_concat_head() {
    for (dir, has_concat) in [(CG, true), (TINY, false)] {
        let (_, report) =
            ElmerModel::from_dir_with_report(root().join(dir), &LoadOptions::default()).unwrap();
        let total: usize = report.parameters.values().sum();
        let out = stdout(&ok(elmer(&["inspect", "--model", dir], None)));
        for (part, n) in &report.parameters {
            let line = out
                .lines()
                .find(|l| l.starts_with("params") && l.contains(part.as_str()))
                .unwrap_or_else(|| panic!("no params line for {part}: {out}"));
            assert!(line.contains(&n.to_string()), "{line}");
        }
        assert!(out.contains(&total.to_string()), "{out}");
        let concat = out.lines().find(|l| l.starts_with("concat_head")).unwrap();
        let word = if has_concat { "present" } else { "absent" };
        assert!(concat.contains(word), "{dir}: {concat}");

        let v: Value = serde_json::from_str(&stdout(&ok(elmer(
            &["inspect", "--model", dir, "--json"],
            None,
        ))))
        .unwrap();
        assert_eq!(v["concat_head"], has_concat);
        assert_eq!(v["parameters_total"].as_u64().unwrap() as usize, total);
    }
    // Known numbers for cg (tests/fixtures/model/README.md).
    let out = stdout(&ok(elmer(&["inspect", "--model", CG], None)));
    assert!(out.contains("66208"), "{out}");
}

const HYPS: [&str; 5] = [
    "the cat sat on the mat",
    "a quick brown fox jumped over the dogs",
    "",
    "what is the capital city of france ?",
    "running runs ran",
];
const REFS1: [&str; 5] = [
    "the cat is sitting on the mat",
    "the quick brown fox jumps over the lazy dog",
    "nothing here",
    "what is the capital of france ?",
    "run running",
];
const REFS2: [&str; 5] = [
    "a cat sat on a mat",
    "quick foxes jump",
    "",
    "which city is the capital of france ?",
    "he ran",
];

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() <= 1e-12
}

#[test]
fn score_json_matches_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let hyp = lines_file(tmp.path(), "hyp.txt", &HYPS);
    let r1 = lines_file(tmp.path(), "r1.txt", &REFS1);
    let r2 = lines_file(tmp.path(), "r2.txt", &REFS2);
    let refs: Vec<Vec<&str>> = (0..HYPS.len()).map(|i| vec![REFS1[i], REFS2[i]]).collect();
    let lib = score_all(&HYPS, &refs).unwrap();
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &["score", "--hyp", &hyp, "--ref", &r1, "--ref", &r2, "--json"],
        None,
    ))))
    .unwrap();
    assert_eq!(v["num_pairs"], 5);
    assert_eq!(v["num_refs"], 2);
    assert_eq!(v["rouge_stemmed"], true);
    assert!(close(&v["rouge1_f1"], lib.rouge1_f1), "{v}");
    assert!(close(&v["rouge2_f1"], lib.rouge2_f1));
    assert!(close(&v["rouge_l_f1"], lib.rouge_l_f1));
    assert!(close(&v["rouge_lsum_f1"], lib.rouge_lsum_f1));
    for n in 0..4 {
        assert!(close(&v[format!("bleu{}", n + 1)], lib.bleu[n]));
    }
    assert!(close(&v["rouge_l_coco"], lib.rouge_l_coco));
    assert!(close(&v["meteor"], lib.meteor.unwrap()));
    assert!(close(&v["distinct1_pct"], lib.distinct1));
    assert!(close(&v["distinct2_pct"], lib.distinct2));
    assert!(lib.rouge1_f1 > 0.3 && lib.bleu[0] > 0.3 && lib.distinct1 > 50.0);

    // Table: percent with 2 decimals.
    let table = stdout(&ok(elmer(
        &["score", "--hyp", &hyp, "--ref", &r1, "--ref", &r2],
        None,
    )));
    for (name, value) in [
        ("ROUGE-1 F1", lib.rouge1_f1 * 100.0),
        ("ROUGE-L F1", lib.rouge_l_f1 * 100.0),
        ("BLEU-4", lib.bleu[3] * 100.0),
        ("ROUGE-L (coco)", lib.rouge_l_coco * 100.0),
        ("METEOR", lib.meteor.unwrap() * 100.0),
        ("Distinct-2", lib.distinct2),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {table}"));
        assert!(line.contains(&format!("{value:.2}")), "{line}");
    }
    // All value columns line up.
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 12, "{table}");
    let col = rows[0].find("  rouge-score").unwrap();
    assert!(
        rows.iter().all(|r| r.find("  ").is_some() && r.len() > col),
        "{table}"
    );

    // --no-stem and --no-meteor; one reference.
    let one: Vec<Vec<&str>> = REFS1.iter().map(|r| vec![*r]).collect();
    let lib = score_all_with(&HYPS, &one, false, None).unwrap();
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r1,
            "--json",
            "--no-stem",
            "--no-meteor",
        ],
        None,
    ))))
    .unwrap();
    assert_eq!(v["rouge_stemmed"], false);
    assert!(v["meteor"].is_null());
    assert!(close(&v["rouge1_f1"], lib.rouge1_f1));
    assert!(close(&v["bleu4"], lib.bleu[3]));
    let table = stdout(&ok(elmer(
        &["score", "--hyp", &hyp, "--ref", &r1, "--no-meteor"],
        None,
    )));
    assert!(table.contains("skipped"), "{table}");
}

#[test]
fn score_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let hyp = lines_file(tmp.path(), "hyp.txt", &["a b", "c"]);
    let r = lines_file(tmp.path(), "ref.txt", &["a b", "c"]);
    let bad = write(tmp.path(), "badref.txt", b"a b\n\xc3\x28\n");
    let e = fails(elmer(&["score", "--hyp", &hyp, "--ref", &bad], None));
    assert!(e.contains("badref.txt") && e.contains("line 2"), "{e}");
    let empty = write(tmp.path(), "empty.txt", b"");
    let e = fails(elmer(&["score", "--hyp", &empty, "--ref", &empty], None));
    assert!(e.contains("empty.txt"), "{e}");
    let e = fails(elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r,
            "--meteor-synonyms",
            "/nonexistent/synonyms",
        ],
        None,
    ));
    assert!(e.contains("/nonexistent/synonyms"), "{e}");
    let e = fails(elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r,
            "--ref",
            "/nonexistent/r2.txt",
        ],
        None,
    ));
    assert!(e.contains("/nonexistent/r2.txt"), "{e}");
    // Usage errors come from the argument parser (exit code 2).
    let o = elmer(&["score", "--hyp", &hyp], None);
    assert_eq!(o.status.code(), Some(2));
    let o = elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r,
            "--no-meteor",
            "--meteor-synonyms",
            "x",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    // The long help says which scorers the numbers match.
    let help = stdout(&ok(elmer(&["score", "--help"], None)));
    for s in ["rouge-score", "pycocoevalcap", "METEOR 1.5", "files2rouge"] {
        assert!(help.contains(s), "{s}: {help}");
    }
}

// ------------------------------------------------------------------ --help, defaults, logs

const SUBCOMMANDS: [&str; 9] = [
    "generate", "tokenize", "inspect", "score", "init", "pretrain", "finetune", "eval", "export",
];

#[test]
fn help_of_every_subcommand() {
    let top = stdout(&ok(elmer(&["--help"], None)));
    for sub in SUBCOMMANDS {
        assert!(top.contains(&format!("  {sub} ")), "{sub}: {top}");
        let help = stdout(&ok(elmer(&[sub, "--help"], None)));
        assert!(
            help.contains(&format!("Usage: elmer {sub}")),
            "{sub}: {help}"
        );
        assert!(help.contains("--verbose"), "{sub}: {help}");
    }
    for (sub, flags) in [
        (
            "finetune",
            &[
                "--task",
                "--pretrained",
                "--steps",
                "--sweep",
                "--out",
                "--glance",
                "--oaxe",
                "--oaxe-fixed-ends",
            ][..],
        ),
        (
            "eval",
            &["--task", "--model", "--exit", "--limit", "--sweep"][..],
        ),
        (
            "pretrain",
            &["--corpus", "--preset", "--init-from", "--k", "--out"][..],
        ),
        ("score", &["--meteor-jar", "--no-meteor"][..]),
        ("init", &["--preset", "--tokenizer", "--seed", "--out"][..]),
    ] {
        let help = stdout(&ok(elmer(&[sub, "--help"], None)));
        for f in flags {
            assert!(help.contains(f), "{sub} {f}: {help}");
        }
    }
    let help = stdout(&ok(elmer(&["eval", "--help"], None)));
    assert!(help.contains("squad") && help.contains("xsum") && help.contains("personachat"));
    assert_eq!(
        elmer(&["eval", "--task", "bogus"], None).status.code(),
        Some(2)
    );
    assert!(stdout(&ok(elmer(&["--version"], None))).starts_with("elmer "));
}

#[test]
fn default_model_is_the_working_directory_copy_else_the_repository_copy() {
    // From the repository root: the relative path.
    let help = stdout(&ok(elmer(&["generate", "--help"], None)));
    assert!(
        help.contains("[default: models/elmer-small-squadqg]"),
        "{help}"
    );
    // Elsewhere: the repository's copy, which generate then uses.
    let tmp = tempfile::tempdir().unwrap();
    let help = stdout(&ok(elmer_in(tmp.path(), &[], &["inspect", "--help"], None)));
    let repo_copy = root().join("models/elmer-small-squadqg");
    assert!(
        help.contains(&format!("[default: {}]", repo_copy.display())),
        "{help}"
    );
    let o = ok(elmer_in(
        tmp.path(),
        &[],
        &["generate", "--max-len", "8"],
        Some(b"oxygen is a chemical element .\n"),
    ));
    assert_eq!(stdout(&o).lines().count(), 1);
    assert!(stderr(&o).contains("1 outputs"), "{}", stderr(&o));
}

#[test]
fn logs_follow_verbose_and_rust_log() {
    let args = ["generate", "--model", TINY];
    let plain = ok(elmer(&args, Some(b"Hello world\n")));
    assert!(!stderr(&plain).contains("debug:"), "{}", stderr(&plain));
    let verbose = ok(elmer(
        &["-v", "generate", "--model", TINY],
        Some(b"Hello world\n"),
    ));
    let err = stderr(&verbose);
    assert!(err.contains("debug: ") && err.contains("loaded"), "{err}");
    assert!(err.contains("1 outputs"), "{err}");
    // RUST_LOG replaces the default filter.
    let quiet = ok(elmer_in(
        &root(),
        &[("RUST_LOG", "elmer=warn")],
        &args,
        Some(b"Hello world\n\n"),
    ));
    let err = stderr(&quiet);
    assert!(!err.contains("outputs"), "{err}");
    assert!(err.contains("warning: input line 2 is empty"), "{err}");
    assert_eq!(stdout(&quiet), stdout(&plain) + "\n");
}

// ------------------------------------------------------------------ training subcommands

/// A task directory in the ELMER line format: `{train,valid,test}.src/.tgt`.
fn task_data(dir: &Path) {
    let sources = [
        "the eiffel tower was completed in 1889 .",
        "oxygen is a chemical element with symbol o .",
        "notre dame was founded in 1842 .",
        "beyonce released her debut album in 2003 .",
        "the thames flows through london .",
        "water boils at 100 degrees .",
    ];
    let targets = [
        "when was the eiffel tower completed ?",
        "what is the symbol of oxygen ?",
        "when was notre dame founded ?",
        "when did beyonce release her debut album ?",
        "which river flows through london ?",
        "at what temperature does water boil ?",
    ];
    for (split, range) in [("train", 0..6), ("valid", 0..2), ("test", 3..6)] {
        lines_file(dir, &format!("{split}.src"), &sources[range.clone()]);
        lines_file(dir, &format!("{split}.tgt"), &targets[range]);
    }
}

/// The table rows (`| name | ...`) of an eval report, by exit name.
fn table_rows(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| exit"))
        .map(|l| l.split('|').nth(1).unwrap().trim().to_string())
        .collect()
}

#[test]
fn finetune_then_eval_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    task_data(&data);
    let d = data.display().to_string();
    let run = tmp.path().join("run").display().to_string();
    let gens = tmp.path().join("gen.txt").display().to_string();
    let eval_args = ["--latency-samples", "1", "--gen-batch-size", "4"];
    let mut args = vec![
        "finetune",
        "--task",
        "squad",
        "--pretrained",
        TINY,
        "--data",
        &d,
        "--out",
        &run,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "1",
        "--output",
        &gens,
    ];
    args.extend_from_slice(&eval_args);
    let o = ok(elmer(&args, None));
    let out = stdout(&o);
    assert!(
        out.contains("| exit | ROUGE-L | BLEU-4 | METEOR | ms/sample (batch 1) | mean exit layer | exit L1 | exit L2 |"),
        "{out}"
    );
    assert_eq!(
        table_rows(&out),
        ["soft", "paper ELMER-Soft (base size, V100 GPU)"]
    );
    assert!(out.contains("40.22 | 13.49 | 20.08"), "{out}");
    let err = stderr(&o);
    assert!(
        err.contains("squad-qg: 6 train / 2 valid / 3 test examples"),
        "{err}"
    );
    assert!(err.contains("initialised concat_head"), "{err}");
    assert_eq!(std::fs::read_to_string(&gens).unwrap().lines().count(), 3);
    let best = Path::new(&run).join("best");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(best.join(f).is_file(), "{f}");
    }
    assert!(Path::new(&run).join("latest").is_file());
    let best_s = best.display().to_string();

    // eval of the checkpoint: the first policy, then the sweep.
    let plot = tmp.path().join("exits.svg");
    let plot_s = plot.display().to_string();
    let mut args = vec![
        "eval",
        "--task",
        "squad",
        "--model",
        &best_s,
        "--data",
        &d,
        "--exit",
        "last",
        "--sweep",
        "--exit-plot",
        &plot_s,
    ];
    args.extend_from_slice(&eval_args);
    let out = stdout(&ok(elmer(&args, None)));
    assert!(
        out.contains("exit last: ") && out.contains(" distinct outputs for 3 distinct sources ("),
        "{out}"
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    // 10 policies x 2 layers.
    assert_eq!(svg.matches("<title>").count(), 20, "{svg}");
    assert!(
        out.starts_with("squad-qg: 3 test examples, model "),
        "{out}"
    );
    assert_eq!(
        table_rows(&out),
        [
            "last",
            "soft",
            "hard:0",
            "hard:0.25",
            "hard:0.5",
            "hard:1",
            "hard:2",
            "hard:3",
            "hard:4",
            "hard:5",
            "paper ELMER-Soft (base size, V100 GPU)"
        ]
    );
    // A resumed run at its last step trains no more and evaluates again.
    let mut args = vec![
        "finetune",
        "--task",
        "squad",
        "--pretrained",
        TINY,
        "--data",
        &d,
        "--out",
        &run,
        "--steps",
        "2",
    ];
    args.extend_from_slice(&eval_args);
    let o = ok(elmer(&args, None));
    assert!(stderr(&o).contains("resumed from step 2"), "{}", stderr(&o));

    // export: f16 weights with the tokenizer, loadable by inspect and generate.
    let exported = tmp.path().join("exported").display().to_string();
    let out = stdout(&ok(elmer(&["export", &best_s, &exported], None)));
    assert!(
        out.starts_with("exported ") && out.contains("MB f16"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &["inspect", "--model", &exported, "--json"],
        None,
    ))))
    .unwrap();
    assert_eq!(v["stored_dtype"], "F16");
    assert_eq!(v["concat_head"], true);
    let o = ok(elmer(
        &["generate", "--model", &exported, "--exit", "soft"],
        Some(b"Hello world\n"),
    ));
    assert_eq!(stdout(&o).lines().count(), 1);

    // Errors stay one line.
    let e = fails(elmer(
        &[
            "finetune",
            "--task",
            "squad",
            "--pretrained",
            TINY,
            "--data",
            &d,
            "--exit",
            "fast",
        ],
        None,
    ));
    assert!(e.contains("--exit"), "{e}");
    let e = fails(elmer(
        &["eval", "--task", "squad", "--data", "/nonexistent/squad"],
        None,
    ));
    assert!(e.contains("/nonexistent/squad"), "{e}");
}

#[test]
fn eval_reports_each_tasks_columns() {
    let tmp = tempfile::tempdir().unwrap();
    task_data(tmp.path());
    let d = tmp.path().display().to_string();
    for (task, columns) in [
        ("xsum", "| exit | ROUGE-1 | ROUGE-2 | ROUGE-L | ms/sample"),
        (
            "personachat",
            "| exit | BLEU-1 | BLEU-2 | Distinct-1 | Distinct-2 | ms/sample",
        ),
        ("squad", "| exit | ROUGE-L | BLEU-4 | METEOR | ms/sample"),
    ] {
        let out = stdout(&ok(elmer(
            &[
                "eval",
                "--task",
                task,
                "--model",
                TINY,
                "--data",
                &d,
                "--exit",
                "last",
                "--latency-samples",
                "1",
                "--limit",
                "2",
            ],
            None,
        )));
        assert!(out.contains(columns), "{task}: {out}");
        assert!(out.contains(" 2 test examples"), "{task}: {out}");
        assert_eq!(table_rows(&out)[0], "last", "{task}: {out}");
    }
}

/// A six-sentence pre-training corpus.
const CORPUS: &[&str] = &[
    "the eiffel tower was completed in 1889 and was the tallest structure in the world .",
    "oxygen is a chemical element with symbol o and atomic number 8 .",
    "the university of notre dame was founded in 1842 by father edward sorin .",
    "beyonce released her debut album , dangerously in love , in 2003 .",
    "the thames flows through london and is 346 km long .",
    "water boils at 100 degrees at sea level .",
];

/// The options of a two-step pre-training run on [`CORPUS`].
const TINY_PRETRAIN: &[&str] = &[
    "--batch-size",
    "2",
    "--k",
    "1",
    "--max-len",
    "16",
    "--valid-docs",
    "2",
    "--warmup",
    "1",
    "--eval-every",
    "1",
    "--save-every",
    "1",
];

#[test]
fn pretrain_two_steps_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = lines_file(tmp.path(), "corpus.txt", CORPUS);
    let out_dir = tmp.path().join("pre");
    let out_s = out_dir.display().to_string();
    let run = |steps: &str| {
        elmer(
            &[
                "pretrain",
                "--corpus",
                &corpus,
                "--out",
                &out_s,
                "--steps",
                steps,
                "--init-from",
                TINY,
                "--tokenizer",
                TINY,
            ]
            .iter()
            .chain(TINY_PRETRAIN)
            .copied()
            .collect::<Vec<_>>(),
            None,
        )
    };
    let o = ok(run("2"));
    let out = stdout(&o);
    for s in [
        "reconstruction accuracy per exit layer (held-out) before this run: L1=",
        "reconstruction accuracy per exit layer (held-out) after this run:  L1=",
        "training throughput: ",
        "held-out LPLM loss: first ",
        "(step 2)",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    assert!(
        stderr(&o).contains("train / 2 held-out chunks of <= 16 tokens"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("latest")).unwrap(),
        "checkpoint-0000002"
    );
    let history: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("history.json")).unwrap())
            .unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    // best/ has the tokenizer: generate can use it as is.
    let best = out_dir.join("best").display().to_string();
    ok(elmer(
        &["generate", "--model", &best],
        Some(b"Hello world\n"),
    ));
    // One more step resumes from the checkpoint.
    let o = ok(run("3"));
    assert!(stderr(&o).contains("resumed from step 2"), "{}", stderr(&o));
    assert!(stdout(&o).contains("(step 3)"), "{}", stdout(&o));
    // Bad options are one-line errors.
    let e = fails(elmer(
        &[
            "pretrain",
            "--corpus",
            &corpus,
            "--out",
            &out_s,
            "--preset",
            "huge",
            "--no-resume",
        ],
        None,
    ));
    assert!(e.contains("--preset"), "{e}");
}

#[test]
fn own_vocabulary_pretrain_finetune_hard_records_its_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = lines_file(tmp.path(), "corpus.txt", CORPUS);
    let tok_dir = tmp.path().join("tok");
    let tok_s = tok_dir.display().to_string();
    let out = stdout(&ok(elmer(
        &[
            "tokenizer",
            "train",
            "--corpus",
            &corpus,
            "--vocab-size",
            "300",
            "--min-frequency",
            "1",
            "--out",
            &tok_s,
        ],
        None,
    )));
    assert!(
        out.starts_with("trained a 300-id byte-level BPE vocabulary on 1 file(s)"),
        "{out}"
    );
    assert!(out.contains("<mask> = 299"), "{out}");
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        assert!(tok_dir.join(f).is_file(), "{f}");
    }
    // Pre-training from scratch takes the vocabulary's size and <mask> id.
    let pre = tmp.path().join("pre");
    let pre_s = pre.display().to_string();
    ok(elmer(
        &[
            "pretrain",
            "--corpus",
            &corpus,
            "--tokenizer",
            &tok_s,
            "--preset",
            "tiny",
            "--out",
            &pre_s,
            "--steps",
            "2",
        ]
        .iter()
        .chain(TINY_PRETRAIN)
        .copied()
        .collect::<Vec<_>>(),
        None,
    ));
    let best = pre.join("best").display().to_string();
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &["inspect", "--model", &best, "--json"],
        None,
    ))))
    .unwrap();
    assert_eq!(v["config"]["vocab_size"], 300, "{v}");
    assert_eq!(v["config"]["elmer_mask_token_id"], 299, "{v}");
    let o = ok(elmer(
        &["generate", "--model", &best],
        Some(b"water boils .\n"),
    ));
    assert_eq!(stdout(&o).lines().count(), 1);
    // `init` writes a fresh model directory with the vocabulary (what the recipe fine-tunes
    // from), and refuses to write into a non-empty one.
    let init = tmp.path().join("init");
    let init_s = init.display().to_string();
    let init_args = [
        "init",
        "--preset",
        "tiny",
        "--tokenizer",
        &tok_s,
        "--out",
        &init_s,
        "--seed",
        "3",
    ];
    let out = stdout(&ok(elmer(&init_args, None)));
    assert!(
        out.contains("tiny preset, d 64 2+2 layers, vocabulary 300"),
        "{out}"
    );
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(init.join(f).is_file(), "{f}");
    }
    let err = fails(elmer(&init_args, None));
    assert!(err.contains("--out") && err.contains("not empty"), "{err}");
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &["inspect", "--model", &init_s, "--json"],
        None,
    ))))
    .unwrap();
    assert_eq!(v["config"]["vocab_size"], 300, "{v}");
    assert_eq!(v["config"]["elmer_mask_token_id"], 299, "{v}");
    // Hard-exit fine-tuning (here from the fresh weights) records a policy (a threshold
    // chosen on validation data, or last when none keeps the score) and the slot; generate
    // then uses them by default.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    task_data(&data);
    let d = data.display().to_string();
    let run = tmp.path().join("hard");
    let run_s = run.display().to_string();
    ok(elmer(
        &[
            "finetune",
            "--task",
            "squad",
            "--pretrained",
            &init_s,
            "--data",
            &d,
            "--out",
            &run_s,
            "--exit",
            "hard",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "1",
            "--max-len",
            "12",
            "--latency-samples",
            "1",
            "--gen-batch-size",
            "4",
        ],
        None,
    ));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/config.json")).unwrap())
            .unwrap();
    let policy = cfg["elmer_exit_policy"].as_str().unwrap().to_string();
    assert!(policy.starts_with("hard:") || policy == "last", "{policy}");
    assert_eq!(cfg["elmer_max_len"], 12);
    let tuned = run.join("best").display().to_string();
    let o = ok(elmer(
        &["-v", "generate", "--model", &tuned, "--json"],
        Some(b"water boils .\n"),
    ));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("exit policy {policy}, slot 12 tokens")),
        "{err}"
    );
    let vs = json_lines(&o);
    assert!(u32s(&vs[0]["ids"]).len() <= 12);
    // A checkpoint of the run (no tokenizer files of its own) finds the run directory's
    // tokenizer, so it generates and evaluates with the model's 300-id vocabulary.
    let ckpt = run.join("checkpoint-0000002");
    assert!(!ckpt.join("tokenizer.json").exists());
    let ckpt_s = ckpt.display().to_string();
    let o = ok(elmer(
        &["generate", "--model", &ckpt_s, "--json"],
        Some(b"water boils .\n"),
    ));
    assert!(u32s(&json_lines(&o)[0]["ids"]).iter().all(|&id| id < 300));
}

#[test]
fn finetune_in_two_sittings_with_stop_at() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    task_data(&data);
    let d = data.display().to_string();
    let run = tmp.path().join("run");
    let run_s = run.display().to_string();
    let args = |extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "finetune",
            "--task",
            "squad",
            "--pretrained",
            TINY,
            "--data",
            &d,
            "--out",
            &run_s,
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--eval-every",
            "1",
            "--latency-samples",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let first = args(&["--stop-at", "2"]);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let o = ok(elmer(&first, None));
    assert!(
        stderr(&o).contains("stopped at step 2 of 3"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stdout(&o).contains("| soft |"),
        "no evaluation before the end"
    );
    let cfg = std::fs::read_to_string(run.join("best/config.json")).unwrap();
    assert!(!cfg.contains("elmer_exit_policy"), "{cfg}");
    let second = args(&[]);
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let o = ok(elmer(&second, None));
    assert!(stderr(&o).contains("resumed from step 2"), "{}", stderr(&o));
    let cfg = std::fs::read_to_string(run.join("best/config.json")).unwrap();
    assert!(cfg.contains("\"elmer_exit_policy\": \"soft\""), "{cfg}");
}

// ------------------------------------------------------------------ score --meteor-jar

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip archive of stored (uncompressed) entries.
fn zip_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let offset = out.len() as u32;
        let (crc, size, n) = (crc32(data), data.len() as u32, name.len() as u16);
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method, time, date
        out.extend(crc.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend(n.to_le_bytes());
        central.extend([0u8; 12]); // extra, comment, disk, attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[test]
fn score_meteor_jar_uses_the_jars_tables() {
    let tmp = tempfile::tempdir().unwrap();
    // meteor-1.5.jar's table entries, with tiny tables (`word\nsynsets\n`, `base\nforms\n`,
    // `probability\nphrase\nparaphrase\n`; a plain-text paraphrase table is accepted).
    let jar = tmp.path().join("meteor-1.5.jar");
    std::fs::write(
        &jar,
        zip_stored(&[
            (
                "synonym/english.synsets",
                b"cat\n1\nfeline\n1\nmat\n2\nrug\n2\n",
            ),
            ("synonym/english.exceptions", b"mouse\nmice\n"),
            (
                "data/paraphrase-en.gz",
                b"0.5\nsat on\nwas sitting on\n0.5\nwas sitting on\nsat on\n",
            ),
        ]),
    )
    .unwrap();
    let hyp = lines_file(
        tmp.path(),
        "hyp.txt",
        &["the feline was sitting on the rug", "a cat"],
    );
    let r = lines_file(tmp.path(), "ref.txt", &["the cat sat on the mat", "a cat"]);
    let jar_s = jar.display().to_string();
    let v: Value = serde_json::from_str(&stdout(&ok(elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r,
            "--meteor-jar",
            &jar_s,
            "--json",
        ],
        None,
    ))))
    .unwrap();
    let lib = Meteor::default().with_jar(&jar).unwrap();
    let want = lib
        .score_corpus(
            &["the feline was sitting on the rug", "a cat"],
            &[vec!["the cat sat on the mat"], vec!["a cat"]],
        )
        .unwrap();
    assert!(close(&v["meteor"], want), "{v} vs {want}");
    let plain: Value = serde_json::from_str(&stdout(&ok(elmer(
        &["score", "--hyp", &hyp, "--ref", &r, "--json"],
        None,
    ))))
    .unwrap();
    assert!(
        v["meteor"].as_f64().unwrap() > plain["meteor"].as_f64().unwrap(),
        "{v} {plain}"
    );
    assert_eq!(
        v["meteor_modules"],
        serde_json::json!(["exact", "stem", "synonym", "paraphrase"])
    );
    let table = stdout(&ok(elmer(
        &["score", "--hyp", &hyp, "--ref", &r, "--meteor-jar", &jar_s],
        None,
    )));
    assert!(table.contains("exact+stem+synonym+paraphrase"), "{table}");

    // Not a jar, no jar: one-line errors naming the file.
    let bad = write(tmp.path(), "bad.jar", b"not a zip");
    let e = fails(elmer(
        &["score", "--hyp", &hyp, "--ref", &r, "--meteor-jar", &bad],
        None,
    ));
    assert!(e.contains("--meteor-jar") && e.contains("bad.jar"), "{e}");
    let e = fails(elmer(
        &[
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &r,
            "--meteor-jar",
            "/nonexistent/meteor.jar",
        ],
        None,
    ));
    assert!(e.contains("/nonexistent/meteor.jar"), "{e}");
    // The jar's tables replace --meteor-synonyms/--meteor-paraphrase; --no-meteor skips it.
    for other in [
        &["--meteor-synonyms", "x"][..],
        &["--meteor-paraphrase", "x"][..],
        &["--no-meteor"][..],
    ] {
        let mut args = vec!["score", "--hyp", &hyp, "--ref", &r, "--meteor-jar", &jar_s];
        args.extend_from_slice(other);
        assert_eq!(elmer(&args, None).status.code(), Some(2), "{other:?}");
    }
}

/// Output errors (a closed pipe, a full disk) give one line and exit 1 in every subcommand
/// that writes to stdout (`inspect ... | head -1` used to panic with "failed printing to
/// stdout"; with stdout closed `generate` used to exit 0 and lose its output).
#[cfg(unix)]
#[test]
fn output_errors_are_one_line_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let input = lines_file(tmp.path(), "in.txt", &LINES);
    let hyp = lines_file(tmp.path(), "hyp.txt", &LINES);
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", "--model", TINY, "--json"],
        vec!["inspect", "--model", TINY],
        vec![
            "score",
            "--hyp",
            &hyp,
            "--ref",
            &hyp,
            "--json",
            "--no-meteor",
        ],
        vec!["score", "--hyp", &hyp, "--ref", &hyp, "--no-meteor"],
        vec!["generate", "--model", TINY, "--input", &input],
        vec!["tokenize", "--tokenizer", TINY, "--input", &input],
    ];
    for args in &cases {
        // A full disk.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        if let Ok(full) = full {
            let o = Command::new(env!("CARGO_BIN_EXE_elmer"))
                .args(args)
                .current_dir(root())
                .env_remove("RUST_LOG")
                .stdout(Stdio::from(full))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.starts_with("error:") && err.contains("<stdout>"),
                "{args:?}: {err}"
            );
        }
        // A reader that has gone away: the pipe's read end is closed before the command
        // starts (closing it after the spawn raced with a fast command finishing its output).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_elmer"))
            .args(args)
            .current_dir(root())
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
    }
}

/// The one-line error stays one line whatever `RUST_BACKTRACE` says.
#[test]
fn errors_stay_one_line_with_rust_backtrace() {
    for bt in ["1", "full"] {
        for extra in [
            vec!["--model", TINY, "--device", "cuda:0"],
            vec!["--model", "/nonexistent/dir"],
        ] {
            let mut args = vec!["generate"];
            args.extend(extra);
            let o = elmer_in(&root(), &[("RUST_BACKTRACE", bt)], &args, Some(b"hello\n"));
            fails(o);
        }
    }
}

/// `generate` streams: the outputs of the first window of lines are on stdout while stdin is
/// still open (so a killed run keeps what was done, and memory stays flat on long inputs);
/// and long sources are cut with a warning and a count.
#[test]
fn generate_streams_and_reports_truncation() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_elmer"))
        .args(["generate", "--model", TINY, "--batch-size", "2"])
        .current_dir(root())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // --batch-size 2: windows of 64 lines.
    for i in 0..64 {
        writeln!(stdin, "{} {i}", LINES[i % LINES.len()]).unwrap();
    }
    stdin.flush().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut got = Vec::new();
        for _ in 0..64 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            got.push(l);
        }
        tx.send((got, r)).unwrap();
    });
    let (got, mut rest) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("no output before the end of the input: generate does not stream");
    assert_eq!(got.len(), 64);
    let long = "word ".repeat(300);
    writeln!(stdin, "{long}").unwrap();
    drop(stdin);
    let mut last = String::new();
    std::io::Read::read_to_string(&mut rest, &mut last).unwrap();
    assert_eq!(last.lines().count(), 1);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(err.contains("input line 65 has"), "{err}");
    assert!(err.contains("1 input line(s) were longer"), "{err}");
}

// ------------------------------------------------------------------ length head

#[test]
fn finetune_with_a_length_head_records_the_offset_it_chose() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    task_data(&data);
    let d = data.display().to_string();
    let run = tmp.path().join("run");
    let run_s = run.display().to_string();
    let base = [
        "finetune",
        "--task",
        "squad",
        "--pretrained",
        TINY,
        "--data",
        &d,
        "--out",
        &run_s,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--latency-samples",
        "1",
        "--length-loss",
        "0.1",
    ];
    // The length head goes with the target-length slot.
    let e = fails(elmer(&base, None));
    assert!(
        e.contains("--length-loss") && e.contains("--train-slot target"),
        "{e}"
    );
    let mut args = base.to_vec();
    args.extend(["--train-slot", "target", "--length-candidates", "2"]);
    let o = ok(elmer(&args, None));
    let err = stderr(&o);
    assert!(err.contains("initialised length_head"), "{err}");
    for off in ["-2", "+0", "+6"] {
        assert!(
            err.contains(&format!("length offset {off}: score")),
            "{err}"
        );
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("best/config.json")).unwrap())
            .unwrap();
    let off = cfg["elmer_length_offset"].as_i64().unwrap();
    assert!((-2..=6).contains(&off), "{cfg}");
    assert!(
        err.contains(&format!("recorded length offset {off:+}")),
        "{err}"
    );
    // The length beam the offset was chosen with is recorded too.
    assert_eq!(cfg["elmer_length_candidates"].as_u64(), Some(2), "{cfg}");
    // So is whether dropping orphan subword pieces scored better on validation.
    let drop = cfg["elmer_drop_orphan_pieces"].as_bool().unwrap();
    assert!(
        err.contains(&format!("recorded drop orphan pieces {drop}")),
        "{err}"
    );
    // With --length slot generation never reads the head: validation decodes the full slot
    // and no offset is chosen.
    let run2 = tmp.path().join("run2").display().to_string();
    let mut slot_args: Vec<&str> = base.to_vec();
    let at = slot_args.iter().position(|a| *a == "--out").unwrap() + 1;
    slot_args[at] = &run2;
    slot_args.extend(["--train-slot", "target", "--length", "slot"]);
    let o = ok(elmer(&slot_args, None));
    let err2 = stderr(&o);
    assert!(!err2.contains("length offset +0: score"), "{err2}");
    let cfg2: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("run2/best/config.json")).unwrap(),
    )
    .unwrap();
    assert!(cfg2.get("elmer_length_offset").is_none(), "{cfg2}");
    // The orphan-piece choice does not need a length head.
    assert!(cfg2["elmer_drop_orphan_pieces"].is_boolean(), "{cfg2}");
    // generate decodes the predicted length (plus the offset) by default; --length slot
    // gives the full slot back; both run.
    let best = run.join("best").display().to_string();
    for extra in [
        &[][..],
        &["--length", "slot"][..],
        &["--length-offset", "-1"][..],
    ] {
        let mut g = vec!["generate", "--model", &best];
        g.extend_from_slice(extra);
        ok(elmer(&g, Some(b"Hello world\n")));
    }
    // calibrate chooses the settings again on the validation split, here for hard exit
    // and one length, and rewrites config.json (the weights are untouched).
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(run.join("best")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
    }
    let copy_s = copy.display().to_string();
    let weights = std::fs::read(copy.join("model.safetensors")).unwrap();
    let cal = [
        "calibrate",
        "--task",
        "squad",
        "--data",
        &d,
        "--model",
        &copy_s,
        "--exit",
        "hard:1",
        "--length-candidates",
        "1",
    ];
    let o = ok(elmer(&cal, None));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("before: exit soft") && out.contains("length candidates 2"),
        "{out}"
    );
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("elmer_length_candidates").is_none(), "{cfg}");
    let policy = cfg["elmer_exit_policy"].as_str().unwrap();
    assert!(policy.starts_with("hard:") || policy == "last", "{cfg}");
    assert!(out.contains(&format!("after:  exit {policy}")), "{out}");
    let err = stderr(&o);
    assert!(err.contains("hard:0.1: score"), "{err}");
    // The orphan-piece choice is scored both ways and recorded.
    assert!(err.contains("orphan subword pieces: kept"), "{err}");
    let drop = cfg["elmer_drop_orphan_pieces"].as_bool().unwrap();
    assert!(out.contains(&format!("drop orphan pieces {drop}")), "{out}");
    assert_eq!(
        std::fs::read(copy.join("model.safetensors")).unwrap(),
        weights
    );
    // Bad arguments are one-line errors naming the option.
    let mut zero = cal.to_vec();
    let n = zero.len();
    zero[n - 1] = "0";
    let e = fails(elmer(&zero, None));
    assert!(e.contains("--length-candidates"), "{e}");
    let e = fails(elmer(
        &[
            "calibrate",
            "--task",
            "squad",
            "--data",
            &d,
            "--model",
            TINY,
            "--length-candidates",
            "3",
        ],
        None,
    ));
    assert!(e.contains("length head"), "{e}");
}

#[test]
fn a_collective_engine_the_build_lacks_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = lines_file(tmp.path(), "corpus.txt", CORPUS);
    let out = tmp.path().join("pre").display().to_string();
    let args: Vec<&str> = [
        "pretrain",
        "--corpus",
        &corpus,
        "--out",
        &out,
        "--steps",
        "1",
        "--init-from",
        TINY,
        "--tokenizer",
        TINY,
    ]
    .iter()
    .chain(TINY_PRETRAIN)
    .copied()
    .collect();
    let e = fails(elmer_in(
        &root(),
        &[("ELMER_COLLECTIVE", "carrier-pigeon")],
        &args,
        None,
    ));
    assert!(
        e.contains("ELMER_COLLECTIVE") && e.contains("carrier-pigeon"),
        "{e}"
    );
    if !cfg!(feature = "mpi") {
        let e = fails(elmer_in(
            &root(),
            &[("ELMER_COLLECTIVE", "mpi")],
            &args,
            None,
        ));
        assert!(e.contains("--features mpi"), "{e}");
        // Several ranks announced by a launcher, no MPI in this build: refused.
        let e = fails(elmer_in(
            &root(),
            &[("OMPI_COMM_WORLD_SIZE", "2")],
            &args,
            None,
        ));
        assert!(e.contains("--features mpi") && e.contains("2 ranks"), "{e}");
    }
}

// ------------------------------------------------------------------ CPU kernels and precision

/// The shipped model's generations (`--json` lines: ids and exit layers) for a few sentences,
/// with `env` and `extra` arguments.
fn shipped_generations(env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--json"];
    args.extend_from_slice(extra);
    elmer_in(
        &root(),
        env,
        &args,
        Some(
            b"the eiffel tower was completed in 1889 for the world 's fair in paris .\n\
              oxygen is a chemical element with symbol o and atomic number 8 .\n\
              the university of notre dame was founded in 1842 by father edward sorin .\n",
        ),
    )
}

#[test]
fn the_portable_kernels_give_the_same_text_and_reduced_precision_is_refused_without_them() {
    let ids = |o: &Output| -> Vec<(Value, Value)> {
        stdout(o)
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["ids"].clone(), v["exit_layers"].clone())
            })
            .collect()
    };
    let fast = ok(shipped_generations(&[], &[]));
    let portable = ok(shipped_generations(
        &[("ELMER_CPU_KERNELS", "portable")],
        &[],
    ));
    assert_eq!(ids(&fast).len(), 3);
    assert_eq!(
        ids(&fast),
        ids(&portable),
        "packed and candle kernels disagree"
    );
    for (dtype, instructions) in [("bf16", "AVX512_BF16"), ("int8", "AVX512-VNNI")] {
        // Reduced precision needs the packed kernels: refused in one line when they are
        // off (naming the instructions instead on a CPU that lacks them anyway).
        let e = fails(shipped_generations(
            &[("ELMER_CPU_KERNELS", "portable")],
            &["--dtype", dtype],
        ));
        assert!(
            e.contains(dtype) && (e.contains("portable") || e.contains(instructions)),
            "{e}"
        );
        // With them (a CPU with the instructions) it runs and stays close to f32;
        // elsewhere it is refused naming the instructions.
        let o = shipped_generations(&[], &["--dtype", dtype]);
        if o.status.success() {
            let (a, b) = (ids(&fast), ids(&o));
            assert_eq!(a.len(), b.len());
            let same = a.iter().zip(&b).filter(|(x, y)| x.0 == y.0).count();
            assert!(same >= 2, "{dtype} changed {} of 3 outputs", 3 - same);
        } else {
            let e = fails(o);
            assert!(e.contains(instructions), "{e}");
        }
    }
}
