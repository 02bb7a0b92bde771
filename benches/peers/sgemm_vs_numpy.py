"""SGEMM GFLOP/s: numpy (OpenBLAS) against tlc, side by side in one run.

Usage (from the repository root):
    /work/venv/bin/python benches/peers/sgemm_vs_numpy.py [--threads 2] [--rounds 5] [--secs 0.3]
        [--cpu] [--packed] [--shapes 64x64x64,1x512x4096,...]

Builds `examples/sgemm_gflops.rs` (cargo build --release --example sgemm_gflops), then runs
`rounds` rounds; each round times numpy on every shape and then our engine (the example binary)
on every shape, so both see the same machine noise. Reports, per shape (MxKxN), the median over
rounds of each side's GFLOP/s and the ratio tlc / numpy.

--threads sets OPENBLAS_NUM_THREADS and RAYON_NUM_THREADS alike. --cpu (only with --threads 1)
times on-CPU time of the calling thread on both sides instead of wall time: useful on a machine
shared with other work. --packed times tlc's `gemm_packed` with B packed ahead (the inference
path; numpy has no equivalent, so it keeps timing plain sgemm).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_SHAPES = "64x64x64,128x128x128,256x256x256,512x512x512,1024x1024x1024," \
                 "1x512x4096,1x384x1536,8x512x512,128x384x1536"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--secs", type=float, default=0.3, help="seconds per shape per round")
    ap.add_argument("--cpu", action="store_true", help="on-CPU time (single thread only)")
    ap.add_argument("--packed", action="store_true", help="tlc uses gemm_packed")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    args = ap.parse_args()
    if args.cpu and args.threads != 1:
        sys.exit("--cpu needs --threads 1 (on-CPU time of one thread)")

    # numpy reads OPENBLAS_NUM_THREADS at import time.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run(["cargo", "build", "--release", "--example", "sgemm_gflops"], cwd=root,
                   check=True)
    exe = os.path.join(root, "target", "release", "examples", "sgemm_gflops")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    clock = time.thread_time if args.cpu else time.perf_counter

    def numpy_gflops(m, k, n):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        for _ in range(3):
            np.matmul(a, b, out=c)
        t = clock()
        np.matmul(a, b, out=c)
        reps = max(1, int(0.01 / max(clock() - t, 1e-7)))
        samples, start = [], time.perf_counter()
        while len(samples) < 5 or time.perf_counter() - start < args.secs:
            t = clock()
            for _ in range(reps):
                np.matmul(a, b, out=c)
            samples.append((clock() - t) / reps)
        return 2.0 * m * n * k / statistics.median(samples) / 1e9

    ours_cmd = [exe, "--secs", str(args.secs)] + (["--cpu"] if args.cpu else []) \
        + (["--packed"] if args.packed else []) + ["x".join(map(str, s)) for s in shapes]
    np_runs = {s: [] for s in shapes}
    our_runs = {s: [] for s in shapes}
    isa = "?"
    for r in range(args.rounds):
        for s in shapes:
            np_runs[s].append(numpy_gflops(*s))
        out = json.loads(subprocess.run(ours_cmd, check=True, capture_output=True,
                                        text=True).stdout)
        isa = out["isa"]
        for row in out["results"]:
            our_runs[(row["m"], row["k"], row["n"])].append(row["gflops"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    mode = "on-CPU time" if args.cpu else "wall time"
    print(f"sgemm, {args.threads} thread(s), {mode}, median of {args.rounds} rounds; "
          f"tlc isa {isa}{', gemm_packed' if args.packed else ''}; "
          f"numpy {np.__version__} (OpenBLAS)")
    print(f"{'MxKxN':>16} {'numpy GFLOP/s':>14} {'tlc GFLOP/s':>12} {'tlc/numpy':>10}")
    for s in shapes:
        npg, ours = statistics.median(np_runs[s]), statistics.median(our_runs[s])
        print(f"{'x'.join(map(str, s)):>16} {npg:14.1f} {ours:12.1f} {ours / npg:10.2f}")


if __name__ == "__main__":
    main()
