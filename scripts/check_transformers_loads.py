#!/usr/bin/env python3
"""Check by hand that a checkpoint directory loads in Hugging Face transformers as a
`BartForConditionalGeneration` with every BART weight taken from the files.

    python3 scripts/check_transformers_loads.py DIR [--allow-missing NAME ...] [--strict-unexpected]

DIR holds config.json and the weights (model.safetensors, a sharded safetensors set with
model.safetensors.index.json, or pytorch_model.bin). The script

  1. loads DIR with `BartForConditionalGeneration.from_pretrained(DIR, output_loading_info=True)`
     and prints transformers' missing / unexpected / mismatched keys and error messages;
  2. independently reads the weight files and checks that every tensor of the loaded model
     (parameters and persistent buffers, e.g. `final_logits_bias`) came from a file tensor
     (directly, or through a tied alias such as lm_head.weight -> model.shared.weight, or
     with the `model.` prefix added for a bare BartModel checkpoint) and is equal to it;
  3. runs a forward pass on a small dummy batch and checks the logits' shape and finiteness.

Exit status 0 when everything holds; 1 when any BART weight is missing / newly initialised /
mismatched / different from the file, the forward pass fails, or (with --strict-unexpected)
the files hold tensors the model does not use. Tensors the model does not use (for ELMER:
`concat_head.weight`) are listed but are not an error by default. 2 on a usage error.
Names given with --allow-missing (e.g. `final_logits_bias` for a bare BartModel checkpoint)
are reported but do not fail the check.

Tested with Python 3.11, torch 2.15, transformers 5.24.
"""

import argparse
import json
import os
import sys

import torch

import transformers
from transformers import AutoConfig, BartForConditionalGeneration


def read_weight_files(directory):
    """{name: tensor} from whatever weight files DIR holds (safetensors preferred, as
    transformers does)."""
    from safetensors.torch import load_file

    st = os.path.join(directory, "model.safetensors")
    st_index = os.path.join(directory, "model.safetensors.index.json")
    pt = os.path.join(directory, "pytorch_model.bin")
    pt_index = os.path.join(directory, "pytorch_model.bin.index.json")
    if os.path.isfile(st):
        return load_file(st), ["model.safetensors"]
    if os.path.isfile(st_index):
        with open(st_index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for fn in files:
            out.update(load_file(os.path.join(directory, fn)))
        return out, files
    if os.path.isfile(pt):
        return torch.load(pt, map_location="cpu", weights_only=True), ["pytorch_model.bin"]
    if os.path.isfile(pt_index):
        with open(pt_index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for fn in files:
            out.update(torch.load(os.path.join(directory, fn), map_location="cpu", weights_only=True))
        return out, files
    raise FileNotFoundError(f"no weight file in {directory}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory")
    ap.add_argument("--allow-missing", action="append", default=[], metavar="NAME",
                    help="model tensor name that may be missing from the files (repeatable)")
    ap.add_argument("--strict-unexpected", action="store_true",
                    help="also fail when the files hold tensors the model does not use")
    args = ap.parse_args()
    d = args.directory
    if not os.path.isfile(os.path.join(d, "config.json")):
        print(f"error: {d}/config.json not found", file=sys.stderr)
        return 2

    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    problems = []

    cfg = AutoConfig.from_pretrained(d)
    print(f"directory: {d}")
    print(f"config: model_type={cfg.model_type} vocab_size={cfg.vocab_size} d_model={cfg.d_model} "
          f"encoder_layers={cfg.encoder_layers} decoder_layers={cfg.decoder_layers} "
          f"tie_word_embeddings={getattr(cfg, 'tie_word_embeddings', None)}")
    if cfg.model_type != "bart":
        problems.append(f"config model_type is {cfg.model_type!r}, not 'bart'")

    # 1. transformers' own report
    try:
        model, info = BartForConditionalGeneration.from_pretrained(
            d, output_loading_info=True, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001 (e.g. a shape mismatch is an exception in 5.x)
        print("FAIL")
        print(f"  - from_pretrained raised {type(e).__name__}: {e}")
        return 1
    model.eval()
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        vals = sorted(map(str, info.get(key, [])))
        print(f"transformers {key}: {vals if vals else 'none'}")
    missing = set(info.get("missing_keys", [])) - set(args.allow_missing)
    if missing:
        problems.append(f"transformers reports missing (newly initialised) keys: {sorted(missing)}")
    if info.get("mismatched_keys"):
        problems.append(f"transformers reports shape-mismatched keys: {sorted(map(str, info['mismatched_keys']))}")
    if info.get("error_msgs"):
        problems.append(f"transformers reports errors: {info['error_msgs']}")

    # 2. every model tensor comes from the files, with equal values
    files, fnames = read_weight_files(d)
    print(f"weight files: {fnames} ({len(files)} tensors)")
    sd = model.state_dict()  # tied tensors appear under every alias
    alias = {}
    for k, v in sd.items():
        alias.setdefault((v.data_ptr(), tuple(v.shape), v.dtype), []).append(k)

    def model_key(file_key):
        if file_key in sd:
            return file_key
        if "model." + file_key in sd:  # bare BartModel checkpoint
            return "model." + file_key
        return None

    covered, unused = {}, []
    for fk, t in files.items():
        mk = model_key(fk)
        if mk is None:
            unused.append(fk)
        else:
            covered[mk] = (fk, t)
    n_checked, worst = 0, 0.0
    for group in alias.values():
        src = [k for k in group if k in covered]
        if not src:
            if all(k in args.allow_missing for k in group):
                print(f"allowed missing: {group}")
            else:
                problems.append(f"not in the files (newly initialised): {group}")
            continue
        for mk in src:
            fk, t = covered[mk]
            loaded = sd[mk]
            if tuple(t.shape) != tuple(loaded.shape):
                problems.append(f"{fk}: file shape {tuple(t.shape)} != model shape {tuple(loaded.shape)}")
                continue
            diff = (t.double() - loaded.double()).abs().max().item() if t.numel() else 0.0
            worst = max(worst, diff)
            exact = t.dtype == loaded.dtype
            if (exact and diff != 0.0) or (not exact and diff > 1e-2 * max(1.0, t.abs().max().item())):
                problems.append(f"{fk}: loaded value differs from the file (max abs diff {diff:.3e})")
            n_checked += 1
    print(f"compared {n_checked} file tensors with the loaded model: max abs diff {worst:.3e}")
    print(f"file tensors the model does not use: {sorted(unused) if unused else 'none'}")
    if unused and args.strict_unexpected:
        problems.append(f"unused tensors in the files: {sorted(unused)}")
    tied = [g for g in alias.values() if len(g) > 1]
    if tied:
        print(f"tied groups: {tied}")

    # 3. forward pass on a dummy batch
    V = cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V - 1, (2, 7), generator=g)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id or 0, cfg.eos_token_id or 2
    am = torch.ones_like(ids)
    ids[1, 5:] = cfg.pad_token_id if cfg.pad_token_id is not None else 1
    ids[1, 4] = cfg.eos_token_id or 2
    am[1, 5:] = 0
    dec = torch.randint(4, V - 1, (2, 5), generator=g)
    dec[:, 0] = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else 2
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=am, decoder_input_ids=dec, use_cache=False)
        lg = out.logits
        print(f"forward: logits {tuple(lg.shape)} {lg.dtype}, |logit| max {lg.abs().max().item():.4f}, "
              f"finite {bool(torch.isfinite(lg).all())}")
        if tuple(lg.shape) != (2, 5, V):
            problems.append(f"forward: logits shape {tuple(lg.shape)} != {(2, 5, V)}")
        if not torch.isfinite(lg).all():
            problems.append("forward: non-finite logits")
    except Exception as e:  # noqa: BLE001
        problems.append(f"forward pass failed: {type(e).__name__}: {e}")

    if problems:
        print("FAIL")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
