#!/usr/bin/env python3
"""A small PyTorch model of the crate's one-pass NAR fine-tuning on SQuAD-QG, to tell a crate
bug from a property of the objective quickly (PyTorch eager, 2 threads; not used by the tests).

Model: encoder-decoder built from torch.nn.Transformer{Encoder,Decoder}Layer (post-norm, or
pre-norm with --norm-first 1), d 192, 3+3 layers, 6 heads, FFN 768, GELU, dropout 0.1,
learned positions, layernorm_embedding, the embedding tied to the output projection. Decoder
input `[<s>, <mask> x (slot-1)]` (or, with --inputs copy, source tokens copied uniformly
into the slot), no causal mask; labels = target without `<s>`, padded (ignored) past `</s>`,
label smoothing 0.1, AdamW (wd 0.01), clip 2.0, linear warm-up/decay. Options: --curriculum N
trains the first N steps on source -> source (copy) pairs; --glat R is glancing training;
--ctc 1 replaces the cross-entropy by CTC (blank = `<pad>`); --oracle-len 1 gives the
decoder the gold target length (slot positions past it are `<pad>`, masked), in training and
in evaluation, as an upper bound for a length predictor; --oaxe 1 (needs scipy) trains the
question steps with the order-agnostic cross-entropy (best one-to-one assignment of label
tokens to slot positions); --bart-init S draws every matrix
from N(0, S) as BART does. Every 100 steps it prints the dev loss, the number of distinct
outputs for 100 dev sources and the questions generated for 9 of them.

What it showed on 2026-12-06 (scripts/train_squad_model.sh has the crate's side): on the
question task every variant (post/pre-norm, <mask>/copied inputs, glancing 0.5, CTC) answers
every source with one template ("what was the the the ? ? ?", CTC: "what was ?"; with the
oracle length "what was the the the the the the the the of in ?", dev loss 5.70 at step 600)
after 300-600 steps, while on the copy task the same model leaves the unigram plateau within 200
steps (dev loss 2.3 with PyTorch's default init, 4.5 with BART's N(0, 0.02)).

The one variant that left the template: --oracle-len 1 --oaxe 1 --curriculum 200 (OAXE with
the gold length, </s> kept in place). By step 400-500 it copies source content, in a loose
order as the loss allows: "what ? was limited by denver 's defense of to sacked him",
"what ? bowl was halftime show was headlined by the theon group", "what ? was played on queen
7 in 2016 of the" (distinct outputs for 71 of 100 dev sources). An order-tolerant loss (OAXE,
or the monotonic AXE of Ghazvininejad et al. 2020) with a length predictor is the lead.

    python3 scripts/nar_probe.py --tokenizer runs/tok8k/tokenizer.json --curriculum 250 --glat 0.5
    python3 scripts/nar_probe.py --tokenizer runs/tok8k/tokenizer.json --curriculum 200 --oracle-len 1 --oaxe 1
"""
import os
import argparse, math, random, time, sys
import torch, torch.nn as nn, torch.nn.functional as F
from tokenizers import Tokenizer
ap = argparse.ArgumentParser()
ap.add_argument("--tokenizer", required=True, help="tokenizer.json (e.g. of elmer tokenizer train)")
ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "squad-qg"))
ap.add_argument("--norm-first", type=int, default=0)
ap.add_argument("--inputs", default="mask")  # mask | copy
ap.add_argument("--lr", type=float, default=7e-4)
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--d", type=int, default=192)
ap.add_argument("--layers", type=int, default=3)
ap.add_argument("--slot", type=int, default=24)
ap.add_argument("--task", default="qg")
ap.add_argument("--warm", type=int, default=60)
ap.add_argument("--dropout", type=float, default=0.1)
ap.add_argument("--bart-init", type=float, default=0)
ap.add_argument("--glat", type=float, default=0)
ap.add_argument("--oracle-len", type=int, default=0)
ap.add_argument("--oaxe", type=int, default=0)
ap.add_argument("--ctc", type=int, default=0)
ap.add_argument("--curriculum", type=int, default=0)
ap.add_argument("--save", default="")
ap.add_argument("--load", default="")
a = ap.parse_args()
torch.manual_seed(1); random.seed(1); torch.set_num_threads(2)
tok = Tokenizer.from_file(a.tokenizer)
D = a.data.rstrip("/") + "/"
def load(s, t, n):
    S = open(D + s).read().splitlines()[:n]; T = open(D + t).read().splitlines()[:n]
    if a.task == "copy": T = S
    out = []
    for x, y in zip(S, T):
        xs = tok.encode(x.lower()).ids  # framed? check
        ys = tok.encode(y.lower()).ids
        out.append((xs, ys))
    return out
tr = load("src-train.txt", "tgt-train.txt", 30000)
cp = [(x, x) for x, _ in tr]
dv = load("src-dev.txt", "tgt-dev.txt", 300)
print("example ids", tr[0][1][:8], file=sys.stderr)
V = tok.get_vocab_size(); BOS, PAD, EOS, MASK = 0, 1, 2, V - 1
def frame(ids, n):
    if ids and ids[0] == BOS: ids = ids[1:]
    if ids and ids[-1] == EOS: ids = ids[:-1]
    return [BOS] + ids[: n - 2] + [EOS]
def batch(ex):
    srcs = [frame(x, 128) for x, _ in ex]
    S = max(map(len, srcs)); T = a.slot
    src = torch.full((len(ex), S), PAD); lab = torch.full((len(ex), T), PAD)
    for i, (s, (_, y)) in enumerate(zip(srcs, ex)):
        src[i, : len(s)] = torch.tensor(s)
        yl = frame(y, T + 1)[1:]
        lab[i, : len(yl)] = torch.tensor(yl)
    dec = torch.full((len(ex), T), MASK); dec[:, 0] = BOS
    if a.oracle_len:
        dec[lab.eq(PAD)] = PAD
    if a.inputs == "copy":
        for i, s in enumerate(srcs):
            L = len(s)
            for t in range(1, T):
                dec[i, t] = s[min(L - 1, int(t * L / T))]
    return src, dec, lab
class M(nn.Module):
    def __init__(s):
        super().__init__()
        d = a.d
        s.emb = nn.Embedding(V, d); nn.init.normal_(s.emb.weight, std=0.02)
        s.pe = nn.Embedding(256, d); s.pd = nn.Embedding(256, d)
        nn.init.normal_(s.pe.weight, std=0.02); nn.init.normal_(s.pd.weight, std=0.02)
        s.lne = nn.LayerNorm(d); s.lnd = nn.LayerNorm(d)
        s.enc = nn.ModuleList([nn.TransformerEncoderLayer(d, 6, 4 * d, a.dropout, "gelu", batch_first=True, norm_first=bool(a.norm_first)) for _ in range(a.layers)])
        s.dec = nn.ModuleList([nn.TransformerDecoderLayer(d, 6, 4 * d, a.dropout, "gelu", batch_first=True, norm_first=bool(a.norm_first)) for _ in range(a.layers)])
        s.fe = nn.LayerNorm(d) if a.norm_first else nn.Identity(); s.fd = nn.LayerNorm(d) if a.norm_first else nn.Identity()
        s.drop = nn.Dropout(a.dropout)
    def forward(s, src, dec):
        kp = src.eq(PAD)
        x = s.drop(s.lne(s.emb(src) + s.pe(torch.arange(src.shape[1]))))
        for l in s.enc: x = l(x, src_key_padding_mask=kp)
        x = s.fe(x)
        y = s.drop(s.lnd(s.emb(dec) + s.pd(torch.arange(dec.shape[1]))))
        dk = dec.eq(PAD) if a.oracle_len else None
        for l in s.dec: y = l(y, x, tgt_key_padding_mask=dk, memory_key_padding_mask=kp)
        return s.fd(y) @ s.emb.weight.t()
m = M()
if a.bart_init:
    for n_, p_ in m.named_parameters():
        if p_.dim() == 2: nn.init.normal_(p_, std=a.bart_init)
        elif n_.endswith("bias") and "norm" not in n_ and not n_.startswith("ln"): nn.init.zeros_(p_)
if a.load: m.load_state_dict(torch.load(a.load))
opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01)
sched = lambda st: min(1, (st + 1) / a.warm) * max(0.0, 1 - st / a.steps) if st >= a.warm else (st + 1) / a.warm
def evaluate():
    m.eval(); tot = n = 0; outs = []
    with torch.no_grad():
        for i in range(0, len(dv), 100):
            src, dec, lab = batch(dv[i : i + 100])
            lg = m(src, dec)
            if a.ctc:
                lp = F.log_softmax(lg, -1).transpose(0, 1); tl = lab.ne(PAD).sum(1)
                tg = torch.cat([lab[i, : tl[i]] for i in range(lab.shape[0])])
                tot += F.ctc_loss(lp, tg, torch.full((lab.shape[0],), lg.shape[1], dtype=torch.long), tl, blank=PAD, reduction="sum", zero_infinity=True).item(); n += tl.sum().item()
            else:
                tot += F.cross_entropy(lg.reshape(-1, V), lab.reshape(-1), ignore_index=PAD, reduction="sum").item(); n += lab.ne(PAD).sum().item()
            if i == 0:
                am = lg.argmax(-1)
                for r in range(0, 100, 12):
                    ids = am[r].tolist()
                    if a.ctc:
                        ids = [x for k, x in enumerate(ids) if (k == 0 or x != ids[k - 1])]
                        ids = [x for x in ids if x != PAD]
                    ids = ids[: ids.index(EOS)] if EOS in ids else ids
                    outs.append(tok.decode(ids))
                distinct = len(set(tuple(r) for r in am.tolist()))
    m.train(); return tot / n, outs, distinct
t0 = time.time(); ntok = 0
for st in range(a.steps):
    for g in opt.param_groups: g["lr"] = a.lr * sched(st)
    src, dec, lab = batch(random.sample(cp if st < a.curriculum else tr, a.bs))
    if a.glat > 0 and st >= a.curriculum:
        with torch.no_grad():
            pred = m(src, dec).argmax(-1)
        valid = lab.ne(PAD)
        nwrong = (pred.ne(lab) & valid).sum(1)
        for i in range(lab.shape[0]):
            pos = valid[i].nonzero().flatten().tolist()
            k = int(math.ceil(a.glat * nwrong[i].item()))
            if k > 0:
                ch = torch.tensor(random.sample(pos, min(k, len(pos))))
                dec[i, ch] = lab[i, ch]
                lab[i, ch] = PAD
    lg = m(src, dec)
    if a.oaxe and st >= a.curriculum:
        # Order-agnostic cross-entropy (Du et al. 2021): per row, the best one-to-one
        # assignment of the n-1 label tokens before </s> to the first n-1 slot positions
        # (Hungarian); </s> keeps its position (plain cross-entropy).
        from scipy.optimize import linear_sum_assignment
        lp = F.log_softmax(lg, -1)
        tot_l = 0; ntok = 0
        for i in range(lab.shape[0]):
            n = int(lab[i].ne(PAD).sum())
            y = lab[i, :n - 1]
            C = -lp[i, :n - 1][:, y]  # [positions, target tokens]
            r, c = linear_sum_assignment(C.detach().numpy())
            eos = lp[i, n - 1, lab[i, n - 1]]
            tot_l = tot_l + C[torch.as_tensor(r), torch.as_tensor(c)].sum() - eos; ntok += n
        loss = tot_l / ntok
    elif a.ctc:
        lp = F.log_softmax(lg, -1).transpose(0, 1)
        tl = lab.ne(PAD).sum(1)
        tg = torch.cat([lab[i, : tl[i]] for i in range(lab.shape[0])])
        loss = F.ctc_loss(lp, tg, torch.full((lab.shape[0],), lg.shape[1], dtype=torch.long), tl, blank=PAD, zero_infinity=True)
    else:
        loss = F.cross_entropy(lg.reshape(-1, V), lab.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 2.0); opt.step()
    ntok += src.ne(PAD).sum().item() + lab.ne(PAD).sum().item()
    if (st + 1) % 100 == 0:
        el, outs, dis = evaluate()
        print(f"step {st+1} train {loss.item():.3f} eval {el:.3f} distinct {dis}/100 {ntok/(time.time()-t0):.0f} tok/s | " + " || ".join(outs), flush=True)

if a.save: torch.save(m.state_dict(), a.save)
