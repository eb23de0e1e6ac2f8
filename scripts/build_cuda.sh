#!/usr/bin/env bash
# Builds the `cuda` feature (library, tests, the `elmer` binary) on a machine WITHOUT a CUDA
# toolkit or GPU, from PyPI's CUDA packages, so the binaries can be carried to a GPU machine
# that has a driver but no package registry. Optional; CI never runs it.
#
#   scripts/build_cuda.sh                 # CUDA 13.2 packages, compute capability 90 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh
#   FEATURES=nccl scripts/build_cuda.sh   # also data-parallel training over NCCL (links PyPI's
#                                         # libnccl 2.30; needs Open MPI + libclang, see .ci/run)
#
# What it does (each step was needed on 2026-11-26):
# 1. pip installs nvcc with a matching nvvm/crt (nvcc 13.2 with nvvm 13.5 emits PTX 9.5, which
#    its ptxas 9.2 rejects) and curand; cudart/cublas come with torch's CUDA 13 wheels or are
#    installed here.
# 2. builds the library (candle's kernels compile to PTX with that nvcc);
# 3. links test binaries against unversioned symlinks of the pip libraries and a stub
#    `libcuda.so` (soname libcuda.so.1) defining every driver symbol cudarc references: the
#    driver library only exists where a driver is installed, and at run time the real
#    libcuda.so.1 is loaded instead of the stub.
# Output: $CARGO_TARGET_DIR (default target-cuda/) release binaries. They need, at run time,
# the driver's libcuda.so.1 and CUDA 13 runtime libraries (libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10) on LD_LIBRARY_PATH; libcublasLt alone is ~500 MB, too big
# to carry, so the GPU machine's own CUDA 13 libraries must be used (for a CUDA 12 machine,
# install the -cu12 packages instead and adapt the paths).
#
# On this CPU machine the CUDA build's CPU tests can be run with the stub:
#   LD_LIBRARY_PATH=$LINK/run:$NV/lib target-cuda/release/deps/model_parity-*
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
FEATURES="${FEATURES:-cuda}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-cuda}"
LINK="${LINK:-$CARGO_TARGET_DIR/cuda-link}"

python3 -m pip install -q "nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*" \
  "nvidia-cuda-runtime==13.2.*" nvidia-cublas nvidia-curand
NV="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
export PATH="$NV/bin:$PATH" CUDA_ROOT="$NV" CUDA_PATH="$NV" CUDA_HOME="$NV"
nvcc --version | tail -1

mkdir -p "$LINK/run"
if [[ "$FEATURES" == *nccl* ]]; then
  # cudarc's NCCL bindings (API 2.30) link libnccl; at run time the GPU machine's (or this
  # package's) libnccl.so.2 is loaded.
  python3 -m pip install -q "nvidia-nccl-cu13==2.30.*"
  NCCL="$(python3 -c 'import nvidia.nccl, os; print(list(nvidia.nccl.__path__)[0])')"
  ln -sf "$NCCL/lib/libnccl.so.2" "$LINK/libnccl.so"
fi
for lib in cudart cublas cublasLt curand nvrtc; do
  f="$(ls "$NV"/lib/lib$lib.so.* 2>/dev/null | head -1 || true)"
  [ -n "$f" ] && ln -sf "$f" "$LINK/lib$lib.so"
done

# The library first: this compiles candle's CUDA kernels and cudarc's bindings (the same
# RUSTFLAGS for both builds, so the second reuses the first).
export RUSTFLAGS="-L $LINK"
cargo build --release -p elmer --lib --features "$FEATURES"

# Stub driver library from the driver symbols cudarc's and candle's objects reference.
for f in "$CARGO_TARGET_DIR"/release/deps/libcudarc-*.rlib "$CARGO_TARGET_DIR"/release/deps/libcandle_core-*.rlib; do
  nm "$f" 2>/dev/null | awk '$1=="U"{print $2}'
done | grep -E '^cu[A-Z]' | sort -u | awk '{print "void "$1"(void) {}"}' > "$LINK/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/stub.c"
ln -sf "$LINK/libcuda.so" "$LINK/run/libcuda.so.1"

# Every workspace crate with `cuda` (the library and the `elmer` binary of crates/elmer-cli).
cargo build --release --features "$FEATURES" --tests --benches --bins
echo "built into $CARGO_TARGET_DIR/release (stub driver for local runs: $LINK/run)"
