#!/usr/bin/env python3
"""Training throughput: tlc vs PyTorch on the same network and step, in the same run.

The network is ResNet-18 in its CIFAR form (3x3/1 stem, no max-pool) at width 0.25 (16/32/64/128
channels), 1x28x28 input, 10 classes: torchvision's resnet18 modified the same way tlc's zoo
builds `resnet18-cifar`. One step = train-mode forward, cross-entropy, backward, SGD (momentum 0.9,
weight decay 5e-4), on random data at batch `--batch`.

tlc runs as `examples/train_step.rs` (built first with `cargo build --release`), PyTorch in this
process with `torch.set_num_threads(--threads)`; the two alternate for `--rounds` rounds, and the
table reports each side's best-of-rounds median images/s and the ratio tlc / torch (> 1: tlc
faster), plus each side's process CPU time per step. The machine is shared: compare the ratio,
not the absolute numbers; when other work oversubscribes the cores, OpenMP's barriers make torch's
wall time collapse far more than tlc's, so only rounds on a quiet machine compare fairly (the CPU
times help tell).

    /work/venv/bin/python benches/peers/train_vs_torch.py [--rounds 3] [--steps 10] [--profile]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torch_model(width=0.25, classes=10, in_ch=1):
    """torchvision's resnet18 with widths scaled, the CIFAR stem and `in_ch` input channels: its own
    ResNet/BasicBlock classes and `_make_layer`, as `resnet18()` has no width option."""
    base = int(round(64 * width))

    class Narrow(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes = base
            self.dilation = 1
            self.groups = 1
            self.base_width = 64
            self.conv1 = nn.Conv2d(in_ch, base, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            self.layer1 = self._make_layer(BasicBlock, base, 2)
            self.layer2 = self._make_layer(BasicBlock, base * 2, 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, base * 4, 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, base * 8, 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(base * 8, classes)
            for mod in self.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

    return Narrow()


def time_torch(batch, steps, warmup):
    torch.manual_seed(0)
    model = torch_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    c0 = time.process_time()
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    cpu_ms = (time.process_time() - c0) * 1e3 / steps
    return batch / statistics.median(times), cpu_ms


def torch_profile(batch, steps):
    model = torch_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    for _ in range(2):
        F.cross_entropy(model(x), y).backward()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def run_tlc(batch, steps, warmup, threads, profile):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(ROOT / "target/release/examples/train_step"), "--batch", str(batch),
           "--steps", str(steps), "--warmup", str(warmup)]
    if profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print tlc's per-op profile and torch's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "train_step"], cwd=ROOT, check=True)

    ours, theirs, cpu_ours, cpu_theirs = [], [], [], []
    last = None
    for r in range(a.rounds):
        last = run_tlc(a.batch, a.steps, a.warmup, a.threads, a.profile and r == a.rounds - 1)
        ours.append(last["img_per_s"])
        cpu_ours.append(last["cpu_ms"])
        ips, cpu = time_torch(a.batch, a.steps, a.warmup)
        theirs.append(ips)
        cpu_theirs.append(cpu)
        print(f"round {r + 1}: tlc {ours[-1]:7.1f} img/s   torch {theirs[-1]:7.1f} img/s   "
              f"ratio {ours[-1] / theirs[-1]:.2f}   (CPU ms/step: tlc {cpu_ours[-1]:.0f}, "
              f"torch {cpu_theirs[-1]:.0f})", flush=True)

    o, t = max(ours), max(theirs)
    per_round = [a_ / b_ for a_, b_ in zip(ours, theirs)]
    print(f"\nresnet18-cifar w0.25 1x28x28, batch {a.batch}, {a.threads} threads, torch {torch.__version__}")
    print(f"tlc   best {o:7.1f} img/s (medians {', '.join(f'{v:.0f}' for v in ours)})")
    print(f"torch best {t:7.1f} img/s (medians {', '.join(f'{v:.0f}' for v in theirs)})")
    print(f"ratio tlc/torch: best/best {o / t:.2f}, per-round median {statistics.median(per_round):.2f}")
    co, ct = min(cpu_ours), min(cpu_theirs)
    print(f"CPU ms per step (all threads, best round): tlc {co:.0f}, torch {ct:.0f}: "
          f"CPU-time ratio torch/tlc {ct / co:.2f} (spinning threads count on both sides)")

    if a.profile and last and "profile" in last:
        print("\ntlc per-op wall time per step (ms):")
        rows = sorted(last["profile"], key=lambda r: -r["ms_per_step"])
        for r in rows:
            print(f"  {r['phase']:<9} {r['kind']:<22} {r['ms_per_step']:9.2f}  x{r['calls_per_step']}")
        print("\ntorch profile:")
        torch_profile(a.batch, 3)


if __name__ == "__main__":
    main()
