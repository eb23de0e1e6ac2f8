#!/usr/bin/env bash
# The GPU check of issue 13, in at most about 8 minutes, from binaries built on a CPU machine
# with scripts/build_cuda.sh and carried to the GPU machine (which has a driver, PyTorch and
# its CUDA 13 runtime libraries, and no package registry):
#
#   scripts/build_cuda.sh                          # here: target-cuda/release/{elmer,deps/*}
#   scripts/gpu_check.sh                           # there: writes $OUT/gpu-check/summary.md
#
# Steps (each with its own time limit; a failing step is recorded and the next one runs):
#   1. the model parity tests (PyTorch fixtures) on the GPU: ELMER_TEST_DEVICE=cuda:0, logits
#      within 1e-3 (TF32 is off in candle's f32 matmuls by default);
#   2. `elmer generate` with the shipped model on the GPU and on the CPU: the outputs compared;
#   3. the latency cases at BART-base size on the GPU (ELMER_BENCH_DEVICE=cuda:0), f32;
#   4. the same cases in PyTorch eager on the same GPU (scripts/bench_pytorch.py --device cuda,
#      TF32 off) and the crate/PyTorch ratios.
#
# Without a GPU the same steps run on the CPU, which is how this script is tested:
#   DEVICE=cpu BIN_DIR=target/release scripts/gpu_check.sh
# (after `cargo build --release -p elmer-cli && cargo test --release --no-run --test it &&
#  cargo bench --bench latency --no-run`).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda:0}"
BIN_DIR="${BIN_DIR:-target-cuda/release}"
OUT_DIR="${OUT:-target}/gpu-check"
CASES="${CASES:-encoder/src512|src128_slot32/nar_(last|soft)|src512_slot64/nar_(last|soft|hard0)}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.md"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

newest() { ls -t $1 2>/dev/null | grep -v '\.d$' | head -1; }
ELMER="$BIN_DIR/elmer"
IT="$(newest "$BIN_DIR/deps/it-*")"
LATENCY="$(newest "$BIN_DIR/deps/latency-*")"

if [[ "$DEVICE" == cuda* ]]; then
  # The GPU machine's CUDA 13 runtime libraries: those of its PyTorch wheels.
  NV="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
  [ -n "$NV" ] && export LD_LIBRARY_PATH="$NV:${LD_LIBRARY_PATH:-}"
fi

say "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE)"
say ""
if command -v nvidia-smi > /dev/null; then
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
fi
say "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
say "binaries: $ELMER, ${IT:-no it test binary}, ${LATENCY:-no latency bench binary}"
say ""

# step NAME LIMIT_S COMMAND...: runs the command with a time limit, logs to $OUT_DIR/NAME.log.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  say "- $name: $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s (log: $OUT_DIR/$name.log)"
  return $rc
}

# 1. Parity on the device.
if [ -n "$IT" ]; then
  ELMER_TEST_DEVICE="$DEVICE" step parity 150 "$IT" model_parity --test-threads 1
  grep -E "test result|FAILED|panicked" "$OUT_DIR/parity.log" | head -5 | sed 's/^/    /' | tee -a "$SUMMARY"
else
  say "- parity: SKIPPED (no $BIN_DIR/deps/it-* binary)"
fi

# 2. generate with the shipped model on the device and on the CPU.
SENTENCES="$OUT_DIR/sentences.txt"
head -40 ../shared/data/squad-qg/src-dev.txt > "$SENTENCES" 2>/dev/null ||
  printf '%s\n' "the eiffel tower was completed in 1889 for the world 's fair in paris ." \
    "marie curie won the nobel prize in physics in 1903 ." > "$SENTENCES"
step generate 90 "$ELMER" generate --device "$DEVICE" --input "$SENTENCES" --json
cp "$OUT_DIR/generate.log" "$OUT_DIR/generate-device.jsonl"
if step generate-cpu 90 "$ELMER" generate --device cpu --input "$SENTENCES" --json; then
  python3 - "$OUT_DIR/generate-device.jsonl" "$OUT_DIR/generate-cpu.log" <<'EOF' | tee -a "$SUMMARY"
import json, sys
def rows(p):
    return [json.loads(l) for l in open(p) if l.startswith("{")]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
same = sum(x["ids"] == y["ids"] for x, y in zip(a, b))
lat = sorted(x["latency_ms"] for x in a)
med = lat[len(lat) // 2] if lat else float("nan")
print(f"    {len(a)} sources: {same} outputs identical to the CPU's; device latency median {med:.2f} ms/sample")
if a:
    print(f"    e.g. {a[0]['text']!r}")
EOF
fi

# 3. + 4. Latency on the device, the crate against PyTorch eager.
if [ -n "$LATENCY" ]; then
  ELMER_BENCH_DEVICE="$DEVICE" step latency 240 "$LATENCY" --bench "$CASES"
fi
PT_DEVICE="$DEVICE"
[[ "$DEVICE" == cuda:* ]] && PT_DEVICE="cuda:${DEVICE#cuda:}"
for c in encoder/src512 nar_; do
  step "pytorch-${c//\//-}" 120 python3 scripts/bench_pytorch.py --device "$PT_DEVICE" \
    --only "$c" --repeats 5 --out "$OUT_DIR/pytorch-${c//\//-}.json"
done
python3 - "$OUT_DIR" "$CASES" <<'EOF' | tee -a "$SUMMARY"
import json, os, re, sys
out, cases = sys.argv[1], re.compile(sys.argv[2])
crate = {}
log = os.path.join(out, "latency.log")
if os.path.exists(log):
    cur = None
    for line in open(log):
        m = re.match(r"^(\S+/\S+)", line)
        if m and "time:" not in line.split()[0]:
            cur = m.group(1)
        t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
        if t and cur:
            v = float(t.group(1)) * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[t.group(2)]
            crate[cur] = v
torch = {}
for f in os.listdir(out):
    if f.startswith("pytorch-") and f.endswith(".json"):
        torch.update({k: v["median_ms"] for k, v in json.load(open(os.path.join(out, f)))["cases"].items()})
print("\n| case | crate ms | PyTorch eager ms | crate / PyTorch |")
print("|---|---|---|---|")
for k in sorted(set(crate) | {k for k in torch if cases.search(k)}):
    c, p = crate.get(k), torch.get(k)
    r = f"{c / p:.2f}" if c and p else "-"
    print(f"| {k} | {c:.2f} | " if c else f"| {k} | - | ", end="")
    print(f"{p:.2f} | {r} |" if p else f"- | {r} |")
print("\npaper: ELMER-Soft 11.94 ms per sample on a V100 (XSUM, src 512 / slot 64 class)")
EOF
say ""
say "summary: $SUMMARY"
