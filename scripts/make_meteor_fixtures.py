#!/usr/bin/env python3
"""Build METEOR parity fixtures for the Rust `elmer::metrics::meteor` module.

Reference scorer: METEOR 1.5 (meteor-1.5.jar shipped with `pip install pycocoevalcap`),
run exactly as the non-autoregressive generation papers do, i.e. through
`pycocoevalcap.meteor.meteor.Meteor` = `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`
(modules exact stem synonym paraphrase, weights 1.0 0.6 0.8 0.6, params 0.85 0.20 0.60 0.75).
The aggregate score is the jar's EVAL score (METEOR over summed sufficient statistics).

Additionally the same jar is run with `-m "exact stem"` (weights 1.0 0.6) so that the
table-free part of the Rust implementation can be checked tightly.

Inputs (real data): ../shared/data/squad-qg/{src,tgt}-dev.txt and
../shared/data/personachat/target.txt. Hypotheses are perturbations of references
(word drops, swaps, substitutions, stem changes, synonym swaps, casing/punctuation
changes, exact copies); SQuAD sentences with several questions give multi-reference
cases.

Outputs (tests/fixtures/meteor/):
  cases.json   {"meta":..., "corpus_full":..., "corpus_exact_stem":...,
                "cases":[{"id","kind","hyp","refs","seg_full","seg_exact_stem"}]}
  stems.json   {"word": "jar snowball english stem", ...} for the data vocabulary
  norm.json    [[raw line, jar Normalizer output (keepPunctuation=true)], ...]

Usage: python scripts/make_meteor_fixtures.py [--data ../shared/data] [--n 500]
Requires: java (>= 8), pip install pycocoevalcap; javac for stems.json.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile

import pycocoevalcap
from pycocoevalcap.meteor.meteor import Meteor

METEOR_DIR = os.path.join(list(pycocoevalcap.__path__)[0], "meteor")
JAR = os.path.join(METEOR_DIR, "meteor-1.5.jar")

# Small hand-made synonym list (WordNet synonyms) to exercise the synonym module.
SYN = {
    "big": "large", "large": "big", "small": "little", "little": "small",
    "movie": "film", "film": "movie", "begin": "start", "start": "begin",
    "buy": "purchase", "happy": "glad", "job": "occupation", "car": "automobile",
    "quick": "fast", "fast": "quick", "mother": "mom", "father": "dad",
    "kids": "children", "children": "kids", "love": "enjoy", "enjoy": "love",
    "city": "town", "country": "nation", "nation": "country", "type": "kind",
    "kind": "type", "house": "home", "home": "house", "dog": "puppy",
    "music": "songs", "occur": "happen", "happen": "occur", "what": "which",
    "largest": "biggest", "famous": "well-known", "founded": "established",
    "built": "constructed", "used": "utilized", "began": "started",
    "work": "job", "like": "love", "good": "great", "great": "good",
}


def stem_change(w):
    if len(w) < 3 or not w.isalpha():
        return None
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith("ed") and len(w) > 4:
        return w[:-2] + "ing"
    if w.endswith("ing") and len(w) > 5:
        return w[:-3] + "ed"
    if w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    if w.endswith("e"):
        return w + "s"
    return w + "s"


def perturb(ref, rng, vocab):
    toks = ref.split()
    kind = rng.choice(["copy", "drop", "drop2", "swap", "sub", "stem", "stem2",
                       "syn", "mix", "shuffle", "case", "trunc", "insert"])
    t = list(toks)
    n = len(t)
    if kind == "copy" or n < 3:
        return "copy", ref
    if kind == "drop":
        del t[rng.randrange(n)]
    elif kind == "drop2":
        for _ in range(2):
            del t[rng.randrange(len(t))]
    elif kind == "swap":
        i = rng.randrange(n - 1)
        t[i], t[i + 1] = t[i + 1], t[i]
    elif kind == "sub":
        t[rng.randrange(n)] = rng.choice(vocab)
    elif kind in ("stem", "stem2"):
        idx = list(range(n))
        rng.shuffle(idx)
        changed = 0
        for i in idx:
            s = stem_change(t[i])
            if s:
                t[i] = s
                changed += 1
                if changed == (1 if kind == "stem" else 3):
                    break
    elif kind == "syn":
        hits = [i for i, w in enumerate(t) if w.lower() in SYN]
        if hits:
            for i in hits[:2]:
                t[i] = SYN[t[i].lower()]
        else:
            i = rng.randrange(n)
            t[i] = rng.choice(vocab)
            kind = "sub"
    elif kind == "mix":
        del t[rng.randrange(n)]
        i = rng.randrange(len(t))
        s = stem_change(t[i])
        if s:
            t[i] = s
        i = rng.randrange(len(t) - 1)
        t[i], t[i + 1] = t[i + 1], t[i]
        t.insert(rng.randrange(len(t) + 1), rng.choice(vocab))
    elif kind == "shuffle":
        rng.shuffle(t)
    elif kind == "case":
        # casing and punctuation variants exercise -norm
        t = [w.capitalize() if rng.random() < 0.3 else w for w in t]
        s = " ".join(t)
        s = s.replace(" ?", "?").replace(" ,", ",").replace(" .", ".")
        s = s.replace(" 's", "'s").replace(" n't", "n't")
        return kind, s[0].upper() + s[1:]
    elif kind == "trunc":
        t = t[: max(1, n // 2)]
    elif kind == "insert":
        for _ in range(2):
            t.insert(rng.randrange(len(t) + 1), rng.choice(vocab))
    return kind, " ".join(t)


def build_cases(data, n, rng):
    src = open(os.path.join(data, "squad-qg/src-dev.txt"), encoding="utf-8").read().splitlines()
    tgt = open(os.path.join(data, "squad-qg/tgt-dev.txt"), encoding="utf-8").read().splitlines()
    pc = open(os.path.join(data, "personachat/target.txt"), encoding="utf-8").read().splitlines()
    groups = {}
    for s, q in zip(src, tgt):
        groups.setdefault(s, []).append(q)
    multi = [v for v in groups.values() if len(v) >= 2]
    vocab = sorted({w for line in tgt[:3000] + pc[:3000] for w in line.split()})
    cases = []
    n_multi = n // 5
    n_squad = (n - n_multi) // 2
    n_pc = n - n_multi - n_squad
    for ref in rng.sample(tgt, n_squad):
        kind, hyp = perturb(ref, rng, vocab)
        cases.append({"kind": kind, "hyp": hyp, "refs": [ref], "src": "squad-qg"})
    for ref in rng.sample(pc, n_pc):
        kind, hyp = perturb(ref, rng, vocab)
        cases.append({"kind": kind, "hyp": hyp, "refs": [ref], "src": "personachat"})
    for refs in rng.sample(multi, n_multi):
        refs = refs[:4]
        kind, hyp = perturb(rng.choice(refs), rng, vocab)
        cases.append({"kind": "multi-" + kind, "hyp": hyp, "refs": list(refs), "src": "squad-qg"})
    for i, c in enumerate(cases):
        c["id"] = i
        # pycocoevalcap strips '|||' and double spaces from the hypothesis only
        c["hyp"] = c["hyp"].replace("|||", "").replace("  ", " ").strip()
        if not c["hyp"]:
            c["hyp"] = c["refs"][0]
    return cases


def jar_eval(cases, extra):
    """Same protocol as pycocoevalcap, optional extra jar flags."""
    cmd = ["java", "-jar", "-Xmx2G", JAR, "-", "-", "-stdio", "-l", "en", "-norm"] + extra
    p = subprocess.Popen(cmd, cwd=METEOR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    stats = []
    for c in cases:
        line = " ||| ".join(("SCORE", " ||| ".join(c["refs"]), c["hyp"]))
        p.stdin.write((line + "\n").encode())
        p.stdin.flush()
        stats.append(p.stdout.readline().decode().strip())
    p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
    p.stdin.flush()
    segs = [float(p.stdout.readline().strip()) for _ in cases]
    corpus = float(p.stdout.readline().strip())
    p.stdin.close()
    p.kill()
    p.wait()
    return corpus, segs


STEM_JAVA = r"""
import java.io.*;
import org.tartarus.snowball.ext.englishStemmer;
public class StemDump {
  public static void main(String[] a) throws Exception {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
    PrintStream out = new PrintStream(System.out, true, "UTF-8");
    englishStemmer s = new englishStemmer();
    String w;
    while ((w = in.readLine()) != null) { s.setCurrent(w); s.stem(); out.println(s.getCurrent()); }
  }
}
"""


def jar_stems(words):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "StemDump.java"), "w") as f:
            f.write(STEM_JAVA)
        subprocess.run(["javac", "-cp", JAR, "StemDump.java"], cwd=d, check=True)
        out = subprocess.run(["java", "-cp", JAR + os.pathsep + d, "StemDump"],
                             input="\n".join(words).encode(), stdout=subprocess.PIPE,
                             check=True).stdout.decode("utf-8").splitlines()
    return dict(zip(words, out))


def jar_normalize(lines):
    out = subprocess.run(["java", "-cp", JAR, "edu.cmu.meteor.util.Normalizer", "en", "true"],
                         input="\n".join(lines).encode(), stdout=subprocess.PIPE,
                         check=True).stdout.decode("utf-8").splitlines()
    return [[a, b] for a, b in zip(lines, out)]


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "meteor"))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    cases = build_cases(args.data, args.n, rng)

    # 1. Official path: pycocoevalcap wrapper, all four modules.
    gts = {c["id"]: c["refs"] for c in cases}
    res = {c["id"]: [c["hyp"]] for c in cases}
    m = Meteor()
    corpus_full, segs_full = m.compute_score(gts, res)
    del m
    # 2. Same jar, exact + stem only (no tables).
    corpus_es, segs_es = jar_eval(cases, ["-m", "exact stem"])
    for c, a, b in zip(cases, segs_full, segs_es):
        c["seg_full"] = a
        c["seg_exact_stem"] = b
    meta = {
        "scorer": "meteor-1.5.jar via pycocoevalcap %s (-l en -norm -stdio)" % getattr(
            pycocoevalcap, "__version__", "1.2"),
        "corpus": "EVAL aggregate (summed sufficient statistics)",
        "exact_stem": "same jar with -m 'exact stem' (weights 1.0 0.6)",
        "data": "squad-qg tgt-dev (CC BY-SA 4.0, Du et al. 2017), personachat target (MIT)",
        "seed": args.seed,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "corpus_full": corpus_full, "corpus_exact_stem": corpus_es,
                   "cases": cases}, f, ensure_ascii=False, indent=0)
    print("corpus full %.6f exact+stem %.6f" % (corpus_full, corpus_es))

    # 3. Stemmer and normaliser oracles.
    words = set()
    for c in cases:
        for s in [c["hyp"]] + c["refs"]:
            words.update(w for w in re.split(r"\s+", s.lower()) if w)
    pc = open(os.path.join(args.data, "personachat/target.txt"), encoding="utf-8").read().split()
    words.update(w.lower() for w in pc[:20000])
    words = sorted(w for w in words if w)
    with open(os.path.join(args.out, "stems.json"), "w", encoding="utf-8") as f:
        json.dump(jar_stems(words), f, ensure_ascii=False, indent=0)
    norm_lines = [c["hyp"] for c in cases if c["kind"] == "case"]
    norm_lines += [
        "U.S.-based firms' profits rose 3,000.5% in the 1990's... didn't they?",
        "\u201cQuoted\u201d text \u2013 with dashes -- and `ticks' and Mr. Smith's dog.",
        "Caf\u00e9 na\u00efve \u00c9cole, e.g. etc. No. 5 vs. No 6 ... end!!",
        "it's 5 o'clock , isn't it ? yes , it is . rock'n'roll",
        "Hello...world .. a.b.c. Inc. is 1,234,567 strong; (really) [yes] {no} <tag> @home #1 $5",
        "\u00bfQu\u00e9 pasa? \u4e2d\u6587 \u0639\u0631\u0628\u064a emoji \U0001F600 ok",
    ]
    with open(os.path.join(args.out, "norm.json"), "w", encoding="utf-8") as f:
        json.dump(jar_normalize(norm_lines), f, ensure_ascii=False, indent=0)
    total = sum(os.path.getsize(os.path.join(args.out, x)) for x in os.listdir(args.out))
    print("wrote %d cases, %d stems, %d norm lines, %d bytes" % (len(cases), len(words),
                                                                   len(norm_lines), total))


if __name__ == "__main__":
    sys.exit(main())
