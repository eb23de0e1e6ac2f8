#!/usr/bin/env bash
# The exact recipe of models/elmer-small-squadqg and of the README's results table.
# CPU only (2 cores here); every step resumes if interrupted. Reads ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
# candle's elementwise thread pool spin-waits; on a 2-core machine one elementwise thread is
# 2-3x faster overall (matrix multiplies still use every core).
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1}
# The `elmer` binary (crates/elmer-cli); CARGO_TARGET_DIR is honoured.
cargo build --release -p elmer-cli
ELMER=${CARGO_TARGET_DIR:-target}/release/elmer
mkdir -p runs

# 1. LPLM pre-training from scratch on WikiText-2 (d 192, 3+3 layers, BART vocabulary).
$ELMER pretrain --out runs/pretrain-small --steps 800 --preset small --k 2 --batch-size 16 \
  --lr 1e-3 --warmup 60 --eval-every 100 --save-every 100 --seed 1 | tee runs/pretrain-small.out

# 2. Soft-exit fine-tuning on SQuAD question generation (Du et al. dev pairs: 9,570 train,
#    500 validation, 500 test held out with a seeded shuffle). This is the shipped model.
$ELMER finetune --task squad --pretrained runs/pretrain-small/best --exit soft --steps 600 \
  --batch-size 16 --lr 5e-4 --eval-every 100 --out runs/squad-soft --limit 500 --sweep \
  | tee runs/squad-soft.out

# 3. Ship the SQuAD soft-exit model as f16 safetensors with its tokenizer, and evaluate the
#    shipped weights (soft, last, hard 0.0..1.0) on the 500 held-out test pairs.
$ELMER export runs/squad-soft/best models/elmer-small-squadqg
$ELMER eval --task squad --model models/elmer-small-squadqg --exit soft --limit 500 --sweep \
  | tee runs/shipped-eval.out

# 4. Hard exit (deep supervision of every off-ramp), threshold sweep on the test split.
$ELMER finetune --task squad --pretrained runs/pretrain-small/best --exit hard --steps 400 \
  --batch-size 16 --lr 5e-4 --eval-every 100 --out runs/squad-hard --limit 500 --sweep \
  | tee runs/squad-hard.out

# 5. XSUM and PersonaChat, soft exit, from the same pre-trained model.
$ELMER finetune --task xsum --pretrained runs/pretrain-small/best --exit soft --steps 150 \
  --batch-size 8 --lr 5e-4 --eval-every 50 --out runs/xsum-soft --sweep | tee runs/xsum-soft.out
$ELMER finetune --task personachat --pretrained runs/pretrain-small/best --exit soft --steps 300 \
  --batch-size 16 --lr 5e-4 --eval-every 100 --out runs/personachat-soft --limit 400 --sweep \
  | tee runs/personachat-soft.out

