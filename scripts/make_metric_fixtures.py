#!/usr/bin/env python3
"""Build parity fixtures for the Rust text-generation metrics (src/metrics/).

Reads real references from ../shared/data (SQuAD-QG dev questions, PersonaChat
responses, and the Apache-2.0 XSUM *sample-10* summaries -- never the research-only
xsum/test-200 articles or summaries), makes hypotheses by perturbing references
(word drops, swaps, substitutions from other lines, truncation, shuffles, exact
copies, empty strings, unicode / punctuation / case / whitespace noise), then scores
every pair with the public reference implementations:

  * rouge-score (Google)    RougeScorer(['rouge1','rouge2','rougeL','rougeLsum'],
                            use_stemmer=False/True).score_multi(refs, hyp)
  * pycocoevalcap           Bleu(4).compute_score(gts, res)  (option 'closest')
                            Rouge().compute_score(gts, res)  (ROUGE-L, beta 1.2)
  * nltk                    translate.bleu_score.corpus_bleu, uniform weights 1..k,
                            no smoothing, tokens = str.split()
  * distinct-n              len(set(ngrams)) / len(ngrams) * 100 over the corpus
  * nltk PorterStemmer      (NLTK_EXTENSIONS), per word, as rouge-score uses it

and writes JSON into tests/fixtures/metrics/:

  pairs.json   per-pair inputs + scores, and corpus-level scores on several subsets
  porter.json  word -> NLTK Porter stem, for every token of length > 3 in the pairs
               plus a list of hand-picked tricky words

Usage:  pip install rouge-score nltk pycocoevalcap
        python3 scripts/make_metric_fixtures.py [--data ../shared/data]
            [--out tests/fixtures/metrics] [--porter-big /tmp/porter_big.json]

--porter-big additionally writes (NOT for committing) the stems of every distinct
token in SQuAD-QG src/tgt, PersonaChat and WikiText-2 test, for a wider local check.
Deterministic: fixed seed, no network.
"""

import argparse
import json
import os
import random
import re
import sys
import warnings
from collections import defaultdict
from importlib import metadata

from nltk.stem import porter
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.rouge.rouge import Rouge
from rouge_score import rouge_scorer

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
NLTK_WEIGHTS = [(1.0,), (0.5, 0.5), (1.0 / 3, 1.0 / 3, 1.0 / 3), (0.25, 0.25, 0.25, 0.25)]

UNICODE_BITS = [
    "café", "naïve", "Zürich", "“quoted”", "—", "…", "😀", "北京", "Straße",
    "İstanbul", "\u212aelvin", "e\u0301", "ﬁne", "ǅemal", "ΣΟΦΊΑ", "١٢٣", "Ⅻ",
    "ＡＢＣ", "¿qué?", "l'été", "x\u00a0y", "a\u2009b", "m\u3000n", "p\x1cq",
    "tab\there", "r\u0085s", "Ω", "½", "²", "naïvely", "resumé's",
]
PUNCT_BITS = ["!!", "?", "...", "(ok)", "-lrb-", "``", "''", "&amp;", "#1", "$5",
              "50%", "e-mail", "u.s.", "don't", "it's", "1,000", "3.14", "a/b"]
TRICKY_WORDS = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated
troubled sized hopping tanned falling hissing fizzed failing filing happy sky relational
conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli
analogousli vietnamization predication operator feudalism decisiveness hopefulness
callousness formaliti sensitiviti sensibiliti triplicate formative formalize electriciti
electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable
defensible irritant replacement adjustment dependent adoption homologou communism
activate angulariti homologous effective bowdlerize probate rate cease controll roll
skies dying lying tying news innings inning outings outing cannings canning howe proceed
exceed succeed dies died spied tried flies cried enjoy enjoyment spy fly try generously
generous generalization generalizations oed eed ied ies yyyy syzygy toy trees ivy
troubles private oaten orrery by tree y agreement fulli hopefulli logi analogi
archaeology apology theology biology crying buying saying sayings playing played
yelling yyyying abyss abysses bayed obeyed mayday ayy byy 1990s 2000s covid19 mp3s
a1b2 abcdefghijklmnopqrstuvwxyz ation ational izer eli ator ness ful ive ement ment
ent ion sion tion ously iveness ousness biliti aliti iviti icate ative alize iciti ical
""".split()


def versions():
    out = {"python": sys.version.split()[0]}
    for pkg in ["rouge-score", "nltk", "pycocoevalcap", "numpy", "absl-py", "six"]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------- data

def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f]


def load_data(data):
    squad_src = read_lines(os.path.join(data, "squad-qg", "src-dev.txt"))
    squad_tgt = read_lines(os.path.join(data, "squad-qg", "tgt-dev.txt"))
    groups = defaultdict(list)
    for s, t in zip(squad_src, squad_tgt):
        if t.strip() and t not in groups[s]:
            groups[s].append(t)
    squad_groups = list(groups.values())
    p_src = read_lines(os.path.join(data, "personachat", "source.txt"))
    p_tgt = read_lines(os.path.join(data, "personachat", "target.txt"))
    # dialogues: consecutive lines sharing the persona (all but the last TAB field)
    dialogues, cur, cur_key = [], [], None
    for s, t in zip(p_src, p_tgt):
        key = "\t".join(s.split("\t")[:-1])
        if key != cur_key and cur:
            dialogues.append(cur)
            cur = []
        cur_key = key
        cur.append(t)
    if cur:
        dialogues.append(cur)
    xsum = []
    with open(os.path.join(data, "xsum", "sample-10.jsonl"), encoding="utf-8") as f:
        for line in f:
            xsum.append(json.loads(line)["summary"])
    return squad_groups, squad_tgt, dialogues, p_tgt, xsum


# ------------------------------------------------------------------ perturbations

def perturb(rng, text, pool):
    """Return a hypothesis made from reference `text` (and lines in `pool`)."""
    words = text.split()
    kind = rng.choice(["copy", "drop", "swap", "sub", "trunc", "shuffle", "mix",
                       "other", "dup", "case", "unicode", "punct", "space", "insert"])
    if not words:
        return text
    if kind == "copy":
        return text
    if kind == "drop":
        rate = rng.choice([0.1, 0.2, 0.4, 0.7])
        return " ".join(w for w in words if rng.random() > rate)
    if kind == "swap":
        w = list(words)
        for _ in range(rng.randint(1, 3)):
            if len(w) > 1:
                i = rng.randrange(len(w) - 1)
                w[i], w[i + 1] = w[i + 1], w[i]
        return " ".join(w)
    if kind == "sub":
        other = rng.choice(pool).split() or ["x"]
        w = [rng.choice(other) if rng.random() < 0.3 else x for x in words]
        return " ".join(w)
    if kind == "trunc":
        k = rng.randint(0, len(words))
        return " ".join(words[:k]) if rng.random() < 0.5 else " ".join(words[k:])
    if kind == "shuffle":
        w = list(words)
        rng.shuffle(w)
        return " ".join(w)
    if kind == "mix":
        other = rng.choice(pool).split()
        k = rng.randint(0, len(words))
        j = rng.randint(0, len(other))
        return " ".join(words[:k] + other[j:])
    if kind == "other":
        return rng.choice(pool)
    if kind == "dup":
        w = []
        for x in words:
            w.append(x)
            if rng.random() < 0.3:
                w.append(x)
        if rng.random() < 0.3:
            w = [words[0]] * rng.randint(2, 8)
        return " ".join(w)
    if kind == "case":
        f = rng.choice([str.upper, str.title, str.capitalize, str.swapcase])
        return f(text)
    if kind == "unicode":
        w = list(words)
        for _ in range(rng.randint(1, 3)):
            w.insert(rng.randint(0, len(w)), rng.choice(UNICODE_BITS))
        if rng.random() < 0.3:
            i = rng.randrange(len(w))
            w[i] = w[i] + rng.choice(["é", "ü", "’s", "ß"])
        return " ".join(w)
    if kind == "punct":
        w = list(words)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(w))
            w[i] = w[i] + rng.choice(PUNCT_BITS)
        s = " ".join(w)
        return s.replace(" ,", ",").replace(" ?", "?") if rng.random() < 0.5 else s
    if kind == "space":
        seps = [" ", "  ", "\t", "\n", " \n ", "\u00a0", "   "]
        out = words[0]
        for x in words[1:]:
            out += rng.choice(seps) + x
        return rng.choice(["", " ", "\n"]) + out + rng.choice(["", " ", "  ", "\n"])
    if kind == "insert":
        other = rng.choice(pool).split() or ["x"]
        w = list(words)
        for _ in range(rng.randint(1, 4)):
            w.insert(rng.randint(0, len(w)), rng.choice(other))
        return " ".join(w)
    raise AssertionError(kind)


def sentences_newline(text):
    """Put a newline after sentence-final punctuation (for ROUGE-Lsum)."""
    return re.sub(r"([.?!]) +", r"\1\n", text.strip())


def build_pairs(rng, squad_groups, squad_tgt, dialogues, p_tgt, xsum):
    pairs = []  # (source, hyp, [refs])
    pool = squad_tgt + p_tgt + xsum

    multi = [g for g in squad_groups if len(g) >= 2]
    single = [g for g in squad_groups if len(g) == 1]
    for g in rng.sample(multi, 250):
        refs = g[:4]
        pairs.append(("squad", perturb(rng, rng.choice(refs), pool), refs))
    for g in rng.sample(single, 300):
        pairs.append(("squad", perturb(rng, g[0], pool), list(g)))

    dlg = [d for d in dialogues if len(d) >= 3]
    for _ in range(300):
        d = rng.choice(dlg)
        i = rng.randrange(len(d))
        pairs.append(("persona", perturb(rng, d[i], pool), [d[i]]))
    for _ in range(100):
        d = rng.choice(dlg)
        i = rng.randrange(len(d) - 1)
        refs = [d[i], d[i + 1]]
        pairs.append(("persona", perturb(rng, d[i], pool), refs))
    for _ in range(100):  # multi-sentence, newline separated (ROUGE-Lsum)
        d = rng.choice(dlg)
        i = rng.randrange(len(d) - 2)
        ref = "\n".join(d[i:i + 3])
        hyp = "\n".join(perturb(rng, s, pool) for s in d[i:i + 3] if rng.random() < 0.85)
        if rng.random() < 0.3:
            hyp = " ".join(hyp.split("\n"))  # one line
        pairs.append(("persona", hyp, [ref]))

    for s in xsum:
        for _ in range(10):
            ref = s if rng.random() < 0.5 else sentences_newline(s.replace(", ", ". "))
            hyp = perturb(rng, s, pool)
            if rng.random() < 0.4:
                hyp = sentences_newline(hyp.replace(", ", ". "))
            refs = [ref]
            if rng.random() < 0.3:
                refs.append(rng.choice(xsum))
            pairs.append(("xsum", hyp, refs))

    # hand-written edge cases
    q = squad_tgt[0]
    edge = [
        ("", [q]), (q, [""]), ("", [""]), (" ", [q]), ("\n", [q]), ("\n\n", ["a\n\nb"]),
        (q, [q]), (q, [q, ""]), ("", [q, q]), (q.upper(), [q]), ("?", ["?"]),
        ("!!! ...", ["hello world"]), ("the the the the", ["the cat is on the mat"]),
        ("the cat", ["the cat is on the mat", "there is a cat on the mat"]),
        ("a", ["a"]), ("a b", ["b a"]), ("a b c d", ["a b c d e f g h"]),
        ("a b c d e f g h", ["a b c d"]), ("café naïve", ["cafe naive"]),
        ("café naïve", ["caf na ve"]), ("北京 欢迎 你", ["北京 欢迎 你"]),
        ("😀 😀", ["😀"]), ("\u212aelvin", ["kelvin"]), ("İstanbul", ["i stanbul"]),
        ("Straße", ["strasse"]), ("ＡＢＣ abc", ["abc"]), ("١٢٣ 123", ["123"]),
        ("a\u00a0b c", ["a b c"]), ("a\tb c", ["a b c"]), ("a  b c", ["a b c"]),
        ("a\x1cb c", ["a b c"]), ("x\u0085y", ["x y"]), ("a\u3000b", ["a b"]),
        ("running runs ran", ["run running runner"]),
        ("generously generous generalization", ["generous generally general"]),
        ("the dogs barked loudly\nthe cats slept", ["the dog barks loudly\nthe cat sleeps"]),
        ("one two\nthree four\none two", ["one two three four\none two"]),
        ("a b a b a b", ["a b\nb a\na a b"]), ("a\nb\nc", ["c\nb\na"]),
        (" leading and trailing ", ["leading and trailing"]),
        ("Hello, World!", ["hello world"]), ("hello,world", ["hello world"]),
        ("it's 2016-02-07", ["it s 2016 02 07"]), ("U.S.A. U.K.", ["usa uk"]),
        ("1,000,000 dollars", ["1000000 dollars"]), ("x" * 50, ["x" * 50]),
        (" ".join(["w%d" % i for i in range(60)]), [" ".join(["w%d" % i for i in range(0, 60, 2)])]),
        ("the cat sat", ["the cat sat on", "the cat", "cat sat"]),
        ("the cat sat on the mat", ["a b c d e f g", "the cat sat", "the cat sat on the mat x y"]),
        ("a b c", ["a b c d", "a b"]),
        ("a b c d e", ["a b c", "a b c d e f g"]),
        ("skies dying lying tying innings outings cannings howe proceed",
         ["sky die lie tie inning outing canning howe proceeding"]),
    ]
    for hyp, refs in edge:
        pairs.append(("edge", hyp, refs))
    return pairs


# ------------------------------------------------------------------------ scoring

def distinct(hyps, n):
    total, seen = 0, set()
    for h in hyps:
        w = h.split()
        for i in range(len(w) - n + 1):
            seen.add(tuple(w[i:i + n]))
            total += 1
    return 0.0 if total == 0 else len(seen) / total * 100.0


def nltk_bleu(hyps, refs_list):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = corpus_bleu([[r.split() for r in refs] for refs in refs_list],
                          [h.split() for h in hyps], weights=NLTK_WEIGHTS)
    return [float(x) for x in out]


def coco(hyps, refs_list):
    gts = {i: list(refs) for i, refs in enumerate(refs_list)}
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, bleu_list = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_arr = Rouge().compute_score(gts, res)
    return [float(b) for b in bleu], bleu_list, float(rouge), [float(x) for x in rouge_arr]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "metrics"))
    ap.add_argument("--porter-big", default=None)
    ap.add_argument("--seed", type=int, default=20240607)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    squad_groups, squad_tgt, dialogues, p_tgt, xsum = load_data(args.data)
    pairs = build_pairs(rng, squad_groups, squad_tgt, dialogues, p_tgt, xsum)
    hyps = [p[1] for p in pairs]
    refs = [p[2] for p in pairs]

    scorers = {stem: rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=stem)
               for stem in (False, True)}
    rouge_rows = []
    for h, rs in zip(hyps, refs):
        row = []
        for stem in (False, True):
            sc = scorers[stem].score_multi(rs, h)
            for t in ROUGE_TYPES:
                row += [float(sc[t].precision), float(sc[t].recall), float(sc[t].fmeasure)]
        rouge_rows.append(row)

    _, bleu_list, _, coco_rouge = coco(hyps, refs)
    out_pairs = []
    for i, (src, h, rs) in enumerate(pairs):
        out_pairs.append({
            "source": src,
            "hyp": h,
            "refs": rs,
            "rouge": rouge_rows[i],
            "coco_bleu": [float(bleu_list[k][i]) for k in range(4)],
            "coco_rouge_l": coco_rouge[i],
            "nltk_bleu": nltk_bleu([h], [rs]),
        })

    # corpus-level numbers on several subsets
    subsets = {"all": list(range(len(pairs)))}
    for src in ("squad", "persona", "xsum", "edge"):
        subsets[src] = [i for i, p in enumerate(pairs) if p[0] == src]
    for start in range(0, len(pairs), 150):
        subsets["chunk%04d" % start] = list(range(start, min(start + 150, len(pairs))))
    subsets["first1"] = [0]
    subsets["empty_hyps_only"] = [i for i, h in enumerate(hyps) if not h.split()]
    corpus = {}
    for name, idx in subsets.items():
        sh = [hyps[i] for i in idx]
        sr = [refs[i] for i in idx]
        cb, _, cr, _ = coco(sh, sr)
        n = len(idx)
        mean = [sum(rouge_rows[i][j] for i in idx) / n for j in range(24)]
        corpus[name] = {
            "indices": idx,
            "coco_bleu": cb,
            "coco_rouge_l": cr,
            "nltk_bleu": nltk_bleu(sh, sr),
            "rouge_mean": mean,
            "distinct": [distinct(sh, n_) for n_ in (1, 2, 3)],
        }

    os.makedirs(args.out, exist_ok=True)
    doc = {
        "generator": "scripts/make_metric_fixtures.py",
        "seed": args.seed,
        "versions": versions(),
        "data": "SQuAD-QG dev questions (CC BY-SA 4.0, Du et al. 2017), PersonaChat/ConvAI2 "
                "responses (ParlAI, MIT), XSUM summaries from the transformers test fixture "
                "sample-10 (Apache-2.0); hypotheses are synthetic perturbations",
        "rouge_columns": ["%s_%s_%s" % ("stem" if s else "nostem", t, m)
                          for s in (False, True) for t in ROUGE_TYPES
                          for m in ("precision", "recall", "fmeasure")],
        "notes": {
            "rouge": "rouge_score.rouge_scorer.RougeScorer(types, use_stemmer).score_multi(refs, hyp); "
                     "rouge_mean = arithmetic mean of per-pair values (BootstrapAggregator mid "
                     "is a bootstrap estimate of this mean)",
            "coco_bleu": "pycocoevalcap.bleu.Bleu(4).compute_score(gts, res, verbose=0): corpus "
                         "value and per-pair bleu_list, option 'closest', no PTB tokenizer",
            "coco_rouge_l": "pycocoevalcap.rouge.Rouge().compute_score(gts, res), no PTB tokenizer",
            "nltk_bleu": "nltk.translate.bleu_score.corpus_bleu(refs_tok, hyps_tok, weights="
                         "[(1,),(1/2,)*2,(1/3,)*3,(1/4,)*4]), tokens = str.split(), no smoothing; "
                         "per pair = the same call on a one-pair corpus",
            "distinct": "len(set(ngrams)) / len(ngrams) * 100 over hyps, tokens = str.split(), "
                        "n = 1, 2, 3; 0.0 when there are no n-grams",
        },
        "pairs": out_pairs,
        "corpus": corpus,
    }
    path = os.path.join(args.out, "pairs.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")

    stemmer = porter.PorterStemmer()
    words = set(TRICKY_WORDS)
    for h, rs in zip(hyps, refs):
        for text in [h] + rs:
            for w in re.split(r"[^a-z0-9]+", text.lower()):
                if len(w) > 3:
                    words.add(w)
    words = sorted(words)
    with open(os.path.join(args.out, "porter.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "scripts/make_metric_fixtures.py", "versions": versions(),
                   "stemmer": "nltk.stem.porter.PorterStemmer() (mode NLTK_EXTENSIONS), stem(word)",
                   "words": words, "stems": [stemmer.stem(w) for w in words]},
                  f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")

    if args.porter_big:
        big = set()
        files = [("squad-qg", "src-dev.txt"), ("squad-qg", "tgt-dev.txt"),
                 ("personachat", "source.txt"), ("personachat", "target.txt"),
                 ("corpus", "wikitext-2-raw-test.txt")]
        for parts in files:
            with open(os.path.join(args.data, *parts), encoding="utf-8") as f:
                for line in f:
                    big.update(w for w in re.split(r"[^a-z0-9]+", line.lower()) if w)
        big = sorted(big)
        with open(args.porter_big, "w", encoding="utf-8") as f:
            json.dump({"words": big, "stems": [stemmer.stem(w) for w in big]}, f)

    print("pairs:", len(pairs), "subsets:", len(corpus))
    for name in os.listdir(args.out):
        print(name, os.path.getsize(os.path.join(args.out, name)), "bytes")


if __name__ == "__main__":
    main()
