#!/usr/bin/env python3
"""conv2d: tlc vs PyTorch at the same shapes, in the same run.

Builds and runs `examples/conv_bench.rs` (tlc's `Tensor::conv2d`, JSON median ms per shape), times
`torch.nn.functional.conv2d` (same shapes, bias on, 2 threads) in this process, alternating the two
for `--rounds` rounds, and prints a table of medians and the ratio tlc / torch (< 1: tlc faster).

With `--threads 1` it also compares on-CPU time per call (tlc: the example's `cpu_ms`; torch:
`time.thread_time` over as many calls): on a shared, oversubscribed machine wall-clock medians
mostly measure the scheduler, CPU time measures the code.

    /work/venv/bin/python benches/peers/conv_vs_torch.py [--rounds 2] [--reps 11] [--filter dw_]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_tlc(reps, filt, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "run", "--release", "-q", "--example", "conv_bench", "--", "--reps", str(reps)]
    if filt:
        cmd += ["--filter", filt]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def time_torch(spec, reps):
    g = torch.Generator().manual_seed(1)
    n, cin, hw, cout, k = spec["batch"], spec["cin"], spec["hw"], spec["cout"], spec["k"]
    bwd = spec["backward"]
    x = torch.randn(n, cin, hw, hw, generator=g).requires_grad_(bwd)
    w = torch.randn(cout, cin // spec["groups"], k, k, generator=g).requires_grad_(bwd)
    b = torch.randn(cout, generator=g).requires_grad_(bwd)

    def run():
        if bwd:
            y = F.conv2d(x, w, b, stride=spec["stride"], padding=spec["padding"], groups=spec["groups"])
            y.backward(torch.ones_like(y))
        else:
            with torch.no_grad():
                F.conv2d(x, w, b, stride=spec["stride"], padding=spec["padding"], groups=spec["groups"])

    t0 = time.perf_counter()
    warm = 0
    while warm < 3 or (time.perf_counter() - t0 < 0.05 and warm < 50):
        run()
        warm += 1
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(samples)
    cpu_ms = None
    if torch.get_num_threads() == 1:
        calls = min(max(reps, int(300.0 / ms) + 1), 5000)
        c = time.thread_time()
        for _ in range(calls):
            run()
        cpu_ms = (time.thread_time() - c) * 1e3 / calls
    return ms, cpu_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--filter", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "conv_bench"], cwd=ROOT, check=True)

    ours, theirs, specs, isa = {}, {}, {}, None
    for _ in range(a.rounds):
        r = run_tlc(a.reps, a.filter, a.threads)
        isa = r["isa"]
        for spec in r["results"]:
            specs[spec["name"]] = spec
            ours.setdefault(spec["name"], []).append((spec["ms"], spec.get("cpu_ms")))
        for name, spec in specs.items():
            theirs.setdefault(name, []).append(time_torch(spec, a.reps))

    def table(title, pick):
        print(title)
        print(f"| {'shape':<34} | {'tlc':>9} | {'torch':>9} | {'tlc/torch':>9} |")
        print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
        ratios = []
        for name in specs:
            o, t = min(pick(v) for v in ours[name]), min(pick(v) for v in theirs[name])
            ratios.append(o / t)
            print(f"| {name:<34} | {o:9.3f} | {t:9.3f} | {o / t:9.2f} |")
        print(f"geometric mean tlc/torch: {statistics.geometric_mean(ratios):.2f}\n")

    head = f"conv2d, {a.threads} thread(s), tlc isa {isa}, torch {torch.__version__}"
    table(f"{head}: wall-clock median of {a.reps} calls, best of {a.rounds} rounds (ms)", lambda v: v[0])
    if a.threads == 1:
        table(f"{head}: on-CPU time per call, best of {a.rounds} rounds (ms)", lambda v: v[1])


if __name__ == "__main__":
    main()
