#!/usr/bin/env python3
"""Build the autoregressive (AR) greedy-decoding fixtures for `tests/ar_parity.rs`.

Run from the repository root (after scripts/make_model_fixtures.py):

    python3 scripts/make_ar_fixtures.py

For every fixture checkpoint (tests/fixtures/model/{cg,bare}, tests/fixtures/tiny-random-bart)
this loads the weights into transformers' `BartForConditionalGeneration` (the bare `BartModel`
checkpoints get a tied lm_head and a zero `final_logits_bias`), takes the padded batch of 3
sources stored in tests/fixtures/model/<name>_reference.safetensors (`input_ids`,
`attention_mask`) and runs `generate` greedily: num_beams=1, do_sample=False,
no_repeat_ngram_size=0, repetition_penalty=1, min_length=0, no forced BOS/EOS,
decoder_start_token_id=2. Two cases per checkpoint:

- `eos`:   max_new_tokens=N, stop at EOS (finished rows are padded with <pad>);
- `exact`: max_new_tokens=min_new_tokens=N (EOS suppressed: exactly N tokens per row).

The ids are checked against a hand-written greedy loop without any cache (full decoder
recomputation at every step), then written to tests/fixtures/ar/<name>.json. Deterministic:
float32, eager attention, one thread. Tested with Python 3.11, torch 2.15, transformers 5.24.
"""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import BartForConditionalGeneration, GenerationConfig

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FIX = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "ar")

# The random fixture checkpoints never emit EOS within the position table, so `cg_eos` is
# `cg` with two entries of `final_logits_bias` shifted (EOS up, the dominant token 114 down):
# then the three rows stop at different steps (5, 15, never within 24), which exercises
# per-row stopping and <pad> feeding of finished rows.
EOS_CHECKPOINT = os.path.join(OUT, "cg_eos")
EOS_BIAS_SHIFT = {2: 1.65, 114: -0.5}
EOS_EXPECTED_LENGTHS = [5, 15, 24]

# name -> (checkpoint directory, reference file, max_new_tokens)
CHECKPOINTS = {
    "cg": (os.path.join(MODEL_FIX, "cg"), "cg_reference.safetensors", 24),
    "cg_eos": (EOS_CHECKPOINT, "cg_reference.safetensors", 24),
    "bare": (os.path.join(MODEL_FIX, "bare"), "bare_reference.safetensors", 24),
    "tiny_random_bart": (
        os.path.join(ROOT, "tests", "fixtures", "tiny-random-bart"),
        "tiny_random_bart_reference.safetensors",
        16,
    ),
}


def load(directory):
    m = BartForConditionalGeneration.from_pretrained(
        directory, attn_implementation="eager", dtype=torch.float32
    ).eval()
    # Bare BartModel checkpoints have no head: the lm_head must be the tied shared embedding
    # and final_logits_bias zero (transformers creates it as a zero buffer).
    assert torch.equal(m.lm_head.weight, m.model.shared.weight), directory
    # The fixture configs carry BART's `forced_eos_token_id` 2; generate() would fall back to it
    # for an unset (None) field, so clear it at the source.
    m.config.forced_eos_token_id = None
    m.config.forced_bos_token_id = None
    m.generation_config.forced_eos_token_id = None
    m.generation_config.forced_bos_token_id = None
    return m


def make_eos_checkpoint():
    """Writes tests/fixtures/ar/cg_eos/ (config.json, model.safetensors): cg with a shifted bias."""
    if os.path.isdir(EOS_CHECKPOINT):
        shutil.rmtree(EOS_CHECKPOINT)
    os.makedirs(EOS_CHECKPOINT)
    src = os.path.join(MODEL_FIX, "cg")
    shutil.copyfile(os.path.join(src, "config.json"), os.path.join(EOS_CHECKPOINT, "config.json"))
    sd = load_file(os.path.join(src, "model.safetensors"))
    bias = sd["final_logits_bias"].clone()
    for tok, shift in EOS_BIAS_SHIFT.items():
        bias[0, tok] += shift
    sd["final_logits_bias"] = bias
    path = os.path.join(EOS_CHECKPOINT, "model.safetensors")
    save_file(sd, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)


def gen_config(cfg, n, exact):
    return GenerationConfig(
        max_new_tokens=n,
        min_new_tokens=n if exact else 0,
        min_length=0,
        num_beams=1,
        do_sample=False,
        no_repeat_ngram_size=0,
        repetition_penalty=1.0,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        decoder_start_token_id=cfg.decoder_start_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        use_cache=True,
    )


def manual_greedy(model, ids, am, n, exact):
    """Greedy decoding recomputing the whole decoder at every step (no cache)."""
    cfg = model.config
    b = ids.shape[0]
    seq = torch.full((b, 1), cfg.decoder_start_token_id, dtype=torch.int64)
    done = torch.zeros(b, dtype=torch.bool)
    gap = float("inf")  # smallest top-1 minus top-2 logit over the decisions that count
    for step in range(n):
        logits = model(input_ids=ids, attention_mask=am, decoder_input_ids=seq, use_cache=False).logits[:, -1]
        if exact:
            logits[:, cfg.eos_token_id] = -float("inf")
        top = logits.topk(2, -1).values
        gap = min(gap, (top[:, 0] - top[:, 1])[~done].min().item())
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, cfg.pad_token_id), nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
        done |= nxt == cfg.eos_token_id
        if done.all():
            break
    return seq, gap


def trim(seq, eos):
    """Generated ids per row (start token dropped) up to and including the first EOS."""
    rows = []
    for r in seq[:, 1:].tolist():
        rows.append(r[: r.index(eos) + 1] if eos in r else r)
    return rows


def main():
    os.makedirs(OUT, exist_ok=True)
    make_eos_checkpoint()
    summary = []
    with torch.no_grad():
        for name, (directory, ref, n) in CHECKPOINTS.items():
            model = load(directory)
            cfg = model.config
            assert cfg.decoder_start_token_id == 2
            r = load_file(os.path.join(MODEL_FIX, ref))
            ids, am = r["input_ids"], r["attention_mask"]
            cases = []
            for case, exact in (("eos", False), ("exact", True)):
                seq = model.generate(
                    input_ids=ids, attention_mask=am, generation_config=gen_config(cfg, n, exact)
                )
                ref_seq, gap = manual_greedy(model, ids, am, n, exact)
                assert torch.equal(seq, ref_seq), (name, case, seq, ref_seq)
                # Decisions must not hinge on float noise (candle vs torch differ by ~1e-6 on
                # these logits; tiny-random-bart's |logits| are < 0.4, its closest call ~9e-5).
                assert gap > 5e-5, (name, case, "argmax too close to call", gap)
                assert (seq[:, 0] == cfg.decoder_start_token_id).all()
                rows = trim(seq, cfg.eos_token_id)
                if exact:
                    assert all(len(x) == n and cfg.eos_token_id not in x for x in rows), rows
                elif name == "cg_eos":
                    assert [len(x) for x in rows] == EOS_EXPECTED_LENGTHS, rows
                cases.append({
                    "name": case,
                    "max_new_tokens": n,
                    "min_new_tokens": n if exact else 0,
                    "min_top1_top2_gap": round(gap, 6),
                    "sequences": seq.tolist(),
                    "rows": rows,
                })
                summary.append((name, case, [len(x) for x in rows],
                                [cfg.eos_token_id in x for x in rows], round(gap, 4)))
            out = {
                "generator": {
                    "command": "python3 scripts/make_ar_fixtures.py",
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": sys.version.split()[0],
                },
                "checkpoint": os.path.relpath(directory, ROOT),
                "reference_inputs": os.path.relpath(os.path.join(MODEL_FIX, ref), ROOT),
                "input_ids": ids.tolist(),
                "attention_mask": am.tolist(),
                "decoder_start_token_id": cfg.decoder_start_token_id,
                "eos_token_id": cfg.eos_token_id,
                "pad_token_id": cfg.pad_token_id,
                "notes": "sequences: generate() output [batch, 1 + steps] with the start token "
                         "and <pad> after EOS; rows: generated ids up to and including EOS",
                "cases": cases,
            }
            with open(os.path.join(OUT, f"{name}.json"), "w") as f:
                json.dump(out, f, indent=1)
                f.write("\n")
    for s in summary:
        print(*s)


if __name__ == "__main__":
    main()
