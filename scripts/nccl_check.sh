#!/usr/bin/env bash
# NCCL check for a GPU machine (issue 15), from binaries built here with
#   FEATURES=nccl scripts/build_cuda.sh
# and carried there (target-cuda/release/elmer). It runs 6 steps of LPLM pre-training of the
# tiny fixture model on cuda:0 twice, once as a plain process and once as a one-rank job whose
# gradients go through NCCL (ELMER_COLLECTIVE=nccl; the NCCL id is shared over MPI even for one
# rank), and compares the two loss trajectories and final weights (tolerance 1e-5). Needs
# the machine's CUDA 13 runtime, libnccl.so.2 and Open MPI (libmpi.so.40) on the library
# path. With two or more GPUs it also runs `mpirun -np 2` against one process with
# --grad-accum 2. Writes $OUT/nccl_check.txt (OUT defaults to target/nccl-check).
#
#   scripts/nccl_check.sh [path/to/elmer]
#   DEVICE=cpu ENGINE=mpi scripts/nccl_check.sh target/release/elmer   # the same check of the
#                                                    # script on a CPU machine, over MPI
set -euo pipefail
cd "$(dirname "$0")/.."
ELMER=${1:-target-cuda/release/elmer}
OUT=${OUT:-target/nccl-check}
DEVICE=${DEVICE:-cuda}
ENGINE=${ENGINE:-nccl}
rm -rf "$OUT" && mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CORPUS="$OUT/corpus.txt"
printf '%s\n\n' "the eiffel tower was completed in 1889 and was the tallest structure in the world ." \
  "oxygen is a chemical element with symbol o and atomic number 8 ." \
  "the university of notre dame was founded in 1842 by father edward sorin ." \
  "beyonce released her debut album , dangerously in love , in 2003 ." \
  "the thames flows through london and is 346 km long ." \
  "water boils at 100 degrees at sea level ." > "$CORPUS"
ARGS=(pretrain --corpus "$CORPUS" --init-from tests/fixtures/tiny-random-bart
  --tokenizer tests/fixtures/tiny-random-bart --device "$DEVICE" --batch-size 2 --k 2 --max-len 16
  --valid-docs 2 --steps 6 --eval-every 3 --save-every 3)
"$ELMER" "${ARGS[@]}" --out "$OUT/plain" > "$OUT/plain.log" 2>&1
ELMER_COLLECTIVE="$ENGINE" "$ELMER" "${ARGS[@]}" --out "$OUT/one-rank" > "$OUT/nccl1.log" 2>&1
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
[ "$DEVICE" = cpu ] && GPUS=2  # on a CPU machine, the 2-rank comparison too
if [ "$GPUS" -ge 2 ]; then
  "$ELMER" "${ARGS[@]}" --grad-accum 2 --out "$OUT/accum2" > "$OUT/accum2.log" 2>&1
  mpirun -np 2 "$ELMER" "${ARGS[@]}" --out "$OUT/nccl2" > "$OUT/nccl2.log" 2>&1
fi
compare() { # losses and weights of checkpoint 6 of two runs
  python3 - "$1" "$2" <<'PY'
import json, sys
from safetensors.numpy import load_file
a, b = sys.argv[1], sys.argv[2]
sa = json.load(open(f"{a}/checkpoint-0000006/trainer_state.json"))
sb = json.load(open(f"{b}/checkpoint-0000006/trainer_state.json"))
la = [e["loss"] for e in sa["history"]]; lb = [e["loss"] for e in sb["history"]]
wa = load_file(f"{a}/checkpoint-0000006/model.safetensors")
wb = load_file(f"{b}/checkpoint-0000006/model.safetensors")
dl = max(abs(x - y) for x, y in zip(la, lb))
dw = max(float(abs(wa[k] - wb[k]).max()) for k in wa)
ok = dl <= 1e-5 and dw <= 1e-5 and len(la) == len(lb) == 6
print(f"{a} vs {b}: max loss difference {dl:.3g}, max weight difference {dw:.3g}: {'PASS' if ok else 'FAIL'}")
PY
}
{
  echo "elmer: $ELMER; GPUs: $GPUS"
  grep -h "data-parallel\|trained" "$OUT"/*.log || true
  compare "$OUT/plain" "$OUT/one-rank"
  if [ "$GPUS" -ge 2 ]; then compare "$OUT/accum2" "$OUT/nccl2"; fi
} | tee "$OUT/nccl_check.txt"
