//! Task-data readers: the real files in `../shared/data`, hand-made fixtures, and
//! malformed inputs written to temporary directories.

use std::path::{Path, PathBuf};

use elmer::data::{
    personachat_dialogue_count, read_line_pairs, read_personachat, read_split, read_squad_json,
    read_xsum_jsonl, split_holdout, Dataset, Example,
};
use elmer::Error;

fn shared(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")).join(rel)
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data")).join(rel)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------- real files

#[test]
fn squad_qg_dev_line_pairs() {
    let (src, tgt) = (
        shared("squad-qg/src-dev.txt"),
        shared("squad-qg/tgt-dev.txt"),
    );
    let ds = read_line_pairs(&src, &tgt).unwrap();
    assert_eq!(ds.len(), 10_570);
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(ds.examples[0].source, first_line(&src).trim());
    assert_eq!(ds.examples[0].target, first_line(&tgt).trim());
    assert!(ds.examples[0]
        .source
        .starts_with("the american football conference -lrb- afc -rrb- champion denver broncos"));
    assert_eq!(
        ds.examples[0].target,
        "which nfl team represented the afc at super bowl 50 ?"
    );
}

#[test]
fn personachat_real_files() {
    let (src, tgt) = (
        shared("personachat/source.txt"),
        shared("personachat/target.txt"),
    );
    let ds = read_personachat(&src, &tgt, 4).unwrap();
    assert_eq!(ds.len(), 6_247);
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert_eq!(personachat_dialogue_count(&src, &tgt).unwrap(), 800);

    let line1 = first_line(&src);
    let partner1 = line1.rsplit('\t').next().unwrap();
    let response1 = first_line(&tgt);
    assert_eq!(partner1, "hello what are doing today ?");
    assert_eq!(
        response1,
        "i am good , i just got off work and tired , i have two jobs ."
    );

    // Turn 1: persona, then only the current partner utterance.
    let persona = "i read twenty books a year i'm a stunt double as my second job i only eat \
                   kosher i was raised in a single parent household";
    assert_eq!(ds.examples[0].source, format!("{persona} [SEP] {partner1}"));
    assert_eq!(ds.examples[0].target, response1);

    // Turn 2: the first exchange, in order, then the second partner utterance.
    let s2 = &ds.examples[1].source;
    let (p, r) = (s2.find(partner1).unwrap(), s2.find(&response1).unwrap());
    assert!(p < r, "{s2}");
    assert_eq!(
        *s2,
        format!("{persona} [SEP] {partner1} [SEP] {response1} [SEP] i just got done watching a horror movie")
    );

    // max_history = 0: no earlier utterance.
    let ds0 = read_personachat(&src, &tgt, 0).unwrap();
    assert!(!ds0.examples[1].source.contains(partner1));
    assert!(ds0.examples[1]
        .source
        .ends_with("[SEP] i just got done watching a horror movie"));
}

#[test]
fn xsum_real_files() {
    let ds = read_xsum_jsonl(&shared("xsum/sample-10.jsonl")).unwrap();
    assert_eq!(ds.len(), 10);
    assert!(ds.skipped.is_empty(), "{:?}", ds.skipped);
    assert!(ds.examples[0].source.starts_with(
        "The warning begins at 22:00 GMT on Saturday and ends at 10:00 on Sunday. The ice"
    ));
    for ex in &ds.examples {
        assert!(!ex.source.contains('\n') && !ex.source.contains("  "));
        assert!(!ex.target.is_empty());
    }
    let test = read_xsum_jsonl(&shared("xsum/test-200.jsonl")).unwrap();
    assert_eq!(test.len(), 200);
    assert!(test.skipped.is_empty(), "{:?}", test.skipped);
}

#[test]
fn squad_flat_sample() {
    let path = shared("squad-qg/squad-v2-sample-14.json");
    let ds = read_squad_json(&path).unwrap();
    assert_eq!(ds.len(), 8);
    assert_eq!(ds.skipped.len(), 6, "{:?}", ds.skipped);
    for s in &ds.skipped {
        assert!(s.ends_with(": unanswerable"), "{s}");
        assert!(s.contains("squad-v2-sample-14.json: record 5a"), "{s}");
    }
    let first = &ds.examples[0];
    assert!(
        first.source.starts_with("France [SEP] The Normans"),
        "{}",
        first.source
    );
    assert_eq!(first.target, "In what country is Normandy located?");
    for ex in &ds.examples {
        assert!(ex.source.contains(" [SEP] "));
    }
}

// ---------------------------------------------------------------- fixtures

#[test]
fn squad_nested_fixture() {
    let path = fixture("squad-nested.json");
    let ds = read_squad_json(&path).unwrap();
    assert_eq!(
        ds.examples,
        vec![
            Example {
                source: "The Thames [SEP] The Thames flows through London. It is 346 km long."
                    .into(),
                target: "Which river flows through London?".into(),
            },
            Example {
                source: "Mountains [SEP] Mountains are tall.".into(),
                target: "What are tall?".into(),
            },
        ]
    );
    let file = path.display().to_string();
    assert_eq!(
        ds.skipped,
        vec![
            format!("{file}: record q2: unanswerable"),
            format!("{file}: record q4: unanswerable"),
        ]
    );
}

#[test]
fn split_fixture_crlf() {
    let ds = read_split(&fixture("split"), "train").unwrap();
    assert_eq!(
        ds.examples,
        vec![
            Example {
                source: "first source".into(),
                target: "first target".into()
            },
            Example {
                source: "second source".into(),
                target: "second target".into()
            },
        ]
    );
    assert!(matches!(
        read_split(&fixture("split"), "../split/train"),
        Err(Error::InvalidArgument { .. })
    ));
    match read_split(&fixture("split"), "valid") {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("valid.src"), "{path:?}"),
        other => panic!("expected Io error, got {other:?}"),
    }
}

#[test]
fn personachat_fixture_history_format() {
    let (src, tgt) = (fixture("persona-src.txt"), fixture("persona-tgt.txt"));
    let sources = |h| -> Vec<String> {
        read_personachat(&src, &tgt, h)
            .unwrap()
            .examples
            .into_iter()
            .map(|e| e.source)
            .collect()
    };
    assert_eq!(
        sources(10),
        vec![
            "i like cats i am tall [SEP] hi there",
            "i like cats i am tall [SEP] hi there [SEP] hello ! how are you ? [SEP] what do you do ?",
            "i like cats i am tall [SEP] hi there [SEP] hello ! how are you ? [SEP] what do you do ? \
             [SEP] i teach . [SEP] nice .",
            "i love tea i run [SEP] hello",
        ]
    );
    assert_eq!(
        sources(1)[2],
        "i like cats i am tall [SEP] i teach . [SEP] nice ."
    );
    assert_eq!(sources(0)[2], "i like cats i am tall [SEP] nice .");
    assert_eq!(personachat_dialogue_count(&src, &tgt).unwrap(), 2);
}

// ---------------------------------------------------------------- malformed input

#[test]
fn count_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "a.src", b"one\ntwo\nthree\n");
    let tgt = write(dir.path(), "a.tgt", b"one\ntwo\n");
    let e = read_line_pairs(&src, &tgt).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{msg}");
    assert!(msg.contains("a.src") && msg.contains("a.tgt"), "{msg}");
    assert!(msg.contains('3') && msg.contains('2'), "{msg}");
    let e = read_personachat(&src, &tgt, 2).unwrap_err();
    assert!(e.to_string().contains("a.src") && e.to_string().contains("a.tgt"));
}

#[test]
fn empty_lines_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "b.src", b"one\n   \nthree\n\n");
    let tgt = write(dir.path(), "b.tgt", b"uno\ndos\n\t\n\n");
    let ds = read_line_pairs(&src, &tgt).unwrap();
    assert_eq!(
        ds.examples,
        vec![Example {
            source: "one".into(),
            target: "uno".into()
        }]
    );
    assert_eq!(
        ds.skipped,
        vec![
            format!("{}:2: empty source", src.display()),
            format!("{}:3: empty target", tgt.display()),
            format!("{}:4: empty source and target", src.display()),
        ]
    );
}

#[test]
fn bad_jsonl_lines_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "x.jsonl",
        b"{\"document\": \"A  b.\\nC d.\", \"summary\": \" S. \"}\n\
          {not json}\n\
          \n\
          {\"document\": \"only\"}\n\
          {\"document\": \"d\", \"summary\": \"  \"}\n\
          [1, 2]\n\
          {\"document\": 5, \"summary\": \"s\"}\n",
    );
    let ds = read_xsum_jsonl(&p).unwrap();
    assert_eq!(
        ds.examples,
        vec![Example {
            source: "A b. C d.".into(),
            target: "S.".into()
        }]
    );
    let f = p.display().to_string();
    assert_eq!(ds.skipped.len(), 5, "{:?}", ds.skipped);
    assert!(ds.skipped[0].starts_with(&format!("{f}:2: invalid JSON")));
    assert_eq!(ds.skipped[1], format!("{f}:4: no string field `summary`"));
    assert_eq!(ds.skipped[2], format!("{f}:5: empty summary"));
    assert_eq!(ds.skipped[3], format!("{f}:6: no string field `document`"));
    assert_eq!(ds.skipped[4], format!("{f}:7: no string field `document`"));
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "u.src", b"ok\nbad \xff\xfe here\n");
    let tgt = write(dir.path(), "u.tgt", b"ok\nfine\n");
    let e = read_line_pairs(&src, &tgt).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Parse { .. }), "{msg}");
    assert!(msg.contains("u.src") && msg.contains("line 2"), "{msg}");
    let j = write(dir.path(), "u.jsonl", b"\n\n\xc3\n");
    let msg = read_xsum_jsonl(&j).unwrap_err().to_string();
    assert!(msg.contains("u.jsonl") && msg.contains("line 3"), "{msg}");
}

#[test]
fn missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let present = write(dir.path(), "here.txt", b"x\n");
    let check = |r: elmer::Result<Dataset>| match r {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io error, got {other:?}"),
    };
    check(read_line_pairs(&missing, &present));
    check(read_line_pairs(&present, &missing));
    check(read_xsum_jsonl(&missing));
    check(read_squad_json(&missing));
    check(read_personachat(&present, &missing, 3));
}

#[test]
fn bad_squad_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "s.json", b"{\"data\": [");
    assert!(matches!(read_squad_json(&p), Err(Error::Parse { .. })));
    let p = write(dir.path(), "t.json", b"{\"version\": 1}");
    let e = read_squad_json(&p).unwrap_err();
    assert!(
        matches!(e, Error::Parse { .. }) && e.to_string().contains("data"),
        "{e}"
    );
    // Odd records are reported in file order, not fatal.
    let p = write(
        dir.path(),
        "u.json",
        br#"{"data": [
            {"id": "a", "context": "C.", "question": "Q?", "answers": {"text": ["x"], "answer_start": [0]}},
            {"id": "b", "context": "C.", "answers": {"text": ["x"], "answer_start": [0]}},
            {"id": "c", "context": "C.", "question": "Q?", "answers": {"text": [], "answer_start": []}},
            {"id": "d", "context": "C.", "question": "Q?", "answers": {"text": ["x"]}, "is_impossible": true},
            {"id": 7, "context": "C.", "question": "Q?", "answers": {"text": ["   "]}},
            {"nothing": true},
            {"title": "t", "paragraphs": 3}
        ]}"#,
    );
    let ds = read_squad_json(&p).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.examples[0].source, "x [SEP] C.");
    let f = p.display().to_string();
    assert_eq!(
        ds.skipped,
        vec![
            format!("{f}: record b: no question"),
            format!("{f}: record c: unanswerable"),
            format!("{f}: record d: unanswerable"),
            format!("{f}: record 7: empty answer text"),
            format!(
                "{f}: record data[5]: neither `paragraphs` (nested SQuAD) nor `context` (flat)"
            ),
            format!("{f}: record data[6]: `paragraphs` is not a list"),
        ]
    );
}

#[test]
fn personachat_malformed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(
        dir.path(),
        "p.src",
        b"p one\tp two\thi\nno tab here\np one\tp two\tagain\np one\tp two\tthird\n\t\tx\n",
    );
    let tgt = write(dir.path(), "p.tgt", b"r1\nr2\n  \nr4\nr5\n");
    let ds = read_personachat(&src, &tgt, 8).unwrap();
    assert_eq!(
        ds.skipped,
        vec![
            format!(
                "{}:2: no TAB (expected persona sentences and an utterance)",
                src.display()
            ),
            format!("{}:3: empty target", tgt.display()),
            format!("{}:5: empty persona", src.display()),
        ]
    );
    assert_eq!(ds.len(), 2);
    assert_eq!(
        ds.examples[1].source,
        "p one p two [SEP] hi [SEP] r1 [SEP] third"
    );
    assert_eq!(personachat_dialogue_count(&src, &tgt).unwrap(), 1);
}

#[test]
fn empty_files_give_empty_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "e.src", b"");
    let b = write(dir.path(), "e.tgt", b"");
    assert!(read_line_pairs(&a, &b).unwrap().is_empty());
    assert!(read_personachat(&a, &b, 2).unwrap().is_empty());
    assert!(read_xsum_jsonl(&a).unwrap().is_empty());
}

// ---------------------------------------------------------------- holdout split

fn numbered(n: usize) -> Dataset {
    Dataset {
        examples: (0..n)
            .map(|i| Example {
                source: format!("s{i}"),
                target: format!("t{i}"),
            })
            .collect(),
        skipped: vec!["x:1: empty source".into()],
    }
}

#[test]
fn split_holdout_is_deterministic_and_disjoint() {
    let (kept, held) = split_holdout(numbered(100), 10, 42);
    assert_eq!((kept.len(), held.len()), (90, 10));
    assert_eq!(
        split_holdout(numbered(100), 10, 42),
        (kept.clone(), held.clone())
    );

    let mut all: Vec<&str> = kept
        .iter()
        .chain(&held)
        .map(|e| e.source.as_str())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 100, "parts overlap or lose examples");
    for ex in &held {
        assert!(!kept.contains(ex));
    }
    // Both parts keep file order.
    let idx = |e: &Example| e.source[1..].parse::<usize>().unwrap();
    assert!(kept.windows(2).all(|w| idx(&w[0]) < idx(&w[1])));
    assert!(held.windows(2).all(|w| idx(&w[0]) < idx(&w[1])));
    // Not simply the first or last examples, and another seed picks another set.
    assert_ne!(
        held.iter().map(idx).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_ne!(
        held.iter().map(idx).collect::<Vec<_>>(),
        (90..100).collect::<Vec<_>>()
    );
    assert_ne!(split_holdout(numbered(100), 10, 43).1, held);

    assert_eq!(
        split_holdout(numbered(5), 0, 1),
        (numbered(5).examples, vec![])
    );
    assert_eq!(
        split_holdout(numbered(5), 9, 1),
        (vec![], numbered(5).examples)
    );
    assert_eq!(split_holdout(numbered(0), 3, 1), (vec![], vec![]));
}
