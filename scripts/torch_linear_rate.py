#!/usr/bin/env python3
"""PyTorch's own f32 dense-layer rate (oneDNN / MKL) at the BART-base fc1 shape
[rows x 768] x [768 x 3072], on 1 and 2 threads: GFLOP/s, median of 5 timed loops of 20 calls.
The README compares it with `cargo bench --bench kernels -- "fc1_(32|128|512)rows_packed"`.
Needs torch (pip install torch); not used by the tests or CI."""
import time

import torch

for threads in (1, 2):
    torch.set_num_threads(threads)
    for rows in (32, 128, 512):
        x = torch.randn(rows, 768)
        w = torch.randn(3072, 768)
        for _ in range(5):
            torch.nn.functional.linear(x, w)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20):
                torch.nn.functional.linear(x, w)
            times.append((time.perf_counter() - t) / 20)
        times.sort()
        print(f"threads {threads} fc1 {rows} rows: {2 * rows * 768 * 3072 / times[2] / 1e9:.0f} GFLOP/s (median of 5)")
