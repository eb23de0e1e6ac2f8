#!/usr/bin/env python3
"""PyTorch (eager, CPU, float32) counterpart of `cargo bench --bench latency`.

Run from the repository root:

    python3 scripts/bench_pytorch.py                # all cases, prints a table
    python3 scripts/bench_pytorch.py --repeats 5 --attn eager --only src128

Same model shape as the Rust bench: a randomly initialised BART-base
`BartForConditionalGeneration` (d 768, 6+6 layers, 12 heads, FFN 3072, vocab 50265, 1024
positions) plus an ELMER `concat_head` (Linear 1536 -> 768, no bias). Batch 1, torch threads = 2,
`torch.inference_mode()`, median wall time over `--repeats` runs after one warm-up. Cases
(encode included in every decode case, tokenisation excluded):

- `encoder/src{S}`: `model.model.encoder(input_ids)`;
- `src{S}_slot{T}/nar_last`: ELMER NAR pass, every token to the last layer, one off-ramp;
- `src{S}_slot{T}/nar_soft`: soft exit (off-ramp argmax of layers 1..L-1 embedded and fed back
  through `concat_head`);
- `src{S}_slot{T}/nar_hard0`: hard exit at threshold 0.0: every layer, off-ramp, entropy and
  argmax computed for every token (random weights never reach a low entropy);
- `src{S}_slot{T}/ar_greedy`: `generate(num_beams=1, do_sample=False,
  min_new_tokens=max_new_tokens=T)` (exactly T tokens, KV cache on).

The NAR passes are written on transformers' BART modules as in scripts/fixtures/make_model_fixtures.py
(decoder self-attention is bidirectional: an explicit all-zero additive mask is passed, since
with no mask the SDPA path would be causal). The crate's `nar_fixed` (sparse per-token exit
schedule) has no PyTorch counterpart here: transformers' decoder layers cannot compute queries
for a subset of tokens.

If target/elmer-bench-summary.json (written by the Rust bench) exists, the table also shows the
crate's median and the crate/PyTorch ratio. Results are written to
target/pytorch-bench-summary.json.

`--memory` measures peak memory instead: every case runs twice in a fresh Python process, which
reports its resident set after building the model and its peak (`ru_maxrss`); with
target/elmer-bench-memory.json (from `ELMER_BENCH_MEMORY=1 cargo bench --bench latency`) the
table shows the crate's peak and the ratio. Results: target/pytorch-bench-memory.json.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = (128, 512)
SLOTS = (32, 64)
BOS, PAD, EOS = 0, 1, 2


def base_config(attn):
    return BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=12, decoder_attention_heads=12,
        encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
        activation_function="gelu", scale_embedding=False,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=2,
        forced_eos_token_id=None, forced_bos_token_id=None,
        attn_implementation=attn,
    )


class ElmerNar:
    """ELMER NAR decoder passes on a BartForConditionalGeneration's modules."""

    def __init__(self, model, concat_head):
        self.bart = model.model
        self.layers = list(self.bart.decoder.layers)
        self.E = self.bart.shared.weight  # [V, d], tied output projection
        self.bias = model.final_logits_bias.reshape(-1)
        self.concat_head = concat_head
        cfg = model.config
        self.mask_id = cfg.vocab_size - 1

    def offramp(self, h):
        return F.linear(h, self.E) + self.bias

    def context(self, input_ids, slot):
        enc = self.bart.encoder(input_ids=input_ids).last_hidden_state
        b = input_ids.shape[0]
        dev = input_ids.device
        dec_ids = torch.full((b, slot), self.mask_id, dtype=torch.int64, device=dev)
        dec_ids[:, 0] = BOS
        dec = self.bart.decoder
        h0 = dec.layernorm_embedding(dec.embed_tokens(dec_ids) + dec.embed_positions(dec_ids))
        # explicit additive zero mask: bidirectional (no mask would mean causal under SDPA)
        self_mask = torch.zeros((b, 1, slot, slot), dtype=h0.dtype, device=dev)
        return dict(enc=enc, h0=h0, self_mask=self_mask)

    def layer(self, i, h, ctx):
        return self.layers[i](
            h, attention_mask=ctx["self_mask"], encoder_hidden_states=ctx["enc"],
            encoder_attention_mask=None, cache=None, use_cache=False,
        )

    def last(self, input_ids, slot):
        ctx = self.context(input_ids, slot)
        h = ctx["h0"]
        for i in range(len(self.layers)):
            h = self.layer(i, h, ctx)
        return self.offramp(h).argmax(-1)

    def soft(self, input_ids, slot):
        ctx = self.context(input_ids, slot)
        h = ctx["h0"]
        for i in range(len(self.layers)):
            if i >= 1:
                p = self.offramp(h).argmax(-1)
                h = self.concat_head(torch.cat([h, F.embedding(p, self.E)], -1))
            h = self.layer(i, h, ctx)
        return self.offramp(h).argmax(-1)

    def hard(self, input_ids, slot, delta=0.0):
        ctx = self.context(input_ids, slot)
        h = ctx["h0"]
        b, t = h.shape[:2]
        L = len(self.layers)
        active = torch.ones(b, t, dtype=torch.bool, device=h.device)
        ids = torch.zeros(b, t, dtype=torch.int64, device=h.device)
        for i in range(L):
            h = torch.where(active[..., None], self.layer(i, h, ctx), h)
            logits = self.offramp(h)
            if i + 1 < L:
                lp = torch.log_softmax(logits, -1)
                ent = -(lp.exp() * lp).sum(-1)
                exit_now = active & (ent < delta)
            else:
                exit_now = active.clone()
            ids[exit_now] = logits.argmax(-1)[exit_now]
            active &= ~exit_now
        return ids


def sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(fn, repeats):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()  # a GPU runs asynchronously: time the work, not its launch
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def memory_parent(args):
    ids = []
    for s in SOURCES:
        ids.append(f"encoder/src{s}")
        for t in SLOTS:
            ids += [f"src{s}_slot{t}/{p}" for p in ("nar_last", "nar_soft", "nar_hard0", "ar_greedy")]
    rust = {}
    if os.path.exists(args.rust_memory):
        with open(args.rust_memory) as f:
            rust = json.load(f).get("cases", {})
    results = {}
    print("| case | PyTorch after build MiB | PyTorch peak MiB | crate peak MiB | crate/PyTorch |")
    print("|---|---|---|---|---|")
    for name in ids:
        if args.only and args.only not in name:
            continue
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
             "--attn", args.attn, "--memory-child", name],
            capture_output=True, text=True, check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[name] = r
        c = rust.get(name, {}).get("peak_mib")
        print(f"| {name} | {r['after_build_mib']:.0f} | {r['peak_mib']:.0f} | "
              + (f"{c:.0f} | {c / r['peak_mib']:.2f} |" if c else "- | - |"), flush=True)
    out = os.path.join(ROOT, "target", "pytorch-bench-memory.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"torch": torch.__version__, "threads": args.threads, "cases": results}, f, indent=2)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention implementation (default: sdpa, its default)")
    ap.add_argument("--only", default="", help="run only case ids containing this substring")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda[:N] (float32; TF32 off so the numbers compare with the crate)")
    ap.add_argument("--rust-summary", default=os.path.join(ROOT, "target", "elmer-bench-summary.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "pytorch-bench-summary.json"))
    ap.add_argument("--memory", action="store_true",
                    help="measure peak resident memory per case (one process per case)")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rust-memory", default=os.path.join(ROOT, "target", "elmer-bench-memory.json"))
    args = ap.parse_args()
    if args.memory:
        return memory_parent(args)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    load_before = loadavg()
    t0 = time.perf_counter()
    model = BartForConditionalGeneration(base_config(args.attn)).eval().to(device)
    model.generation_config.forced_eos_token_id = None
    model.generation_config.forced_bos_token_id = None
    concat_head = torch.nn.Linear(2 * 768, 768, bias=False).eval().to(device)
    el = ElmerNar(model, concat_head)
    print(f"built model in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, threads {torch.get_num_threads()}, attn {args.attn}")

    g = torch.Generator().manual_seed(1)
    sources = {}
    for s in SOURCES:
        ids = torch.randint(4, 50264, (1, s), generator=g, dtype=torch.int64)
        ids[0, 0], ids[0, -1] = BOS, EOS
        sources[s] = ids.to(device)

    def ar(ids, slot):
        gc = GenerationConfig(
            max_new_tokens=slot, min_new_tokens=slot, num_beams=1, do_sample=False,
            no_repeat_ngram_size=0, repetition_penalty=1.0, forced_bos_token_id=None,
            forced_eos_token_id=None, decoder_start_token_id=2, eos_token_id=EOS,
            pad_token_id=PAD, bos_token_id=BOS, use_cache=True,
        )
        out = model.generate(input_ids=ids, generation_config=gc)
        assert out.shape[1] == slot + 1, out.shape
        return out

    cases = []
    for s in SOURCES:
        cases.append((f"encoder/src{s}", lambda s=s: model.model.encoder(input_ids=sources[s]).last_hidden_state))
        for t in SLOTS:
            ids = sources[s]
            cases += [
                (f"src{s}_slot{t}/nar_last", lambda ids=ids, t=t: el.last(ids, t)),
                (f"src{s}_slot{t}/nar_soft", lambda ids=ids, t=t: el.soft(ids, t)),
                (f"src{s}_slot{t}/nar_hard0", lambda ids=ids, t=t: el.hard(ids, t)),
                (f"src{s}_slot{t}/ar_greedy", lambda ids=ids, t=t: ar(ids, t)),
            ]

    if args.memory_child:
        case = dict(cases)[args.memory_child]
        built = rss_mib()
        with torch.inference_mode():
            case()
            case()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"id": args.memory_child, "after_build_mib": built, "peak_mib": peak}))
        return

    rust = {}
    if os.path.exists(args.rust_summary):
        with open(args.rust_summary) as f:
            rust = json.load(f).get("cases", {})

    results = {}
    with torch.inference_mode():
        for name, fn in cases:
            if args.only and args.only not in name:
                continue
            med, times = median_ms(fn, args.repeats)
            results[name] = {"median_ms": med, "runs_ms": [round(x, 2) for x in times]}
            print(f"{name:28s} {med:9.1f} ms", flush=True)

    # speedups within PyTorch
    for s in SOURCES:
        for t in SLOTS:
            ar_ms = results.get(f"src{s}_slot{t}/ar_greedy", {}).get("median_ms")
            for p in ("nar_last", "nar_soft", "nar_hard0"):
                r = results.get(f"src{s}_slot{t}/{p}")
                if r and ar_ms:
                    r["ar_speedup"] = ar_ms / r["median_ms"]

    print(f"\n| case | PyTorch ms | crate ms | crate/PyTorch | PyTorch AR/NAR | crate AR/NAR |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        cr = rust.get(name, {})
        c_ms = cr.get("median_ms")
        cells = [name, f"{r['median_ms']:.1f}",
                 f"{c_ms:.1f}" if c_ms else "-",
                 f"{c_ms / r['median_ms']:.2f}" if c_ms else "-",
                 f"{r['ar_speedup']:.1f}x" if "ar_speedup" in r else "-",
                 f"{cr['ar_speedup']:.1f}x" if "ar_speedup" in cr else "-"]
        print("| " + " | ".join(cells) + " |")

    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "")
    except OSError:
        cpu = ""
    summary = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "attn_implementation": args.attn,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "repeats": args.repeats, "cpu": cpu,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "cases": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nload average before/after: {load_before} / {loadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
