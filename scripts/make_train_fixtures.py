#!/usr/bin/env python3
"""Build the PyTorch reference for the ELMER *training* losses and their gradients.

Run from the repository root:

    python3 scripts/make_train_fixtures.py

Everything is written to tests/fixtures/train/ (see the README.md there; this script never
touches the README). Deterministic: fixed seeds, `torch.set_num_threads(1)`, CPU, eager
attention, all dropout off. The stored reference is computed in float32; a float64 copy of the
same model is used for the finite-difference checks and to measure the float32 error.

Tested with Python 3.11, torch 2.15 (CPU), transformers 5.24, safetensors 0.8.

The model is the `cg` checkpoint of tests/fixtures/model/ (BartForConditionalGeneration,
vocab 128, d 32, 2 encoder + 3 decoder layers, non-zero final_logits_bias, plus the ELMER
`concat_head.weight` [32, 64]). As in scripts/make_model_fixtures.py the encoder is
transformers' `BartModel.encoder`; the decoder is rebuilt from its parts (embed_tokens,
embed_positions, layernorm_embedding, layers[i]) so that self-attention is bidirectional and
exits can be applied between layers.

Losses (L = 3 decoder layers, layers counted 1..L, pads ignored everywhere):
  lplm           LPLM with k = 2 exit assignments, copied states detached
  lplm_nodetach  the same loss with the copied states NOT detached
  soft           soft-exit fine-tuning loss (gold feedback where use_gold)
  deep           hard-exit deep supervision: mean over layers of the off-ramp CE
  last           plain NAR, CE of the last layer only
"""

import copy
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import transformers
from transformers import BartForConditionalGeneration

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "tests", "fixtures", "model", "cg")
OUT = os.path.join(ROOT, "tests", "fixtures", "train")

BOS, PAD, EOS = 0, 1, 2
MASK = 127  # vocab_size - 1, the fixture convention of tests/fixtures/model
SRC_LENGTHS = [10, 7, 5]  # incl. <s> and </s>
SRC_LEN = 10
LABEL_LENGTHS = [8, 6, 3]  # incl. the final </s>
T = 8  # decoder slot length
K = 2  # LPLM exit assignments per sequence
P_GOLD = 0.3
SEED = 20240701  # base seed; the script moves to SEED+1, ... if a check on the draw fails
ARGMAX_GAP = 1e-4  # fed-back argmaxes must beat the runner-up by this much (float32 logits)
LOSSES = ["lplm", "lplm_nodetach", "soft", "deep", "last"]


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------

def load_cg():
    """BartForConditionalGeneration from the cg directory with every dropout at 0, eval mode,
    eager attention; final_logits_bias and concat_head taken from the same safetensors file
    and made trainable leaves. Returns (model, params) with params = {checkpoint name: tensor},
    in the checkpoint's (sorted) name order."""
    model = BartForConditionalGeneration.from_pretrained(
        CKPT, attn_implementation="eager", dtype=torch.float32,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0,
    ).eval()
    assert model.config.dropout == 0.0 and model.config.attention_dropout == 0.0
    assert model.config.activation_dropout == 0.0
    raw = load_file(os.path.join(CKPT, "model.safetensors"))
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.model.decoder.embed_tokens.weight is model.model.shared.weight
    named = dict(model.named_parameters())  # tied tensors listed once, as model.shared.weight
    fb = torch.nn.Parameter(raw["final_logits_bias"].clone())
    ch = torch.nn.Parameter(raw["concat_head.weight"].clone())
    named["final_logits_bias"] = fb
    named["concat_head.weight"] = ch
    assert set(named) == set(raw), set(named) ^ set(raw)
    for k, v in raw.items():
        assert torch.equal(named[k].detach(), v), k
    params = {k: named[k] for k in sorted(raw)}
    for p in params.values():
        p.requires_grad_(True)
    return model, params


def to_float64(model, params):
    m64 = copy.deepcopy(model).double()
    assert m64.lm_head.weight is m64.model.shared.weight
    named = dict(m64.named_parameters())
    p64 = {}
    for k, v in params.items():
        if k in named:
            p64[k] = named[k]
        else:
            p64[k] = torch.nn.Parameter(v.detach().double().clone())
    return m64, p64


def additive_mask(key_mask, q_len, dtype):
    """[B, S] 1/0 -> [B, 1, q_len, S] additive mask (0 keep, finfo.min masked). Non-causal."""
    keep = key_mask.to(torch.bool)[:, None, None, :].expand(-1, 1, q_len, -1)
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


class Elmer:
    def __init__(self, model, params):
        self.bart = model.model
        self.dec = self.bart.decoder
        self.layers = list(self.dec.layers)
        self.L = len(self.layers)
        self.params = params
        self.E = params["model.shared.weight"]  # [V, d], raw (unscaled) embedding matrix
        self.bias = params["final_logits_bias"]  # [1, V]
        self.W_c = params["concat_head.weight"]  # [d, 2d]
        self.dtype = self.E.dtype
        self.embed_scale = math.sqrt(model.config.d_model) if model.config.scale_embedding else 1.0
        assert self.embed_scale == 1.0

    def offramp(self, h):
        return h @ self.E.T + self.bias.reshape(-1)

    def concat_head(self, h, e):
        return torch.cat([h, e], -1) @ self.W_c.T

    def context(self, inp):
        enc = self.bart.encoder(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).last_hidden_state
        dec_ids = inp["decoder_input_ids"]
        T_ = dec_ids.shape[1]
        tok = self.dec.embed_tokens(dec_ids)  # embed_scale (= 1 here) applied inside
        pos = self.dec.embed_positions(dec_ids)  # learned positions, BART offset 2 inside
        h0 = self.dec.layernorm_embedding(tok + pos)
        return dict(
            enc=enc,
            h0=h0,
            self_mask=additive_mask(inp["decoder_attention_mask"], T_, self.dtype),
            enc_mask=additive_mask(inp["attention_mask"], T_, self.dtype),
        )

    def layer(self, l, h, ctx):
        return self.layers[l - 1](
            h, attention_mask=ctx["self_mask"], encoder_hidden_states=ctx["enc"],
            encoder_attention_mask=ctx["enc_mask"], cache=None, use_cache=False,
        )


def token_nll(logits, labels):
    """-log_softmax(logits)[label], [B, T]; pad positions set to 0."""
    lp = F.log_softmax(logits, -1)
    nll = -lp.gather(-1, labels[..., None])[..., 0]
    return nll.masked_fill(labels == PAD, 0.0)


def ce(logits, labels):
    """mean NLL over the non-pad tokens of the batch."""
    nonpad = (labels != PAD).sum()
    return token_nll(logits, labels).sum() / nonpad


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------

def lplm_loss(el, inp, detach=True, frozen=None, record=None):
    """LPLM: for each of the K assignments exits[a] (values 1..L), run the decoder layer by layer;
    a token with exit < l enters layer l as a copy of its exit state (detached if `detach`, so
    every layer above the exit layer reads a constant; the token's own state is never updated
    again; `frozen` instead substitutes stored constant states, used by
    the finite-difference check of the detached gradient). The prediction of a token is made
    from its exit-layer output (never detached). The encoder runs once for all assignments."""
    ctx = el.context(inp)
    labels, exits = inp["labels"], inp["exits"]
    nlls = []
    for a in range(exits.shape[0]):
        ex = exits[a]
        h = ctx["h0"]
        exit_state = torch.zeros_like(h)
        if record is not None:
            record.append([])
        for l in range(1, el.L + 1):
            if record is not None:
                record[-1].append(h.detach().clone())
            keep = (ex >= l)[..., None]
            # Tokens that exited below layer l enter it as copies of their exit state,
            # detached when `detach` (so no layer above the exit layer sends gradient back).
            if frozen is not None:
                other = frozen[a][l - 1]
            elif detach:
                other = h.detach()
            else:
                other = h
            h_in = torch.where(keep, h, other)
            hn = el.layer(l, h_in, ctx)
            h = torch.where(keep, hn, h_in)
            exit_state = torch.where((ex == l)[..., None], hn, exit_state)
        nlls.append(token_nll(el.offramp(exit_state), labels))
    nll = torch.stack(nlls)  # [K, B, T]
    nonpad = (labels != PAD).sum()
    loss = nll.sum() / (exits.shape[0] * nonpad)
    return loss, {"nll": nll}


def soft_loss(el, inp):
    """Soft exit: before layer l >= 2 the off-ramp logits of the current state are computed,
    their argmax `pred` is replaced by the gold label where use_gold (and the label is not pad),
    and concat_head([h ; E[fed]]) is fed into layer l. Loss = mean of the L off-ramp CEs of the
    outputs of layers 1..L (the first L-1 are exactly the logits whose argmax was fed back)."""
    ctx = el.context(inp)
    labels = inp["labels"]
    gold = inp["use_gold"].to(torch.bool) & (labels != PAD)
    h = ctx["h0"]
    ces, nlls, feds, preds, gaps = [], [], [], [], []
    for l in range(1, el.L + 1):
        if l >= 2:
            lg = el.offramp(h)
            ces.append(ce(lg, labels))
            nlls.append(token_nll(lg, labels))
            pred = lg.argmax(-1)
            top2 = lg.detach().topk(2, -1).values
            gaps.append(top2[..., 0] - top2[..., 1])
            fed = torch.where(gold, labels, pred)
            preds.append(pred)
            feds.append(fed)
            h = el.concat_head(h, el.E[fed])  # raw embedding row, no scale
        h = el.layer(l, h, ctx)
    lg = el.offramp(h)
    ces.append(ce(lg, labels))
    nlls.append(token_nll(lg, labels))
    loss = torch.stack(ces).mean()
    return loss, {"ce": torch.stack(ces), "nll": torch.stack(nlls), "pred": torch.stack(preds),
                  "fed": torch.stack(feds), "gap": torch.stack(gaps)}


def plain_states(el, ctx):
    h, hs = ctx["h0"], []
    for l in range(1, el.L + 1):
        h = el.layer(l, h, ctx)
        hs.append(h)
    return hs


def deep_loss(el, inp):
    ctx = el.context(inp)
    labels = inp["labels"]
    hs = plain_states(el, ctx)
    lgs = [el.offramp(h) for h in hs]
    ces = torch.stack([ce(lg, labels) for lg in lgs])
    return ces.mean(), {"ce": ces, "nll": torch.stack([token_nll(lg, labels) for lg in lgs])}


def last_loss(el, inp):
    ctx = el.context(inp)
    labels = inp["labels"]
    lg = el.offramp(plain_states(el, ctx)[-1])
    return ce(lg, labels), {"nll": token_nll(lg, labels)[None]}


def run_loss(el, inp, name, **kw):
    if name == "lplm":
        return lplm_loss(el, inp, detach=True, **kw)
    if name == "lplm_nodetach":
        return lplm_loss(el, inp, detach=False, **kw)
    if name == "soft":
        return soft_loss(el, inp)
    if name == "deep":
        return deep_loss(el, inp)
    if name == "last":
        return last_loss(el, inp)
    raise ValueError(name)


def loss_and_grads(el, inp, name, **kw):
    for p in el.params.values():
        p.grad = None
    loss, aux = run_loss(el, inp, name, **kw)
    loss.backward()
    grads = {}
    for k, p in el.params.items():
        grads[k] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p.detach())
    for p in el.params.values():
        p.grad = None
    return loss.detach(), grads, aux


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

def make_inputs(seed, L):
    gen = torch.Generator().manual_seed(seed)
    B = len(SRC_LENGTHS)
    ids = torch.full((B, SRC_LEN), PAD, dtype=torch.int64)
    am = torch.zeros((B, SRC_LEN), dtype=torch.int64)
    for b, n in enumerate(SRC_LENGTHS):
        mid = torch.randint(4, MASK, (n - 2,), generator=gen, dtype=torch.int64)  # [4, 126]
        corrupt = torch.rand(n - 2, generator=gen) < 0.25
        corrupt[torch.randint(0, n - 2, (1,), generator=gen)] = True  # at least one <mask>
        mid = torch.where(corrupt, torch.full_like(mid, MASK), mid)
        ids[b, 0] = BOS
        ids[b, 1:n - 1] = mid
        ids[b, n - 1] = EOS
        am[b, :n] = 1
    labels = torch.full((B, T), PAD, dtype=torch.int64)
    dec_am = torch.zeros((B, T), dtype=torch.int64)
    for b, m in enumerate(LABEL_LENGTHS):
        labels[b, :m - 1] = torch.randint(4, MASK, (m - 1,), generator=gen, dtype=torch.int64)
        labels[b, m - 1] = EOS
        dec_am[b, :m] = 1
    dec = torch.full((B, T), MASK, dtype=torch.int64)
    dec[:, 0] = BOS
    exits = torch.randint(1, L + 1, (K, B, T), generator=gen, dtype=torch.int64)
    use_gold = (torch.rand((B, T), generator=gen) < P_GOLD).to(torch.uint8)
    return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dec,
                decoder_attention_mask=dec_am, labels=labels, exits=exits, use_gold=use_gold)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------

def maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


def grads_maxdiff(ga, gb):
    return max(maxdiff(ga[k], gb[k]) for k in ga)


def check_draw(el, inp):
    """Conditions on the random draw; returns None if fine, else a reason."""
    nonpad = inp["labels"] != PAD
    _, aux = soft_loss(el, inp)
    # fed-back argmaxes that matter (non-pad positions not replaced by gold) must be stable
    gold = inp["use_gold"].to(torch.bool) & nonpad
    relevant = nonpad & ~gold
    g = aux["gap"][:, relevant]
    if g.numel() and g.min().item() <= ARGMAX_GAP:
        return f"soft argmax gap {g.min().item():.2e}"
    if not (gold.any() and relevant.any()):
        return "use_gold draws no mix of gold and predicted tokens"
    # every exit layer used on non-pad tokens in each assignment
    for a in range(K):
        ex = inp["exits"][a][nonpad]
        if any(int((ex == l).sum()) == 0 for l in range(1, el.L + 1)):
            return f"assignment {a} does not use every exit layer"
    # detach on/off must be distinguishable
    _, gd, _ = loss_and_grads(el, inp, "lplm")
    _, gn, _ = loss_and_grads(el, inp, "lplm_nodetach")
    if grads_maxdiff(gd, gn) < 1e-3:
        return "detach on/off gradients do not differ"
    return None


def fd_check(el64, inp, name, entries, eps=1e-6, frozen=None):
    """Central differences in float64 on the given (param, index) entries."""
    out = []
    with torch.no_grad():
        for pname, idx in entries:
            p = el64.params[pname]
            orig = p[idx].item()
            vals = []
            for s in (+1, -1):
                p[idx] = orig + s * eps
                kw = {"frozen": frozen} if frozen is not None else {}
                vals.append(run_loss(el64, inp, name, **kw)[0].item())
            p[idx] = orig
            out.append((vals[0] - vals[1]) / (2 * eps))
    return out


def batch1_check(el, inp, ref_aux, name):
    """Each example alone (unpadded source, decoder slot trimmed to its label length, batch of
    1) gives the same per-token NLLs as in the padded batch."""
    worst = 0.0
    with torch.no_grad():
        for b, (n, m) in enumerate(zip(SRC_LENGTHS, LABEL_LENGTHS)):
            one = {
                "input_ids": inp["input_ids"][b:b + 1, :n],
                "attention_mask": inp["attention_mask"][b:b + 1, :n],
                "decoder_input_ids": inp["decoder_input_ids"][b:b + 1, :m],
                "decoder_attention_mask": inp["decoder_attention_mask"][b:b + 1, :m],
                "labels": inp["labels"][b:b + 1, :m],
                "exits": inp["exits"][:, b:b + 1, :m],
                "use_gold": inp["use_gold"][b:b + 1, :m],
            }
            _, aux = run_loss(el, one, name)
            worst = max(worst, maxdiff(aux["nll"][:, 0], ref_aux["nll"][:, b, :m]))
            if name == "soft":
                assert torch.equal(aux["fed"][:, 0], ref_aux["fed"][:, b, :m]), (name, b)
    return worst


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    model, params = load_cg()
    el = Elmer(model, params)
    L = el.L
    assert L == 3

    # ---- draw inputs (move the seed on if a condition on the draw fails) ----
    seed = SEED
    while True:
        inp = make_inputs(seed, L)
        reason = check_draw(el, inp)
        if reason is None:
            break
        print(f"seed {seed} rejected: {reason}")
        seed += 1
        assert seed < SEED + 50

    # ---- float32 reference: losses and gradients ----
    res = {}
    for name in LOSSES:
        res[name] = loss_and_grads(el, inp, name)
        print(f"{name:14s} loss {res[name][0].item():.7f}")

    # ---- float64 copy ----
    m64, p64 = to_float64(model, params)
    el64 = Elmer(m64, p64)
    res64 = {name: loss_and_grads(el64, inp, name) for name in LOSSES}
    assert torch.equal(res64["soft"][2]["fed"], res["soft"][2]["fed"]), "f32/f64 soft feedback differ"
    f32_err = {}
    for name in LOSSES:
        l32, g32, _ = res[name]
        l64, g64, _ = res64[name]
        gmax = max(g64[k].abs().max().item() for k in g64)
        f32_err[name] = {
            "loss_abs": abs(l32.item() - l64.item()),
            "grad_max_abs": grads_maxdiff(g32, g64),
            "grad_max_abs_value": gmax,
        }
        assert f32_err[name]["loss_abs"] < 1e-5 and f32_err[name]["grad_max_abs"] < 1e-5, (name, f32_err[name])

    # ---- finite differences (float64) ----
    entries = [
        ("model.shared.weight", (int(inp["labels"][0, 0]), 3)),  # a label row (off-ramp path)
        ("model.shared.weight", (MASK, 5)),  # the <mask> row (decoder input + encoder input)
        ("model.encoder.layers.0.fc1.weight", (2, 7)),
        ("model.encoder.embed_positions.weight", (2 + 3, 1)),
        ("model.decoder.layers.0.self_attn.q_proj.weight", (1, 2)),
        ("model.decoder.layers.1.encoder_attn.v_proj.bias", (4,)),
        ("model.decoder.layers.2.fc2.weight", (3, 4)),
        ("model.decoder.layers.2.self_attn.k_proj.weight", (6, 0)),
        ("final_logits_bias", (0, int(inp["labels"][1, 2]))),
        ("concat_head.weight", (5, 40)),
    ]
    fd_report = {}

    def compare(tag, name, fd, grads, must_match):
        rows, worst = [], 0.0
        for (pname, idx), f in zip(entries, fd):
            a = grads[pname][idx].item()
            err = abs(a - f)
            rows.append({"param": pname, "index": list(idx), "autograd": a, "finite_diff": f,
                         "abs_err": err, "rel_err": err / max(abs(f), 1e-12)})
            if must_match(pname):
                # float64 central differences, eps 1e-6: round-off ~1e-10 absolute
                worst = max(worst, err / (1e-8 + 1e-5 * abs(f)))
        fd_report[tag] = {"loss": name, "worst_err_over_tolerance": worst, "entries": rows}
        assert worst < 1.0, (tag, rows)
        return rows

    # the true gradient of every loss value (lplm and lplm_nodetach have the same value)
    for name in ("lplm_nodetach", "soft", "deep", "last"):
        fd = fd_check(el64, inp, name, entries)
        compare(f"{name}_vs_fd", name, fd, res64[name][1], lambda p: True)
    # the LPLM value with detach is the same function, so FD of it = the no-detach gradient;
    # it matches the detached autograd gradient only where detaching cuts no path. A token
    # exiting at layer e is read by layers e+1..L only as a detached copy, so every path from
    # an upper layer back into layers <= L-1 (and everything below them: decoder embeddings,
    # encoder, shared) through an exited token is cut: only decoder layer L,
    # final_logits_bias and concat_head (unused) get identical gradients.
    fd_true = [r["finite_diff"] for r in fd_report["lplm_nodetach_vs_fd"]["entries"]]

    def top(p):
        return (any(p.startswith(f"model.decoder.layers.{i}.") for i in range(max(L - 1, 0), L))
                or p in ("final_logits_bias", "concat_head.weight"))
    rows = compare("lplm_detached_vs_fd_true_function", "lplm", fd_true, res64["lplm"][1], top)
    n_diff = sum(1 for r in rows if not top(r["param"]) and r["rel_err"] > 1e-3)
    fd_report["lplm_detached_vs_fd_true_function"]["lower_entries_that_differ"] = n_diff
    assert n_diff >= 1
    # the detached gradient is the exact gradient of the surrogate in which the copied
    # (exited) states are constants: check it by FD with those states frozen
    rec = []
    with torch.no_grad():
        lplm_loss(el64, inp, detach=True, record=rec)
    fd = fd_check(el64, inp, "lplm", entries, frozen=rec)
    compare("lplm_detached_vs_fd_frozen_copies", "lplm", fd, res64["lplm"][1], lambda p: True)

    # ---- detach on/off differ; where ----
    gd, gn = res["lplm"][1], res["lplm_nodetach"][1]
    detach_diff = {k: maxdiff(gd[k], gn[k]) for k in gd}
    same = sorted(k for k, v in detach_diff.items() if v == 0.0)
    for k in same:  # besides the top layer: the k_proj biases (their gradient is 0 in theory)
        assert top(k) or gd[k].abs().max().item() < 1e-6, k
    assert any(v > 1e-3 for v in detach_diff.values())
    assert maxdiff(res["lplm"][0], res["lplm_nodetach"][0]) == 0.0

    # ---- consistency checks ----
    with torch.no_grad():
        # all exits = L: LPLM == last
        allL = dict(inp, exits=torch.full_like(inp["exits"], L))
        assert maxdiff(lplm_loss(el, allL)[0], res["last"][0]) < 1e-6
        # deep's last CE == last
        assert maxdiff(res["deep"][2]["ce"][-1], res["last"][0]) == 0.0
    _, g_allL, _ = loss_and_grads(el, allL, "lplm")
    assert grads_maxdiff(g_allL, res["last"][1]) < 1e-6
    # pads are inert: changing source pad ids, decoder ids / exits / use_gold at masked
    # decoder positions changes neither the losses nor the gradients
    dec_pad = inp["decoder_attention_mask"] == 0
    alt = dict(inp)
    alt["input_ids"] = inp["input_ids"].masked_fill(inp["attention_mask"] == 0, 5)
    alt["decoder_input_ids"] = inp["decoder_input_ids"].masked_fill(dec_pad, 7)
    alt["exits"] = inp["exits"].masked_fill(dec_pad[None], 1)
    alt["use_gold"] = inp["use_gold"].masked_fill(dec_pad, 1)
    pad_inert = {}
    for name in LOSSES:
        la, ga, _ = loss_and_grads(el, alt, name)
        pad_inert[name] = (maxdiff(la, res[name][0]), grads_maxdiff(ga, res[name][1]))
        assert pad_inert[name][0] < 1e-6 and pad_inert[name][1] < 1e-6, (name, pad_inert[name])
    # batch of 1, unpadded
    b1 = {name: batch1_check(el, inp, res[name][2], name) for name in LOSSES}
    assert max(b1.values()) < 1e-5, b1

    # ---- save ----
    tensors = {k: v.contiguous() for k, v in inp.items()}
    for name in LOSSES:
        loss, grads, aux = res[name]
        tensors[f"{name}.loss"] = loss.reshape(1).float().contiguous()
        for k, g in grads.items():
            tensors[f"{name}.grad.{k}"] = g.float().contiguous()
    tensors["lplm.nll"] = res["lplm"][2]["nll"].detach().float().contiguous()
    tensors["soft.ce"] = res["soft"][2]["ce"].detach().float().contiguous()
    tensors["soft.pred"] = res["soft"][2]["pred"].contiguous()
    tensors["soft.fed"] = res["soft"][2]["fed"].contiguous()
    tensors["deep.ce"] = res["deep"][2]["ce"].detach().float().contiguous()
    path = os.path.join(OUT, "train_reference.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)

    nonpad = inp["labels"] != PAD
    soft_aux = res["soft"][2]
    relevant = nonpad & ~(inp["use_gold"].to(torch.bool) & nonpad)
    meta = {
        "generator": {
            "command": "python3 scripts/make_train_fixtures.py",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "dtype": "float32",
        },
        "checkpoint": "tests/fixtures/model/cg",
        "seed": seed,
        "decoder_layers": L, "k_assignments": K, "vocab_size": el.E.shape[0], "d_model": el.E.shape[1],
        "bos_id": BOS, "pad_id": PAD, "eos_id": EOS, "mask_id": MASK,
        "source_lengths": SRC_LENGTHS, "label_lengths": LABEL_LENGTHS, "decoder_slot_length": T,
        "non_pad_label_tokens": int(nonpad.sum()),
        "p_gold": P_GOLD,
        "use_gold_count_non_pad": int((inp["use_gold"].bool() & nonpad).sum()),
        "exit_layer_counts_non_pad": [
            {str(l): int((inp["exits"][a][nonpad] == l).sum()) for l in range(1, L + 1)} for a in range(K)],
        "losses": {name: res[name][0].item() for name in LOSSES},
        "losses_float64": {name: res64[name][0].item() for name in LOSSES},
        "soft_ce": soft_aux["ce"].tolist(),
        "deep_ce": res["deep"][2]["ce"].tolist(),
        "soft_min_fed_argmax_gap": soft_aux["gap"][:, relevant].min().item(),
        "float32_vs_float64": f32_err,
        "max_abs_grad": {name: max(g.abs().max().item() for g in res[name][1].values()) for name in LOSSES},
        "zero_grad_params": {name: sorted(k for k, g in res[name][1].items() if not g.any()) for name in LOSSES},
        "detach_grad_identical_params": same,
        "detach_vs_nodetach_max_abs_grad_diff": max(detach_diff.values()),
        "pad_inert_max_diff": {k: list(v) for k, v in pad_inert.items()},
        "batch1_max_nll_diff": b1,
        "finite_difference": fd_report,
        "parameter_names": list(params.keys()),
        "parameter_shapes": {k: list(v.shape) for k, v in params.items()},
        "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in tensors.items()},
    }
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    for fn in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, fn)):>9}  tests/fixtures/train/{fn}")
    print("float32 vs float64:", json.dumps(f32_err))
    for tag, r in fd_report.items():
        print(f"FD {tag}: worst |autograd-fd| / (1e-8 + 1e-5|fd|) = {r['worst_err_over_tolerance']:.3f}")
        for e in r["entries"]:
            print(f"    {e['param']}{e['index']}: autograd {e['autograd']:+.10e} fd {e['finite_diff']:+.10e} abs err {e['abs_err']:.1e}")
    print("detach-identical params:", same)


if __name__ == "__main__":
    main()
