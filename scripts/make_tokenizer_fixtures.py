#!/usr/bin/env python3
"""Generate the BART tokenizer parity fixtures used by `tests/parity*.rs`.

Writes
  tests/fixtures/tokenizer/bart_base.jsonl         (>= 1,200 real lines + edge cases, bart-base vocab)
  tests/fixtures/tokenizer/tiny_random_bart.jsonl  (50 lines, hf-internal-testing/tiny-random-bart)
  tests/fixtures/tokenizer/README.md               (how the fixture was made, which versions)

Why two Python interpreters
---------------------------
transformers 5.x removed the pure-Python ("slow") tokenizers: in 5.x `BartTokenizer` and
`BartTokenizerFast` are the *same* class (an alias of the tokenizers-backed `RobertaTokenizer`).
To compare an independent slow implementation against the fast one, the reference ids come from
transformers 4.57.6 (last 4.x), which still ships the Python BPE `BartTokenizer`:

    python3 -m venv --system-site-packages /tmp/venv4
    /tmp/venv4/bin/pip install "transformers==4.57.6"      # pulls tokenizers 0.22.x

and the decoded strings come from the transformers installed in the main interpreter (5.24),
whose `decode(ids, skip_special_tokens=True)` is what the Rust crate must match.

Usage:
    python3 scripts/make_tokenizer_fixtures.py --py4 /tmp/venv4/bin/python \
        --data ../shared/data [--out tests/fixtures/tokenizer]

Fields per line of bart_base.jsonl
----------------------------------
  source            where the text came from (wikitext, squad-src, ..., edge)
  text              the input string
  ids               transformers 4.57.6 slow BartTokenizer(text)["input_ids"]  (with <s> ... </s>)
  ids_fast          transformers 4.57.6 BartTokenizerFast(text)["input_ids"]
  truncated_ids_16  slow BartTokenizer(text, truncation=True, max_length=16)["input_ids"]
  decoded           transformers 5.24 BartTokenizer.decode(ids, skip_special_tokens=True)
                    (5.x default clean_up_tokenization_spaces=False)
  decoded_truncated_16  same decode applied to truncated_ids_16
  decoded_cleanup   only present when it differs from `decoded`: 4.57.6 slow
                    decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
  roundtrip         decoded == text
  truncated_ids_16_fast  only present when it differs from `truncated_ids_16`: the fast one
  ids_v5            only present when it differs from `ids`: transformers 5.24 BartTokenizer loaded
                    from vocab.json + merges.txt alone (5.x does not give <mask> lstrip=True then)
  decoded_slow      only present when it differs from `decoded`: 4.57.6 slow decode
Any slow/fast difference is printed and kept (both recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

SEED = 20240613
_SAVED = os.path.join(tempfile.gettempdir(), "elmer_bart_tokenizer.json")

EDGE_CASES = [
    "",
    " ",
    "  ",
    "\n",
    "\t",
    " leading space",
    "   three leading spaces",
    "trailing spaces  ",
    "a  b   c    d",
    "line one\nline two",
    "windows\r\nline end",
    "\n\nblank lines around\n\n",
    "tab\tseparated\tvalues",
    "mixed \t \n whitespace",
    "café naïve résumé",
    "Straße groß ß",
    "Жаба и ёж",
    "中文分词测试",
    "日本語のテキスト",
    "한국어 문장",
    "e\u0301 combining accent",
    "non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "em\u2003space",
    "zero\u200bwidth",
    "next\u0085line",
    "line\u2028separator",
    "vertical\x0btab and form\x0cfeed",
    "nul\x00byte",
    "emoji 😀 grin",
    "family 👨\u200d👩\u200d👧\u200d👦 zwj",
    "technologist 👩🏽\u200d💻 zwj with skin tone",
    "flag 🇫🇷 and 🏳️\u200d🌈",
    "thumbs 👍🏽",
    "heart ❤️ variation selector",
    "Hello <mask> world",
    "Hello<mask> world",
    "Hello  <mask>  world",
    "Hello\t<mask> world",
    "<mask> at the start",
    " <mask> at the start after a space",
    "at the end <mask>",
    "at the end<mask>",
    "<mask><mask> twice",
    "a <mask> b <mask> c",
    "The <mask>. Then more.",
    "<mask>",
    " <mask>",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "text with <s> inside and </s> too",
    "don't won't I'm you're it's we've they'll he'd",
    "Hello , world . Really ? Yes ! ' quoted '",
    "i 'm sure it 's fine , is n't it ?",
    "1,234.56 $ 3.5% 10:00 GMT 2016-02-07",
    "https://example.com/a?b=c&d=e#frag",
    "mail me at someone@example.org",
    'fn main() { println!("hi"); }',
    "ALL CAPS SHOUTING and MiXeD cAsE",
    "   ",
    "The quick brown fox jumps over the lazy dog. " * 120,
    "antidisestablishmentarianism " * 40,
    "x" * 500,
]


def read_lines(path: str) -> list[str]:
    # Universal-newline mode, as a pipeline reading these corpora would (wikitext is CRLF).
    with open(path, encoding="utf-8") as f:
        return [ln[:-1] if ln.endswith("\n") else ln for ln in f]


def sample(rng: random.Random, items: list[str], n: int) -> list[str]:
    items = list(items)
    return rng.sample(items, min(n, len(items)))


def collect_texts(data: str) -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []

    wt = read_lines(os.path.join(data, "corpus/wikitext-2-raw-test.txt"))
    wt_short = [l for l in wt if l.strip() and len(l) <= 500]
    wt_long = [l for l in wt if 1500 <= len(l) <= 3000]
    out += [("wikitext", t) for t in sample(rng, wt_short, 420)]
    out += [("wikitext-long", t) for t in sample(rng, wt_long, 4)]

    for name, rel, n in [
        ("squad-src", "squad-qg/src-dev.txt", 220),
        ("squad-tgt", "squad-qg/tgt-dev.txt", 220),
        ("persona-src", "personachat/source.txt", 170),
        ("persona-tgt", "personachat/target.txt", 170),
    ]:
        lines = [l for l in read_lines(os.path.join(data, rel)) if l.strip()]
        out += [(name, t) for t in sample(rng, lines, n)]

    with open(os.path.join(data, "xsum/sample-10.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out.append(("xsum-summary", rec["summary"]))
                out.append(("xsum-document", rec["document"]))

    wiki = [l for l in read_lines(os.path.join(data, "corpus/wiki_00.txt")) if l.strip() and len(l) <= 800]
    out += [("wiki_00", t) for t in sample(rng, wiki, 60)]
    out += [("books_wiki", t) for t in read_lines(os.path.join(data, "corpus/books_wiki-sample.txt")) if t.strip()]

    out += [("edge", t) for t in EDGE_CASES]
    return out


# ---------------------------------------------------------------------------------------------
# Worker: runs inside one interpreter, prints JSON results for a list of texts.
# ---------------------------------------------------------------------------------------------


def worker(mode: str, tok_dir: str, texts_path: str, out_path: str) -> None:
    import transformers

    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    res: dict = {"version": transformers.__version__, "rows": []}
    if mode == "save":
        # tokenizer.json exactly as transformers 4.x BartTokenizerFast builds it from vocab+merges,
        # written compactly (pretty=False) to keep the committed asset small.
        from transformers import BartTokenizerFast

        fast = BartTokenizerFast.from_pretrained(tok_dir)
        fast.backend_tokenizer.save(out_path, pretty=False)
        return
    if mode == "v4":
        assert transformers.__version__.startswith("4."), "--py4 must have transformers 4.x"
        from transformers import BartTokenizer, BartTokenizerFast

        slow = BartTokenizer.from_pretrained(tok_dir)
        fast = BartTokenizerFast.from_pretrained(tok_dir)
        assert not slow.is_fast and fast.is_fast
        import tokenizers

        res["tokenizers"] = tokenizers.__version__
        res["clean_up_default"] = [slow.clean_up_tokenization_spaces, fast.clean_up_tokenization_spaces]
        for t in texts:
            ids = slow(t)["input_ids"]
            res["rows"].append(
                {
                    "ids": ids,
                    "ids_fast": fast(t)["input_ids"],
                    "trunc": slow(t, truncation=True, max_length=16)["input_ids"],
                    "trunc_fast": fast(t, truncation=True, max_length=16)["input_ids"],
                    "dec_slow": slow.decode(ids, skip_special_tokens=True),
                    "dec_fast": fast.decode(ids, skip_special_tokens=True),
                    "dec_clean": slow.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True),
                    "dec_clean_fast": fast.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True),
                }
            )
    else:
        from transformers import BartTokenizer

        tok = BartTokenizer.from_pretrained(tok_dir)
        json_dir = texts["json_dir"]
        tok_json = BartTokenizer.from_pretrained(json_dir) if json_dir else tok
        res["clean_up_default"] = tok.clean_up_tokenization_spaces
        for t, ids, trunc in texts["rows"]:
            res["rows"].append(
                {
                    "ids_v5": tok(t)["input_ids"],
                    "ids_v5_json": tok_json(t)["input_ids"],
                    "dec": tok.decode(ids, skip_special_tokens=True),
                    "dec_trunc": tok.decode(trunc, skip_special_tokens=True),
                }
            )
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False)


def run_worker(python: str, mode: str, tok_dir: str, payload) -> dict:
    with tempfile.TemporaryDirectory() as td:
        inp = os.path.join(td, "in.json")
        outp = os.path.join(td, "out.json")
        with open(inp, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        subprocess.run([python, os.path.abspath(__file__), "--worker", mode, tok_dir, inp, outp], check=True, env=env)
        if mode == "save":
            shutil.copyfile(outp, _SAVED)
            return {}
        with open(outp, encoding="utf-8") as f:
            return json.load(f)


def build(
    texts: list[tuple[str, str]], tok_dir: str, json_dir: str | None, py4: str, py5: str, tag: str
) -> tuple[list[dict], dict]:
    plain = [t for _, t in texts]
    r4 = run_worker(py4, "v4", tok_dir, plain)
    rows5 = [[t, r["ids"], r["trunc"]] for t, r in zip(plain, r4["rows"])]
    r5 = run_worker(py5, "v5", tok_dir, {"json_dir": json_dir, "rows": rows5})
    stats = {
        "lines": len(texts),
        "slow_fast_ids_diff": 0,
        "slow_fast_trunc_diff": 0,
        "slow_fast_decode_diff": 0,
        "v4_v5_decode_diff": 0,
        "v5_ids_diff": 0,
        "v5_tokenizer_json_vs_fast_ids_diff": 0,
        "roundtrip": 0,
        "transformers_v4": r4["version"],
        "tokenizers_v4": r4.get("tokenizers"),
        "transformers_v5": r5["version"],
        "clean_up_default_v4": r4["clean_up_default"],
        "clean_up_default_v5": r5["clean_up_default"],
    }
    rows = []
    for (src, t), a, b in zip(texts, r4["rows"], r5["rows"]):
        if a["ids"] != a["ids_fast"]:
            stats["slow_fast_ids_diff"] += 1
            print(f"[{tag}] slow != fast ids for {t!r}:\n  slow {a['ids']}\n  fast {a['ids_fast']}", file=sys.stderr)
        if a["trunc"] != a["trunc_fast"]:
            stats["slow_fast_trunc_diff"] += 1
            print(f"[{tag}] slow != fast truncation for {t!r}", file=sys.stderr)
        if a["dec_slow"] != a["dec_fast"] or a["dec_clean"] != a["dec_clean_fast"]:
            stats["slow_fast_decode_diff"] += 1
            print(f"[{tag}] slow != fast decode for {t!r}: {a['dec_slow']!r} vs {a['dec_fast']!r}", file=sys.stderr)
        if a["dec_slow"] != b["dec"]:
            stats["v4_v5_decode_diff"] += 1
            print(f"[{tag}] v4 != v5 decode for {t!r}: {a['dec_slow']!r} vs {b['dec']!r}", file=sys.stderr)
        row = {
            "source": src,
            "text": t,
            "ids": a["ids"],
            "ids_fast": a["ids_fast"],
            "truncated_ids_16": a["trunc"],
            "decoded": b["dec"],
            "decoded_truncated_16": b["dec_trunc"],
            "roundtrip": b["dec"] == t,
        }
        stats["roundtrip"] += row["roundtrip"]
        if a["dec_clean"] != b["dec"]:
            row["decoded_cleanup"] = a["dec_clean"]
        if a["trunc_fast"] != a["trunc"]:
            row["truncated_ids_16_fast"] = a["trunc_fast"]
        if a["dec_slow"] != b["dec"]:
            row["decoded_slow"] = a["dec_slow"]
        if b["ids_v5_json"] != a["ids_fast"]:
            stats["v5_tokenizer_json_vs_fast_ids_diff"] += 1
            print(f"[{tag}] v5 (tokenizer.json) != v4 fast ids for {t!r}", file=sys.stderr)
        if b["ids_v5"] != a["ids"]:
            stats["v5_ids_diff"] += 1
            row["ids_v5"] = b["ids_v5"]
        rows.append(row)
    return rows, stats


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6])
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--py4", required=True, help="python with transformers 4.x (slow reference)")
    ap.add_argument("--py5", default=sys.executable, help="python with transformers 5.x (decode reference)")
    ap.add_argument("--data", default=os.path.join(root, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "tokenizer"))
    ap.add_argument(
        "--assets",
        default=os.path.join(root, "assets", "tokenizer", "bart-base"),
        help="where to write vocab.json + merges.txt (verbatim copies) and tokenizer.json",
    )
    args = ap.parse_args()

    vocab_dir = os.path.join(args.data, "tokenizer/bart-base")
    os.makedirs(args.assets, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(vocab_dir, name), os.path.join(args.assets, name))
    run_worker(args.py4, "save", vocab_dir, [])
    os.replace(_SAVED, os.path.join(args.assets, "tokenizer.json"))

    os.makedirs(args.out, exist_ok=True)
    texts = collect_texts(args.data)
    rows, stats = build(texts, vocab_dir, args.assets, args.py4, args.py5, "bart-base")
    write_jsonl(os.path.join(args.out, "bart_base.jsonl"), rows)

    rng = random.Random(SEED + 1)
    real = [x for x in texts if x[0] != "edge" and len(x[1]) <= 300]
    tiny_texts = sample(rng, real, 30) + [("edge", t) for t in EDGE_CASES if len(t) <= 100][:20]
    tiny_dir = os.path.join(args.data, "checkpoints/tiny-random-bart")
    tiny_rows, tiny_stats = build(tiny_texts, tiny_dir, None, args.py4, args.py5, "tiny")
    write_jsonl(os.path.join(args.out, "tiny_random_bart.jsonl"), tiny_rows)

    readme = f"""# Tokenizer parity fixtures

Generated by `scripts/make_tokenizer_fixtures.py` (seed {SEED}); see its docstring for the fields.

* `bart_base.jsonl`: {stats['lines']} lines (real text sampled from WikiText-2 test, SQuAD-QG dev
  source/target, PersonaChat source/target, XSUM sample-10, wiki_00 / books samples, plus edge
  cases) tokenized with the bart-base (= roberta-base) vocab.
* `tiny_random_bart.jsonl`: {tiny_stats['lines']} lines, tokenizer of hf-internal-testing/tiny-random-bart
  (its `<mask>` is id 4).

Reference versions: slow/fast ids from transformers {stats['transformers_v4']} (tokenizers
{stats['tokenizers_v4']}); decoded strings from transformers {stats['transformers_v5']}.

Results at generation time:

```
{json.dumps({'bart_base': stats, 'tiny_random_bart': tiny_stats}, indent=2)}
```
"""
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    print(json.dumps({"bart_base": stats, "tiny_random_bart": tiny_stats}, indent=2))
    size = os.path.getsize(os.path.join(args.out, "bart_base.jsonl"))
    print(f"bart_base.jsonl: {size} bytes")


if __name__ == "__main__":
    main()
