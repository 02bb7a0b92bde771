#!/usr/bin/env python3
"""Inference latency at batch 1: `tlc bench` vs ONNX Runtime and PyTorch, in the same run.

Each network is built in PyTorch from torchvision's own modules (tlc's zoo uses torchvision's
parameter names), exported to a temporary directory as a safetensors state_dict (what tlc loads)
and as ONNX (opset 17, static batch-1 shape). Before anything is timed, `tlc infer` (tlc's graph
executor), ONNX Runtime and PyTorch run the same random input and must agree: the worst relative
difference of the logits against ONNX Runtime's (|a - b| / max(|b|, rms(b))) must stay within
`--tol`; it is reported.

Then, per network, the peers alternate for `--rounds` rounds (their order rotating each round):
- ONNX Runtime: CPU provider, intra-op threads = --threads, inter-op 1, all graph optimisations,
  sequential execution;
- PyTorch: plain eager module, torch.set_num_threads(--threads), inference_mode, NCHW;
- tlc: `target/release/tlc bench --threads N --batch 1 --json` (the fused inference plan), built
  first with `cargo build --release`.
Every side runs 5 untimed calls, then times calls until `--iters` or `--seconds` (at least 10), as
`tlc bench` does (the peers' times include Python's call overhead, some 10-20 us per call). The
table reports each side's best-of-rounds median (and that round's p90), the ratios tlc / peer
(< 1: tlc faster) of those, the median and range of tlc / ORT round by round (the sides of a
round run seconds apart, so a slow phase of the machine hits them more alike), each side's process CPU time per call in its lowest round (all threads, so
spinning threads count on every side; tlc's is the difference between its timed run and a
one-call run of the same checkpoint, so loading and compiling drop out) and tlc's peak RSS. On a
shared machine compare ratios, and check the CPU columns before trusting a wall-clock ratio:
oversubscribed cores make PyTorch's OpenMP barriers collapse far more than the others.

The agreement check runs tlc's graph executor (`tlc infer`); the fused plan that `tlc bench`
times cannot emit its output, so its numerics rest on tlc's own plan tests.

Modes:
- zoo (default): ResNet-18 CIFAR form (3x32x32), VGG-16-bn CIFAR form (3x32x32), MobileNetV2 at
  224 and ResNet-18 at 224, full width, with random weights and non-trivial batch-norm running
  statistics; 10 classes for the CIFAR forms and 1000 for the 224 forms (tlc's zoo defaults).
  --width/--in-ch/--image/--classes, when given, override every network's defaults.
- checkpoint: a tlc checkpoint (--checkpoint) and its `tlc collapse` output (--collapsed). The
  checkpoint's tensors are loaded into the matching torchvision module (only the names the
  module's state_dict has, every one of them required; optimizer state and other extra tensors
  are skipped). A TLC-compressed checkpoint works too: the activations TLC removed (identity
  nodes of its stored graph) are removed from the PyTorch module as well, so all three compute
  the same function. ONNX Runtime and PyTorch time that network; `tlc bench` times it and the
  collapsed checkpoint, which must compute the same logits. The architecture comes from the
  checkpoint's header (flags, if given, must agree with it); a plain safetensors export needs
  --model and its options.

    /work/venv/bin/python benches/peers/latency_vs_ort.py [--rounds 3] [--seconds 3]
        [--threads 2] [--models resnet18-cifar mobilenet-v2] [--json]
    /work/venv/bin/python benches/peers/latency_vs_ort.py --mode checkpoint
        --checkpoint TRAINED.safetensors --collapsed COLLAPSED.safetensors [--json]
        [--model resnet18-cifar --width 0.25 --in-ch 1 --image 28 --classes 10]

--profile (zoo mode) adds, per network, the layer-by-layer comparison that explains a ratio:
tlc's per-step medians (`tlc bench --json`; a step is a fused conv/linear + bias + activation
(+ residual)) beside ONNX Runtime's per-node kernel times from its own profiler (one session with
`enable_profiling`, timed as long as a round). Each step is paired with the ORT node of one of
the modules it fuses, found from the node's name scopes; ORT's layout nodes (ReorderInput,
ReorderOutput, Flatten, Reshape) are dropped and nodes no step claims are listed after. The two
split a block alike but not always identically: ORT adds ResNet's residual in the second conv,
tlc in the downsample step.

    /work/venv/bin/python benches/peers/latency_vs_ort.py --models mobilenet-v2 --threads 1
        --profile

A full default zoo run takes about 3 minutes (3 rounds x 3 sides x 4 networks x 3 s of timing,
some 35 s per network with the pauses, warm-ups, export and agreement check), plus the build.
"""
import argparse
import dataclasses
import json
import math
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import VGG, cfgs, make_layers

ROOT = pathlib.Path(__file__).resolve().parents[2]
TLC = ROOT / "target" / "release" / "tlc"
ZOO_ARCHS = ["resnet18-cifar", "vgg16-bn-cifar", "mobilenet-v2", "resnet18"]
ALL_ARCHS = ["resnet18", "resnet34", "resnet18-cifar", "resnet34-cifar", "vgg16-bn",
             "vgg16-bn-cifar", "mobilenet-v2"]
WARMUP = 5


# ---------------------------------------------------------------------------------------------
# The networks, as tlc's zoo builds them (models/src/zoo), from torchvision's modules.

@dataclasses.dataclass
class Spec:
    """tlc's ArchSpec: everything that decides the network's shape."""
    arch: str
    width: float = 1.0
    in_ch: int = 3
    image: int = 0
    classes: int = 0

    @staticmethod
    def of(arch, width=None, in_ch=None, image=None, classes=None):
        """`arch` with tlc's defaults (full width, 3 channels, 32 and 10 classes for the CIFAR
        forms, 224 and 1000 otherwise) under whatever is given."""
        cifar = arch.endswith("-cifar")
        return Spec(arch, 1.0 if width is None else width, 3 if in_ch is None else in_ch,
                    image or (32 if cifar else 224), classes or (10 if cifar else 1000))

    def tlc_flags(self):
        return ["--model", self.arch, "--width", repr(self.width), "--in-ch", str(self.in_ch),
                "--image", str(self.image), "--classes", str(self.classes)]

    def input_shape(self):
        return (1, self.in_ch, self.image, self.image)

    def label(self):
        w = "" if self.width == 1.0 else f" w{self.width:g}"
        return f"{self.arch}{w}"


def scaled(channels, width):
    """tlc's `scaled`: channels * width in f32, rounded half away from zero, at least 1."""
    v = float(np.float32(channels) * np.float32(width))
    return max(1, math.floor(v + 0.5))


class SplitReluBlock(BasicBlock):
    """torchvision's BasicBlock with its one shared `relu` split in two, as in tlc's graph:
    `relu1` after bn1 and `relu2` after the residual add, so TLC can remove either. ReLUs own no
    tensors: the state_dict is torchvision's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + skip)


def resnet(spec):
    cifar = spec.arch.endswith("-cifar")
    blocks = [3, 4, 6, 3] if spec.arch.startswith("resnet34") else [2, 2, 2, 2]
    c = [scaled(64 << i, spec.width) for i in range(4)]
    m = ResNet(SplitReluBlock, blocks, num_classes=spec.classes)
    if cifar:
        m.conv1 = nn.Conv2d(spec.in_ch, c[0], 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    else:
        m.conv1 = nn.Conv2d(spec.in_ch, c[0], 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(c[0])
    m.inplanes = c[0]
    m.layer1 = m._make_layer(SplitReluBlock, c[0], blocks[0])
    m.layer2 = m._make_layer(SplitReluBlock, c[1], blocks[1], stride=2)
    m.layer3 = m._make_layer(SplitReluBlock, c[2], blocks[2], stride=2)
    m.layer4 = m._make_layer(SplitReluBlock, c[3], blocks[3], stride=2)
    m.fc = nn.Linear(c[3], spec.classes)
    return m


def vgg16_bn(spec):
    """Configuration D with every width scaled (the classifier's 4096 too, as tlc does); the CIFAR
    form pools to 1x1 before the classifier, the ImageNet form to 7x7."""
    cfg = [v if v == "M" else scaled(v, spec.width) for v in cfgs["D"]]
    features = make_layers(cfg, batch_norm=True)
    features[0] = nn.Conv2d(spec.in_ch, cfg[0], 3, padding=1)
    m = VGG(features, num_classes=spec.classes, init_weights=False)
    side = 1 if spec.arch.endswith("-cifar") else 7
    last, hidden = scaled(512, spec.width), scaled(4096, spec.width)
    m.avgpool = nn.AdaptiveAvgPool2d((side, side))
    m.classifier = nn.Sequential(
        nn.Linear(last * side * side, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, spec.classes))
    return m


def mobilenet(spec):
    # tlc widens its f32 width to f64 before torchvision's _make_divisible: do the same.
    m = mobilenet_v2(width_mult=float(np.float32(spec.width)), num_classes=spec.classes)
    first = m.features[0][0]
    if spec.in_ch != first.in_channels:
        m.features[0][0] = nn.Conv2d(spec.in_ch, first.out_channels, 3, 2, 1, bias=False)
    return m


def torch_model(spec):
    if spec.arch.startswith("resnet"):
        return resnet(spec)
    if spec.arch.startswith("vgg16-bn"):
        return vgg16_bn(spec)
    if spec.arch == "mobilenet-v2":
        return mobilenet(spec)
    sys.exit(f"unknown --model {spec.arch}; known: {', '.join(ALL_ARCHS)}")


@torch.no_grad()
def randomise(model, seed):
    """Random weights with batch norms whose running statistics and affine parameters are far
    from the identity, so folding them is exercised."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu", generator=g)
        if isinstance(mod, nn.Linear):
            bound = 1.0 / mod.in_features ** 0.5
            mod.weight.uniform_(-bound, bound, generator=g)
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
            mod.bias.normal_(0.0, 0.1, generator=g)
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.uniform_(0.5, 1.5, generator=g)
            mod.bias.normal_(0.0, 0.2, generator=g)
            mod.running_mean.normal_(0.0, 0.2, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.num_batches_tracked.fill_(7)


# ---------------------------------------------------------------------------------------------
# tlc checkpoints.

def header(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def spec_of_checkpoint(path, a):
    """The checkpoint's architecture from its `tlc.arch` header entry, or from the flags for a
    plain export. Returns (spec, whether tlc needs the flags)."""
    stored = header(path).get("tlc.arch")
    flags = {"arch": a.model, "width": a.width, "in_ch": a.in_ch, "image": a.image,
             "classes": a.classes}
    if stored is None:
        if a.model is None:
            sys.exit(f"{path} holds no tlc architecture (a plain export?): give --model and its "
                     "options (--width, --in-ch, --image, --classes)")
        return Spec.of(a.model, a.width, a.in_ch, a.image, a.classes), True
    s = json.loads(stored)
    spec = Spec(s["arch"], s["width"], s["in_ch"], s["image"][0], s["classes"])
    if s["image"][0] != s["image"][1]:
        sys.exit(f"{path}: non-square input {s['image']} is not supported here")
    for key, given in flags.items():
        have = getattr(spec, key)
        same = given is None or (np.float32(given) == np.float32(have) if key == "width"
                                 else given == have)
        if not same:
            sys.exit(f"--{key.replace('_', '-')} {given} disagrees with {path}'s stored "
                     f"architecture ({key} {have}); leave it out for a tlc checkpoint")
    return spec, False


def removed_activations(path):
    """Names of the activations TLC removed: identity nodes of the stored graph."""
    graph = header(path).get("tlc.graph")
    if graph is None:
        return []
    return [n["name"] for n in json.loads(graph)["nodes"] if n["op"]["kind"] == "identity"]


def remove_activations(model, names):
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if not isinstance(getattr(owner, leaf, None), (nn.ReLU, nn.ReLU6)):
            sys.exit(f"the stored graph's identity node `{name}` is not an activation of the "
                     "torchvision module: the graph was rewritten beyond removing activations")
        setattr(owner, leaf, nn.Identity())


def mirror_paddings(model, path):
    """TLC moves the padding of a newly linear conv pair onto its first conv (TLC.md, "Borders");
    give the torchvision module's convs the stored graph's paddings. Returns how many moved."""
    graph = header(path).get("tlc.graph")
    if graph is None:
        return 0
    moved = 0
    for n in json.loads(graph)["nodes"]:
        if n["op"]["kind"] != "conv2d":
            continue
        conv = model.get_submodule(n["name"])
        pad = tuple(n["op"]["padding"])
        if tuple(conv.padding) != pad:
            conv.padding = pad
            moved += 1
    return moved


def load_tlc_tensors(model, path):
    """Load `path`'s tensors into `model`: every name of its state_dict must be there with the
    same shape; the file's other tensors (optimizer state, ...) are skipped. Returns how many."""
    stored = load_file(str(path))
    own = model.state_dict()
    missing = [k for k in own if k not in stored]
    if missing:
        sys.exit(f"{path} lacks {len(missing)} tensors of the torchvision module, e.g. "
                 f"{missing[:3]}: not this architecture?")
    state = {}
    for k, v in own.items():
        if stored[k].shape != v.shape:
            sys.exit(f"{path}: `{k}` has shape {list(stored[k].shape)}, the module's is "
                     f"{list(v.shape)}")
        state[k] = stored[k].to(v.dtype)
    model.load_state_dict(state, strict=True)
    return len(stored) - len(state)


# ---------------------------------------------------------------------------------------------
# Running and timing the three sides.

def rel_err(actual, expected):
    """The worst |a - e| / max(|e|, rms(e)), as tlc's assert_close."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    rms = math.sqrt(float(np.mean(e * e)))
    return float(np.max(np.abs(a - e) / np.maximum(np.abs(e), max(rms, 1e-30))))


def run_tlc(args, threads):
    cmd = [str(TLC), "--threads", str(threads), *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr.strip()}")
    return p.stdout


def tlc_infer(ckpt, flags, x, workdir, threads):
    inp, out = workdir / "input.safetensors", workdir / "output.safetensors"
    save_file({"input": torch.from_numpy(x)}, str(inp))
    run_tlc(["infer", "--checkpoint", str(ckpt), "--input", str(inp), "--output", str(out),
             *flags], threads)
    return load_file(str(out))["output"].numpy()


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Tlc:
    """`tlc bench` on one checkpoint, a fresh process per round."""

    def __init__(self, ckpt, flags, a):
        self.args = ["bench", "--checkpoint", str(ckpt), "--batch", "1", *flags, "--json"]
        self.threads = a.threads
        # One call's worth of loading and compiling, subtracted from every round's CPU time.
        c0 = children_cpu_s()
        run_tlc([*self.args, "--iters", "1", "--warmup", "0"], a.threads)
        self.setup_cpu_s = children_cpu_s() - c0
        self.timing = ["--iters", str(a.iters), "--seconds", str(a.seconds),
                       "--warmup", str(WARMUP)]

    def time(self):
        c0 = children_cpu_s()
        r = json.loads(run_tlc([*self.args, *self.timing], self.threads))
        cpu = children_cpu_s() - c0 - self.setup_cpu_s
        calls = r["runs"] + WARMUP - 1
        return {"median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
                "cpu_ms": max(cpu, 0.0) * 1e3 / calls, "runs": r["runs"],
                "peak_rss_mb": r["peak_rss_mb"], "steps": len(r["steps"]),
                "mmacs": sum(s["macs"] for s in r["steps"]) / 1e6}


def time_calls(fn, iters, seconds):
    """As `tlc bench` times its plan: WARMUP untimed calls, then until `iters` calls or
    `seconds` (at least 10); median, p90 and process CPU time per call."""
    for _ in range(WARMUP):
        fn()
    times = []
    c0, start = time.process_time(), time.perf_counter()
    while len(times) < iters and (len(times) < 10 or time.perf_counter() - start < seconds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    cpu_ms = (time.process_time() - c0) * 1e3 / len(times)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    p90 = times[max(1, math.ceil(n * 0.9)) - 1]
    return {"median_ms": median, "p90_ms": p90, "cpu_ms": cpu_ms, "runs": n}


class Ort:
    def __init__(self, onnx_path, x, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.feed = {"input": x}

    def run(self):
        return self.sess.run(["output"], self.feed)[0]

    def time(self, a):
        return time_calls(self.run, a.iters, a.seconds)


class Torch:
    def __init__(self, model, x):
        self.model, self.x = model, torch.from_numpy(x)

    def run(self):
        with torch.inference_mode():
            return self.model(self.x).numpy()

    def time(self, a):
        return time_calls(self.run, a.iters, a.seconds)


def export_onnx(model, x, path, what):
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of one that needs onnxscript; its
        # output is what ONNX Runtime runs either way.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.from_numpy(x),), str(path), opset_version=17,
                              dynamo=False, input_names=["input"], output_names=["output"],
                              do_constant_folding=True)
        except Exception as e:  # the exporter's message runs to pages: keep its first line
            sys.exit(f"{what}: ONNX export failed: {str(e).strip().splitlines()[0]}")


# ORT nodes that only move data between layouts (NCHW <-> its blocked NCHWc), which tlc's plan has
# no step for.
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Flatten", "Reshape", "Transpose"}


def ort_node_profile(onnx_path, x, a, workdir):
    """ONNX Runtime's per-node kernel time (median ms over the timed calls), in graph order, as
    (node name, op type, ms); the session is timed as `time_calls` times one."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort-profile")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    time_calls(lambda: sess.run(["output"], {"input": x}), a.iters, a.seconds)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    times, ops = {}, {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            times.setdefault(node, []).append(e["dur"] / 1e3)
            ops[node] = e.get("args", {}).get("op_name", "?")
    # The first WARMUP calls warm caches and allocate; their times stay out as in `time_calls`.
    return [(n, ops[n], statistics.median(v[WARMUP:] or v)) for n, v in times.items()]


def module_path(node):
    """The PyTorch module an exported node came from, from its name's scopes: the exporter names
    a node `/features/features.3/conv/conv.2/Conv_output_0` (a Sequential child's scope extends
    its parent's: `features` -> `features.3`), which gives `features.3.conv.2`."""
    path = []
    for scope in node.strip("/").split("/")[:-1]:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def layer_profile(tlc, onnx_path, x, a, workdir):
    """tlc's plan steps, each with the ORT compute node of one of its modules (a step is named
    `conv > bn > relu` after the nodes it fuses; ORT names a fused node after one of them), and
    the ORT nodes no step claimed."""
    steps = json.loads(run_tlc([*tlc.args, *tlc.timing], tlc.threads))["steps"]
    nodes = [{"node": n, "op": op, "ort_ms": ms, "module": module_path(n)}
             for n, op, ms in ort_node_profile(onnx_path, x, a, workdir) if op not in LAYOUT_OPS]
    layers, claimed = [], set()
    for s in steps:
        fused = set(s["name"].split(" > "))
        match = next((i for i, n in enumerate(nodes) if i not in claimed and n["module"] in fused),
                     None)
        layer = {"step": s["name"], "kind": s["kind"], "mmacs": s["macs"] / 1e6,
                 "tlc_ms": s["median_ms"]}
        if match is not None:
            claimed.add(match)
            layer.update(nodes[match])
        layers.append(layer)
    return {"layers": layers,
            "ort_unmatched": [n for i, n in enumerate(nodes) if i not in claimed]}


def print_layer_profile(model, prof):
    print(f"\n{model}: per layer, median ms (ORT's node of the same module; its profiler's "
          "kernel time)")
    print(f"| {'#':>3} | {'tlc step':<44} | {'kind':<28} | {'MMACs':>7} | {'tlc':>7} | "
          f"{'ORT':>7} | {'tlc/ORT':>7} | {'tlc-ORT':>8} |")
    print(f"|{'-' * 5}|{'-' * 46}|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for i, l in enumerate(prof["layers"]):
        if "ort_ms" in l:
            ratio = f"{l['tlc_ms'] / l['ort_ms']:7.2f}" if l["ort_ms"] > 0 else f"{'-':>7}"
            ort_cols = f"{l['ort_ms']:7.4f} | {ratio} | {l['tlc_ms'] - l['ort_ms']:+8.4f}"
        else:
            ort_cols = f"{'-':>7} | {'-':>7} | {'-':>8}"
        print(f"| {i + 1:>3} | {l['step'][:44]:<44} | {l['kind'][:28]:<28} | {l['mmacs']:7.2f} | "
              f"{l['tlc_ms']:7.4f} | {ort_cols} |")
    for n in prof["ort_unmatched"]:
        print(f"|     | ORT only: {n['node'][:34]:<34} | {n['op'][:28]:<28} | {'':>7} | {'':>7} | "
              f"{n['ort_ms']:7.4f} | {'':>7} | {'':>8} |")
    t = sum(l["tlc_ms"] for l in prof["layers"])
    o = sum(l.get("ort_ms", 0.0) for l in prof["layers"]) + sum(
        n["ort_ms"] for n in prof["ort_unmatched"])
    print(f"sum of layers: tlc {t:.3f} ms, ORT {o:.3f} ms ({t / o:.2f})")


def rounds(sides, a):
    """Time every side `a.rounds` times, alternating (the order rotates each round); per side the
    best round by median."""
    results = {name: [] for name in sides}
    names = list(sides)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            time.sleep(a.settle)  # let the previous side's spinning threads park
            results[name].append(sides[name]())
        line = "  ".join(f"{n} {results[n][-1]['median_ms']:.3f}" for n in names)
        print(f"  round {r + 1}/{a.rounds}: median ms  {line}", file=sys.stderr, flush=True)
    best = {}
    for name, rs in results.items():
        b = dict(min(rs, key=lambda v: v["median_ms"]))
        b["cpu_ms"] = min(v["cpu_ms"] for v in rs)
        b["round_medians_ms"] = [v["median_ms"] for v in rs]
        best[name] = b
    return best


def round_ratios(a, b):
    """Side a's median over side b's, round by round (the two timed seconds apart, so a slow
    phase of the shared machine hits both more alike than across rounds)."""
    return [x / y for x, y in zip(a["round_medians_ms"], b["round_medians_ms"])]


def check_agreement(what, outputs, reference, tol):
    errs = {name: rel_err(out, outputs[reference]) for name, out in outputs.items()
            if name != reference}
    for name, e in errs.items():
        if not e <= tol:
            sys.exit(f"{what}: {name} differs from {reference} by {e:.2e} (relative, > --tol "
                     f"{tol:g}); not timing networks that compute different things")
    return errs


# ---------------------------------------------------------------------------------------------
# The modes.

def prepare(model, spec, workdir, seed):
    """The network in eval mode, a random input and the ONNX export."""
    model.eval()
    x = np.random.default_rng(seed).standard_normal(spec.input_shape(), dtype=np.float32)
    onnx_path = workdir / "model.onnx"
    export_onnx(model, x, onnx_path, spec.label())
    return x, onnx_path


def zoo_row(arch, a, workdir):
    spec = Spec.of(arch, a.width, a.in_ch, a.image, a.classes)
    print(f"{spec.label()} {spec.in_ch}x{spec.image}x{spec.image}, {spec.classes} classes: "
          "exporting", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    model = torch_model(spec)
    randomise(model, seed=1)
    weights = workdir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    x, onnx_path = prepare(model, spec, workdir, seed=2)
    ortp, torchp = Ort(onnx_path, x, a.threads), Torch(model, x)
    flags = spec.tlc_flags()
    errs = check_agreement(spec.label(), {
        "ort": ortp.run(), "torch": torchp.run(),
        "tlc": tlc_infer(weights, flags, x, workdir, a.threads)}, "ort", a.tol)
    tlc = Tlc(weights, flags, a)
    best = rounds({"ort": lambda: ortp.time(a), "torch": lambda: torchp.time(a),
                   "tlc": tlc.time}, a)
    prof = layer_profile(tlc, onnx_path, x, a, workdir) if a.profile else None
    return {"model": spec.label(), "layers": prof, "arch": spec.arch, "width": spec.width,
            "input": f"{spec.in_ch}x{spec.image}x{spec.image}", "classes": spec.classes,
            "rel_diff_vs_ort": errs, **best,
            "tlc_over_ort": best["tlc"]["median_ms"] / best["ort"]["median_ms"],
            "tlc_over_ort_by_round": round_ratios(best["tlc"], best["ort"]),
            "tlc_over_torch": best["tlc"]["median_ms"] / best["torch"]["median_ms"]}


def checkpoint_row(a, workdir):
    for p, flag in ((a.checkpoint, "--checkpoint"), (a.collapsed, "--collapsed")):
        if p is None or not p.is_file():
            sys.exit(f"checkpoint mode needs {flag} FILE (got {p})")
    spec, needs_flags = spec_of_checkpoint(a.checkpoint, a)
    flags = spec.tlc_flags() if needs_flags else []
    model = torch_model(spec)
    removed = removed_activations(a.checkpoint)
    remove_activations(model, removed)
    moved = mirror_paddings(model, a.checkpoint)
    skipped = load_tlc_tensors(model, a.checkpoint)
    print(f"{a.checkpoint}: {spec.label()} {spec.in_ch}x{spec.image}x{spec.image}, "
          f"{spec.classes} classes; {len(removed)} activations removed by TLC, {moved} convs' "
          f"padding moved; {skipped} extra tensors skipped", file=sys.stderr, flush=True)
    x, onnx_path = prepare(model, spec, workdir, seed=2)
    ortp, torchp = Ort(onnx_path, x, a.threads), Torch(model, x)
    logits = tlc_infer(a.checkpoint, flags, x, workdir, a.threads)
    errs = check_agreement(str(a.checkpoint), {
        "ort": ortp.run(), "torch": torchp.run(), "tlc": logits}, "ort", a.tol)
    collapsed_err = check_agreement("the collapsed checkpoint", {
        "uncompressed": logits,
        "collapsed": tlc_infer(a.collapsed, [], x, workdir, a.threads)}, "uncompressed", a.tol)
    tlc, tlc_c = Tlc(a.checkpoint, flags, a), Tlc(a.collapsed, [], a)
    best = rounds({"ort": lambda: ortp.time(a), "torch": lambda: torchp.time(a),
                   "tlc": tlc.time, "tlc_collapsed": tlc_c.time}, a)
    ms = {k: v["median_ms"] for k, v in best.items()}
    return {"model": spec.label(), "arch": spec.arch, "width": spec.width,
            "input": f"{spec.in_ch}x{spec.image}x{spec.image}", "classes": spec.classes,
            "checkpoint": str(a.checkpoint), "collapsed_checkpoint": str(a.collapsed),
            "activations_removed": len(removed),
            "rel_diff_vs_ort": errs, "rel_diff_collapsed": collapsed_err["collapsed"], **best,
            "tlc_over_ort": ms["tlc"] / ms["ort"], "tlc_over_torch": ms["tlc"] / ms["torch"],
            "collapsed_over_ort": ms["tlc_collapsed"] / ms["ort"],
            "collapsed_over_torch": ms["tlc_collapsed"] / ms["torch"],
            "collapse_speedup": ms["tlc"] / ms["tlc_collapsed"]}


# ---------------------------------------------------------------------------------------------
# Output.

def print_zoo(rows, head):
    print(head)
    print("median ms (best of rounds); ratio tlc/peer < 1: tlc faster (of the best rounds; "
          "by round: the median and range of the per-round ratios); CPU ms per call (all "
          "threads); tlc peak RSS; worst relative difference of the logits vs ORT")
    print(f"| {'model':<20} | {'input':<9} | {'ORT':>8} | {'torch':>8} | {'tlc':>8} | "
          f"{'tlc/ORT':>7} | {'tlc/ORT by round':>18} | {'tlc/torch':>9} | "
          f"{'CPU ORT/torch/tlc':>20} | {'RSS MB':>6} | {'diff tlc, torch':>16} |")
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 20}|"
          f"{'-' * 11}|{'-' * 22}|{'-' * 8}|{'-' * 18}|")
    for r in rows:
        cpu = "/".join(f"{r[k]['cpu_ms']:.1f}" for k in ("ort", "torch", "tlc"))
        rss = r["tlc"]["peak_rss_mb"]
        d = r["rel_diff_vs_ort"]
        rr = sorted(r["tlc_over_ort_by_round"])
        by_round = f"{statistics.median(rr):.2f} ({rr[0]:.2f}-{rr[-1]:.2f})"
        print(f"| {r['model']:<20} | {r['input']:<9} | {r['ort']['median_ms']:8.3f} | "
              f"{r['torch']['median_ms']:8.3f} | {r['tlc']['median_ms']:8.3f} | "
              f"{r['tlc_over_ort']:7.2f} | {by_round:>18} | {r['tlc_over_torch']:9.2f} | "
              f"{cpu:>20} | "
              f"{'?' if rss is None else f'{rss:.0f}':>6} | "
              f"{d['tlc']:7.1e}, {d['torch']:7.1e} |")


def print_checkpoint(r, head):
    print(head)
    print(f"{r['checkpoint']}: {r['model']} {r['input']}, {r['classes']} classes, "
          f"{r['activations_removed']} activations removed by TLC")
    print(f"collapsed: {r['collapsed_checkpoint']} (logits differ by {r['rel_diff_collapsed']:.1e}"
          f"; tlc vs ORT {r['rel_diff_vs_ort']['tlc']:.1e}, torch vs ORT "
          f"{r['rel_diff_vs_ort']['torch']:.1e})")
    print(f"| {'side':<24} | {'median ms':>9} | {'p90 ms':>8} | {'CPU ms':>7} | {'steps':>5} | "
          f"{'MMACs':>8} | {'RSS MB':>6} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 10}|{'-' * 9}|{'-' * 7}|{'-' * 10}|{'-' * 8}|")
    names = {"ort": "ONNX Runtime", "torch": "PyTorch eager", "tlc": "tlc",
             "tlc_collapsed": "tlc, collapsed"}
    for key, name in names.items():
        s = r[key]
        steps = f"{s['steps']}" if "steps" in s else ""
        mmacs = f"{s['mmacs']:.2f}" if "mmacs" in s else ""
        rss = f"{s['peak_rss_mb']:.0f}" if s.get("peak_rss_mb") is not None else ""
        print(f"| {name:<24} | {s['median_ms']:9.3f} | {s['p90_ms']:8.3f} | {s['cpu_ms']:7.2f} | "
              f"{steps:>5} | {mmacs:>8} | {rss:>6} |")
    print(f"collapse speed-up in tlc: {r['collapse_speedup']:.2f}x; ratios (< 1: tlc faster): "
          f"tlc/ORT {r['tlc_over_ort']:.2f}, tlc/torch {r['tlc_over_torch']:.2f}, "
          f"collapsed tlc/ORT {r['collapsed_over_ort']:.2f}, "
          f"collapsed tlc/torch {r['collapsed_over_torch']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["zoo", "checkpoint"],
                    help="default: checkpoint with --checkpoint, else zoo")
    ap.add_argument("--models", nargs="+", choices=ALL_ARCHS, default=ZOO_ARCHS, metavar="ARCH",
                    help=f"zoo mode: the networks (default: {' '.join(ZOO_ARCHS)}; known: "
                    f"{', '.join(ALL_ARCHS)})")
    ap.add_argument("--checkpoint", type=pathlib.Path, help="checkpoint mode: the tlc checkpoint")
    ap.add_argument("--collapsed", type=pathlib.Path, help="checkpoint mode: its collapsed form")
    ap.add_argument("--model", choices=ALL_ARCHS, metavar="ARCH",
                    help="checkpoint mode, plain export: the architecture")
    ap.add_argument("--width", type=float, help="channel width multiplier (as tlc's --width)")
    ap.add_argument("--in-ch", type=int, help="input channels")
    ap.add_argument("--image", type=int, help="input height and width")
    ap.add_argument("--classes", type=int, help="number of classes")
    ap.add_argument("--threads", type=int, default=2, help="threads of every side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per side per round")
    ap.add_argument("--iters", type=int, default=1000,
                    help="timed calls at most per side per round")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds of idle before each side's timing")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="largest relative difference of the logits the sides may show")
    ap.add_argument("--profile", action="store_true",
                    help="zoo mode: also compare tlc's plan steps with ORT's nodes, layer by layer")
    ap.add_argument("--json", action="store_true", help="print one line of JSON instead of tables")
    ap.add_argument("--no-build", action="store_true", help="skip `cargo build --release`")
    a = ap.parse_args()
    a.mode = a.mode or ("checkpoint" if a.checkpoint else "zoo")
    if a.rounds < 1 or a.iters < 1 or a.threads < 1:
        sys.exit("--rounds, --iters and --threads must be at least 1")

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    head = (f"batch 1, {a.threads} threads, {a.rounds} rounds of up to {a.seconds:g} s per side; "
            f"onnxruntime {ort.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="tlc-latency-") as tmp:
        workdir = pathlib.Path(tmp)
        if a.mode == "zoo":
            rows = [zoo_row(arch, a, workdir) for arch in a.models]
        else:
            rows = [checkpoint_row(a, workdir)]
    if a.json:
        print(json.dumps({"mode": a.mode, "threads": a.threads, "rounds": a.rounds,
                          "seconds": a.seconds, "onnxruntime": ort.__version__,
                          "torch": torch.__version__, "rows": rows}))
    elif a.mode == "zoo":
        print_zoo(rows, head)
        for r in rows:
            if r["layers"]:
                print_layer_profile(r["model"], r["layers"])
    else:
        print_checkpoint(rows[0], head)


if __name__ == "__main__":
    main()
