//! Normalisation kernels over slices: batch norm (per-channel statistics over N and the spatial
//! dims, the per-channel scale/shift every mode reduces to, a fused two-pass backward) and layer
//! norm (over the trailing `d` elements of each row, saving mean and 1/std for the backward).
//!
//! Statistics are two-pass (mean, then centred squares), so large means with small spreads keep
//! their variance: a plane is summed in SIMD lanes and planes in f64; small planes (`[N, C]`,
//! 4x4) are summed a whole sample at a time, element-wise, in short f32 runs added into f64.
//! Work is split over channels (statistics) or runs of planes / rows (element passes) once it is
//! big enough ([`crate::parallel`]); small batches stay on the calling thread.

mod rows;

use crate::activation::{ActKind, Activation, ReluKind};
use crate::isa;
use crate::parallel::{self, ROWWISE_PAR_MIN_ELEMS};
use crate::simd::{self, LanesN, Simd, SimdFn};
use rayon::prelude::*;

/// The activation a fused batch norm applies after its per-channel affine `x scale + shift`
/// (the affine batch norm reduces to; see [`fold_affine`]).
#[derive(Clone, Copy)]
struct After<'a, A: ActKind> {
    scale: &'a [f32],
    shift: &'a [f32],
    act: A,
}

impl<A: ActKind> After<'_, A> {
    fn at(&self, ch: usize) -> rows::ActAfter<A> {
        rows::ActAfter {
            scale: self.scale[ch],
            shift: self.shift[ch],
            act: self.act,
        }
    }
}

/// How batch norm sees its input: `n` samples of `c` channels of `hw` contiguous elements
/// (NCHW with `hw = H*W`, `[N, C, L]` with `hw = L`, or `[N, C]` with `hw = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl ChannelDims {
    /// Elements of the whole input.
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements each channel's statistics run over (`n * hw`).
    pub fn per_channel(&self) -> usize {
        self.n * self.hw
    }

    fn check(&self, what: &str, len: usize) {
        assert_eq!(
            len,
            self.len(),
            "{what}: slice length does not match {self:?}"
        );
    }
}

/// Batch statistics of a training-mode forward, per channel (the backward needs `mean` and
/// `invstd`; the running-variance update needs `var`).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    /// Biased (population) variance.
    pub var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    pub invstd: Vec<f32>,
}

/// Where a normalisation backward writes; `None` for gradients nobody wants (their work is
/// skipped). `dgamma` and `dbeta` are overwritten, not accumulated into.
#[derive(Debug, Default)]
pub struct NormGrads<'a> {
    pub dx: Option<&'a mut [f32]>,
    pub dgamma: Option<&'a mut [f32]>,
    pub dbeta: Option<&'a mut [f32]>,
}

/// Planes shorter than this are processed a whole sample (`c * hw` contiguous elements) at a
/// time against per-element copies of the per-channel values, instead of one SIMD call per tiny
/// plane: `[N, C]` input has hw = 1, ResNet's last stage at CIFAR size 4x4.
const SMALL_PLANE: usize = 64;

/// Each channel's value repeated `hw` times: a per-channel vector in the layout of one sample.
fn per_element(values: &[f32], hw: usize) -> Vec<f32> {
    // Sized up front: collecting a flat_map grows the vector step by step.
    let mut out = Vec::with_capacity(values.len() * hw);
    for &v in values {
        out.resize(out.len() + hw, v);
    }
    out
}

/// Fill `a[ch], b[ch] = f(ch)` for every channel, spreading channels over the pool when the
/// pass over `work` elements is worth it.
fn per_channel_pair(
    work: usize,
    a: &mut [f32],
    b: &mut [f32],
    f: impl Fn(usize) -> (f32, f32) + Sync + Send,
) {
    if parallel::worth_splitting(work, ROWWISE_PAR_MIN_ELEMS) {
        parallel::note_fork();
        a.par_iter_mut()
            .zip(b.par_iter_mut())
            .enumerate()
            .for_each(|(ch, (a, b))| (*a, *b) = f(ch));
    } else {
        for (ch, (a, b)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            (*a, *b) = f(ch);
        }
    }
}

/// Samples summed in f32 before their partial sums are added into f64 (keeps f32 rounding to
/// a short run while the inner loop stays 8 f32 lanes wide).
const SAMPLE_BLOCK: usize = 64;

/// Two per-channel sums over small planes, scaled by `scale`: `add(sample, col0, acc_a, acc_b)`
/// adds one sample's contributions for the elements `col0 .. col0 + acc.len()` of the sample
/// element-wise into accumulators (a loop the compiler vectorises), then each channel's `hw`
/// accumulators are added up. Groups of channels are spread over the pool when big enough.
fn small_plane_sums<F>(dims: ChannelDims, a: &mut [f32], b: &mut [f32], scale: f64, add: F)
where
    F: Fn(usize, usize, &mut [f32], &mut [f32]) + Sync + Send,
{
    let hw = dims.hw;
    let group = |ch0: usize, a: &mut [f32], b: &mut [f32]| {
        let cols = a.len() * hw;
        let (mut sa, mut sb) = (vec![0.0f64; cols], vec![0.0f64; cols]);
        let (mut pa, mut pb) = (vec![0.0f32; cols], vec![0.0f32; cols]);
        for first in (0..dims.n).step_by(SAMPLE_BLOCK) {
            for sample in first..dims.n.min(first + SAMPLE_BLOCK) {
                add(sample, ch0 * hw, &mut pa, &mut pb);
            }
            for (s, p) in [(&mut sa, &mut pa), (&mut sb, &mut pb)] {
                s.iter_mut().zip(p.iter_mut()).for_each(|(s, p)| {
                    *s += *p as f64;
                    *p = 0.0;
                });
            }
        }
        for (k, (a, b)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            *a = (sa[k * hw..(k + 1) * hw].iter().sum::<f64>() * scale) as f32;
            *b = (sb[k * hw..(k + 1) * hw].iter().sum::<f64>() * scale) as f32;
        }
    };
    let pieces = parallel::rowwise_pieces(dims.len());
    if pieces <= 1 || dims.c < 2 {
        group(0, a, b);
        return;
    }
    let per = dims.c.div_ceil(pieces);
    parallel::note_fork();
    a.par_chunks_mut(per)
        .zip(b.par_chunks_mut(per))
        .enumerate()
        .for_each(|(i, (a, b))| group(i * per, a, b));
}

/// Per-channel mean and biased variance of `x`.
pub fn channel_mean_var(x: &[f32], dims: ChannelDims, mean: &mut [f32], var: &mut [f32]) {
    dims.check("channel_mean_var", x.len());
    assert!(
        mean.len() == dims.c && var.len() == dims.c,
        "channel_mean_var: statistics need one value per channel"
    );
    assert!(dims.per_channel() > 0, "channel_mean_var: no elements");
    let (c, hw) = (dims.c, dims.hw);
    let count = dims.per_channel() as f64;
    if hw < SMALL_PLANE {
        let len = c * hw;
        let mut unused = vec![0.0f32; c];
        small_plane_sums(dims, mean, &mut unused, 1.0 / count, |n, o, sa, _| {
            let xs = &x[n * len + o..][..sa.len()];
            sa.iter_mut().zip(xs).for_each(|(s, &v)| *s += v);
        });
        let mp = per_element(mean, hw);
        small_plane_sums(dims, var, &mut unused, 1.0 / count, |n, o, sa, _| {
            let (xs, ms) = (&x[n * len + o..][..sa.len()], &mp[o..][..sa.len()]);
            for (s, (&v, &m)) in sa.iter_mut().zip(xs.iter().zip(ms)) {
                *s += (v - m) * (v - m);
            }
        });
        return;
    }
    per_channel_pair(x.len(), mean, var, |ch| {
        let planes = || (0..dims.n).map(move |b| [&x[(b * c + ch) * hw..][..hw]]);
        let [sum] = rows::plane_sums(simd::Sum, planes());
        let m = (sum / count) as f32;
        let [q] = rows::plane_sums(rows::SqDev(m), planes());
        (m, (q / count) as f32)
    });
}

/// Per-channel `(Σ g, Σ g (x - mean))` with `g = dy`, or with `g = dy act'(x scale + shift)`
/// when an activation was fused after the affine: the first pass of every batch-norm backward.
fn channel_grad_sums<A: ActKind>(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    mean: &[f32],
    after: Option<After<A>>,
) -> (Vec<f32>, Vec<f32>) {
    let (c, hw) = (dims.c, dims.hw);
    let (mut sdy, mut sdxm) = (vec![0.0f32; c], vec![0.0f32; c]);
    if dims.is_empty() {
        return (sdy, sdxm);
    }
    if hw < SMALL_PLANE {
        let (len, mp) = (c * hw, per_element(mean, hw));
        let Some(after) = after else {
            small_plane_sums(dims, &mut sdy, &mut sdxm, 1.0, |n, o, sa, sb| {
                let k = sa.len();
                let (gs, xs, ms) = (
                    &dy[n * len + o..][..k],
                    &x[n * len + o..][..k],
                    &mp[o..][..k],
                );
                for i in 0..k {
                    sa[i] += gs[i];
                    sb[i] += gs[i] * (xs[i] - ms[i]);
                }
            });
            return (sdy, sdxm);
        };
        let (sp, tp) = (per_element(after.scale, hw), per_element(after.shift, hw));
        small_plane_sums(dims, &mut sdy, &mut sdxm, 1.0, |n, o, sa, sb| {
            let k = sa.len();
            let (gs, xs) = (&dy[n * len + o..][..k], &x[n * len + o..][..k]);
            let pats = [&mp, &sp, &tp].map(|v| &v[o..o + k]);
            rows::masked_sums_into(after.act, [sa, sb], [gs, xs, pats[0], pats[1], pats[2]]);
        });
        return (sdy, sdxm);
    }
    per_channel_pair(x.len(), &mut sdy, &mut sdxm, |ch| {
        let planes = (0..dims.n).map(|b| {
            let o = (b * c + ch) * hw;
            [&dy[o..o + hw], &x[o..o + hw]]
        });
        let dot = rows::CenteredDot(mean[ch]);
        let [s, d] = match after {
            None => rows::plane_sums(dot, planes),
            Some(a) => rows::plane_sums(rows::MaskedCenteredDot(dot, a.at(ch)), planes),
        };
        (s as f32, d as f32)
    });
    (sdy, sdxm)
}

/// dbeta = `Σ dy` and dgamma = `Σ dy (x - mean) invstd` from [`channel_grad_sums`], where
/// wanted.
fn write_affine_grads(
    sdy: &[f32],
    sdxm: &[f32],
    invstd: &[f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
) {
    if let Some(db) = dbeta {
        db.copy_from_slice(sdy);
    }
    if let Some(dg) = dgamma {
        for ((g, &s), &is) in dg.iter_mut().zip(sdxm).zip(invstd) {
            *g = s * is;
        }
    }
}

/// An element pass over `out` (laid out like the input), in parallel runs when big enough:
/// small planes call `small(offset, sample_out)` once per sample; each large plane is the lane
/// function and input planes `plane(channel, offset)` gives, mapped ([`rows::map_planes`]);
/// `offset` locates the output in the input.
fn for_each_plane<'a, L: LanesN<N>, const N: usize>(
    out: &mut [f32],
    dims: ChannelDims,
    small: impl Fn(usize, &mut [f32]) + Sync + Send,
    plane: impl Fn(usize, usize) -> (L, [&'a [f32]; N]) + Sync + Send,
) {
    let (c, hw) = (dims.c, dims.hw);
    if out.is_empty() {
        return;
    }
    let pieces = parallel::rowwise_pieces(out.len());
    if hw < SMALL_PLANE {
        let len = c * hw;
        parallel::for_each_item_run_mut(out, len, pieces, |first, run| {
            for (k, sample) in run.chunks_exact_mut(len).enumerate() {
                small((first + k) * len, sample);
            }
        });
        return;
    }
    parallel::for_each_item_run_mut(out, hw, pieces, |first, run| {
        // Count channels rather than take `p % c` per plane.
        let planes = (first..).scan(first % c, |ch, p| {
            let this = *ch;
            *ch = if this + 1 == c { 0 } else { this + 1 };
            Some(plane(this, p * hw))
        });
        rows::map_planes(planes, run, hw);
    });
}

/// `y = x * scale[ch] + shift[ch]`: batch norm in eval mode (and after the statistics, in
/// training mode).
pub fn channel_scale_shift(
    x: &[f32],
    dims: ChannelDims,
    scale: &[f32],
    shift: &[f32],
    y: &mut [f32],
) {
    dims.check("channel_scale_shift", x.len());
    dims.check("channel_scale_shift", y.len());
    assert!(scale.len() == dims.c && shift.len() == dims.c);
    let hw = dims.hw;
    let (sp, tp) = if hw < SMALL_PLANE && !y.is_empty() {
        (per_element(scale, hw), per_element(shift, hw))
    } else {
        (Vec::new(), Vec::new())
    };
    for_each_plane(
        y,
        dims,
        |o, out| {
            let xs = &x[o..o + out.len()];
            for (y, ((&v, &s), &t)) in out.iter_mut().zip(xs.iter().zip(&sp).zip(&tp)) {
                *y = v * s + t;
            }
        },
        |ch, o| (rows::ScaleShift(scale[ch], shift[ch]), [&x[o..o + hw]]),
    );
}

/// `dx = k[ch] g + p[ch] x + q[ch]` with `g = dy`, or `g = dy act'(x scale + shift)` after a
/// fused activation.
fn channel_affine2<A: ActKind>(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    kpq: [&[f32]; 3],
    after: Option<After<A>>,
    dx: &mut [f32],
) {
    let [k, p, q] = kpq;
    let hw = dims.hw;
    let affine = |ch: usize| rows::Affine2 {
        k: k[ch],
        p: p[ch],
        q: q[ch],
    };
    let Some(after) = after else {
        let pats = if hw < SMALL_PLANE {
            [k, p, q].map(|v| per_element(v, hw))
        } else {
            Default::default()
        };
        for_each_plane(
            dx,
            dims,
            |o, out| {
                let (g, v) = (&dy[o..o + out.len()], &x[o..o + out.len()]);
                let [kp, pp, qp] = &pats;
                let coef = kp.iter().zip(pp).zip(qp);
                for (d, ((&g, &v), ((&k, &p), &q))) in out.iter_mut().zip(g.iter().zip(v).zip(coef))
                {
                    *d = k * g + (p * v + q);
                }
            },
            |ch, o| (affine(ch), [&dy[o..o + hw], &x[o..o + hw]]),
        );
        return;
    };
    let pats = if hw < SMALL_PLANE {
        [k, p, q, after.scale, after.shift].map(|v| per_element(v, hw))
    } else {
        Default::default()
    };
    for_each_plane(
        dx,
        dims,
        |o, out| {
            let (g, v) = (&dy[o..o + out.len()], &x[o..o + out.len()]);
            let [kp, pp, qp, sp, tp] = pats.each_ref().map(|p| &p[..]);
            let f = rows::MaskedAffine2Each(after.act);
            simd::map_on(isa::current(), f, [g, v, kp, pp, qp, sp, tp], out);
        },
        |ch, o| {
            let f = rows::MaskedAffine2(affine(ch), after.at(ch));
            (f, [&dy[o..o + hw], &x[o..o + hw]])
        },
    );
}

/// `y = act(x * scale[ch] + shift[ch])`: batch norm with an activation fused after it (the
/// affine rounded in two steps, so the backward recomputes the same pre-activations).
pub fn channel_scale_shift_act(
    x: &[f32],
    dims: ChannelDims,
    scale: &[f32],
    shift: &[f32],
    act: Activation,
    y: &mut [f32],
) {
    dims.check("channel_scale_shift_act", x.len());
    dims.check("channel_scale_shift_act", y.len());
    assert!(scale.len() == dims.c && shift.len() == dims.c);
    match act {
        Activation::Relu => scale_shift_act(
            x,
            dims,
            After {
                scale,
                shift,
                act: ReluKind,
            },
            y,
        ),
        _ => scale_shift_act(x, dims, After { scale, shift, act }, y),
    }
}

fn scale_shift_act<A: ActKind>(x: &[f32], dims: ChannelDims, after: After<A>, y: &mut [f32]) {
    let hw = dims.hw;
    let (sp, tp) = if hw < SMALL_PLANE && !y.is_empty() {
        (per_element(after.scale, hw), per_element(after.shift, hw))
    } else {
        (Vec::new(), Vec::new())
    };
    for_each_plane(
        y,
        dims,
        |o, out| {
            let xs = &x[o..o + out.len()];
            let f = rows::ActAfterEach(after.act);
            simd::map_on(isa::current(), f, [xs, &sp, &tp], out);
        },
        |ch, o| (after.at(ch), [&x[o..o + hw]]),
    );
}

/// `y = act(x * scale[ch] + shift[ch] + r)`: batch norm, a residual added, then an activation,
/// in one pass (a ResNet block's end). The affine is rounded in two steps, so
/// [`residual_act_grad`] recomputes the same pre-activations.
pub fn channel_scale_shift_add_act(
    x: &[f32],
    r: &[f32],
    dims: ChannelDims,
    scale: &[f32],
    shift: &[f32],
    act: Activation,
    y: &mut [f32],
) {
    dims.check("channel_scale_shift_add_act", x.len());
    dims.check("channel_scale_shift_add_act", r.len());
    dims.check("channel_scale_shift_add_act", y.len());
    assert!(scale.len() == dims.c && shift.len() == dims.c);
    match act {
        Activation::Relu => residual_pass(x, r, None, dims, (scale, shift), ReluKind, y),
        _ => residual_pass(x, r, None, dims, (scale, shift), act, y),
    }
}

/// The gradient reaching the residual sum of [`channel_scale_shift_add_act`]:
/// `g = dy act'(x * scale[ch] + shift[ch] + r)` (the residual's gradient, and the one the batch
/// norm's backward takes).
#[allow(clippy::too_many_arguments)] // the forward's inputs and affine, and dy
pub fn residual_act_grad(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    dims: ChannelDims,
    scale: &[f32],
    shift: &[f32],
    act: Activation,
    g: &mut [f32],
) {
    for v in [dy, x, r] {
        dims.check("residual_act_grad", v.len());
    }
    dims.check("residual_act_grad", g.len());
    assert!(scale.len() == dims.c && shift.len() == dims.c);
    match act {
        Activation::Relu => residual_pass(x, r, Some(dy), dims, (scale, shift), ReluKind, g),
        _ => residual_pass(x, r, Some(dy), dims, (scale, shift), act, g),
    }
}

/// The forward (`dy` None) or the gradient pass of the residual form, into `out`.
fn residual_pass<A: ActKind>(
    x: &[f32],
    r: &[f32],
    dy: Option<&[f32]>,
    dims: ChannelDims,
    (scale, shift): (&[f32], &[f32]),
    act: A,
    out: &mut [f32],
) {
    let hw = dims.hw;
    let (sp, tp) = if hw < SMALL_PLANE && !out.is_empty() {
        (per_element(scale, hw), per_element(shift, hw))
    } else {
        (Vec::new(), Vec::new())
    };
    let after = After { scale, shift, act };
    let each = rows::ActAfterResEach(act);
    let isa = isa::current();
    match dy {
        None => for_each_plane(
            out,
            dims,
            |o, out| {
                let (xs, rs) = (&x[o..o + out.len()], &r[o..o + out.len()]);
                simd::map_on(isa, each, [xs, rs, &sp, &tp], out);
            },
            |ch, o| {
                (
                    rows::ActAfterRes(after.at(ch)),
                    [&x[o..o + hw], &r[o..o + hw]],
                )
            },
        ),
        Some(dy) => for_each_plane(
            out,
            dims,
            |o, out| {
                let n = out.len();
                let (gs, xs, rs) = (&dy[o..o + n], &x[o..o + n], &r[o..o + n]);
                simd::map_on(isa, each, [gs, xs, rs, &sp, &tp], out);
            },
            |ch, o| {
                let f = rows::ActAfterRes(after.at(ch));
                (f, [&dy[o..o + hw], &x[o..o + hw], &r[o..o + hw]])
            },
        ),
    }
}

/// The per-channel `(scale, shift)` that batch norm with statistics `mean`/`invstd` and the
/// optional affine `gamma`/`beta` amounts to: `y = x * scale + shift`. Also what BN folding
/// writes into a preceding convolution.
pub fn fold_affine(
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = invstd
        .iter()
        .enumerate()
        .map(|(ch, &s)| s * gamma.map_or(1.0, |g| g[ch]))
        .collect();
    let shift = mean
        .iter()
        .zip(&scale)
        .enumerate()
        .map(|(ch, (&m, &s))| beta.map_or(0.0, |b| b[ch]) - m * s)
        .collect();
    (scale, shift)
}

/// Batch norm in training mode: normalise `x` with its own per-channel statistics, then apply
/// the optional affine, in one output pass. Returns the statistics for the backward and for the
/// running-statistics update.
pub fn batch_norm_train_forward(
    x: &[f32],
    dims: ChannelDims,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) -> BatchStats {
    let st = batch_stats(x, dims, eps);
    let (scale, shift) = fold_affine(&st.mean, &st.invstd, gamma, beta);
    channel_scale_shift(x, dims, &scale, &shift, y);
    st
}

/// [`batch_norm_train_forward`] followed by `act`, in the same single output pass: the
/// normalised values are never written. [`batch_norm_act_backward`] is its backward.
pub fn batch_norm_act_train_forward(
    x: &[f32],
    dims: ChannelDims,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    act: Activation,
    y: &mut [f32],
) -> BatchStats {
    let st = batch_stats(x, dims, eps);
    let (scale, shift) = fold_affine(&st.mean, &st.invstd, gamma, beta);
    channel_scale_shift_act(x, dims, &scale, &shift, act, y);
    st
}

/// The batch statistics of `x` a training-mode batch norm normalises with.
pub fn batch_stats(x: &[f32], dims: ChannelDims, eps: f32) -> BatchStats {
    let c = dims.c;
    let (mut mean, mut var) = (vec![0.0f32; c], vec![0.0f32; c]);
    channel_mean_var(x, dims, &mut mean, &mut var);
    let invstd: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    BatchStats { mean, var, invstd }
}

/// Backward of [`batch_norm_act_train_forward`] (or of [`channel_scale_shift_act`] with the
/// statistics `mean`/`invstd` when `training` is false): the activation's mask is recomputed
/// from `x` inside the two passes of the batch-norm backward, so the gradient through the
/// activation is never written either. `gamma` and `beta` are the forward's.
#[allow(clippy::too_many_arguments)] // the forward's inputs and statistics, and the mode
pub fn batch_norm_act_backward(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    (mean, invstd): (&[f32], &[f32]),
    (gamma, beta): (Option<&[f32]>, Option<&[f32]>),
    act: Activation,
    training: bool,
    grads: NormGrads,
) {
    dims.check("batch_norm_act_backward", dy.len());
    dims.check("batch_norm_act_backward", x.len());
    let (scale, shift) = fold_affine(mean, invstd, gamma, beta);
    let (stats, mode) = ((mean, invstd), (gamma, training));
    let (scale, shift) = (&scale[..], &shift[..]);
    match act {
        Activation::Relu => {
            let after = After {
                scale,
                shift,
                act: ReluKind,
            };
            bn_act_backward(dy, x, dims, stats, mode, after, grads)
        }
        _ => bn_act_backward(dy, x, dims, stats, mode, After { scale, shift, act }, grads),
    }
}

fn bn_act_backward<A: ActKind>(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    (mean, invstd): (&[f32], &[f32]),
    (gamma, training): (Option<&[f32]>, bool),
    after: After<A>,
    grads: NormGrads,
) {
    if training {
        bn_train_backward(dy, x, dims, mean, invstd, gamma, Some(after), grads);
        return;
    }
    if grads.dgamma.is_some() || grads.dbeta.is_some() {
        let (sdy, sdxm) = channel_grad_sums(dy, x, dims, mean, Some(after));
        write_affine_grads(&sdy, &sdxm, invstd, grads.dgamma, grads.dbeta);
    }
    if let Some(dx) = grads.dx {
        dims.check("batch_norm_act_backward", dx.len());
        // dx = scale g: the affine pass with p = q = 0.
        let zero = vec![0.0; dims.c];
        channel_affine2(dy, x, dims, [after.scale, &zero, &zero], Some(after), dx);
    }
}

/// Backward of [`batch_norm_train_forward`] given the saved `mean` and `invstd`: one pass for the
/// per-channel sums (which are dbeta and dgamma), one pass for dx.
pub fn batch_norm_train_backward(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    grads: NormGrads,
) {
    dims.check("batch_norm_train_backward", dy.len());
    dims.check("batch_norm_train_backward", x.len());
    bn_train_backward::<Activation>(dy, x, dims, mean, invstd, gamma, None, grads);
}

/// The training-mode backward, of the gradient `dy` has after `after` (when fused).
#[allow(clippy::too_many_arguments)]
fn bn_train_backward<A: ActKind>(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    after: Option<After<A>>,
    grads: NormGrads,
) {
    let c = dims.c;
    let (sdy, sdxm) = channel_grad_sums(dy, x, dims, mean, after);
    write_affine_grads(&sdy, &sdxm, invstd, grads.dgamma, grads.dbeta);
    if let Some(dx) = grads.dx {
        dims.check("batch_norm_train_backward", dx.len());
        // dx = k (dy - mean(dy) - xhat mean(dy xhat)), k = gamma invstd, rewritten as
        // k dy + p x + q so the second pass is one fused multiply-add chain.
        let m = dims.per_channel() as f64;
        let (mut k, mut p, mut q) = (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
        for ch in 0..c {
            let is = invstd[ch] as f64;
            let kk = gamma.map_or(1.0, |g| g[ch] as f64) * is;
            let a = sdy[ch] as f64 / m;
            let b = is * is * sdxm[ch] as f64 / m;
            k[ch] = kk as f32;
            p[ch] = (-kk * b) as f32;
            q[ch] = (kk * (mean[ch] as f64 * b - a)) as f32;
        }
        channel_affine2(dy, x, dims, [&k, &p, &q], after, dx);
    }
}

/// Backward of batch norm in eval mode (statistics are constants: `mean` and `invstd` come from
/// the running statistics): dx is a per-channel scale of dy; the sums pass runs only when the
/// affine parameters want gradients.
pub fn batch_norm_eval_backward(
    dy: &[f32],
    x: &[f32],
    dims: ChannelDims,
    mean: &[f32],
    invstd: &[f32],
    gamma: Option<&[f32]>,
    grads: NormGrads,
) {
    dims.check("batch_norm_eval_backward", dy.len());
    dims.check("batch_norm_eval_backward", x.len());
    if grads.dgamma.is_some() || grads.dbeta.is_some() {
        let (sdy, sdxm) = channel_grad_sums::<Activation>(dy, x, dims, mean, None);
        write_affine_grads(&sdy, &sdxm, invstd, grads.dgamma, grads.dbeta);
    }
    if let Some(dx) = grads.dx {
        dims.check("batch_norm_eval_backward", dx.len());
        let (scale, _) = fold_affine(mean, invstd, gamma, None);
        channel_scale_shift(dy, dims, &scale, &vec![0.0; dims.c], dx);
    }
}

// ----- layer norm -------------------------------------------------------------------------------

/// Per-row statistics of a layer-norm forward, saved for the backward.
#[derive(Clone, Debug, PartialEq)]
pub struct RowStats {
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` with the biased variance.
    pub rstd: Vec<f32>,
}

fn check_layer_norm(x: &[f32], d: usize, gamma: Option<&[f32]>, beta: Option<&[f32]>) {
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "layer_norm: rows of {d} do not tile {}",
        x.len()
    );
    assert!(
        gamma.is_none_or(|g| g.len() == d) && beta.is_none_or(|b| b.len() == d),
        "layer_norm: gamma/beta need {d} elements"
    );
}

/// Layer norm of the `d`-element rows of `x` into `y`, each row's
/// `(mean, rstd)` into `stats` when given: one dispatch for the run.
struct LayerNormRows<'a> {
    x: &'a [f32],
    d: usize,
    gamma: Option<&'a [f32]>,
    beta: Option<&'a [f32]>,
    eps: f32,
    y: &'a mut [f32],
    stats: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl SimdFn for LayerNormRows<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let Self {
            x, d, gamma, beta, ..
        } = self;
        let mut stats = self.stats;
        for (j, (xr, yr)) in x
            .chunks_exact(d)
            .zip(self.y.chunks_exact_mut(d))
            .enumerate()
        {
            let (m, r) = layer_norm_row(s, xr, gamma, beta, self.eps, yr);
            if let Some((mean, rstd)) = stats.as_mut() {
                (mean[j], rstd[j]) = (m, r);
            }
        }
    }
}

/// Normalise one row into `y`; returns its `(mean, rstd)`.
#[inline(always)]
fn layer_norm_row<S: Simd>(
    s: S,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) -> (f32, f32) {
    let d = x.len() as f32;
    let m = simd::sums(s, simd::Sum, [x])[0] / d;
    let r = 1.0 / (simd::sums(s, rows::SqDev(m), [x])[0] / d + eps).sqrt();
    if let (Some(g), Some(b)) = (gamma, beta) {
        simd::map(s, rows::Normalize(m, r), [x, g, b], y);
    } else {
        simd::map(s, rows::ScaleShift(r, -m * r), [x], y);
        if let Some(g) = gamma {
            y.iter_mut().zip(g).for_each(|(y, g)| *y *= g);
        }
        if let Some(b) = beta {
            y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
    (m, r)
}

/// Rows per parallel piece of a row-wise pass over `len` elements, or `None` to stay on this
/// thread.
fn rows_per_piece(len: usize, d: usize) -> Option<usize> {
    let (rows, pieces) = (len / d, parallel::rowwise_pieces(len));
    (pieces > 1 && rows > 1).then(|| rows.div_ceil(pieces))
}

/// Layer norm over the trailing `d` elements of each row of `x`, with the optional per-element
/// affine `gamma`/`beta`; returns the per-row statistics for the backward.
pub fn layer_norm_forward(
    x: &[f32],
    d: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) -> RowStats {
    check_layer_norm(x, d, gamma, beta);
    assert_eq!(x.len(), y.len(), "layer_norm_forward: lengths differ");
    let rows = x.len() / d;
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    let run = |first: usize, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]| {
        simd::dispatch(LayerNormRows {
            x: &x[first * d..][..y.len()],
            d,
            gamma,
            beta,
            eps,
            y,
            stats: Some((mean, rstd)),
        })
    };
    match rows_per_piece(x.len(), d) {
        None => run(0, y, &mut mean, &mut rstd),
        Some(per) => {
            parallel::note_fork();
            y.par_chunks_mut(per * d)
                .zip(mean.par_chunks_mut(per))
                .zip(rstd.par_chunks_mut(per))
                .enumerate()
                .for_each(|(i, ((y, m), r))| run(i * per, y, m, r));
        }
    }
    RowStats { mean, rstd }
}

/// Layer norm without saving statistics (inference: no allocation).
pub fn layer_norm_infer(
    x: &[f32],
    d: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    check_layer_norm(x, d, gamma, beta);
    assert_eq!(x.len(), y.len(), "layer_norm_infer: lengths differ");
    parallel::for_each_item_run_mut(y, d, parallel::rowwise_pieces(y.len()), |first, run| {
        simd::dispatch(LayerNormRows {
            x: &x[first * d..][..run.len()],
            d,
            gamma,
            beta,
            eps,
            y: run,
            stats: None,
        })
    });
}

/// What a layer-norm backward reads: the upstream gradient, the input, the row length, the
/// saved per-row statistics and the optional gamma.
#[derive(Clone, Copy)]
struct LayerNormSaved<'a> {
    dy: &'a [f32],
    x: &'a [f32],
    d: usize,
    mean: &'a [f32],
    rstd: &'a [f32],
    gamma: Option<&'a [f32]>,
}

/// The layer-norm backward of rows `first..first + rows`: their dx (into `dx`, which starts at
/// row `first`) and their dgamma/dbeta contributions added into `dg`/`db`.
fn layer_norm_backward_rows(
    sv: LayerNormSaved,
    rows: (usize, usize),
    dx: Option<&mut [f32]>,
    dg: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
) {
    struct Run<'a>(
        LayerNormSaved<'a>,
        (usize, usize),
        [Option<&'a mut [f32]>; 3],
    );
    impl SimdFn for Run<'_> {
        type Output = ();
        #[inline(always)]
        fn call<S: Simd>(self, s: S) {
            let [dx, dg, db] = self.2;
            layer_norm_backward_rows_with(s, self.0, self.1, dx, dg, db);
        }
    }
    simd::dispatch(Run(sv, rows, [dx, dg, db]))
}

/// [`layer_norm_backward_rows`] with the ISA `s`.
#[inline(always)]
fn layer_norm_backward_rows_with<S: Simd>(
    s: S,
    sv: LayerNormSaved,
    (first, rows): (usize, usize),
    mut dx: Option<&mut [f32]>,
    mut dg: Option<&mut [f32]>,
    mut db: Option<&mut [f32]>,
) {
    let d = sv.d;
    let df = d as f32;
    for j in 0..rows {
        let r = first + j;
        let (gs, xs) = (&sv.dy[r * d..][..d], &sv.x[r * d..][..d]);
        let (m, rs) = (sv.mean[r], sv.rstd[r]);
        if let Some(dx) = dx.as_deref_mut() {
            // dx = rs (g - mean(g) - xhat mean(g xhat)) with g = dy gamma, xhat = (x - m) rs,
            // rewritten as rs g + p x + q.
            let [s1, s2] = match sv.gamma {
                Some(w) => simd::sums(s, rows::CenteredDot(m), [gs, w, xs]),
                None => simd::sums(s, rows::CenteredDot(m), [gs, xs]),
            };
            let (c1, c2) = (s1 / df, s2 * rs / df);
            let p = -rs * rs * c2;
            let q = rs * rs * c2 * m - rs * c1;
            let out = &mut dx[j * d..][..d];
            let f = rows::Affine2 { k: rs, p, q };
            match sv.gamma {
                Some(w) => simd::map(s, f, [gs, w, xs], out),
                None => simd::map(s, f, [gs, xs], out),
            };
        }
        if let Some(dg) = dg.as_deref_mut() {
            for (g, (&dy, &v)) in dg.iter_mut().zip(gs.iter().zip(xs)) {
                *g += dy * (v - m) * rs;
            }
        }
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(gs).for_each(|(b, g)| *b += g);
        }
    }
}

/// Backward of [`layer_norm_forward`] given its saved per-row `mean` and `rstd`.
pub fn layer_norm_backward(
    dy: &[f32],
    x: &[f32],
    d: usize,
    mean: &[f32],
    rstd: &[f32],
    gamma: Option<&[f32]>,
    grads: NormGrads,
) {
    check_layer_norm(x, d, gamma, None);
    assert_eq!(dy.len(), x.len(), "layer_norm_backward: lengths differ");
    let rows = x.len() / d;
    assert!(mean.len() == rows && rstd.len() == rows);
    let NormGrads {
        dx,
        mut dgamma,
        mut dbeta,
    } = grads;
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), x.len(), "layer_norm_backward: dx length");
    }
    let sv = LayerNormSaved {
        dy,
        x,
        d,
        mean,
        rstd,
        gamma,
    };
    let Some(per) = rows_per_piece(x.len(), d) else {
        dgamma.iter_mut().for_each(|g| g.fill(0.0));
        dbeta.iter_mut().for_each(|b| b.fill(0.0));
        layer_norm_backward_rows(sv, (0, rows), dx, dgamma, dbeta);
        return;
    };
    // Each piece sums its own dgamma/dbeta; the pieces are added in order (deterministic).
    let (want_g, want_b) = (dgamma.is_some(), dbeta.is_some());
    let piece = |first: usize, n: usize, dx: Option<&mut [f32]>| {
        let mut g = vec![0.0f32; if want_g { d } else { 0 }];
        let mut b = vec![0.0f32; if want_b { d } else { 0 }];
        let (pg, pb) = (
            want_g.then_some(g.as_mut_slice()),
            want_b.then_some(b.as_mut_slice()),
        );
        layer_norm_backward_rows(sv, (first, n), dx, pg, pb);
        [g, b]
    };
    parallel::note_fork();
    let partials: Vec<[Vec<f32>; 2]> = match dx {
        Some(dx) => dx
            .par_chunks_mut(per * d)
            .enumerate()
            .map(|(i, c)| piece(i * per, c.len() / d, Some(c)))
            .collect(),
        None => (0..rows.div_ceil(per))
            .into_par_iter()
            .map(|i| piece(i * per, per.min(rows - i * per), None))
            .collect(),
    };
    for (which, out) in [dgamma, dbeta].into_iter().enumerate() {
        if let Some(out) = out {
            out.fill(0.0);
            for part in &partials {
                out.iter_mut().zip(&part[which]).for_each(|(o, v)| *o += v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64, offset: f32) -> Vec<f32> {
        crate::simd::test_bits(seed)
            .take(n)
            .map(|s| offset + ((s >> 11) % 10_000) as f32 / 2500.0 - 2.0)
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = (b.iter().map(|v| v * v).sum::<f64>() / b.len().max(1) as f64).sqrt();
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            // Floor: exact-zero references (a 2-element batch's dx) are judged on the inputs' O(1) scale.
            let err = (x as f64 - y).abs() / y.abs().max(scale).max(1e-3);
            assert!(err <= tol, "{what}[{i}]: {x} vs {y} (rel {err:.2e})");
        }
    }

    /// f64 reference statistics: (mean, biased var) per channel.
    fn ref_stats(x: &[f32], d: ChannelDims) -> (Vec<f64>, Vec<f64>) {
        let at = |b: usize, ch: usize, i: usize| x[(b * d.c + ch) * d.hw + i] as f64;
        let cnt = d.per_channel() as f64;
        (0..d.c)
            .map(|ch| {
                let vals: Vec<f64> = (0..d.n)
                    .flat_map(|b| (0..d.hw).map(move |i| (b, i)))
                    .map(|(b, i)| at(b, ch, i))
                    .collect();
                let m = vals.iter().sum::<f64>() / cnt;
                (m, vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / cnt)
            })
            .unzip()
    }

    /// Small planes (below SMALL_PLANE, including [N, C]) and large ones, odd sizes, and two
    /// big enough to take the parallel paths.
    const DIMS: [(usize, usize, usize); 11] = [
        (1, 1, 3),
        (3, 3, 1),
        (5, 4, 1),
        (2, 3, 7),
        (3, 2, 17),
        (1, 4, 33),
        (2, 5, 9),
        (3, 2, 64),
        (2, 3, 65),
        (32, 64, 16),
        (4, 8, 1024),
    ];

    #[test]
    fn batch_norm_forward_matches_reference() {
        for (seed, &(n, c, hw)) in DIMS.iter().enumerate() {
            let dims = ChannelDims { n, c, hw };
            let x = data(dims.len(), seed as u64, 0.3);
            let (g, b) = (data(c, 100 + seed as u64, 1.0), data(c, 200, 0.0));
            let (rm, rv) = ref_stats(&x, dims);
            for affine in [false, true] {
                let (gamma, beta) = if affine {
                    (Some(g.as_slice()), Some(b.as_slice()))
                } else {
                    (None, None)
                };
                let mut y = vec![0.0; dims.len()];
                let st = batch_norm_train_forward(&x, dims, gamma, beta, 1e-5, &mut y);
                assert_close(&st.mean, &rm, 1e-5, "mean");
                assert_close(&st.var, &rv, 1e-5, "var");
                let expect: Vec<f64> = (0..dims.len())
                    .map(|i| {
                        let ch = (i / hw) % c;
                        let xh = (x[i] as f64 - rm[ch]) / (rv[ch] + 1e-5).sqrt();
                        if affine {
                            xh * g[ch] as f64 + b[ch] as f64
                        } else {
                            xh
                        }
                    })
                    .collect();
                assert_close(&y, &expect, 1e-5, &format!("y {dims:?}"));
            }
        }
    }

    #[test]
    fn variance_is_stable_for_a_large_mean() {
        // Values 1e4 + U(-2, 2): E[x^2] - E[x]^2 in f32 would lose every digit of the variance.
        let dims = ChannelDims {
            n: 3,
            c: 2,
            hw: 1000,
        };
        let x = data(dims.len(), 7, 1.0e4);
        let (rm, rv) = ref_stats(&x, dims);
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        channel_mean_var(&x, dims, &mut m, &mut v);
        assert_close(&m, &rm, 1e-6, "mean");
        assert_close(&v, &rv, 1e-4, "var");
        let rows = ChannelDims {
            n: 500,
            c: 2,
            hw: 1,
        };
        channel_mean_var(&x[..1000], rows, &mut m, &mut v);
        let (rm, rv) = ref_stats(&x[..1000], rows);
        assert_close(&v, &rv, 1e-4, "var [N, C]");
        assert_close(&m, &rm, 1e-6, "mean [N, C]");
    }

    /// f64 reference batch-norm backward: (dx, dgamma, dbeta).
    fn ref_bn_backward(
        dy: &[f32],
        x: &[f32],
        d: ChannelDims,
        mean: &[f64],
        invstd: &[f64],
        gamma: &[f32],
        training: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let ch_of = |i: usize| (i / d.hw) % d.c;
        let (mut sdy, mut sdxh) = (vec![0.0; d.c], vec![0.0; d.c]);
        for i in 0..x.len() {
            let ch = ch_of(i);
            sdy[ch] += dy[i] as f64;
            sdxh[ch] += dy[i] as f64 * (x[i] as f64 - mean[ch]) * invstd[ch];
        }
        let m = d.per_channel() as f64;
        let dx = (0..x.len())
            .map(|i| {
                let ch = ch_of(i);
                let k = gamma[ch] as f64 * invstd[ch];
                if training {
                    let xh = (x[i] as f64 - mean[ch]) * invstd[ch];
                    k / m * (m * dy[i] as f64 - sdy[ch] - xh * sdxh[ch])
                } else {
                    k * dy[i] as f64
                }
            })
            .collect();
        (dx, sdxh, sdy)
    }

    #[test]
    fn batch_norm_backward_matches_reference() {
        for (seed, &(n, c, hw)) in DIMS.iter().enumerate() {
            let dims = ChannelDims { n, c, hw };
            let seed = seed as u64;
            let (x, dy) = (
                data(dims.len(), seed, -0.4),
                data(dims.len(), seed + 50, 0.1),
            );
            let g = data(c, 300 + seed, 1.0);
            let mut y = vec![0.0; dims.len()];
            let st = batch_norm_train_forward(&x, dims, Some(&g), None, 1e-5, &mut y);
            let m64: Vec<f64> = st.mean.iter().map(|&v| v as f64).collect();
            let is64: Vec<f64> = st.invstd.iter().map(|&v| v as f64).collect();
            for training in [true, false] {
                let (rdx, rdg, rdb) = ref_bn_backward(&dy, &x, dims, &m64, &is64, &g, training);
                let (mut dx, mut dg, mut db) = (vec![0.0; dims.len()], vec![0.0; c], vec![0.0; c]);
                let grads = NormGrads {
                    dx: Some(&mut dx),
                    dgamma: Some(&mut dg),
                    dbeta: Some(&mut db),
                };
                if training {
                    batch_norm_train_backward(&dy, &x, dims, &st.mean, &st.invstd, Some(&g), grads);
                } else {
                    batch_norm_eval_backward(&dy, &x, dims, &st.mean, &st.invstd, Some(&g), grads);
                }
                let what = format!("{dims:?} training={training}");
                assert_close(&dx, &rdx, 2e-4, &format!("dx {what}"));
                assert_close(&dg, &rdg, 1e-4, &format!("dgamma {what}"));
                assert_close(&db, &rdb, 1e-5, &format!("dbeta {what}"));
                // Only dx wanted, without gamma: the same dx as gamma = 1.
                let ones = vec![1.0f32; c];
                let (rdx1, _, _) = ref_bn_backward(&dy, &x, dims, &m64, &is64, &ones, training);
                let only_dx = NormGrads {
                    dx: Some(&mut dx),
                    ..Default::default()
                };
                if training {
                    batch_norm_train_backward(&dy, &x, dims, &st.mean, &st.invstd, None, only_dx);
                } else {
                    batch_norm_eval_backward(&dy, &x, dims, &st.mean, &st.invstd, None, only_dx);
                }
                assert_close(&dx, &rdx1, 2e-4, &format!("dx no gamma {what}"));
            }
        }
    }

    /// Batch norm with a fused activation against batch norm, then the activation (f64 reference
    /// on the same f32 pre-activations), in both modes: output, dx, dgamma, dbeta; every plane
    /// size (small, odd, parallel), activations with kinks on both sides and a smooth one.
    #[test]
    fn fused_activation_matches_batch_norm_then_activation() {
        for (seed, &(n, c, hw)) in DIMS.iter().enumerate() {
            let dims = ChannelDims { n, c, hw };
            let seed = seed as u64;
            let (x, dy) = (
                data(dims.len(), seed, -0.4),
                data(dims.len(), seed + 50, 0.1),
            );
            // Wide affine: pre-activations reach past ReLU6's upper bound.
            let g: Vec<f32> = data(c, 300 + seed, 1.0).iter().map(|v| 3.0 * v).collect();
            let b = data(c, 400 + seed, 0.5);
            for act in [Activation::Relu, Activation::Relu6, Activation::Gelu] {
                let mut y = vec![0.0; dims.len()];
                let st =
                    batch_norm_act_train_forward(&x, dims, Some(&g), Some(&b), 1e-5, act, &mut y);
                let mut plain = vec![0.0; dims.len()];
                let st0 = batch_norm_train_forward(&x, dims, Some(&g), Some(&b), 1e-5, &mut plain);
                assert_eq!(st, st0, "statistics {dims:?}");
                let (scale, shift) = fold_affine(&st.mean, &st.invstd, Some(&g), Some(&b));
                let pre: Vec<f32> = (0..x.len())
                    .map(|i| x[i] * scale[(i / hw) % c] + shift[(i / hw) % c])
                    .collect();
                let want: Vec<f64> = pre.iter().map(|&p| act.apply(p) as f64).collect();
                assert_close(&y, &want, 1e-5, &format!("y {act:?} {dims:?}"));
                let gd: Vec<f32> = dy
                    .iter()
                    .zip(&pre)
                    .map(|(&d, &p)| d * act.derivative(p))
                    .collect();
                let m64: Vec<f64> = st.mean.iter().map(|&v| v as f64).collect();
                let is64: Vec<f64> = st.invstd.iter().map(|&v| v as f64).collect();
                for training in [true, false] {
                    let (rdx, rdg, rdb) = ref_bn_backward(&gd, &x, dims, &m64, &is64, &g, training);
                    let (mut dx, mut dg, mut db) =
                        (vec![0.0; dims.len()], vec![0.0; c], vec![0.0; c]);
                    let grads = NormGrads {
                        dx: Some(&mut dx),
                        dgamma: Some(&mut dg),
                        dbeta: Some(&mut db),
                    };
                    let stats = (&st.mean[..], &st.invstd[..]);
                    let affine = (Some(&g[..]), Some(&b[..]));
                    batch_norm_act_backward(&dy, &x, dims, stats, affine, act, training, grads);
                    let what = format!("{act:?} {dims:?} training={training}");
                    assert_close(&dx, &rdx, 2e-4, &format!("dx {what}"));
                    assert_close(&dg, &rdg, 1e-4, &format!("dgamma {what}"));
                    assert_close(&db, &rdb, 1e-5, &format!("dbeta {what}"));
                }
            }
        }
    }

    /// The residual form: `act(x s + t + r)` and its gradient `dy act'(...)` against the
    /// element-wise definition on the same f32 pre-activations, small and large planes.
    #[test]
    fn residual_activation_pass_matches_its_definition() {
        for (seed, &(n, c, hw)) in DIMS.iter().enumerate() {
            let dims = ChannelDims { n, c, hw };
            let seed = seed as u64;
            let (x, r, dy) = (
                data(dims.len(), seed, -0.4),
                data(dims.len(), seed + 7, 0.2),
                data(dims.len(), seed + 50, 0.1),
            );
            let (scale, shift) = (data(c, seed + 300, 2.0), data(c, seed + 400, 0.5));
            for act in [Activation::Relu, Activation::Relu6, Activation::Gelu] {
                let pre: Vec<f32> = (0..x.len())
                    .map(|i| x[i] * scale[(i / hw) % c] + shift[(i / hw) % c] + r[i])
                    .collect();
                let mut y = vec![0.0; x.len()];
                channel_scale_shift_add_act(&x, &r, dims, &scale, &shift, act, &mut y);
                let want: Vec<f64> = pre.iter().map(|&p| act.apply(p) as f64).collect();
                assert_close(&y, &want, 1e-5, &format!("y {act:?} {dims:?}"));
                let mut g = vec![0.0; x.len()];
                residual_act_grad(&dy, &x, &r, dims, &scale, &shift, act, &mut g);
                let want: Vec<f64> = pre
                    .iter()
                    .zip(&dy)
                    .map(|(&p, &d)| (d * act.derivative(p)) as f64)
                    .collect();
                assert_close(&g, &want, 1e-5, &format!("g {act:?} {dims:?}"));
            }
        }
    }

    /// f64 reference layer norm: (y, mean, rstd).
    fn ref_layer_norm(
        x: &[f32],
        d: usize,
        g: Option<&[f32]>,
        b: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut y, mut ms, mut rs) = (vec![], vec![], vec![]);
        for row in x.chunks_exact(d) {
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let v = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (v + 1e-5).sqrt();
            for (i, &v) in row.iter().enumerate() {
                let xh = (v as f64 - m) * r;
                y.push(xh * g.map_or(1.0, |g| g[i] as f64) + b.map_or(0.0, |b| b[i] as f64));
            }
            ms.push(m);
            rs.push(r);
        }
        (y, ms, rs)
    }

    const LN: [(usize, usize); 6] = [(1, 2), (3, 7), (4, 8), (2, 33), (5, 384), (64, 768)];

    #[test]
    fn layer_norm_forward_matches_reference() {
        for (seed, &(rows, d)) in LN.iter().enumerate() {
            let x = data(rows * d, seed as u64, 0.7);
            let (g, b) = (data(d, 9, 1.0), data(d, 10, 0.0));
            for (gamma, beta) in [
                (None, None),
                (Some(g.as_slice()), None),
                (None, Some(b.as_slice())),
                (Some(g.as_slice()), Some(b.as_slice())),
            ] {
                let (ry, rm, rr) = ref_layer_norm(&x, d, gamma, beta);
                let mut y = vec![0.0; x.len()];
                let st = layer_norm_forward(&x, d, gamma, beta, 1e-5, &mut y);
                let what = format!("rows {rows} d {d}");
                assert_close(&y, &ry, 1e-4, &what);
                assert_close(&st.mean, &rm, 1e-5, &what);
                assert_close(&st.rstd, &rr, 1e-4, &what);
                let mut yi = vec![0.0; x.len()];
                layer_norm_infer(&x, d, gamma, beta, 1e-5, &mut yi);
                assert_eq!(y, yi, "infer == forward, {what}");
            }
        }
    }

    #[test]
    fn layer_norm_backward_matches_reference() {
        for (seed, &(rows, d)) in LN.iter().enumerate() {
            let seed = seed as u64;
            let (x, dy) = (data(rows * d, seed, 0.2), data(rows * d, seed + 9, 0.0));
            let g = data(d, 11, 1.0);
            for gamma in [None, Some(g.as_slice())] {
                let mut y = vec![0.0; x.len()];
                let st = layer_norm_forward(&x, d, gamma, None, 1e-5, &mut y);
                let (_, rm, rr) = ref_layer_norm(&x, d, None, None);
                // Reference: dx = r (gd - mean(gd) - xh mean(gd xh)), gd = dy * gamma.
                let (mut rdx, mut rdg, mut rdb) = (vec![], vec![0.0; d], vec![0.0; d]);
                for (r, (xr, gr)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).enumerate() {
                    let xh: Vec<f64> = xr.iter().map(|&v| (v as f64 - rm[r]) * rr[r]).collect();
                    let gd: Vec<f64> = (0..d)
                        .map(|i| gr[i] as f64 * gamma.map_or(1.0, |g| g[i] as f64))
                        .collect();
                    let c1 = gd.iter().sum::<f64>() / d as f64;
                    let c2 = (0..d).map(|i| gd[i] * xh[i]).sum::<f64>() / d as f64;
                    for i in 0..d {
                        rdx.push(rr[r] * (gd[i] - c1 - xh[i] * c2));
                        rdg[i] += gr[i] as f64 * xh[i];
                        rdb[i] += gr[i] as f64;
                    }
                }
                let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![7.0; d], vec![7.0; d]);
                let grads = NormGrads {
                    dx: Some(&mut dx),
                    dgamma: Some(&mut dg),
                    dbeta: Some(&mut db),
                };
                layer_norm_backward(&dy, &x, d, &st.mean, &st.rstd, gamma, grads);
                let what = format!("rows {rows} d {d} gamma {}", gamma.is_some());
                assert_close(&dx, &rdx, 5e-4, &format!("dx {what}"));
                assert_close(&dg, &rdg, 1e-4, &format!("dgamma {what}"));
                assert_close(&db, &rdb, 1e-5, &format!("dbeta {what}"));
                // Parameter gradients alone (no dx) agree too.
                let (mut dg2, mut db2) = (vec![0.0; d], vec![0.0; d]);
                let grads = NormGrads {
                    dx: None,
                    dgamma: Some(&mut dg2),
                    dbeta: Some(&mut db2),
                };
                layer_norm_backward(&dy, &x, d, &st.mean, &st.rstd, gamma, grads);
                assert_eq!((dg2, db2), (dg.clone(), db.clone()), "{what}");
            }
        }
    }
}
