#!/usr/bin/env python3
"""Scaled-dot-product attention, tlc vs PyTorch, in one run on the same machine.

Batch 1, 12 heads, head dim 32 (d_model 384, as all-MiniLM-L6-v2), L = 128 and 512: the forward
under no_grad, and the forward with autograd plus the backward to q, k, v. PyTorch runs
torch.nn.functional.scaled_dot_product_attention with `--threads` intra-op threads; tlc runs the
example binary `attention_timing` (Tensor::scaled_dot_product_attention) with
RAYON_NUM_THREADS set to the same. Prints medians and the ratio tlc / torch (< 1: tlc faster).

    /work/venv/bin/python benches/peers/attention_vs_torch.py [--threads 2] [--lens 128 512]
"""
import argparse
import os
import pathlib
import subprocess
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]


def median_ms(fn, iters):
    for _ in range(max(1, iters // 10)):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def iters_for(length):
    return max(20, min(400, 200 * 128 * 128 // (length * length)))


def torch_ms(length, bwd):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, length, 32, generator=g).requires_grad_(bwd) for _ in range(3))
    if bwd:
        def run():
            out = F.scaled_dot_product_attention(q, k, v)
            out.backward(torch.ones_like(out))
        return median_ms(run, iters_for(length))
    with torch.no_grad():
        return median_ms(lambda: F.scaled_dot_product_attention(q, k, v), iters_for(length))


def tlc_ms(lens, bwd, threads):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "attention_timing"],
                   cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "attention_timing"
    args = [str(exe), *map(str, lens)] + (["bwd"] if bwd else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        _, length, _, ms = line.split()
        res[int(length)] = float(ms)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lens", type=int, nargs="+", default=[128, 512])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch 1, 12 heads, head dim 32")
    print(f"{'pass':<9} {'L':>5} {'torch ms':>10} {'tlc ms':>10} {'tlc/torch':>10}")
    for bwd in (False, True):
        ours = tlc_ms(a.lens, bwd, a.threads)
        for length in a.lens:
            theirs = torch_ms(length, bwd)
            name = "fwd+bwd" if bwd else "forward"
            print(f"{name:<9} {length:>5} {theirs:>10.3f} {ours[length]:>10.3f} "
                  f"{ours[length] / theirs:>10.2f}")


if __name__ == "__main__":
    main()
