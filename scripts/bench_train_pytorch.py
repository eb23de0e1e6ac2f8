#!/usr/bin/env python3
"""PyTorch reference timing of the `elmer` training steps (LPLM pre-training and soft-exit
fine-tuning), to compare with the tokens/s the Rust crate prints.

What is timed
-------------
One optimizer step, exactly the span the crate's `Trainer::train_step` times
(src/train/trainer.rs): draw the micro-batch (sampling without replacement, corruption /
padding, exit or gold-mixing draws), forward in train mode (dropout 0.1), the loss, backward,
global grad-norm clipping at 2.0, AdamW update (linear warm-up learning rate), zero_grad, and
reading the loss value. PyTorch eager on CPU, float32, `torch.set_num_threads(--threads)`
(default 2). `--warmup` steps (default 3) are run first and not counted, then `--steps`
(default 20) are timed one by one; the script prints and stores the median and mean ms/step
and tokens/s (median and mean of the per-step rates, and total tokens / total time; the crate's
end-of-run "training throughput" is the mean of its per-step rates over all steps, including
its first ones).

Tokens per step are counted as the crate counts them (`MicroLoss.tokens` in
src/train/lplm.rs and src/train/finetune.rs): non-pad source tokens + non-pad label tokens of
the batch, each sequence once. For LPLM that is NOT multiplied by k, although the decoder runs
k times; the labels exclude `<s>`.

How it matches the crate
------------------------
- Model: transformers' `BartModel` (post-norm, learned positions with offset 2,
  layernorm_embedding, GELU, no embedding scaling, dropout 0.1, attention/activation dropout 0),
  tied embedding = the one shared off-ramp, `final_logits_bias` (zero, not trained, as the
  crate's default `train_final_logits_bias = false`), and `concat_head` Linear(2d -> d, no bias)
  (the crate's `pretrain` also creates it; it gets no gradient in LPLM). Presets are those of
  crates/elmer-cli/src/cmd/pretrain.rs: small = d 192, 3+3 layers, 6 heads, FFN 768;
  medium = d 256, 4+4, 4 heads, FFN 1024; 256 positions. The encoder is `BartModel.encoder`
  as is. The decoder is rebuilt from the transformers layers' own submodules (as
  scripts/fixtures/make_model_fixtures.py does, but with the layer body written out) so that
  (a) self-attention is bidirectional (explicit additive key-padding mask, never causal) and
  (b) the cross-attention keys/values are computed once per batch and shared by the k decoder
  passes, as the crate's `cache_cross_attention` does. At start-up the hand-written layer is
  checked against `BartDecoderLayer.forward` in eval mode.
- LPLM (src/train/lplm.rs, src/train/loss.rs::lplm_loss, src/train/corruption): WikiText-2 raw
  test read as the crate's `read_documents` (blank-line separated paragraphs, `= ... =`
  headings dropped), optionally lowercased (on by default for the 8192 vocabulary, as
  `--lowercase`), tokenised without specials and cut into chunks of <= 62 ids framed
  `<s> ... </s>` (`--max-len 64`); 64 chunks are held out like `--valid-docs 64`. Corruption:
  sentence permutation (split after the ids 4 and 479, hard-coded in the crate), then text
  infilling with round(0.15 n) tokens in Poisson(3) spans (zero-truncated Poisson lengths,
  geometric runs of zero-length insertions, spans placed longest first without overlap or
  crossing specials, each span one `<mask>`), the source clipped to the chunk length. Labels =
  chunk without `<s>`; decoder input `[<s>, <mask> x (len-1)]` per row, `<pad>` beyond, T = the
  longest label row of the batch. k exit assignments uniform in 1..L per token; the encoder
  runs once, the decoder once per assignment with the dense fixed-exit pass of
  src/model/decoder/dense.rs (every layer on every token; inputs of exited tokens detached;
  the prediction from the non-detached state of the exit layer); exit states of non-pad
  positions of all k passes are packed, projected once by the shared off-ramp (+ bias) and the
  mean NLL taken.
- Soft exit (src/train/finetune.rs, loss.rs::soft_exit_loss, dense.rs::forward_soft):
  SQuAD-QG (Du et al.) src/tgt-train.txt pairs, sources framed and truncated to 128 ids,
  labels = framed target without `<s>` truncated to 32 (`</s>` last); `Batch::from_ids`
  (T = longest label row) or, with `--slot N`, `Batch::from_ids_in_slot` (T = max(N, longest),
  all T positions attended, labels padded). Before decoder layer l >= 2: argmax of the
  off-ramp (+ bias) of the detached current states, replaced by the gold label with
  probability 0.3 per non-pad position, embedded with the shared table (with gradient),
  concat_head([h; e]) fed into layer l. Loss = mean over the L layer outputs of the packed
  off-ramp cross-entropy (pads ignored). lr 5e-4 with warm-up, as `elmer finetune`.
- Optimizer (src/train/optim.rs): AdamW beta 0.9/0.999, eps 1e-8, weight decay 0.01 on
  `*.weight` except layer norms and position tables; grad-norm clip 2.0 (scale
  2 / (norm + 1e-6) when above).

Differences that remain
-----------------------
- Random streams differ (numpy/torch vs the crate's StdRng), so the batches, corruption,
  exits, dropout masks and gold mixing are different draws from the same distributions; the
  weights are transformers' N(0, 0.02) initialisation, not the crate's (values do not change
  the cost).
- PyTorch computes the off-ramp cross-entropy with its own fused kernel (log_softmax + nll);
  the crate uses its own fused CPU kernel. The argmaxes of the soft-exit feedback use the full
  biased logits here (the crate uses a fused argmax kernel); same result, different cost.
- Tokenisation uses the `tokenizers` Python package on the same tokenizer.json.
- The crate also runs validation/checkpointing between steps; neither is timed there nor here.

Command lines
-------------
    python3 scripts/bench_train_pytorch.py --preset small --vocab 8192 --mode both --steps 10
    python3 scripts/bench_train_pytorch.py --preset small --vocab 50265 --mode lplm --steps 10
    # defaults: --k 2 --batch-size 16 --threads 2 --slot 0 (slot = label length) --steps 20
Crate counterparts (same batch and k; the crate's own defaults are --batch-size 8 --k 4):
    elmer pretrain --preset small --tokenizer runs/tok8k --lowercase --batch-size 16 --k 2 \
        --steps 20 --no-resume --out runs/bench-pretrain
    elmer finetune --task squad-qg --exit soft --pretrained <pretrained dir> --batch-size 16 \
        --steps 20 --no-resume
(RAYON_NUM_THREADS=2 to give the crate the same 2 threads.)

Results are merged into target/pytorch-train-bench.json (one entry per case).
"""

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import transformers
from transformers import BartConfig, BartModel

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
BOS, PAD, EOS, UNK = 0, 1, 2, 3
NEG = torch.finfo(torch.float32).min
PRESETS = {  # d, layers, heads, ffn, positions (crates/elmer-cli/src/cmd/pretrain.rs)
    "tiny": (64, 2, 4, 256, 256),
    "small": (192, 3, 6, 768, 256),
    "medium": (256, 4, 4, 1024, 256),
    "base": (768, 6, 12, 3072, 1024),
}
FULL_STOPS = (4, 479)  # hard-coded in LplmObjective::new (BART's "." and "Ġ.")


# --------------------------------------------------------------------------------------
# tokenizer and data
# --------------------------------------------------------------------------------------

class Tok:
    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
            self.t = Tokenizer.from_file(path)
            self.kind = "tokenizers"
            self.vocab_size = self.t.get_vocab_size()
            self.mask = self.t.token_to_id("<mask>")
        except ImportError:  # pragma: no cover
            from transformers import PreTrainedTokenizerFast
            self.t = PreTrainedTokenizerFast(tokenizer_file=path)
            self.kind = "transformers"
            self.vocab_size = len(self.t)
            self.mask = self.t.convert_tokens_to_ids("<mask>")

    def encode_many(self, texts):
        """Content ids, no framing."""
        if self.kind == "tokenizers":
            return [e.ids for e in self.t.encode_batch(texts, add_special_tokens=False)]
        return [self.t.encode(x, add_special_tokens=False) for x in texts]


def read_documents(path):
    """src/train/lplm.rs::read_documents."""
    text = open(path, encoding="utf-8").read().replace("\r\n", "\n")

    def heading(l):
        t = l.strip()
        return len(t) >= 2 and t.startswith("=") and t.endswith("=")

    if any(not l.strip() for l in text.split("\n")):
        docs = []
        for block in text.split("\n\n"):
            lines = [l.strip() for l in block.split("\n")]
            lines = [l for l in lines if l and not heading(l)]
            if lines:
                docs.append(" ".join(lines))
        return docs
    return [l.strip() for l in text.split("\n") if l.strip() and not heading(l)]


def tokenize_documents(tok, docs, max_len):
    out = []
    for ids in tok.encode_many(docs):
        for i in range(0, len(ids), max_len - 2):
            c = ids[i:i + max_len - 2]
            if len(c) < 2:
                continue
            out.append([BOS] + c + [EOS])
    return out


def rust_round(x):
    return int(math.floor(x + 0.5))  # f64::round, half away from zero (x >= 0)


class Corruptor:
    """src/train/corruption (defaults: mask 0.15, Poisson(3), no whole-word, no random tokens,
    sentence shuffle on, no insertion noise)."""

    def __init__(self, mask_id, lam=3.0, ratio=0.15, rng=None):
        self.mask = mask_id
        self.lam = lam
        self.ratio = ratio
        self.special = {BOS, PAD, EOS, UNK, mask_id}
        self.rng = rng
        self.p_pos = -math.expm1(-lam)  # P(Poisson > 0)

    def permute(self, ids):
        end = len(ids) - 1
        sents, begin = [], 1
        for i in range(1, end):
            if ids[i] in FULL_STOPS and (i + 1 == end or ids[i + 1] not in FULL_STOPS):
                sents.append((begin, i + 1))
                begin = i + 1
        if begin < end:
            sents.append((begin, end))
        if len(sents) < 2:
            return list(ids)
        order = self.rng.permutation(len(sents))
        out = [ids[0]]
        for j in order:
            a, b = sents[j]
            out.extend(ids[a:b])
        out.append(ids[-1])
        return out

    def units(self, ids):
        units, seg = [], 0
        for i in range(1, len(ids) - 1):
            if ids[i] in self.special:
                seg += 1
                continue
            units.append((i, 1, seg))
        return units

    def positive(self):
        while True:
            k = int(self.rng.poisson(self.lam))
            if k >= 1:
                return k

    def span_lengths(self, budget):
        lengths, zeros, total = [], 0, 0
        while total < budget:
            zeros += int(self.rng.geometric(self.p_pos)) - 1
            n = min(self.positive(), budget - total)
            lengths.append(n)
            total += n
        return lengths, zeros

    def place(self, units, lengths):
        free = []
        for i, u in enumerate(units):
            if free and units[free[-1][0]][2] == u[2]:
                free[-1][1] += 1
            else:
                free.append([i, 1])
        pending = sorted(lengths, reverse=True)[::-1]
        placed = []
        while pending:
            n = pending.pop()
            fits = sum(c - n + 1 for _, c in free if c >= n)
            if fits == 0:
                if not free:
                    break
                idx = max(range(len(free)), key=lambda j: (free[j][1], j))
                first, count = free.pop(idx)
                placed.append((first, count))
                pending.insert(0, n - count)
                continue
            r = int(self.rng.integers(fits))
            for idx in range(len(free)):
                first, count = free[idx]
                if count < n:
                    continue
                choices = count - n + 1
                if r < choices:
                    start = first + r
                    placed.append((start, n))
                    left, right = [first, r], [start + n, count - r - n]
                    free.pop(idx)
                    if right[1] > 0:
                        free.insert(idx, right)
                    if left[1] > 0:
                        free.insert(idx, left)
                    break
                r -= choices
        return placed

    def corrupt(self, ids):
        n = len(ids)
        sh = self.permute(ids)
        units = self.units(sh)
        budget = min(rust_round(self.ratio * len(units)), len(units))
        spans = []
        if budget > 0:
            lengths, zeros = self.span_lengths(budget)
            placed = self.place(units, lengths)
            interior = [False] * len(units)
            for first, count in placed:
                for j in range(first + 1, first + count):
                    interior[j] = True
                start = units[first][0]
                last = units[first + count - 1]
                spans.append((start, last[0] + last[1] - start))
            if zeros > 0:
                gaps = [u[0] for u, inside in zip(units, interior) if not inside]
                gaps += [i for i in range(1, n) if sh[i] in self.special]
                gaps.sort()
                take = min(zeros, len(gaps))
                for k in self.rng.choice(len(gaps), size=take, replace=False):
                    spans.append((gaps[int(k)], 0))
            spans.sort()
        src, pos = [], 0
        for start, ln in spans:
            src.extend(sh[pos:start])
            src.append(self.mask)
            pos = start + ln
        src.extend(sh[pos:])
        return src


def make_batch(sources, labels, mask_id, slot=None):
    """src/train/loss.rs::Batch::from_ids(_in_slot). Returns tensors and the token count."""
    B = len(sources)
    S = max(map(len, sources))
    T = max(map(len, labels))
    if slot:
        T = max(T, slot)
    ids = torch.full((B, S), PAD, dtype=torch.long)
    am = torch.zeros((B, S), dtype=torch.long)
    lab = torch.full((B, T), PAD, dtype=torch.long)
    dec = torch.full((B, T), PAD, dtype=torch.long)
    dam = torch.zeros((B, T), dtype=torch.long)
    for i, (s, l) in enumerate(zip(sources, labels)):
        ids[i, :len(s)] = torch.tensor(s)
        am[i, :len(s)] = 1
        lab[i, :len(l)] = torch.tensor(l)
        n = T if slot else len(l)
        dec[i, :n] = mask_id
        dec[i, 0] = BOS
        dam[i, :n] = 1
    n_src = sum(map(len, sources))
    n_tgt = sum(sum(1 for x in l if x != PAD) for l in labels)
    return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dec,
                decoder_attention_mask=dam, labels=lab), n_src + n_tgt


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------

def additive_mask(key_mask):
    """[B, S] 1/0 -> [B, 1, 1, S] additive float mask (0 keep, finfo.min masked); never causal."""
    m = torch.zeros(key_mask.shape[0], 1, 1, key_mask.shape[1])
    return m.masked_fill(~key_mask.bool()[:, None, None, :], NEG)


class Elmer(torch.nn.Module):
    def __init__(self, cfg, attn):
        super().__init__()
        self.bart = BartModel(cfg)
        self.L = cfg.decoder_layers
        self.d = cfg.d_model
        self.attn = attn
        self.p = cfg.dropout
        self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        self.concat_head = torch.nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        torch.nn.init.normal_(self.concat_head.weight, std=0.02)
        assert not cfg.scale_embedding

    @property
    def E(self):
        return self.bart.shared.weight

    def offramp(self, h):
        return F.linear(h, self.E, self.final_logits_bias)

    # -- attention written out on the transformers module's projections --
    def heads(self, x, proj, H):
        B, T, _ = x.shape
        return proj(x).view(B, T, H, -1).transpose(1, 2)

    def attend(self, mod, x, k, v, mask):
        B, T, _ = x.shape
        q = self.heads(x, mod.q_proj, k.shape[1])
        if self.attn == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0,
                                               scale=mod.scaling)
        else:
            w = torch.softmax(q @ k.transpose(-1, -2) * mod.scaling + mask, -1)
            o = w @ v
        return mod.out_proj(o.transpose(1, 2).reshape(B, T, self.d))

    def layer(self, l, h, ctx):
        """BartDecoderLayer (post-norm) with bidirectional self-attention and cached cross K/V."""
        lay = self.bart.decoder.layers[l - 1]
        sa = lay.self_attn
        H = sa.num_heads
        k, v = self.heads(h, sa.k_proj, H), self.heads(h, sa.v_proj, H)
        x = lay.self_attn_layer_norm(
            h + F.dropout(self.attend(sa, h, k, v, ctx["self_mask"]), self.p, self.training))
        ck, cv = ctx["cross"][l - 1]
        x = lay.encoder_attn_layer_norm(
            x + F.dropout(self.attend(lay.encoder_attn, x, ck, cv, ctx["enc_mask"]),
                          self.p, self.training))
        f = lay.fc2(F.dropout(lay.activation_fn(lay.fc1(x)), lay.activation_dropout,
                              self.training))
        return lay.final_layer_norm(x + F.dropout(f, self.p, self.training))

    def embed(self, dec_ids):
        dec = self.bart.decoder
        h = dec.layernorm_embedding(dec.embed_tokens(dec_ids) + dec.embed_positions(dec_ids))
        return F.dropout(h, self.p, self.training)

    def context(self, b):
        enc = self.bart.encoder(input_ids=b["input_ids"],
                                attention_mask=b["attention_mask"]).last_hidden_state
        cross = []
        for lay in self.bart.decoder.layers:
            ea = lay.encoder_attn
            cross.append((self.heads(enc, ea.k_proj, ea.num_heads),
                          self.heads(enc, ea.v_proj, ea.num_heads)))
        return dict(enc=enc, cross=cross, self_mask=additive_mask(b["decoder_attention_mask"]),
                    enc_mask=additive_mask(b["attention_mask"]))

    # -- losses --
    def lplm_loss(self, b, exits):
        """loss.rs::lplm_loss with dense.rs::fixed_exit_states."""
        ctx = self.context(b)
        labels = b["labels"].reshape(-1)
        keep = (labels != PAD).nonzero().squeeze(1)
        rows = []
        for e in exits:
            h = self.embed(b["decoder_input_ids"])
            state = None
            for l in range(1, self.L + 1):
                km = (e >= l)[..., None]
                h_in = torch.where(km, h, h.detach()) if l > 1 else h
                new = self.layer(l, h_in, ctx)
                h = torch.where(km, new, h_in)
                state = new if state is None else torch.where((e == l)[..., None], new, state)
            rows.append(state.reshape(-1, self.d).index_select(0, keep))
        y = labels.index_select(0, keep).repeat(len(exits))
        return F.cross_entropy(self.offramp(torch.cat(rows, 0)), y)

    def soft_loss(self, b, use_gold):
        """loss.rs::soft_exit_loss with dense.rs::forward_soft (teacher forcing)."""
        ctx = self.context(b)
        lab = b["labels"]
        use_gold = use_gold & (lab != PAD)
        flat = lab.reshape(-1)
        keep = (flat != PAD).nonzero().squeeze(1)
        y = flat.index_select(0, keep)
        h = self.embed(b["decoder_input_ids"])
        total = 0.0
        for l in range(1, self.L + 1):
            if l >= 2:
                with torch.no_grad():
                    pred = self.offramp(h.detach()).argmax(-1)
                pred = torch.where(use_gold, lab, pred)
                h = self.concat_head(torch.cat([h, F.embedding(pred, self.E)], -1))
            h = self.layer(l, h, ctx)
            total = total + F.cross_entropy(
                self.offramp(h.reshape(-1, self.d).index_select(0, keep)), y)
        return total / self.L


def check_layer(model):
    """The hand-written decoder layer equals BartDecoderLayer.forward (eval mode)."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    B, S, T = 2, 7, 5
    V = model.E.shape[0]
    am = torch.ones(B, S, dtype=torch.long)
    am[1, 4:] = 0
    dam = torch.ones(B, T, dtype=torch.long)
    dam[1, 3:] = 0
    b = dict(input_ids=torch.randint(4, V - 1, (B, S), generator=g), attention_mask=am,
             decoder_input_ids=torch.randint(4, V - 1, (B, T), generator=g),
             decoder_attention_mask=dam)
    with torch.no_grad():
        ctx = model.context(b)
        h = model.embed(b["decoder_input_ids"])
        mine = model.layer(1, h, ctx)
        full = lambda m, q: m.expand(-1, 1, q, -1).contiguous()
        ref = model.bart.decoder.layers[0](
            h, attention_mask=full(ctx["self_mask"], T), encoder_hidden_states=ctx["enc"],
            encoder_attention_mask=full(ctx["enc_mask"], T), use_cache=False)
        if isinstance(ref, tuple):
            ref = ref[0]
    err = (mine - ref).abs().max().item()
    assert err < 1e-4, f"hand-written decoder layer differs from transformers by {err}"
    model.train()
    return err


def decays(name):
    """optim.rs::decays."""
    return (name.endswith(".weight") and "layer_norm" not in name and "layernorm" not in name
            and "embed_positions" not in name)


def linear_lr(peak, warmup, total, step):
    """optim.rs::LinearSchedule::lr."""
    s = step + 1.0
    if warmup > 0 and step < warmup:
        return peak * s / warmup
    rest = max(total - warmup, 1)
    return max(peak * (1.0 - max(step - warmup, 0) / rest), 0.0)


# --------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------

def run_case(name, model, step_fn, lr, warmup_lr, args, params):
    decay = [p for n, p in params if decays(n)]
    other = [p for n, p in params if not decays(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    trainable = [p for _, p in params]
    total_steps = args.warmup + args.steps
    times, toks, losses, shapes = [], [], [], []
    model.train()
    for step in range(total_steps):
        t0 = time.perf_counter()
        loss, tokens, shape = step_fn()
        value = loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 2.0)
        for g in opt.param_groups:
            g["lr"] = linear_lr(lr, warmup_lr, total_steps, step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if not math.isfinite(value):
            raise SystemExit(f"{name}: non-finite loss at step {step + 1}")
        if step >= args.warmup:
            times.append(dt)
            toks.append(tokens)
            losses.append(value)
            shapes.append(shape)
    rates = [t / s for t, s in zip(toks, times)]
    res = dict(
        case=name,
        steps=len(times),
        warmup_steps=args.warmup,
        ms_per_step_median=1e3 * statistics.median(times),
        ms_per_step_mean=1e3 * statistics.mean(times),
        tokens_per_s_median=statistics.median(rates),
        tokens_per_s_mean=statistics.mean(rates),
        tokens_per_s_total=sum(toks) / sum(times),
        tokens_per_step_mean=statistics.mean(toks),
        mean_S=statistics.mean(s[0] for s in shapes),
        mean_T=statistics.mean(s[1] for s in shapes),
        first_loss=losses[0],
        last_loss=losses[-1],
    )
    print(f"{name}: {res['tokens_per_s_median']:.0f} tok/s median "
          f"({res['tokens_per_s_mean']:.0f} mean, {res['tokens_per_s_total']:.0f} total/time), "
          f"{res['ms_per_step_median']:.1f} ms/step median ({res['ms_per_step_mean']:.1f} mean), "
          f"{res['tokens_per_step_mean']:.0f} tokens/step, mean S {res['mean_S']:.1f} "
          f"T {res['mean_T']:.1f}, loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}",
          flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, choices=[8192, 50265], default=8192)
    ap.add_argument("--preset", choices=list(PRESETS), default="small")
    ap.add_argument("--mode", choices=["lplm", "soft", "both"], default="both")
    ap.add_argument("--k", type=int, default=2, help="exit assignments per sequence (LPLM)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slot", type=int, default=0,
                    help="soft exit: fixed slot length (0: slot = label length, as finetune)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=64, help="LPLM chunk length")
    ap.add_argument("--max-source-len", type=int, default=128)
    ap.add_argument("--max-target-len", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=20000,
                    help="SQuAD-QG training pairs to tokenise (first N lines)")
    ap.add_argument("--lowercase", choices=["auto", "yes", "no"], default="auto",
                    help="lowercase the LPLM corpus (auto: yes for the 8192 vocabulary)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", default=os.path.join(SHARED, "corpus", "wikitext-2-raw-test.txt"))
    ap.add_argument("--squad", default=os.path.join(SHARED, "squad-qg"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "pytorch-train-bench.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pyrng = random.Random(args.seed)

    tok_path = (os.path.join(ROOT, "runs", "tok8k", "tokenizer.json") if args.vocab == 8192
                else os.path.join(ROOT, "assets", "tokenizer", "bart-base", "tokenizer.json"))
    tok = Tok(tok_path)
    assert tok.vocab_size == args.vocab, (tok.vocab_size, args.vocab)
    mask_id = tok.mask
    lower = args.lowercase == "yes" or (args.lowercase == "auto" and args.vocab == 8192)

    d, layers, heads, ffn, pos = PRESETS[args.preset]
    cfg = BartConfig(
        vocab_size=args.vocab, d_model=d, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn, max_position_embeddings=pos, activation_function="gelu",
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
        attn_implementation=args.attn)
    model = Elmer(cfg, args.attn)
    layer_err = check_layer(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_params = sum(p.numel() for _, p in params)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, attn {args.attn}; preset {args.preset} "
          f"(d {d}, {layers}+{layers}, {heads} heads, FFN {ffn}), vocab {args.vocab}, "
          f"{n_params / 1e6:.2f}M parameters; layer check max |diff| {layer_err:.1e}", flush=True)

    results = []
    tag = f"{args.preset}-v{args.vocab}-b{args.batch_size}-t{args.threads}"

    if args.mode in ("lplm", "both"):
        texts = read_documents(args.corpus)
        if lower:
            texts = [t.lower() for t in texts]
        docs = tokenize_documents(tok, texts, args.max_len)
        pyrng.shuffle(docs)
        train = docs[:len(docs) - min(64, len(docs) // 2)]
        print(f"LPLM corpus: {len(texts)} documents -> {len(train)} train chunks "
              f"(lowercase {lower})", flush=True)
        corr = Corruptor(mask_id, rng=rng)

        def lplm_step():
            chunk = pyrng.sample(train, min(args.batch_size, len(train)))
            srcs, labs = [], []
            for ids in chunk:
                s = corr.corrupt(ids)
                mx = max(len(ids), 4)
                if len(s) > mx:
                    s = s[:mx - 1] + [EOS]
                srcs.append(s)
                labs.append(ids[1:])
            b, tokens = make_batch(srcs, labs, mask_id)
            B, T = b["labels"].shape
            exits = [torch.randint(1, model.L + 1, (B, T)) for _ in range(args.k)]
            return model.lplm_loss(b, exits), tokens, (b["input_ids"].shape[1], T)

        res = run_case(f"lplm-{tag}-k{args.k}", model, lplm_step, 1e-3, 50, args, params)
        res.update(mode="lplm", k=args.k, lowercase=lower)
        results.append(res)

    if args.mode in ("soft", "both"):
        src = open(os.path.join(args.squad, "src-train.txt"), encoding="utf-8").read().split("\n")
        tgt = open(os.path.join(args.squad, "tgt-train.txt"), encoding="utf-8").read().split("\n")
        pairs_txt = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
        pairs_txt = pairs_txt[:args.pairs]
        s_ids = tok.encode_many([p[0] for p in pairs_txt])
        t_ids = tok.encode_many([p[1] for p in pairs_txt])
        pairs = []
        for s, t in zip(s_ids, t_ids):
            source = [BOS] + s[:args.max_source_len - 2] + [EOS]
            labels = t + [EOS]  # framed target without <s>
            if len(labels) > args.max_target_len:
                labels = labels[:args.max_target_len - 1] + [EOS]
            pairs.append((source, labels))
        print(f"SQuAD-QG: {len(pairs)} pairs", flush=True)

        def soft_step():
            chosen = pyrng.sample(pairs, min(args.batch_size, len(pairs)))
            b, tokens = make_batch([p[0] for p in chosen], [p[1] for p in chosen], mask_id,
                                   slot=args.slot or None)
            use_gold = torch.rand(b["labels"].shape) < 0.3
            return (model.soft_loss(b, use_gold), tokens,
                    (b["input_ids"].shape[1], b["labels"].shape[1]))

        res = run_case(f"soft-{tag}-slot{args.slot}", model, soft_step, 5e-4,
                       max((args.warmup + args.steps) // 10, 1), args, params)
        res.update(mode="soft", slot=args.slot)
        results.append(res)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    store = {}
    if os.path.exists(args.out):
        try:
            store = json.load(open(args.out))
        except (OSError, ValueError):
            store = {}
    if not isinstance(store.get("cases"), dict):
        store = {"cases": {}}
    store["description"] = ("PyTorch eager CPU float32 timing of the elmer training steps; "
                            "see scripts/bench_train_pytorch.py")
    env = dict(torch=torch.__version__, transformers=transformers.__version__,
               threads=torch.get_num_threads(), attn=args.attn, python=sys.version.split()[0],
               machine=platform.machine(), cpus=os.cpu_count(), parameters=n_params,
               preset=args.preset, vocab=args.vocab, batch_size=args.batch_size,
               command=" ".join(sys.argv), time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    for r in results:
        r.update(env)
        store["cases"][r["case"]] = r
    with open(args.out, "w") as f:
        json.dump(store, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.relpath(args.out, os.getcwd())}")


if __name__ == "__main__":
    main()
