#!/usr/bin/env bash
# Issue 12's recipe for a SQuAD-QG model trained by this crate only on the new data (75,722
# Du et al. train pairs, 12 MB of Wikipedia), on the CPU: vocabulary, LPLM pre-training,
# soft+hard fine-tuning, export as models/elmer-small-squadqg (soft exit) and
# models/elmer-small-squadqg-hard (same weights, hard exit at the threshold chosen on
# validation data), evaluation. Reads ../shared/data (never copied into the repository).
# Every step resumes where it stopped: run the script again after an interruption.
#
# STATUS (2026-12-06): run as far as stage 3 (a) and part of (b); the model it gave still
# answers every source with one template question, so nothing was exported and the shipped
# model is still the one of scripts/train_small_model.sh. See the note of that session.
#
#   RUNS=runs scripts/train_squad_model.sh        # all steps
#   STEPS="pretrain finetune" scripts/train_squad_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
STEPS=${STEPS:-"tokenizer pretrain finetune export eval"}
cargo build --release -p elmer-cli
ELMER=${ELMER:-${CARGO_TARGET_DIR:-target}/release/elmer}
mkdir -p "$RUNS"
has() { [[ " $STEPS " == *" $1 "* ]]; }

# 1. A lowercased 8,192-id byte-level BPE vocabulary (BART's special tokens and framing) on
#    the pre-training text and the SQuAD-QG train pairs (the Du et al. split is lowercased
#    and PTB-tokenised). Seconds.
if has tokenizer && [ ! -f "$RUNS/tok8k/tokenizer.json" ]; then
  $ELMER tokenizer train --vocab-size 8192 --lowercase --out "$RUNS/tok8k" \
    --corpus "$DATA/corpus/squad-train-paragraphs.txt" --corpus "$DATA/corpus/wikitext-2-raw-test.txt" \
    --corpus "$DATA/squad-qg/src-train.txt" --corpus "$DATA/squad-qg/tgt-train.txt"
fi

# 2. LPLM pre-training from scratch (d 192, 3+3 layers, 4.9M parameters) on the 16,466
#    Wikipedia paragraphs of the SQuAD train articles plus WikiText-2, lowercased, chunks of
#    64 tokens, k = 2 exit-layer assignments per sequence, span masking without sentence
#    shuffling. The shipped model stopped at step 300 of a 1,000-step schedule: the held-out
#    loss had been flat at the unigram level (7.14-7.23) since step 100 (see the model card).
if has pretrain; then
  $ELMER pretrain --corpus "$DATA/corpus/squad-train-paragraphs.txt" \
    --corpus "$DATA/corpus/wikitext-2-raw-test.txt" --lowercase --tokenizer "$RUNS/tok8k" \
    --preset small --out "$RUNS/pretrain" --steps 1000 --stop-at 300 --batch-size 16 --k 2 \
    --lr 1e-3 --warmup 100 --eval-every 100 --save-every 100 --valid-docs 64 --seed 1 \
    --no-sentence-shuffle | tee -a "$RUNS/pretrain.out"
  cp "$RUNS"/tok8k/* "$RUNS/pretrain/best/"
fi

# 3. Fine-tuning on the 75,722 Du et al. train pairs, soft exit and deep supervision in
#    alternate steps (one model for both exits), on the generation slot of 24 tokens, label
#    smoothing 0.1, length-bucketed batches of 32, best/ chosen by the ROUGE-L/BLEU-4/METEOR
#    mean of soft-exit text on 500 dev pairs; the hard-exit threshold is chosen on the same
#    500 pairs. In two stages: (a) 1,500 steps of a 5,500-step schedule at peak lr 7e-4,
#    (b) from (a)'s step-1,500 weights, 3,000 steps at peak lr 1.5e-3 (the loss had stayed
#    on its plateau in (a); the higher rate is what moved it).
if has finetune; then
  FT="$ELMER finetune --task squad --data $DATA/squad-qg --exit soft+hard --max-len 24 \
    --batch-size 32 --eval-every 500 --label-smoothing 0.1 --bucket-pool 16 --limit 500"
  $FT --pretrained "$RUNS/pretrain/best" --out "$RUNS/squad-a" --steps 5500 --stop-at 1500 \
    --lr 7e-4 | tee -a "$RUNS/squad-a.out"
  mkdir -p "$RUNS/squad-b-init"
  cp "$RUNS/squad-a/checkpoint-0001500/config.json" "$RUNS/squad-a/checkpoint-0001500/model.safetensors" \
    "$RUNS"/tok8k/* "$RUNS/squad-b-init/"
  $FT --pretrained "$RUNS/squad-b-init" --out "$RUNS/squad" --steps 3000 --lr 1.5e-3 \
    | tee -a "$RUNS/squad.out"
fi

# 4. Ship both as f16 model directories with their tokenizer.
if has export; then
  $ELMER export "$RUNS/squad/best" models/elmer-small-squadqg
  $ELMER export "$RUNS/squad/best-hard" models/elmer-small-squadqg-hard
fi

# 5. The numbers of the model card: the 10,070 dev pairs not used for selection, every
#    policy, the exit distribution as a picture.
if has eval; then
  $ELMER eval --task squad --data "$DATA/squad-qg" --model models/elmer-small-squadqg \
    --exit soft --sweep --exit-plot models/elmer-small-squadqg/exits.svg | tee "$RUNS/eval-soft.out"
  HARD=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["elmer_exit_policy"])' \
    models/elmer-small-squadqg-hard/config.json)
  $ELMER eval --task squad --data "$DATA/squad-qg" --model models/elmer-small-squadqg-hard \
    --exit "$HARD" | tee "$RUNS/eval-hard.out"
fi

# 6. XSUM and PersonaChat from the same pre-trained model.
if has others; then
  $ELMER finetune --task xsum --pretrained "$RUNS/pretrain/best" --exit soft --steps 300 \
    --batch-size 8 --eval-every 100 --out "$RUNS/xsum-soft" --sweep | tee "$RUNS/xsum-soft.out"
  $ELMER finetune --task personachat --pretrained "$RUNS/pretrain/best" --exit soft \
    --steps 600 --batch-size 16 --eval-every 200 --out "$RUNS/personachat-soft" --limit 400 \
    --sweep | tee "$RUNS/personachat-soft.out"
fi
