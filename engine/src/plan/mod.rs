//! The inference plan: a model compiled for one batch size into a flat list of fused steps over a
//! buffer arena planned at compile time.
//!
//! [`Plan::compile`] folds batch-norms into the layers before them and drops pass-through nodes
//! (on a copy), infers every shape for the batch, then emits one step per remaining node, fusing:
//! - a convolution or linear layer with its bias, the activation that is its sole reader, and a
//!   residual add that is its sole reader when the add's other operand is already computed (then
//!   the activation after the add fuses too): all applied by the kernel's store epilogue, in one
//!   pass over the output;
//! - flatten as a zero-copy alias of its input.
//!
//! Pools, and adds, activations and batch-norms that cannot fuse (an evaluation-mode scale-shift),
//! are steps of their own. Convolution weights stay in the layout the kernel reads
//! (`[out, in/groups, kh, kw]`); linear weights are pre-packed once
//! ([`PackedB`](tlc_kernels::gemm::PackedB)), except a one-row layer with at least
//! `GEMV_ROWS_MIN_IN` (1024) inputs, which keeps `W`'s rows for the matrix-vector kernel's dot
//! products: on the Zen 3 machine a 4096x4096 product ran 3.1-3.4 ms that way against 4.2-4.4
//! over the panels on one thread, 1.4-2.0 against 2.0-2.9 on two (on the Zen 4 machine of the
//! first sessions the panels had won on one thread, 2.65 against 3.5 ms).
//!
//! Weight storage ([`PlanOptions::weights`]): f32, or f16 / bf16 for half the weight memory with
//! f32 arithmetic. 16-bit weights are rounded once at compile time, after batch-norm folding, and
//! decoded by the kernels where they read weights anyway, into per-thread scratch: the
//! convolutions' GEMMs decode L2-sized row-and-depth blocks of the weight matrix, the shifted
//! path while it stages its weights, the depthwise kernel per channel; a batch-1 linear layer
//! decodes `W`'s rows in L1-sized pieces inside its dot products, a batched one decodes blocks
//! of `W` ([`linear_half`]). The weights then cross memory at two bytes a value, but a layer
//! that read its f32 weights in place pays one pass over each decoded block in cache. f16
//! rounds each weight by at most 2^-11 relatively (logits of the zoo models move by about 5e-4
//! of their largest), bf16 by 2^-8 (about 3e-3); an f16 weight beyond ±65504 is a compile
//! error.
//!
//! Layout ([`PlanOptions::channels_last`]): a network with depthwise convolutions (the MobileNets)
//! runs channels-last where the CPU has the SIMD tiles for it: every convolution reads and
//! writes `[N][H][W][C]` ([`conv::channels_last`]; step kinds end in ` cl`), so a 1x1 conv is a
//! GEMM over contiguous pixel rows and a depthwise conv loads a pixel's channels as one vector.
//! The image stem reads the NCHW image in place and writes channels-last (` nchw>cl`) when only
//! convs read its output; a depthwise conv runs fused with the 1x1 projection reading it (when
//! that has no more output channels than pixels) and, when the expanded activation passes 1 MB,
//! with the expansion feeding it ([`Kernel::BlockCl`]): MobileNetV2's fused blocks paired
//! 0.82-0.96 of their separate steps' time on two threads (BENCHMARKS.md, session 15). At batch
//! 1 an image stem whose output only a depthwise conv reads runs in that conv's block too, so the
//! arena never holds its output (MobileNetV2 at 224: 2.60 -> 1.59 MB, as fast). Each
//! value carries its layout; a step that needs the other one (a pool or flatten reading
//! channels-last, an NCHW stem's output) gets a step moving the value first (`to_channels_last`
//! / `to_nchw`, once per value), and element-wise steps keep their operands' layout.
//! MobileNetV2 at 224 on one thread: 1x1 convs 0.6-0.95x their NCHW time (sessions 12-13).
//! Other networks run NCHW, except two kinds of one-group convs, which run channels-last with
//! their activations moved for them: those that stream their weights (at most 8 output pixels
//! over the batch, 1 MB of weights or more: `streams_weights`; VGG-16-bn CIFAR's 2x2 convs 0.24
//! -> 0.18 ms) and the strided ones (`strided_channels_last`: ResNet-18's stride-2 3x3 convs
//! 0.49-0.61 -> 0.27-0.30 ms at 224; session 16).
//!
//! Buffers: every value (a step's output, or the input) lives in one physical buffer chosen by
//! liveness (interval colouring: a buffer is reused once its last reader has run), allocated at
//! compile time. [`Plan::run`] takes a step's output buffer out of the arena, computes into it
//! and puts it back, so the plan itself allocates nothing per inference. The kernels keep their
//! scratch (GEMM packing, conv tiles and staging, pooling rows, decoded weights) per thread,
//! grown to a process-wide high-water mark; after its first run the plan grows every pool
//! thread's scratch to those marks (`tlc_kernels::scratch::reserve_on_pool`), so every later run
//! allocates nothing at all, whichever thread rayon hands a task (`tests/plan_alloc.rs` counts
//! every allocation of every run on 1 and 2 threads). [`Plan::run`] hands each inference to the
//! pool once when it has more than one thread (from outside the pool each parallel kernel would
//! reach it through rayon's injector queue, which also allocates a block every 63 jobs); with one
//! thread nothing forks and the inference runs on the caller, whose scratch the first run grew.
//! Staging scratch is reserved on the calling thread only, so run a plan from one thread.
//! Thread thresholds are the kernels' own (batch-1 layers below them stay on the calling thread):
//! nothing here decides parallelism.

use crate::error::{Error, Result};
use crate::graph::{Graph, Model, NodeId, Op};
use crate::passes::{fold_batch_norms, remove_passthrough};
use std::collections::HashMap;
use tlc_kernels::conv::channels_last::{self, layout};
use tlc_kernels::conv::expand_dw::{ExpandDw, Stage};
use tlc_kernels::conv::{self, Conv2dShape, ConvEpilogueOp};
use tlc_kernels::elementwise::{self, BinaryOp};
use tlc_kernels::gemm::{
    gemm, gemm_packed, linear_half, pack_b, EpilogueOp, MatMut, MatRef, PackedB, PackedPanels,
    PackedRows,
};
use tlc_kernels::half_weights::{HalfKind, HalfVec, Weights};
use tlc_kernels::pool::{self, PoolDims, Window2d};
use tlc_kernels::{activation, Activation};
pub use weights::WeightDtype;
use weights::{ConvWeight, LinearWeight};

mod trim;
mod weights;

/// Index of a value (a step's output or the input) in the plan.
type ValueId = usize;

/// Where a value lives: a physical buffer and the value's length in it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    buf: usize,
    len: usize,
}

/// How to compile a plan ([`Plan::compile_with`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanOptions {
    /// Storage of the conv and linear weights (biases and scales stay f32).
    pub weights: WeightDtype,
    /// Per-sample input shape, when not the one the graph was built for (a convolutional network
    /// runs at other resolutions when every layer still fits).
    pub input_shape: Option<Vec<usize>>,
    /// Run each 1x1 expansion whose output is large (at least 128 K floats per sample) together
    /// with the 3x3 depthwise conv that reads it, as one step that never stores the expanded
    /// activation ([`conv::expand_dw`]): MobileNetV2 at 224 needs a 3.9 MB activation arena
    /// instead of 8.4. Off by default: on the Zen 3 machine of BENCHMARKS.md it ran as fast as the
    /// separate steps on two threads and ~10 % slower on one (interleaved `tlc bench`). This is
    /// the NCHW kernel; a channels-last plan fuses the largest pairs on its own
    /// ([`channels_last::block`], `TLC_CL_EXPAND_DW=0` to keep them apart).
    pub fuse_expand_dw: bool,
    /// Activation layout: `None` runs a network with depthwise convolutions (the MobileNets)
    /// channels-last where this CPU has the SIMD tiles for it ([`conv::channels_last::fast`]),
    /// everything else NCHW; `Some(false)` keeps NCHW throughout, `Some(true)` runs every
    /// convolution it can channels-last on any CPU. With f16/bf16 weights the plan stays NCHW, and
    /// so does an automatic choice with [`PlanOptions::fuse_expand_dw`] (an NCHW kernel).
    pub channels_last: Option<bool>,
}

/// How a 4-D value is laid out in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Nchw,
    /// `[N][H][W][C]` ([`conv::channels_last`]).
    ChannelsLast,
}

enum Kernel {
    /// Inputs: `[x]` or `[x, residual]`.
    Conv {
        shape: Conv2dShape,
        weight: ConvWeight,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
    },
    /// Inputs: `[x]` or `[x, residual]`.
    Linear {
        rows: usize,
        in_f: usize,
        out_f: usize,
        weight: LinearWeight,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
    },
    /// A 1x1 expansion and the 3x3 depthwise conv that reads it, in one pass
    /// ([`conv::expand_dw`]). Input: `[x]`.
    ExpandDw(conv::expand_dw::ExpandDw),
    /// A channels-last depthwise conv with the 1x1 expansion feeding it and the 1x1 projection
    /// reading it, either optional ([`channels_last::block`]). Input: `[x]` or `[x, residual]`.
    BlockCl(Box<channels_last::block::Block>),
    MaxPool {
        dims: PoolDims,
        win: Window2d,
    },
    AvgPool {
        dims: PoolDims,
        win: Window2d,
    },
    AdaptiveAvgPool {
        dims: PoolDims,
    },
    /// Sum of every input.
    Add,
    /// An `[n][c][plane]` value moved to `[n][plane][c]` (`to_channels_last`) or back.
    Relayout {
        to_channels_last: bool,
        n: usize,
        c: usize,
        plane: usize,
    },
    /// The mean of each channel of a channels-last image, into `[n][c]`.
    GlobalAvgPoolCl {
        n: usize,
        plane: usize,
        c: usize,
    },
    Act(Activation),
    /// `y = x * scale[c] + shift[c]` over planes of `plane` elements.
    ScaleShift {
        scale: Vec<f32>,
        shift: Vec<f32>,
        plane: usize,
    },
}

/// What a step is, for profiles.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInfo {
    /// The graph node(s) the step computes, joined by ` > ` when fused.
    pub name: String,
    /// Kind and fused epilogue, e.g. `conv3x3/s1 +bias+add+relu`.
    pub kind: String,
    /// Multiply-accumulates of the step for the whole batch.
    pub macs: u64,
}

struct Step {
    kernel: Kernel,
    inputs: Vec<ValueId>,
    out: ValueId,
    info: StepInfo,
}

/// A model compiled for one batch size (see the module documentation).
pub struct Plan {
    steps: Vec<Step>,
    slots: Vec<Slot>,
    bufs: Vec<Vec<f32>>,
    input: ValueId,
    output: ValueId,
    batch: usize,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    weights: WeightDtype,
    /// Whether the pool's scratch buffers were grown to this plan's needs (after the first run).
    scratch_reserved: bool,
    /// Where the runs go: see [`Threading`].
    threading: Threading,
}

/// Where a plan's runs execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Threading {
    /// On the pool; after `n` more runs in which no kernel forked, on the caller.
    Probing(u8),
    /// On the pool: some kernel splits its work.
    Pool,
    /// On the calling thread, kernels kept serial: none splits (the hand-off to the pool cost a
    /// TLC-collapsed MobileNetV2 on 28x28 images 0.02 ms a run, an eighth of its latency).
    Caller,
}

/// Runs on the pool in which no kernel forked before a plan moves to the caller.
const QUIET_RUNS: u8 = 3;

/// Subnormal weights as zeros (the kernels would slow down on them; see [`Compiler::tensor`]).
fn flush_subnormals(v: &mut [f32]) {
    v.iter_mut()
        .filter(|x| x.is_subnormal())
        .for_each(|x| *x = 0.0);
}

fn plan_err(detail: impl Into<String>) -> Error {
    Error::invalid("plan", detail)
}

fn act_name(a: Activation) -> String {
    format!("{a:?}").to_lowercase()
}

/// The nodes the output depends on.
fn live_nodes(g: &Graph) -> Vec<bool> {
    let mut live = vec![false; g.nodes().len()];
    live[g.output()] = true;
    for id in (0..g.nodes().len()).rev() {
        if live[id] {
            g.node(id).inputs.iter().for_each(|&i| live[i] = true);
        }
    }
    live
}

impl Plan {
    /// Compile `model` for batches of `batch` samples of its graph's input shape.
    pub fn compile(model: &Model, batch: usize) -> Result<Plan> {
        Plan::compile_with(model, batch, &PlanOptions::default())
    }

    /// Compile `model` for batches of `batch` samples of shape `input_shape` (a convolutional
    /// network runs at other resolutions than the one its graph was built for, when every layer
    /// still fits).
    pub fn compile_for(model: &Model, batch: usize, input_shape: &[usize]) -> Result<Plan> {
        let options = PlanOptions {
            input_shape: Some(input_shape.to_vec()),
            ..PlanOptions::default()
        };
        Plan::compile_with(model, batch, &options)
    }

    /// Compile `model` for batches of `batch` samples with `options` (input shape, weight
    /// storage). 16-bit weights are rounded once here (after batch-norm folding, so the folded
    /// weights are what is rounded); an f16 weight beyond ±65504 is an error.
    pub fn compile_with(model: &Model, batch: usize, options: &PlanOptions) -> Result<Plan> {
        if batch == 0 {
            return Err(plan_err("the batch must hold at least one sample"));
        }
        let mut m = model.clone();
        if let Some(input_shape) = &options.input_shape {
            if m.graph().input_shape() != input_shape.as_slice() {
                let mut g = m.graph().clone();
                if let Op::Input { shape } = &mut g.node_mut(0).op {
                    *shape = input_shape.clone();
                }
                m.set_graph(g)?;
            }
        }
        let m = remove_passthrough(&fold_batch_norms(&m)?)?;
        Compiler::new(&m, batch, options)?.run()
    }

    /// Run one batch (`input`: `[batch, ...input shape]`, row-major) and return the output
    /// (`[batch, ...output shape]`). Panics if `input` has the wrong length.
    pub fn run(&mut self, input: &[f32]) -> &[f32] {
        self.run_observed(input, |_| {})
    }

    /// [`Plan::run`], calling `after_step(i)` when step `i` is done (profiles time the steps with
    /// it; tests count allocations).
    pub fn run_observed(&mut self, input: &[f32], after_step: impl FnMut(usize) + Send) -> &[f32] {
        // Run the whole inference on a pool thread: from a thread outside the pool every parallel
        // kernel would inject its job and sleep until a worker took it — one cross-thread hand-off
        // per step (measured: ResNet-18 w0.25 at batch 1 on a loaded 2-core machine, 4.0 ms from
        // the main thread vs 1.1 ms inside the pool). Inside, it is one hand-off per inference,
        // and the pool threads' scratch reserved after the first run is the scratch used.
        //
        // The other workers poll for the kernels' jobs until the inference ends, so a parallel
        // step after serial ones does not wait for a sleeping worker to wake. With one thread no
        // kernel forks, so the hand-off would be all cost: it runs here; likewise once runs
        // have shown that no kernel splits (kernels decide by shape and thread count, the same
        // every run as long as the plan runs under the same pool: counted, not inferred from
        // whether another thread ran a job, which for microsecond jobs depended on where the
        // scheduler had put the threads: the goal-4 ResNet-18 w0.25 on Fashion-MNIST stayed
        // serial in most processes, 0.39-0.40 ms on two threads as on one, and runs 0.34-0.36
        // since).
        use tlc_kernels::parallel;
        match self.threading {
            Threading::Caller => {
                parallel::serial(|| self.run_steps(input, after_step));
            }
            Threading::Pool => {
                parallel::with_pool_awake(|| self.run_steps(input, after_step));
            }
            Threading::Probing(left) => {
                let ((), forked) = parallel::with_pool_awake(|| self.run_steps(input, after_step));
                self.threading = match (forked, left) {
                    (true, _) => Threading::Pool,
                    (false, 0 | 1) => {
                        // This thread's scratch, as the pool's were after the first run.
                        tlc_kernels::scratch::reserve_this_thread();
                        Threading::Caller
                    }
                    (false, n) => Threading::Probing(n - 1),
                };
            }
        }
        let s = self.slots[self.output];
        &self.bufs[s.buf][..s.len]
    }

    fn run_steps(&mut self, input: &[f32], mut after_step: impl FnMut(usize)) {
        let inp = self.slots[self.input];
        assert_eq!(
            input.len(),
            inp.len,
            "plan: input of {} values, expected {} ({} x {:?})",
            input.len(),
            inp.len,
            self.batch,
            self.input_shape
        );
        self.bufs[inp.buf][..inp.len].copy_from_slice(input);
        for (i, step) in self.steps.iter().enumerate() {
            let o = self.slots[step.out];
            let mut out = std::mem::take(&mut self.bufs[o.buf]);
            let bufs = &self.bufs;
            let slots = &self.slots;
            let val = |k: usize| -> &[f32] {
                let s = slots[step.inputs[k]];
                &bufs[s.buf][..s.len]
            };
            exec(&step.kernel, step.inputs.len(), &val, &mut out[..o.len]);
            self.bufs[o.buf] = out;
            after_step(i);
        }
        if !self.scratch_reserved {
            // The first run has asked the kernels for every scratch size the plan needs; grow
            // every pool thread's buffers to them now, so no later run allocates whichever
            // thread rayon hands a task.
            tlc_kernels::scratch::reserve_on_pool();
            self.scratch_reserved = true;
        }
    }

    /// The steps, in execution order.
    pub fn steps(&self) -> impl Iterator<Item = &StepInfo> {
        self.steps.iter().map(|s| &s.info)
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the plan has no step (the graph is its input).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Samples per run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// Number of physical buffers and their total size in floats.
    pub fn arena(&self) -> (usize, usize) {
        (self.bufs.len(), self.bufs.iter().map(|b| b.len()).sum())
    }

    /// How the conv and linear weights are stored.
    pub fn weight_dtype(&self) -> WeightDtype {
        self.weights
    }

    /// Bytes of the conv and linear weights as stored (values times their size; a packed
    /// layout's padding is not counted). Biases and scale-shifts, always f32, are not included:
    /// see [`Plan::param_bytes`].
    pub fn weight_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match &s.kernel {
                Kernel::Conv { weight, .. } => weight.bytes(),
                Kernel::Linear { weight, .. } => weight.bytes(),
                Kernel::ExpandDw(f) => f.weight_bytes(),
                Kernel::BlockCl(f) => f.weight_bytes(),
                _ => 0,
            })
            .sum()
    }

    /// Bytes of every parameter the plan holds: [`Plan::weight_bytes`] plus the f32 biases and
    /// scale-shifts.
    pub fn param_bytes(&self) -> usize {
        let f32s: usize = self
            .steps
            .iter()
            .map(|s| match &s.kernel {
                Kernel::Conv { bias, .. } | Kernel::Linear { bias, .. } => {
                    bias.as_ref().map_or(0, Vec::len)
                }
                Kernel::ScaleShift { scale, shift, .. } => scale.len() + shift.len(),
                Kernel::ExpandDw(f) => f.bias_len(),
                Kernel::BlockCl(f) => f.bias_len(),
                _ => 0,
            })
            .sum();
        self.weight_bytes() + 4 * f32s
    }
}

/// Smallest expanded activation (floats per sample, 1 MB: twice a Zen 3 core's L2) a
/// channels-last plan fuses with the depthwise conv reading it ([`channels_last::block`]).
/// MobileNetV2's blocks 2 and 3 at 224 (112x112x96, 56x56x144) ran 0.75-0.84x the time of the
/// two steps on one and two threads (interleaved `tlc bench`), block 4 (56x56x144, stride 2) as
/// fast, the 28x28x192 ones (0.6 MB) 0.94-1.0x, within the noise: they stay apart.
const CL_EXPAND_DW_MIN_FLOATS: usize = 256 * 1024;

/// `TLC_CL_EXPAND_DW=0` keeps channels-last expansions and depthwise convs apart (comparisons).
fn cl_expand_dw_enabled() -> bool {
    std::env::var("TLC_CL_EXPAND_DW").as_deref() != Ok("0")
}

/// An image stem about to be emitted ([`Compiler::stem_block_cl`]): its node, shape, weights
/// when trimmed, bias, activation, the nodes fused behind it and its kind so far.
struct StemLayer<'a> {
    id: NodeId,
    shape: &'a Conv2dShape,
    weights: &'a Option<Vec<f32>>,
    bias: &'a Option<Vec<f32>>,
    act: Option<Activation>,
    fused: &'a [NodeId],
    kind: &'a str,
}

/// The 1x1 projection reading a depthwise conv's output ([`Compiler::projection`]).
struct Projection {
    id: NodeId,
    shape: Conv2dShape,
    has_bias: bool,
    /// The nodes fused behind it: a residual add, an activation.
    fused: Vec<NodeId>,
    residual: Option<ValueId>,
    act: Option<Activation>,
}

/// A 1x1 expansion and the depthwise conv reading it ([`Compiler::expand_dw_pair`]).
struct ExpandDwPair {
    /// The nodes fused behind the expansion: its activation, the depthwise conv, its activation.
    fused: Vec<NodeId>,
    expand_act: Option<Activation>,
    dw_id: NodeId,
    dw: Conv2dShape,
    dw_has_bias: bool,
    dw_act: Option<Activation>,
}

impl ExpandDwPair {
    /// The fused step's kind, each layer's tagged with `tag` (" cl").
    fn kind(&self, tag: &str, expand: &Stage, dw: &Stage) -> String {
        format!(
            "conv1x1/s1{tag}{} > conv{}x{}/s{} dw{tag}{}",
            epilogue_kind(expand.bias.is_some(), false, expand.act),
            self.dw.kernel_h,
            self.dw.kernel_w,
            self.dw.params.stride.0,
            epilogue_kind(dw.bias.is_some(), false, dw.act)
        )
    }
}

/// Fewest input features for which a one-row linear layer keeps its weights as stored rows
/// ([`LinearWeight::Rows`]). In the networks on two threads (interleaved `tlc bench`, paired
/// against the packed panels): VGG-16-bn's 4096 -> 4096 classifier 0.84, MobileNetV2's 1280 ->
/// 1000 0.74, but the 512-input layers (VGG's 512 -> 4096, ResNet-18's 512 -> 1000) 1.24-1.3x
/// slower: 2 KB rows, eight streamed at a time, each too short for the prefetchers.
const GEMV_ROWS_MIN_IN: usize = 1024;

/// Smallest expanded activation (floats per sample) whose 1x1 expansion and depthwise conv run
/// fused with [`PlanOptions::fuse_expand_dw`]: a smaller one stays in L2 between the two steps.
const EXPAND_DW_MIN_FLOATS: usize = 128 * 1024;

/// Whether a conv of `shape` runs on the pixel-major tiles ([`conv::pixel_major::preferred`]);
/// `TLC_PIXEL_MAJOR=0` keeps every conv on the channel-major paths (for comparisons).
fn pixel_major(shape: &Conv2dShape) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("TLC_PIXEL_MAJOR").as_deref() != Ok("0"))
        && conv::pixel_major::preferred(shape)
}

/// Whether a plan of `g` compiled with `options` runs its convolutions channels-last
/// ([`PlanOptions::channels_last`]; `tlc calibrate` measures a model's layers the same way).
pub fn runs_channels_last(g: &Graph, options: &PlanOptions) -> bool {
    let has_depthwise = g
        .nodes()
        .iter()
        .any(|node| matches!(&node.op, Op::Conv2d(c) if c.is_depthwise()));
    options.weights.half().is_none()
        && options.channels_last.unwrap_or(
            has_depthwise && !options.fuse_expand_dw && channels_last::fast() && layout_enabled(),
        )
}

/// Most output pixels (over the batch) of a conv that an NCHW plan runs channels-last anyway
/// ([`streams_weights`]).
const STREAMING_MAX_PIXELS: usize = 8;

/// Fewest weight bytes of such a conv: beyond L2, so every inference streams them from L3 or
/// memory.
const STREAMING_MIN_WEIGHT_BYTES: usize = 1 << 20;

/// Whether a plan that runs NCHW still runs this one-group conv channels-last: one with a few
/// output pixels and weights beyond L2 is bound by streaming its weights. The NCHW tile
/// multiplies each weight into a register of pixels, most of its lanes empty at 2x2; the
/// channels-last one loads 16 output channels' weights per pixel-row of multiply-adds, so the
/// same weights pass at memory speed. VGG-16-bn CIFAR's 2x2 512-channel 3x3 convs (9.4 MB of
/// weights each) on Zen 5, two threads: 0.240 -> 0.16 ms each (its 4x4 ones, 16 pixels, ran
/// 0.21 -> 0.25 and stay NCHW). Their inputs and outputs move layout for it (2 KB each).
fn streams_weights(s: &Conv2dShape) -> bool {
    let (oh, ow) = s.out_hw();
    s.params.groups == 1
        && (2..=STREAMING_MAX_PIXELS).contains(&(s.batch * oh * ow))
        && 4 * s.weight_len() >= STREAMING_MIN_WEIGHT_BYTES
}

/// Whether a plan that runs NCHW still runs this conv channels-last: a one-group stride-2 conv
/// with a kernel wider than 1x1 reading more than an image's few channels. Its patches gathered
/// into pixel rows feed the channels-last tiles at 79 % of Zen 5's peak where the NCHW
/// pixel-major tiles ran at 60 %: ResNet-18 at 224's three (two threads) 0.49 / 0.61 / 0.52 ->
/// 0.27 / 0.30 / 0.51 ms, on the AVX2 tiles 0.68 / 0.83 / 1.02 -> 0.51 / 0.55 / 0.70. Its input
/// moves to channels-last for it (shared with any other conv reading it so) and its output back
/// for the NCHW conv after it; the 1x1 downsamples beside them stay NCHW (their residual operand
/// is NCHW).
fn strided_channels_last(s: &Conv2dShape) -> bool {
    s.params.groups == 1
        && s.params.stride == (2, 2)
        && s.kernel_h * s.kernel_w > 1
        && s.in_channels > 4
}

/// `TLC_CHANNELS_LAST=0` keeps automatically chosen plans NCHW (for comparisons).
fn layout_enabled() -> bool {
    std::env::var("TLC_CHANNELS_LAST").as_deref() != Ok("0")
}

/// The Winograd tile size a conv of `shape` runs with, if any ([`conv::winograd::preferred`]);
/// `TLC_WINOGRAD=0` keeps every conv on the direct paths (for comparisons).
fn winograd(shape: &Conv2dShape) -> Option<conv::winograd::TileSize> {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ENABLED.get_or_init(|| std::env::var("TLC_WINOGRAD").as_deref() != Ok("0")) {
        conv::winograd::preferred(shape)
    } else {
        None
    }
}

/// Whether a conv of `shape` that is not on the pixel-major tiles gets its weights packed once as
/// the channel-major tiles' A panels ([`conv::prepacked_supported`]: the pointwise and im2col
/// paths), not repacked (wide outputs) or read in place (narrow ones) on every run;
/// `TLC_PREPACK=0` keeps them as stored (for comparisons).
fn prepacked(shape: &Conv2dShape) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("TLC_PREPACK").as_deref() != Ok("0"))
        && conv::prepacked_supported(shape)
}

/// Run one kernel: `val(k)` is input `k`, `y` the output.
fn exec<'a>(kernel: &Kernel, n_in: usize, val: &dyn Fn(usize) -> &'a [f32], y: &mut [f32]) {
    match kernel {
        Kernel::Conv {
            shape,
            weight,
            bias,
            act,
        } => {
            let mut epi = [ConvEpilogueOp::Act(Activation::Identity); 3];
            let mut n = 0;
            if let Some(b) = bias {
                epi[n] = ConvEpilogueOp::Bias(b);
                n += 1;
            }
            if n_in > 1 {
                epi[n] = ConvEpilogueOp::Add(val(1));
                n += 1;
            }
            if let Some(a) = act {
                epi[n] = ConvEpilogueOp::Act(*a);
                n += 1;
            }
            let (x, epi) = (val(0), &epi[..n]);
            match weight {
                ConvWeight::F32(w) => conv::forward_weights(shape, x, Weights::F32(w), y, epi),
                ConvWeight::Half(h) => {
                    conv::forward_weights(shape, x, Weights::Half(h.as_slice()), y, epi)
                }
                ConvWeight::PixelMajor(w) => conv::pixel_major::forward(shape, x, w, y, epi),
                ConvWeight::Rows(w) => conv::forward_weights(shape, x, Weights::Packed(w), y, epi),
                ConvWeight::Winograd(w) => conv::winograd::forward(shape, x, w, y, epi),
                ConvWeight::ChannelsLast(w) => conv::channels_last::conv(shape, x, w, y, epi),
                ConvWeight::FromNchw(w) => conv::channels_last::conv_from_nchw(shape, x, w, y, epi),
                ConvWeight::Taps(w) => conv::channels_last::depthwise::forward(shape, x, w, y, epi),
            }
        }
        Kernel::Linear {
            rows,
            in_f,
            out_f,
            weight,
            bias,
            act,
        } => {
            let (rows, in_f, out_f) = (*rows, *in_f, *out_f);
            let mut epi = [EpilogueOp::Act(Activation::Identity); 3];
            let mut n = 0;
            if let Some(b) = bias {
                epi[n] = EpilogueOp::BiasPerCol(b);
                n += 1;
            }
            if n_in > 1 {
                epi[n] = EpilogueOp::Add(MatRef::row_major(val(1), rows, out_f));
                n += 1;
            }
            if let Some(a) = act {
                epi[n] = EpilogueOp::Act(*a);
                n += 1;
            }
            let a = MatRef::row_major(val(0), rows, in_f);
            let c = MatMut::row_major(y, rows, out_f);
            match weight {
                LinearWeight::Packed(p) => gemm_packed(a, p, 0.0, c, &epi[..n]),
                LinearWeight::Half(h) => linear_half(a, h.as_slice(), c, &epi[..n]),
                LinearWeight::Rows(w) => {
                    gemm(a, MatRef::row_major(w, out_f, in_f).t(), 0.0, c, &epi[..n])
                }
            }
        }
        Kernel::ExpandDw(f) => conv::expand_dw::forward(f, val(0), y),
        Kernel::BlockCl(f) => {
            channels_last::block::forward(f, val(0), (n_in > 1).then(|| val(1)), y)
        }
        Kernel::MaxPool { dims, win } => pool::max_pool2d(val(0), *dims, *win, y),
        Kernel::AvgPool { dims, win } => pool::avg_pool2d(val(0), *dims, *win, true, y),
        Kernel::AdaptiveAvgPool { dims } => pool::adaptive_avg_pool2d(val(0), *dims, y),
        Kernel::Add => {
            elementwise::binary(BinaryOp::Add, val(0), val(1), y);
            for k in 2..n_in {
                y.iter_mut().zip(val(k)).for_each(|(o, v)| *o += v);
            }
        }
        Kernel::Act(a) => activation::apply(*a, val(0), y),
        Kernel::Relayout {
            to_channels_last,
            n,
            c,
            plane,
        } => {
            let to = if *to_channels_last {
                layout::to_channels_last
            } else {
                layout::to_nchw
            };
            to(val(0), *n, *c, *plane, y)
        }
        Kernel::GlobalAvgPoolCl { n, plane, c } => {
            layout::global_avg_pool(val(0), *n, *plane, *c, y)
        }
        Kernel::ScaleShift {
            scale,
            shift,
            plane,
        } => {
            let c = scale.len();
            for (p, (yo, xo)) in y
                .chunks_exact_mut(*plane)
                .zip(val(0).chunks_exact(*plane))
                .enumerate()
            {
                let (s, t) = (scale[p % c], shift[p % c]);
                yo.iter_mut().zip(xo).for_each(|(o, v)| *o = v * s + t);
            }
        }
    }
}

/// Compile-time state: the folded graph, its shapes, and the values made so far.
struct Compiler<'m> {
    m: &'m Model,
    g: &'m Graph,
    batch: usize,
    weights: WeightDtype,
    /// [`PlanOptions::fuse_expand_dw`].
    fuse_expand_dw: bool,
    shapes: Vec<Vec<usize>>,
    macs: Vec<u64>,
    consumers: Vec<Vec<NodeId>>,
    /// The value of each node once computed (fused nodes share their step's value).
    value: Vec<Option<ValueId>>,
    /// Whether convolutions run channels-last ([`PlanOptions::channels_last`]).
    channels_last: bool,
    /// Whether, in an NCHW plan, weight-streaming and strided convs run channels-last
    /// ([`streams_weights`], [`strided_channels_last`]): not when the layout is forced either
    /// way, nor with 16-bit weights.
    hybrid_channels_last: bool,
    /// Length of each value.
    lens: Vec<usize>,
    /// Layout of each value, and its per-sample `(channels, plane)` when 4-D.
    layouts: Vec<Layout>,
    dims: Vec<Option<(usize, usize)>>,
    /// Values already moved to the other layout, and where to.
    relayouts: HashMap<ValueId, ValueId>,
    steps: Vec<Step>,
}

impl<'m> Compiler<'m> {
    fn new(m: &'m Model, batch: usize, options: &PlanOptions) -> Result<Compiler<'m>> {
        let g = m.graph();
        let n = g.nodes().len();
        let channels_last = runs_channels_last(g, options);
        Ok(Compiler {
            m,
            g,
            batch,
            weights: options.weights,
            fuse_expand_dw: options.fuse_expand_dw,
            channels_last,
            hybrid_channels_last: options.channels_last.is_none()
                && options.weights.half().is_none()
                && channels_last::fast()
                && layout_enabled(),
            layouts: vec![],
            dims: vec![],
            relayouts: HashMap::new(),
            shapes: g.infer_shapes()?,
            macs: g.macs()?,
            consumers: g.consumers(),
            value: vec![None; n],
            lens: vec![],
            steps: vec![],
        })
    }

    /// Node `node`'s parameter `role`, subnormal values flushed to zero. TLC's OFF channels leave
    /// them behind (456 in the TLC'd ResNet-18 w0.25 of docs/results.md): their batch-norm
    /// running statistics decay towards zero and folding turns them into biases of ~1e-42, which
    /// would feed subnormal operands, slow on x86 cores, to every later layer. Values below
    /// 1.2e-38 change no output that matters.
    fn tensor(&self, node: NodeId, role: &str) -> Result<Vec<f32>> {
        let name = format!("{}.{role}", self.g.node(node).name);
        let mut v = self
            .m
            .get(&name)
            .map(|t| t.to_vec())
            .ok_or_else(|| plan_err(format!("the model has no tensor `{name}`")))?;
        flush_subnormals(&mut v);
        Ok(v)
    }

    /// Node `node`'s `[rows, cols]` weight as the packed B of a linear layer (`W^T`), subnormal
    /// values flushed as in [`Compiler::tensor`], packed straight from the model's storage (a
    /// copy first had VGG-16-bn's 64 MB classifier weights held twice while packing).
    fn packed_weight(&self, node: NodeId, rows: usize, cols: usize) -> Result<PackedB> {
        let data = self.stored_weight(node, rows * cols)?;
        let mut packed = pack_b(MatRef::row_major(&data, rows, cols).t());
        packed.flush_subnormals();
        Ok(packed)
    }

    /// Node `node`'s `[rows, cols]` weight as stored, subnormal values flushed as in
    /// [`Compiler::tensor`].
    fn row_weight(&self, node: NodeId, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let mut w = self.stored_weight(node, rows * cols)?.into_owned();
        flush_subnormals(&mut w);
        Ok(w)
    }

    /// Node `node`'s conv weight packed for the pixel-major tiles (subnormals flushed by the
    /// packing), straight from the model's storage.
    fn pixel_major_weight(&self, node: NodeId, shape: &Conv2dShape) -> Result<PackedPanels> {
        let data = self.stored_weight(node, shape.weight_len())?;
        Ok(conv::pixel_major::pack(shape, &data))
    }

    /// A conv's weights for packing: `trimmed` where the plan dropped taps, else as stored.
    fn conv_weight_values<'a>(
        &'a self,
        node: NodeId,
        shape: &Conv2dShape,
        trimmed: &'a Option<Vec<f32>>,
    ) -> Result<std::borrow::Cow<'a, [f32]>> {
        match trimmed {
            Some(w) => Ok(std::borrow::Cow::Borrowed(&w[..])),
            None => self.stored_weight(node, shape.weight_len()),
        }
    }

    /// Node `node`'s weight values as the model stores them, checked to number `len`.
    fn stored_weight(&self, node: NodeId, len: usize) -> Result<std::borrow::Cow<'_, [f32]>> {
        let name = format!("{}.weight", self.g.node(node).name);
        let t = self
            .m
            .get(&name)
            .ok_or_else(|| plan_err(format!("the model has no tensor `{name}`")))?;
        let data = t.contiguous_data();
        if data.len() != len {
            return Err(plan_err(format!(
                "`{name}` has {} values, the layer needs {len}",
                data.len()
            )));
        }
        Ok(data)
    }

    /// Node `node`'s weight values `w` in 16 bits of `kind` (the node names the error).
    fn half_weight(&self, node: NodeId, kind: HalfKind, w: &[f32]) -> Result<HalfVec> {
        HalfVec::encode(kind, w).map_err(|i| {
            plan_err(format!(
                "weight {i} of `{}` is {}, beyond the range of {} (store the weights as bf16 or f32)",
                self.g.node(node).name,
                w[i],
                kind.name()
            ))
        })
    }

    /// The dtype suffix of a weight step's kind (empty for f32).
    fn dtype_kind(&self) -> String {
        match self.weights {
            WeightDtype::F32 => String::new(),
            d => format!(" {}", d.name()),
        }
    }

    fn numel(&self, node: NodeId) -> usize {
        self.batch * self.shapes[node].iter().product::<usize>()
    }

    fn new_value(&mut self, node: NodeId) -> ValueId {
        self.lens.push(self.numel(node));
        self.layouts.push(Layout::Nchw);
        let s = &self.shapes[node];
        self.dims.push((s.len() == 3).then(|| (s[0], s[1] * s[2])));
        self.lens.len() - 1
    }

    /// Value `v` in layout `want`: itself when it is so already (or both layouts coincide: one
    /// pixel or one channel, or not 4-D), else a step moving it (once per value).
    fn value_in(&mut self, v: ValueId, want: Layout) -> ValueId {
        let n = self.batch;
        let Some((c, plane)) = self.dims[v] else {
            return v;
        };
        if self.layouts[v] == want || plane == 1 || c == 1 {
            return v;
        }
        if let Some(&u) = self.relayouts.get(&v) {
            return u;
        }
        self.lens.push(self.lens[v]);
        self.layouts.push(want);
        self.dims.push(self.dims[v]);
        let out = self.lens.len() - 1;
        let to_channels_last = want == Layout::ChannelsLast;
        let kind = if to_channels_last {
            "to_channels_last"
        } else {
            "to_nchw"
        };
        self.steps.push(Step {
            kernel: Kernel::Relayout {
                to_channels_last,
                n,
                c,
                plane,
            },
            inputs: vec![v],
            out,
            info: StepInfo {
                name: format!("(layout of value {v})"),
                kind: kind.into(),
                macs: 0,
            },
        });
        self.relayouts.insert(v, out);
        out
    }

    /// Whether `id`'s value goes to exactly one reader (and is not the network's output).
    fn sole_reader(&self, id: NodeId) -> Option<NodeId> {
        (self.consumers[id].len() == 1 && id != self.g.output()).then(|| self.consumers[id][0])
    }

    /// Whether only convolutions and residual adds (which the convs producing their other
    /// operand take in their epilogue) read `id`'s value, and it is not the network's output.
    fn read_by_convs(&self, id: NodeId) -> bool {
        id != self.g.output()
            && self.consumers[id]
                .iter()
                .all(|&c| matches!(self.g.node(c).op, Op::Conv2d(_) | Op::Add))
    }

    fn act_of(&self, id: NodeId) -> Option<Activation> {
        match self.g.node(id).op {
            Op::Activation { act } => Some(act.activation()),
            _ => None,
        }
    }

    /// The nodes fused behind the layer `id`: its activation, or a residual add (with the other
    /// operand) and the activation after it. Returns (fused nodes, residual operand, activation).
    fn epilogue(&self, id: NodeId) -> (Vec<NodeId>, Option<ValueId>, Option<Activation>) {
        let Some(next) = self.sole_reader(id) else {
            return (vec![], None, None);
        };
        if let Some(a) = self.act_of(next) {
            return (vec![next], None, Some(a));
        }
        let n = self.g.node(next);
        if !matches!(n.op, Op::Add) || n.inputs.len() != 2 {
            return (vec![], None, None);
        }
        let other = if n.inputs[0] == id {
            n.inputs[1]
        } else {
            n.inputs[0]
        };
        let Some(r) = self.value[other].filter(|_| other != id) else {
            return (vec![], None, None);
        };
        match self
            .sole_reader(next)
            .and_then(|a| Some((a, self.act_of(a)?)))
        {
            Some((a, act)) => (vec![next, a], Some(r), Some(act)),
            None => (vec![next], Some(r), None),
        }
    }

    fn push(
        &mut self,
        node: NodeId,
        fused: &[NodeId],
        kernel: Kernel,
        inputs: Vec<ValueId>,
        kind: String,
    ) -> ValueId {
        let last = fused.last().copied().unwrap_or(node);
        let out = self.new_value(last);
        let mut name = self.g.node(node).name.clone();
        for &f in fused {
            name.push_str(" > ");
            name.push_str(&self.g.node(f).name);
        }
        for &n in std::iter::once(&node).chain(fused) {
            self.value[n] = Some(out);
        }
        self.steps.push(Step {
            kernel,
            inputs,
            out,
            info: StepInfo {
                name,
                kind,
                macs: self.macs[node] * self.batch as u64,
            },
        });
        out
    }

    /// Emit the 1x1 conv `id` (of `shape`, input `x`) and the depthwise conv that reads it as one
    /// [`Kernel::ExpandDw`] step when the options ask for it and they qualify; whether it did.
    fn expand_dw(
        &mut self,
        id: NodeId,
        has_bias: bool,
        shape: &Conv2dShape,
        x: ValueId,
    ) -> Result<bool> {
        let floats = self.numel(id) / self.batch.max(1);
        if !self.fuse_expand_dw || floats < EXPAND_DW_MIN_FLOATS || self.weights.half().is_some() {
            return Ok(false);
        }
        let Some(pair) = self.expand_dw_pair(id, |dw| conv::expand_dw::supports(shape, dw)) else {
            return Ok(false);
        };
        // Packed straight from the model's storage (packing flushes subnormal values).
        let w = self.stored_weight(id, shape.weight_len())?;
        let expand_w =
            PackedRows::new(MatRef::row_major(&w, shape.out_channels, shape.in_channels));
        let dw_w = self.tensor(pair.dw_id, "weight")?;
        let (expand_epi, dw_epi) = self.expand_dw_stages(id, has_bias, &pair)?;
        let kind = pair.kind("", &expand_epi, &dw_epi);
        let kernel = Kernel::ExpandDw(ExpandDw {
            expand: *shape,
            expand_w,
            expand_epi,
            dw: pair.dw,
            dw_w,
            dw_epi,
        });
        self.push_expand_dw(id, &pair, kernel, x, kind);
        Ok(true)
    }

    /// Emit 1x1 conv `id` (of `shape`, input `x`) and the depthwise conv reading its output (and
    /// the projection reading that, see [`Compiler::projection`]) as one channels-last
    /// [`Kernel::BlockCl`] step when the expanded activation is large; whether it did.
    fn expand_dw_cl(
        &mut self,
        id: NodeId,
        has_bias: bool,
        shape: &Conv2dShape,
        x: ValueId,
    ) -> Result<bool> {
        let floats = self.numel(id) / self.batch.max(1);
        if floats < CL_EXPAND_DW_MIN_FLOATS || !cl_expand_dw_enabled() {
            return Ok(false);
        }
        let supports = |dw: &Conv2dShape| {
            channels_last::block::expands_into(shape, dw) && dw.params.groups > 1
        };
        let Some(mut pair) = self.expand_dw_pair(id, supports) else {
            return Ok(false);
        };
        let x = self.value_in(x, Layout::ChannelsLast);
        let (expand_epi, dw_epi) = self.expand_dw_stages(id, has_bias, &pair)?;
        let mut kind = pair.kind(" cl", &expand_epi, &dw_epi);
        let expand = channels_last::block::Pointwise {
            shape: *shape,
            w: channels_last::pack(shape, &self.stored_weight(id, shape.weight_len())?),
            epi: expand_epi,
        };
        let dw = channels_last::block::Depthwise {
            shape: pair.dw,
            w: channels_last::depthwise::pack(&pair.dw, &self.tensor(pair.dw_id, "weight")?),
            epi: dw_epi,
        };
        let last = pair.fused.last().copied().unwrap_or(id);
        let projection = self.projection(last, &pair.dw);
        let (project, residual) = self.projection_step(projection, &mut pair.fused, &mut kind)?;
        let block = channels_last::block::Block {
            feed: Some(channels_last::block::Feed::Expand(expand)),
            dw,
            project,
        };
        self.push_block(id, &pair.fused, block, x, residual, kind);
        Ok(true)
    }

    /// Emit depthwise conv `id` (of `dw`, input `x`) and the 1x1 projection reading its output
    /// ([`Compiler::projection`]) as one channels-last [`Kernel::BlockCl`] step; whether it did.
    fn dw_project_cl(
        &mut self,
        id: NodeId,
        has_bias: bool,
        dw: &Conv2dShape,
        x: ValueId,
    ) -> Result<bool> {
        let (mut fused, residual, act) = self.epilogue(id);
        if residual.is_some() || trim::trimmed(dw).is_some() {
            return Ok(false);
        }
        let last = fused.last().copied().unwrap_or(id);
        let Some(projection) = self.projection(last, dw) else {
            return Ok(false);
        };
        let x = self.value_in(x, Layout::ChannelsLast);
        let (depthwise, mut kind) = self.depthwise_layer(id, dw, has_bias, act)?;
        let (project, residual) = self.projection_step(Some(projection), &mut fused, &mut kind)?;
        let block = channels_last::block::Block {
            feed: None,
            dw: depthwise,
            project,
        };
        self.push_block(id, &fused, block, x, residual, kind);
        Ok(true)
    }

    /// Emit the image stem `stem` (reading NCHW image `x`), the depthwise conv that alone reads
    /// its output and the projection reading that ([`Compiler::projection`]) as one
    /// channels-last [`Kernel::BlockCl`] step, which never stores the stem's output (MobileNetV2
    /// at 224: 1.6 MB, the plan's largest activation); whether it did. Batch 1 only (a task's
    /// band holds one image's rows). `TLC_CL_STEM_BLOCK=0` keeps the stem apart (comparisons).
    fn stem_block_cl(&mut self, stem: &StemLayer, x: ValueId) -> Result<bool> {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*ENABLED.get_or_init(|| std::env::var("TLC_CL_STEM_BLOCK").as_deref() != Ok("0")) {
            return Ok(false);
        }
        let last = stem.fused.last().copied().unwrap_or(stem.id);
        let Some(dw_id) = self.sole_reader(last) else {
            return Ok(false);
        };
        let Op::Conv2d(dc) = &self.g.node(dw_id).op else {
            return Ok(false);
        };
        let dw = dc.shape(self.batch, &self.shapes[last]);
        let fits = dc.groups > 1
            && channels_last::block::feeds_from_image(stem.shape, &dw)
            && trim::trimmed(&dw).is_none();
        let (dw_fused, dw_residual, dw_act) = self.epilogue(dw_id);
        if !fits || dw_residual.is_some() {
            return Ok(false);
        }
        let w = self.conv_weight_values(stem.id, stem.shape, stem.weights)?;
        let feed = channels_last::block::Pointwise {
            shape: *stem.shape,
            w: channels_last::pack_nchw_input(stem.shape, &w),
            epi: Stage {
                bias: stem.bias.clone(),
                act: stem.act,
            },
        };
        let (depthwise, dw_kind) = self.depthwise_layer(dw_id, &dw, dc.bias, dw_act)?;
        let mut kind = format!(
            "{} nchw>cl{} > {dw_kind}",
            stem.kind,
            epilogue_kind(stem.bias.is_some(), false, stem.act),
        );
        let mut fused = stem.fused.to_vec();
        fused.push(dw_id);
        fused.extend(dw_fused);
        let dw_last = fused.last().copied().unwrap_or(dw_id);
        let projection = self.projection(dw_last, &dw);
        let (project, residual) = self.projection_step(projection, &mut fused, &mut kind)?;
        let block = channels_last::block::Block {
            feed: Some(channels_last::block::Feed::Image(feed)),
            dw: depthwise,
            project,
        };
        self.push_block(stem.id, &fused, block, x, residual, kind);
        Ok(true)
    }

    /// Depthwise conv `id` (of `dw`) as a block's layer, with its bias and the activation `act`
    /// fused behind it, and its step kind.
    fn depthwise_layer(
        &self,
        id: NodeId,
        dw: &Conv2dShape,
        has_bias: bool,
        act: Option<Activation>,
    ) -> Result<(channels_last::block::Depthwise, String)> {
        let kind = format!(
            "conv{}x{}/s{} dw cl{}",
            dw.kernel_h,
            dw.kernel_w,
            dw.params.stride.0,
            epilogue_kind(has_bias, false, act)
        );
        let layer = channels_last::block::Depthwise {
            shape: *dw,
            w: channels_last::depthwise::pack(dw, &self.tensor(id, "weight")?),
            epi: Stage {
                bias: has_bias.then(|| self.tensor(id, "bias")).transpose()?,
                act,
            },
        };
        Ok((layer, kind))
    }

    /// The 1x1 projection that alone reads `last`'s value, the output of depthwise conv `dw`
    /// (after its activation), when a channels-last block can run it: one group, stride 1, no
    /// more output channels than pixels. A projection with more (MobileNetV2's 7x7 ones, 160 or
    /// 320 channels of 49 pixels) runs as its own step, whose tasks split its weights, which a
    /// block's tasks, splitting rows, would each read whole. `TLC_CL_DW_PROJECT=0` keeps every
    /// projection apart (comparisons).
    fn projection(&self, last: NodeId, dw: &Conv2dShape) -> Option<Projection> {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*ENABLED.get_or_init(|| std::env::var("TLC_CL_DW_PROJECT").as_deref() != Ok("0")) {
            return None;
        }
        let id = self.sole_reader(last)?;
        let Op::Conv2d(c) = &self.g.node(id).op else {
            return None;
        };
        let shape = c.shape(self.batch, &self.shapes[last]);
        let (oh, ow) = dw.out_hw();
        let fits = c.groups == 1
            && channels_last::block::projects_from(dw, &shape)
            && shape.out_channels <= dw.batch * oh * ow;
        if !fits {
            return None;
        }
        let (fused, residual, act) = self.epilogue(id);
        Some(Projection {
            id,
            shape,
            has_bias: c.bias,
            fused,
            residual,
            act,
        })
    }

    /// `projection` ([`Compiler::projection`]), if any, as a block's layer and its residual
    /// (channels-last); its nodes are appended to `fused` and its kind to `kind`.
    fn projection_step(
        &mut self,
        projection: Option<Projection>,
        fused: &mut Vec<NodeId>,
        kind: &mut String,
    ) -> Result<(Option<channels_last::block::Pointwise>, Option<ValueId>)> {
        let Some(p) = projection else {
            return Ok((None, None));
        };
        let bias = p.has_bias.then(|| self.tensor(p.id, "bias")).transpose()?;
        kind.push_str(" > conv1x1/s1 cl");
        kind.push_str(&epilogue_kind(bias.is_some(), p.residual.is_some(), p.act));
        let layer = channels_last::block::Pointwise {
            shape: p.shape,
            w: channels_last::pack(&p.shape, &self.stored_weight(p.id, p.shape.weight_len())?),
            epi: Stage { bias, act: p.act },
        };
        let residual = p.residual.map(|r| self.value_in(r, Layout::ChannelsLast));
        fused.push(p.id);
        fused.extend(p.fused);
        Ok((Some(layer), residual))
    }

    /// Push `block` as the step of node `id` and the nodes `fused` behind it (their
    /// multiply-adds counted), reading `x` and `residual`; its output is channels-last.
    fn push_block(
        &mut self,
        id: NodeId,
        fused: &[NodeId],
        block: channels_last::block::Block,
        x: ValueId,
        residual: Option<ValueId>,
        kind: String,
    ) {
        let inputs = std::iter::once(x).chain(residual).collect();
        let out = self.push(id, fused, Kernel::BlockCl(Box::new(block)), inputs, kind);
        let macs: u64 = fused
            .iter()
            .map(|&n| self.macs[n] * self.batch as u64)
            .sum();
        if let Some(step) = self.steps.last_mut() {
            step.info.macs += macs;
        }
        self.layouts[out] = Layout::ChannelsLast;
    }

    /// The depthwise conv that alone reads 1x1 conv `id`'s output (after its activation), if
    /// `supports` its shape, neither takes a residual, and it keeps all its taps.
    fn expand_dw_pair(
        &self,
        id: NodeId,
        supports: impl Fn(&Conv2dShape) -> bool,
    ) -> Option<ExpandDwPair> {
        let (mut fused, residual, expand_act) = self.epilogue(id);
        let last = fused.last().copied().unwrap_or(id);
        let dw_id = self.sole_reader(last).filter(|_| residual.is_none())?;
        let Op::Conv2d(d) = &self.g.node(dw_id).op else {
            return None;
        };
        let dw = d.shape(self.batch, &self.shapes[last]);
        if !supports(&dw) || trim::trimmed(&dw).is_some() {
            return None;
        }
        let (dw_fused, dw_residual, dw_act) = self.epilogue(dw_id);
        if dw_residual.is_some() {
            return None;
        }
        fused.push(dw_id);
        fused.extend(dw_fused);
        Some(ExpandDwPair {
            fused,
            expand_act,
            dw_id,
            dw,
            dw_has_bias: d.bias,
            dw_act,
        })
    }

    /// The two layers' epilogues: biases from the model, the fused activations.
    fn expand_dw_stages(
        &self,
        id: NodeId,
        has_bias: bool,
        pair: &ExpandDwPair,
    ) -> Result<(Stage, Stage)> {
        let expand = Stage {
            bias: has_bias.then(|| self.tensor(id, "bias")).transpose()?,
            act: pair.expand_act,
        };
        let dw = Stage {
            bias: (pair.dw_has_bias)
                .then(|| self.tensor(pair.dw_id, "bias"))
                .transpose()?,
            act: pair.dw_act,
        };
        Ok((expand, dw))
    }

    /// Push the fused step of `pair` (expansion `id`), counting both layers' multiply-adds.
    fn push_expand_dw(
        &mut self,
        id: NodeId,
        pair: &ExpandDwPair,
        kernel: Kernel,
        x: ValueId,
        kind: String,
    ) -> ValueId {
        let out = self.push(id, &pair.fused, kernel, vec![x], kind);
        let dw_macs = self.macs[pair.dw_id] * self.batch as u64;
        if let Some(step) = self.steps.last_mut() {
            step.info.macs += dw_macs;
        }
        out
    }

    /// Emit conv `id` (of `full`, input `x`) on the channels-last kernels when it is depthwise or
    /// has one group, its output channels-last; whether it did (not for an NCHW image stem, see
    /// below). Its input and residual are moved channels-last first where they are not.
    fn conv_channels_last(
        &mut self,
        id: NodeId,
        c: &crate::graph::ConvSpec,
        full: &Conv2dShape,
        x: ValueId,
    ) -> Result<bool> {
        let depthwise = conv::channels_last::depthwise::supports(full) && c.groups > 1;
        if !depthwise && c.groups != 1 {
            return Ok(false);
        }
        if !depthwise && self.expand_dw_cl(id, c.bias, full, x)? {
            return Ok(true);
        }
        if depthwise && self.dw_project_cl(id, c.bias, full, x)? {
            return Ok(true);
        }
        // A one-group conv reading an NCHW image (a few channels: the stem) reads it in place
        // through padded bands and writes channels-last when convs read its output (moving the
        // image and gathering 27-float patches cost more: MobileNetV2 at 224 on one thread 0.58
        // + 0.11 ms, against 0.38 + 0.08 for the NCHW conv and a move of its output; the band
        // conv costs what the NCHW one did, without the move). Before a pool (ResNet-18's stem)
        // it runs NCHW.
        let image = self.dims[x].is_some_and(|(c, plane)| c <= 4 && plane > 1);
        let (fused, residual, act) = self.epilogue(id);
        let (shape, trimmed, mut kind) = self.trimmed_conv(id, c, full)?;
        let nchw_image = !depthwise && self.layouts[x] == Layout::Nchw && image;
        let from_nchw = nchw_image
            && channels_last::supports_nchw_input(&shape)
            && self.read_by_convs(fused.last().copied().unwrap_or(id));
        if nchw_image && !from_nchw {
            return Ok(false);
        }
        let bias = c.bias.then(|| self.tensor(id, "bias")).transpose()?;
        let stem = StemLayer {
            id,
            shape: &shape,
            weights: &trimmed,
            bias: &bias,
            act,
            fused: &fused,
            kind: &kind,
        };
        if from_nchw && residual.is_none() && self.stem_block_cl(&stem, x)? {
            return Ok(true);
        }
        let x = if from_nchw {
            x
        } else {
            self.value_in(x, Layout::ChannelsLast)
        };
        let residual = residual.map(|r| self.value_in(r, Layout::ChannelsLast));
        let w = self.conv_weight_values(id, &shape, &trimmed)?;
        let weight = if depthwise {
            ConvWeight::Taps(channels_last::depthwise::pack(&shape, &w))
        } else if from_nchw {
            ConvWeight::FromNchw(channels_last::pack_nchw_input(&shape, &w))
        } else {
            ConvWeight::ChannelsLast(channels_last::pack(&shape, &w))
        };
        kind.push_str(match (depthwise, from_nchw) {
            (true, _) => " dw cl",
            (false, true) => " nchw>cl",
            (false, false) => " cl",
        });
        kind.push_str(&epilogue_kind(bias.is_some(), residual.is_some(), act));
        let kernel = Kernel::Conv {
            shape,
            weight,
            bias,
            act,
        };
        let inputs = std::iter::once(x).chain(residual).collect();
        let out = self.push(id, &fused, kernel, inputs, kind);
        self.layouts[out] = Layout::ChannelsLast;
        Ok(true)
    }

    /// Conv `id` (of `full`) with the taps that read only padding dropped (their weights with
    /// them): its shape, the trimmed weights (subnormals flushed) when any tap went, and the
    /// start of its step kind (`conv1x1/s1 (of 3x3)`).
    fn trimmed_conv(
        &self,
        id: NodeId,
        c: &crate::graph::ConvSpec,
        full: &Conv2dShape,
    ) -> Result<(Conv2dShape, Option<Vec<f32>>, String)> {
        let trim = trim::trimmed(full);
        let shape = trim.as_ref().map_or(*full, |t| t.0);
        let weights = match &trim {
            Some((_, rows, cols)) => {
                let w = self.stored_weight(id, full.weight_len())?;
                let mut w = trim::weights(full, &w, rows, cols);
                flush_subnormals(&mut w);
                Some(w)
            }
            None => None,
        };
        let mut kind = format!("conv{}x{}/s{}", shape.kernel_h, shape.kernel_w, c.stride[0]);
        if trim.is_some() {
            kind.push_str(&format!(" (of {}x{})", c.kernel[0], c.kernel[1]));
        }
        Ok((shape, weights, kind))
    }

    fn input_value(&self, id: NodeId, k: usize) -> ValueId {
        self.value[self.g.node(id).inputs[k]].expect("inputs come first")
    }

    fn run(mut self) -> Result<Plan> {
        let g = self.g;
        let live = live_nodes(g);
        let input = self.new_value(0);
        self.value[0] = Some(input);
        for id in (1..g.nodes().len()).filter(|&i| live[i]) {
            if self.value[id].is_some() {
                continue;
            }
            let node = g.node(id);
            let x = self.input_value(id, 0);
            let xs = &self.shapes[node.inputs[0]];
            let ys = &self.shapes[id];
            match &node.op {
                Op::Input { .. } => unreachable!("the input is node 0"),
                Op::Conv2d(c) => {
                    let full = c.shape(self.batch, xs);
                    let hybrid = self.hybrid_channels_last
                        && (streams_weights(&full) || strided_channels_last(&full));
                    if (self.channels_last || hybrid) && self.conv_channels_last(id, c, &full, x)? {
                        continue;
                    }
                    let x = self.value_in(x, Layout::Nchw);
                    if self.expand_dw(id, c.bias, &full, x)? {
                        continue;
                    }
                    let (fused, residual, act) = self.epilogue(id);
                    let residual = residual.map(|r| self.value_in(r, Layout::Nchw));
                    let bias = c.bias.then(|| self.tensor(id, "bias")).transpose()?;
                    let (shape, trimmed_weight, mut kind) = self.trimmed_conv(id, c, &full)?;
                    if c.is_depthwise() {
                        kind.push_str(" dw");
                    } else if c.groups > 1 {
                        kind.push_str(&format!(" g{}", c.groups));
                    }
                    // Winograd runs f32 weights only (16-bit ones keep the direct paths).
                    let tile = winograd(&shape).filter(|_| self.weights.half().is_none());
                    if let Some(t) = tile {
                        kind.push_str(&format!(" winograd-f{}", t.m()));
                    }
                    kind.push_str(&self.dtype_kind());
                    kind.push_str(&epilogue_kind(bias.is_some(), residual.is_some(), act));
                    let weight = match (self.weights.half(), trimmed_weight, tile) {
                        (None, w, Some(tile)) => {
                            let data = self.conv_weight_values(id, &shape, &w)?;
                            ConvWeight::Winograd(conv::winograd::pack(&shape, &data, tile))
                        }
                        (None, Some(w), None) if pixel_major(&shape) => {
                            ConvWeight::PixelMajor(conv::pixel_major::pack(&shape, &w))
                        }
                        (None, None, None) if pixel_major(&shape) => {
                            ConvWeight::PixelMajor(self.pixel_major_weight(id, &shape)?)
                        }
                        (None, w, None) if prepacked(&shape) => {
                            let data = self.conv_weight_values(id, &shape, &w)?;
                            let (rows, k) = (shape.out_channels, shape.patch_len());
                            ConvWeight::Rows(PackedRows::new(MatRef::row_major(&data, rows, k)))
                        }
                        (None, w, None) => ConvWeight::F32(match w {
                            Some(w) => w,
                            None => self.tensor(id, "weight")?,
                        }),
                        (Some(h), w, _) => {
                            let w = match w {
                                Some(w) => w,
                                None => self.tensor(id, "weight")?,
                            };
                            ConvWeight::Half(self.half_weight(id, h, &w)?)
                        }
                    };
                    let kernel = Kernel::Conv {
                        shape,
                        weight,
                        bias,
                        act,
                    };
                    let inputs = std::iter::once(x).chain(residual).collect();
                    self.push(id, &fused, kernel, inputs, kind);
                }
                Op::Linear(l) => {
                    let rows = self.numel(node.inputs[0]) / l.in_f.max(1);
                    let x = self.value_in(x, Layout::Nchw);
                    let (fused, residual, act) = self.epilogue(id);
                    let bias = l.bias.then(|| self.tensor(id, "bias")).transpose()?;
                    let weight = match self.weights.half() {
                        Some(h) => LinearWeight::Half(self.half_weight(
                            id,
                            h,
                            &self.tensor(id, "weight")?,
                        )?),
                        None if rows == 1 && l.in_f >= GEMV_ROWS_MIN_IN => {
                            LinearWeight::Rows(self.row_weight(id, l.out_f, l.in_f)?)
                        }
                        None => LinearWeight::Packed(self.packed_weight(id, l.out_f, l.in_f)?),
                    };
                    let kind = format!(
                        "linear{}{}",
                        self.dtype_kind(),
                        epilogue_kind(bias.is_some(), residual.is_some(), act)
                    );
                    let kernel = Kernel::Linear {
                        rows,
                        in_f: l.in_f,
                        out_f: l.out_f,
                        weight,
                        bias,
                        act,
                    };
                    let inputs = std::iter::once(x).chain(residual).collect();
                    self.push(id, &fused, kernel, inputs, kind);
                }
                Op::MaxPool(p) | Op::AvgPool(p) => {
                    let dims = PoolDims {
                        planes: self.batch * xs[0],
                        h: xs[1],
                        w: xs[2],
                        out_h: ys[1],
                        out_w: ys[2],
                    };
                    let win = Window2d {
                        kernel: p.kernel,
                        stride: p.stride,
                        padding: p.padding,
                        dilation: [1, 1],
                    };
                    let what = format!("{}x{}/s{}", p.kernel[0], p.kernel[1], p.stride[0]);
                    let x = self.value_in(x, Layout::Nchw);
                    let (kernel, kind) = if matches!(node.op, Op::MaxPool(_)) {
                        (Kernel::MaxPool { dims, win }, format!("max_pool{what}"))
                    } else {
                        (Kernel::AvgPool { dims, win }, format!("avg_pool{what}"))
                    };
                    self.push(id, &[], kernel, vec![x], kind);
                }
                Op::AdaptiveAvgPool { out } => {
                    let dims = PoolDims {
                        planes: self.batch * xs[0],
                        h: xs[1],
                        w: xs[2],
                        out_h: out[0],
                        out_w: out[1],
                    };
                    let kind = format!("adaptive_avg_pool{}x{}", out[0], out[1]);
                    if self.layouts[x] == Layout::ChannelsLast && *out == [1, 1] {
                        let (n, plane, c) = (self.batch, dims.h * dims.w, xs[0]);
                        let kernel = Kernel::GlobalAvgPoolCl { n, plane, c };
                        self.push(id, &[], kernel, vec![x], format!("{kind} cl"));
                        continue;
                    }
                    let x = self.value_in(x, Layout::Nchw);
                    self.push(id, &[], Kernel::AdaptiveAvgPool { dims }, vec![x], kind);
                }
                Op::Flatten { .. } => {
                    self.value[id] = Some(self.value_in(x, Layout::Nchw));
                }
                Op::Identity | Op::Dropout { .. } => {
                    self.value[id] = Some(x);
                }
                Op::Add => {
                    // Elementwise: in the inputs' layout when they share one.
                    let inputs: Vec<ValueId> = (0..node.inputs.len())
                        .map(|k| self.input_value(id, k))
                        .collect();
                    let layout = if inputs
                        .iter()
                        .all(|&v| self.layouts[v] == Layout::ChannelsLast)
                    {
                        Layout::ChannelsLast
                    } else {
                        Layout::Nchw
                    };
                    let inputs = inputs.iter().map(|&v| self.value_in(v, layout)).collect();
                    let out = self.push(id, &[], Kernel::Add, inputs, "add".into());
                    self.layouts[out] = layout;
                }
                Op::Activation { act } => {
                    let a = act.activation();
                    let out = self.push(id, &[], Kernel::Act(a), vec![x], act_name(a));
                    self.layouts[out] = self.layouts[x];
                }
                Op::BatchNorm(b) => {
                    let (gamma, beta) = (self.tensor(id, "weight")?, self.tensor(id, "bias")?);
                    let (mean, var) = (
                        self.tensor(id, "running_mean")?,
                        self.tensor(id, "running_var")?,
                    );
                    let scale: Vec<f32> = gamma
                        .iter()
                        .zip(&var)
                        .map(|(g, v)| g / (v + b.eps).sqrt())
                        .collect();
                    let shift = (0..scale.len())
                        .map(|c| beta[c] - mean[c] * scale[c])
                        .collect();
                    let plane = xs[1..].iter().product::<usize>();
                    let x = self.value_in(x, Layout::Nchw);
                    let kernel = Kernel::ScaleShift {
                        scale,
                        shift,
                        plane,
                    };
                    self.push(id, &[], kernel, vec![x], "batch_norm".into());
                }
            }
        }
        let output = self.value[g.output()].expect("the output is live");
        let output = self.value_in(output, Layout::Nchw);
        let (slots, bufs) = assign_buffers(&self.steps, &self.lens, input, output);
        Ok(Plan {
            steps: self.steps,
            slots,
            bufs,
            input,
            output,
            batch: self.batch,
            input_shape: self.shapes[0].clone(),
            output_shape: self.shapes[g.output()].clone(),
            weights: self.weights,
            scratch_reserved: false,
            threading: Threading::Probing(QUIET_RUNS),
        })
    }
}

fn epilogue_kind(bias: bool, add: bool, act: Option<Activation>) -> String {
    let mut s = String::new();
    if bias || add || act.is_some() {
        s.push(' ');
    }
    if bias {
        s.push_str("+bias");
    }
    if add {
        s.push_str("+add");
    }
    if let Some(a) = act {
        s.push('+');
        s.push_str(&act_name(a));
    }
    s
}

/// Physical buffers by liveness: value `v` is live from the step that writes it to the last step
/// that reads it (the input from before the first step, the output to after the last); values
/// whose lives do not overlap share a buffer. Greedy in order of definition, best fit.
fn assign_buffers(
    steps: &[Step],
    lens: &[usize],
    input: ValueId,
    output: ValueId,
) -> (Vec<Slot>, Vec<Vec<f32>>) {
    // Times: the input is written at 0, step i runs at i + 1, the output is read at steps + 1.
    let mut def = vec![0usize; lens.len()];
    let mut last = vec![0usize; lens.len()];
    for (i, s) in steps.iter().enumerate() {
        def[s.out] = i + 1;
        last[s.out] = last[s.out].max(i + 1);
        for &v in &s.inputs {
            last[v] = last[v].max(i + 1);
        }
    }
    def[input] = 0;
    last[output] = steps.len() + 1;
    let mut order: Vec<ValueId> = (0..lens.len()).collect();
    order.sort_by_key(|&v| (def[v], v));
    // Per buffer: capacity and the time its current value dies.
    let mut bufs: Vec<(usize, usize)> = vec![];
    let mut slots = vec![Slot { buf: 0, len: 0 }; lens.len()];
    for v in order {
        let free = |b: &&(usize, usize)| b.1 < def[v];
        let fit = bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| free(b) && b.0 >= lens[v])
            .min_by_key(|(_, b)| b.0)
            .or_else(|| {
                bufs.iter()
                    .enumerate()
                    .filter(|(_, b)| free(b))
                    .max_by_key(|(_, b)| b.0)
            })
            .map(|(i, _)| i);
        let b = fit.unwrap_or_else(|| {
            bufs.push((0, 0));
            bufs.len() - 1
        });
        bufs[b] = (bufs[b].0.max(lens[v]), last[v]);
        slots[v] = Slot {
            buf: b,
            len: lens[v],
        };
    }
    let bufs = bufs.into_iter().map(|(cap, _)| vec![0.0; cap]).collect();
    (slots, bufs)
}

#[cfg(test)]
mod tests;
