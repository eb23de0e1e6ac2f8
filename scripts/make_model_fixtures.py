#!/usr/bin/env python3
"""Build the PyTorch reference fixtures that the `elmer` Rust crate is tested against.

Run from the repository root:

    python3 scripts/make_model_fixtures.py

Everything is written to tests/fixtures/model/ (see the README.md there). The script is
deterministic: fixed seeds, single-threaded CPU float32, eager attention.

Tested with Python 3.11, torch 2.15 (CPU), transformers 5.24, safetensors 0.8.

The ELMER forward passes are written here by hand on top of transformers' BART modules:
the encoder is `BartModel.encoder` as is; the decoder is rebuilt from its parts
(embed_tokens, embed_positions, layernorm_embedding, layers[i]) so that self-attention can be
bidirectional and so that exits can be applied between layers.
"""

import json
import math
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers
from transformers import BartConfig, BartForConditionalGeneration, BartModel

transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "model")
TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-random-bart")  # copy of ../shared/data/checkpoints/tiny-random-bart

BATCH_LENGTHS = [11, 7, 4]  # source lengths incl. <s> and </s>
SRC_LEN = 11
T = 8  # decoder slot length
BOS, PAD, EOS = 0, 1, 2
NEG = torch.finfo(torch.float32).min
ENTROPY_MARGIN = 1e-3  # thresholds stay at least this far from every observed entropy
ARGMAX_GAP = 1e-4  # decision-relevant argmaxes must beat the runner-up by this much
BATCH1_TOL = 1e-5


# --------------------------------------------------------------------------------------
# checkpoint construction
# --------------------------------------------------------------------------------------

def reinit_(model, gen):
    """Re-initialise every parameter so that the distributions are not flat."""
    ln_params = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln_params.add(id(mod.weight))
            ln_params.add(id(mod.bias))
    with torch.no_grad():
        # named_parameters() yields tied tensors once, in a fixed order
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if id(p) in ln_params and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def export_state_dict(model, extra=None, drop_tied=()):
    """State dict with tied aliases removed (stored once, as `*shared.weight`), cloned and
    contiguous, plus any extra tensors."""
    sd = {}
    for k, v in model.state_dict().items():
        if k in drop_tied:
            continue
        sd[k] = v.detach().clone().contiguous()
    for k, v in (extra or {}).items():
        sd[k] = v.detach().clone().contiguous()
    return sd


def save_safetensors(sd, path):
    save_file(sd, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates files 0600


def save_bin(sd, path):
    torch.save(sd, path)  # zip format (torch >= 1.6 default)


def save_sharded(sd, directory):
    keys = list(sd.keys())
    sizes = [sd[k].numel() * sd[k].element_size() for k in keys]
    total = sum(sizes)
    acc, split = 0, len(keys)
    for i, s in enumerate(sizes):
        if acc >= total / 2:
            split = i
            break
        acc += s
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [keys[:split], keys[split:]]
    weight_map = {}
    for name, part in zip(names, parts):
        save_safetensors({k: sd[k] for k in part}, os.path.join(directory, name))
        for k in part:
            weight_map[k] = name
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return parts


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

def make_inputs(vocab, n_layers, gen):
    mask_id = vocab - 1
    ids = torch.full((len(BATCH_LENGTHS), SRC_LEN), PAD, dtype=torch.int64)
    am = torch.zeros((len(BATCH_LENGTHS), SRC_LEN), dtype=torch.int64)
    for b, n in enumerate(BATCH_LENGTHS):
        mid = torch.randint(4, vocab - 1, (n - 2,), generator=gen, dtype=torch.int64)  # [4, vocab-2]
        ids[b, 0] = BOS
        ids[b, 1 : n - 1] = mid
        ids[b, n - 1] = EOS
        am[b, :n] = 1
    dec = torch.full((len(BATCH_LENGTHS), T), mask_id, dtype=torch.int64)
    dec[:, 0] = BOS
    dec_am = torch.ones_like(dec)
    fixed_exit = torch.randint(1, n_layers + 1, (len(BATCH_LENGTHS), T), generator=gen, dtype=torch.int64)
    return dict(input_ids=ids, attention_mask=am, decoder_input_ids=dec,
                decoder_attention_mask=dec_am, fixed_exit=fixed_exit), mask_id


# --------------------------------------------------------------------------------------
# ELMER reference on top of transformers' BART modules
# --------------------------------------------------------------------------------------

def additive_mask(key_mask, q_len):
    """[B, S] 1/0 -> [B, 1, q_len, S] additive float mask (0 keep, finfo.min masked). Non-causal."""
    keep = key_mask.to(torch.bool)[:, None, None, :].expand(-1, 1, q_len, -1)
    m = torch.zeros(keep.shape, dtype=torch.float32)
    return m.masked_fill(~keep, NEG)


def causal_additive_mask(key_mask, q_len):
    m = additive_mask(key_mask, q_len).clone()
    S = key_mask.shape[1]
    upper = torch.ones(q_len, S, dtype=torch.bool).triu(1)
    return m.masked_fill(upper[None, None], NEG)


class Elmer:
    def __init__(self, bart: BartModel, final_logits_bias=None, concat_head=None):
        self.bart = bart
        self.dec = bart.decoder
        self.layers = list(bart.decoder.layers)
        self.L = len(self.layers)
        self.E = bart.shared.weight  # [V, d] raw (unscaled) embedding matrix
        V = self.E.shape[0]
        self.bias = final_logits_bias.reshape(V) if final_logits_bias is not None else torch.zeros(V)
        self.concat_head = concat_head
        self.embed_scale = math.sqrt(bart.config.d_model) if bart.config.scale_embedding else 1.0

    def offramp(self, h):
        return h @ self.E.T + self.bias

    def encode(self, input_ids, attention_mask):
        return self.bart.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def embed(self, dec_ids):
        tok = F.embedding(dec_ids, self.dec.embed_tokens.weight) * self.embed_scale
        # transformers 5.x: BartScaledWordEmbedding already multiplies by embed_scale inside
        # forward(); do not scale twice.
        assert torch.equal(tok, self.dec.embed_tokens(dec_ids))
        pos = self.dec.embed_positions(dec_ids)  # learned positions, offset 2 applied inside
        return self.dec.layernorm_embedding(tok + pos)

    def layer(self, l, h, ctx):
        # transformers 5.24 BartDecoderLayer.forward(hidden_states, attention_mask,
        # encoder_hidden_states, encoder_attention_mask, cache, use_cache) -> Tensor (not a tuple)
        return self.layers[l - 1](
            h,
            attention_mask=ctx["self_mask"],
            encoder_hidden_states=ctx["enc"],
            encoder_attention_mask=ctx["enc_mask"],
            cache=None,
            use_cache=False,
        )

    def context(self, inp, causal=False):
        enc = self.encode(inp["input_ids"], inp["attention_mask"])
        T_ = inp["decoder_input_ids"].shape[1]
        mk = causal_additive_mask if causal else additive_mask
        return dict(
            enc=enc,
            self_mask=mk(inp["decoder_attention_mask"], T_),
            enc_mask=additive_mask(inp["attention_mask"], T_),
            h0=self.embed(inp["decoder_input_ids"]),
        )

    def plain(self, ctx):
        h, hs = ctx["h0"], []
        for l in range(1, self.L + 1):
            h = self.layer(l, h, ctx)
            hs.append(h)
        return hs

    def fixed(self, ctx, fixed_exit):
        h = ctx["h0"]
        for l in range(1, self.L + 1):
            hn = self.layer(l, h, ctx)
            h = torch.where((fixed_exit >= l)[..., None], hn, h)
        return self.offramp(h)

    def soft(self, ctx):
        h, inter = ctx["h0"], []
        for l in range(1, self.L + 1):
            if l >= 2:
                lg = self.offramp(h)
                inter.append(lg)
                p = lg.argmax(-1)
                e = self.E[p]  # raw embedding row, not scaled
                h = self.concat_head(torch.cat([h, e], -1))
            h = self.layer(l, h, ctx)
        return self.offramp(h), torch.stack(inter)

    @staticmethod
    def entropy(logits):
        lp = torch.log_softmax(logits, -1)
        return -(lp.exp() * lp).sum(-1)

    def hard(self, ctx, delta):
        h = ctx["h0"]
        B, T_ = h.shape[:2]
        V = self.E.shape[0]
        active = torch.ones(B, T_, dtype=torch.bool)
        ids = torch.full((B, T_), -1, dtype=torch.int64)
        exits = torch.zeros((B, T_), dtype=torch.int64)
        out = torch.zeros((B, T_, V))
        seen_entropies = []
        for l in range(1, self.L + 1):
            hn = self.layer(l, h, ctx)
            h = torch.where(active[..., None], hn, h)
            logits = self.offramp(h)
            if l < self.L:
                H = self.entropy(logits)
                seen_entropies.append(H[active])
                exit_now = active & (H < delta)
            else:
                exit_now = active.clone()
            ids[exit_now] = logits.argmax(-1)[exit_now]
            exits[exit_now] = l
            out[exit_now] = logits[exit_now]
            active &= ~exit_now
        assert not active.any() and (exits >= 1).all()
        return ids, exits, out, torch.cat(seen_entropies) if seen_entropies else torch.zeros(0)


def top_gap(logits):
    t = logits.topk(2, -1).values
    return (t[..., 0] - t[..., 1]).min().item()


def maxdiff(a, b):
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------
# reference computation
# --------------------------------------------------------------------------------------

def compute_all(el, inp, thresholds):
    ctx = el.context(inp)
    hs = el.plain(ctx)
    res = {
        "encoder_hidden": ctx["enc"],
        "last_logits": el.offramp(hs[-1]),
        "offramp_logits_all": torch.stack([el.offramp(h) for h in hs]),
        "fixed_logits": el.fixed(ctx, inp["fixed_exit"]),
    }
    if el.concat_head is not None:
        res["soft_logits"], res["soft_offramp_logits"] = el.soft(ctx)
    for k, d in enumerate(thresholds):
        ids, ex, lg, _ = el.hard(ctx, d)
        res[f"hard_ids_{k}"], res[f"hard_exit_{k}"], res[f"hard_logits_{k}"] = ids, ex, lg
    return res, ctx


def pick_thresholds(el, ctx, plain_entropies):
    """Two thresholds (low, high) from the observed entropies such that tokens exit at every
    layer 1..L (or at least two layers), far from any observed entropy."""
    lo = math.floor(plain_entropies.min().item() * 100) / 100
    hi = math.ceil(plain_entropies.max().item() * 100) / 100
    n_tok = ctx["h0"].shape[0] * ctx["h0"].shape[1]
    cands = []
    step = 0.0025
    d = lo
    while d <= hi + 1e-9:
        delta = round(d, 4)
        _, ex, _, seen = el.hard(ctx, delta)
        margin = min((seen - delta).abs().min().item() if seen.numel() else 1e9,
                     (plain_entropies - delta).abs().min().item())
        counts = [int((ex == l).sum()) for l in range(1, el.L + 1)]
        n_layers_used = sum(c > 0 for c in counts)
        if margin >= 2 * ENTROPY_MARGIN and n_layers_used >= min(el.L, 3) and counts[-1] > 0 and counts[0] > 0:
            early = 1 - counts[-1] / n_tok
            cands.append((delta, margin, counts, early))
        d += step
    assert cands, "no valid threshold found"
    chosen = []
    for target in (1 / 3, 2 / 3):
        best = min(cands, key=lambda c: (abs(c[3] - target) - 0.5 * min(c[1], 0.05), c[0]))
        chosen.append(best)
    assert chosen[0][0] < chosen[1][0], chosen
    return chosen


def check_model(name, el, inp, res, thresholds, hf_model=None):
    L = el.L
    ctx = el.context(inp)
    # 0) manual layer-by-layer decoder with a causal mask == transformers' own decoder
    cctx = el.context(inp, causal=True)
    h_manual = el.plain(cctx)[-1]
    h_hf = el.bart.decoder(
        input_ids=inp["decoder_input_ids"], attention_mask=inp["decoder_attention_mask"],
        encoder_hidden_states=cctx["enc"], encoder_attention_mask=inp["attention_mask"],
        use_cache=False,
    ).last_hidden_state
    assert maxdiff(h_manual, h_hf) < 1e-5, (name, "manual decoder != HF decoder", maxdiff(h_manual, h_hf))
    if hf_model is not None:  # off-ramp == lm_head + final_logits_bias
        lg = hf_model(**inp, use_cache=False).logits
        assert maxdiff(el.offramp(h_manual), lg) < 1e-4, (name, "offramp != HF logits")
    # bidirectional really differs from causal (sanity)
    assert maxdiff(res["last_logits"], el.offramp(h_manual)) > 1e-3
    # 1) fixed exit with every exit = L equals last
    allL = torch.full_like(inp["fixed_exit"], L)
    assert maxdiff(el.fixed(ctx, allL), res["last_logits"]) == 0.0, (name, "fixed(L) != last")
    # offramp_logits_all[-1] == last
    assert maxdiff(res["offramp_logits_all"][-1], res["last_logits"]) == 0.0
    # 2) hard logits == fixed logits with the hard exit layers
    for k in range(len(thresholds)):
        f = el.fixed(ctx, res[f"hard_exit_{k}"])
        assert maxdiff(f, res[f"hard_logits_{k}"]) < 1e-6, (name, k, "hard != fixed(hard exits)")
        assert torch.equal(f.argmax(-1), res[f"hard_ids_{k}"])
    # 3) every example alone (unpadded, batch 1) == padded batch
    for b, n in enumerate(BATCH_LENGTHS):
        one = {
            "input_ids": inp["input_ids"][b : b + 1, :n],
            "attention_mask": inp["attention_mask"][b : b + 1, :n],
            "decoder_input_ids": inp["decoder_input_ids"][b : b + 1],
            "decoder_attention_mask": inp["decoder_attention_mask"][b : b + 1],
            "fixed_exit": inp["fixed_exit"][b : b + 1],
        }
        r1, _ = compute_all(el, one, thresholds)
        for key, v in r1.items():
            ref = res[key]
            if key == "encoder_hidden":
                ref, v = ref[b, :n], v[0]
            elif key in ("offramp_logits_all", "soft_offramp_logits"):
                ref, v = ref[:, b], v[:, 0]
            else:
                ref, v = ref[b], v[0]
            if v.dtype == torch.int64:
                assert torch.equal(ref, v), (name, "batch1", b, key)
            else:
                assert maxdiff(ref, v) <= BATCH1_TOL, (name, "batch1", b, key, maxdiff(ref, v))


def gaps_report(el, res, thresholds):
    g = {"last_logits": top_gap(res["last_logits"]), "fixed_logits": top_gap(res["fixed_logits"])}
    if "soft_offramp_logits" in res:
        g["soft_offramp_logits"] = top_gap(res["soft_offramp_logits"])  # fed back: must be stable
        g["soft_logits"] = top_gap(res["soft_logits"])
    for k in range(len(thresholds)):
        g[f"hard_logits_{k}"] = top_gap(res[f"hard_logits_{k}"])
    return g


def save_reference(path, inp, res):
    t = {k: v.contiguous() for k, v in inp.items()}
    for k, v in res.items():
        t[k] = v.detach().contiguous()
    save_file(t, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in t.items()}


def build_reference(name, el, inp, mask_id, with_hard=True, hf_model=None):
    ctx = el.context(inp)
    thresholds, thr_info = [], []
    if with_hard:
        hs = el.plain(ctx)
        plain_H = torch.cat([Elmer.entropy(el.offramp(h)).flatten() for h in hs[:-1]])
        chosen = pick_thresholds(el, ctx, plain_H)
        thresholds = [c[0] for c in chosen]
    res, _ = compute_all(el, inp, thresholds)
    for k, d in enumerate(thresholds):
        _, ex, _, seen = el.hard(ctx, d)
        counts = {str(l): int((ex == l).sum()) for l in range(1, el.L + 1)}
        margin = min((seen - d).abs().min().item(), (plain_H - d).abs().min().item())
        thr_info.append({"delta": d, "exit_layer_counts": counts, "min_entropy_distance": round(margin, 6)})
    check_model(name, el, inp, res, thresholds, hf_model)
    gaps = gaps_report(el, res, thresholds)
    assert gaps.get("soft_offramp_logits", 1.0) > ARGMAX_GAP, gaps
    for k in range(len(thresholds)):
        assert gaps[f"hard_logits_{k}"] > ARGMAX_GAP, gaps
    shapes = save_reference(os.path.join(OUT, f"{name}_reference.safetensors"), inp, res)
    meta = {
        "decoder_layers": el.L,
        "vocab_size": el.E.shape[0],
        "d_model": el.E.shape[1],
        "mask_id": mask_id,
        "bos_id": BOS, "pad_id": PAD, "eos_id": EOS,
        "source_lengths": BATCH_LENGTHS,
        "decoder_slot_length": T,
        "embed_scale": el.embed_scale,
        "fixed_exit_layer_counts": {str(l): int((inp["fixed_exit"] == l).sum()) for l in range(1, el.L + 1)},
        "hard_exit": thr_info,
        "min_top1_top2_gap": {k: round(v, 6) for k, v in gaps.items()},
        "tensors": shapes,
    }
    if with_hard:
        meta["thresholds"] = thresholds
    return meta


def verify_reload(cls, directory, ref_model, **kw):
    m = cls.from_pretrained(directory, attn_implementation="eager", **kw).eval()
    a, b = m.state_dict(), ref_model.state_dict()
    assert a.keys() == b.keys(), (directory, set(a) ^ set(b))
    for k in a:
        assert torch.equal(a[k], b[k]), (directory, k)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    for p in os.listdir(OUT):  # regenerate from scratch, keep README.md
        full = os.path.join(OUT, p)
        if p == "README.md":
            continue
        shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    meta_all = {"generator": {
        "command": "python3 scripts/make_model_fixtures.py",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }}

    with torch.no_grad():
        # ---------------- A. cg: BartForConditionalGeneration + concat_head ----------------
        gen = torch.Generator().manual_seed(20240601)
        cfg = BartConfig(
            vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=3,
            encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            activation_function="gelu", scale_embedding=False,
            pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=2,
            attn_implementation="eager",
        )
        torch.manual_seed(0)
        cg = BartForConditionalGeneration(cfg).eval()
        reinit_(cg, gen)
        cg.final_logits_bias.copy_(0.5 * torch.randn(cg.final_logits_bias.shape, generator=gen))
        concat_head = torch.nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        concat_head.weight.copy_(0.2 * torch.randn(concat_head.weight.shape, generator=gen))
        assert cg.lm_head.weight is cg.model.shared.weight
        tied = ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
        sd = export_state_dict(cg, {"concat_head.weight": concat_head.weight}, drop_tied=tied)
        for sub in ("cg", "cg_bin", "cg_sharded"):
            fresh_dir(os.path.join(OUT, sub))
            cg.config.save_pretrained(os.path.join(OUT, sub))  # config.json only
        save_safetensors(sd, os.path.join(OUT, "cg", "model.safetensors"))
        save_bin(sd, os.path.join(OUT, "cg_bin", "pytorch_model.bin"))
        parts = save_sharded(sd, os.path.join(OUT, "cg_sharded"))
        for sub, kw in (("cg", {}), ("cg_bin", {}), ("cg_sharded", {})):
            verify_reload(BartForConditionalGeneration, os.path.join(OUT, sub), cg, **kw)

        inp, mask_id = make_inputs(cfg.vocab_size, cfg.decoder_layers, gen)
        el = Elmer(cg.model, cg.final_logits_bias, concat_head)
        meta = build_reference("cg", el, inp, mask_id, hf_model=cg)
        meta["checkpoint_tensors"] = sorted(sd.keys())
        meta["shards"] = {"model-00001-of-00002.safetensors": len(parts[0]),
                          "model-00002-of-00002.safetensors": len(parts[1])}
        meta_all["cg"] = meta

        # ---------------- B. bare: BartModel ----------------
        gen = torch.Generator().manual_seed(20240602)
        cfg_b = BartConfig(
            vocab_size=100, d_model=24, encoder_layers=3, decoder_layers=2,
            encoder_attention_heads=3, decoder_attention_heads=3,
            encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40,
            activation_function="relu", scale_embedding=True,
            pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=2,
            attn_implementation="eager",
        )
        bare = BartModel(cfg_b).eval()
        reinit_(bare, gen)
        sd_b = export_state_dict(bare, drop_tied=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))
        fresh_dir(os.path.join(OUT, "bare"))
        bare.config.save_pretrained(os.path.join(OUT, "bare"))
        save_safetensors(sd_b, os.path.join(OUT, "bare", "model.safetensors"))
        save_bin(sd_b, os.path.join(OUT, "bare", "pytorch_model.bin"))
        verify_reload(BartModel, os.path.join(OUT, "bare"), bare)
        verify_reload(BartModel, os.path.join(OUT, "bare"), bare, use_safetensors=False)

        inp_b, mask_b = make_inputs(cfg_b.vocab_size, cfg_b.decoder_layers, gen)
        el_b = Elmer(bare)
        meta_b = build_reference("bare", el_b, inp_b, mask_b)
        meta_b["checkpoint_tensors"] = sorted(sd_b.keys())
        meta_all["bare"] = meta_b

        # ---------------- tiny-random-bart (shared real checkpoint) ----------------
        gen = torch.Generator().manual_seed(20240603)
        tiny = BartModel.from_pretrained(TINY, attn_implementation="eager", dtype=torch.float32).eval()
        inp_t, mask_t = make_inputs(tiny.config.vocab_size, tiny.config.decoder_layers, gen)
        el_t = Elmer(tiny)
        meta_t = build_reference("tiny_random_bart", el_t, inp_t, mask_t, with_hard=False)
        meta_t["checkpoint"] = TINY
        meta_t["note"] = ("mask_id is vocab_size-1 = 999 by the fixture convention; the checkpoint's "
                          "own tokenizer maps <mask> to id 4")
        meta_all["tiny_random_bart"] = meta_t

    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta_all, f, indent=2)
        f.write("\n")

    total = 0
    for dp, _, fs in os.walk(OUT):
        for fn in sorted(fs):
            p = os.path.join(dp, fn)
            total += os.path.getsize(p)
            print(f"{os.path.getsize(p):>9}  {os.path.relpath(p, ROOT)}")
    print(f"{total:>9}  total")
    for name in ("cg", "bare"):
        for t in meta_all[name]["hard_exit"]:
            print(name, t)


if __name__ == "__main__":
    main()
