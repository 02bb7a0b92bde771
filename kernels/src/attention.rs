//! Scaled-dot-product attention, fused: `softmax(scale * Q K^T + mask + bias) V`.
//!
//! Shapes: `q` `[B, H, Lq, d]`, `k` `[B, H, Lk, d]`, `v` `[B, H, Lk, dv]`, output `[B, H, Lq, dv]`.
//! Inputs are read through arbitrary strides ([`HeadsRef`]), so heads split out of a `[B, L, H, d]`
//! projection need no copy. Two optional additive score terms:
//! - `mask` ([`ScoreTerm`]): broadcast as `[B or 1, H or 1, Lq or 1, Lk]` through zero strides
//!   (BERT's padding mask is `[B, 1, 1, Lk]`); -inf or large negative entries hide keys. No gradient.
//! - `bias`: a dense `[H, Lq, Lk]` term shared across the batch (Swin's relative-position bias),
//!   which does get a gradient (summed over the batch).
//!
//! The forward works on blocks of query rows: for each block of keys it computes the scores with
//! [`gemm`] against a transposed view of K, adds the terms, and folds them into a running softmax
//! (per-row maximum and sum, rescaling the partial output when the maximum grows: the
//! flash-attention recurrence), then accumulates `P V` with a second GEMM. Scratch is one
//! `rows x cols` score block per thread, never the `[Lq, Lk]` matrix. It saves only each row's
//! log-sum-exp; the backward recomputes the probabilities block by block from it.
//!
//! A row whose every score is -inf (fully masked) gets a zero output and zero gradients, as
//! PyTorch's `scaled_dot_product_attention` gives on CPU (a materialised softmax would give NaN).
//! Its log-sum-exp is -inf.
//!
//! Threads: the forward splits over (batch, head, query-row block) once the work passes
//! [`ATTENTION_PAR_MIN_MACS`]; the backward over (batch, head) only, each head accumulating its
//! dQ, dK, dV in place, so a lone head (batch 1, one head) runs its backward on one thread.
//! Scratch lives in a per-thread buffer reused across calls; each call allocates only its small
//! task list.

mod naive;
pub mod rowops;

pub use naive::{backward_naive, forward_naive};

use crate::gemm::{gemm, MatMut, MatRef};
use crate::isa::{self, Isa};
use crate::parallel::{self, ATTENTION_PAR_MIN_MACS};
use rayon::prelude::*;
use std::cell::Cell;

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    /// Query rows.
    pub lq: usize,
    /// Keys (and values).
    pub lk: usize,
    /// Query/key feature size.
    pub d: usize,
    /// Value feature size.
    pub dv: usize,
}

/// A read-only 4-D view `[B, H, L, C]`: element (b, h, i, c) is
/// `data[b * strides[0] + h * strides[1] + i * strides[2] + c * strides[3]]`.
#[derive(Clone, Copy, Debug)]
pub struct HeadsRef<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

impl<'a> HeadsRef<'a> {
    /// A dense row-major `[B, H, L, C]` tensor.
    pub fn contiguous(data: &'a [f32], heads: usize, rows: usize, cols: usize) -> Self {
        HeadsRef {
            data,
            strides: [heads * rows * cols, rows * cols, cols, 1],
        }
    }

    /// Element (b, h, i, c).
    #[inline]
    pub fn at(&self, b: usize, h: usize, i: usize, c: usize) -> f32 {
        let s = self.strides;
        self.data[b * s[0] + h * s[1] + i * s[2] + c * s[3]]
    }

    /// Rows `row0..row0 + rows` of head (b, h) as a `rows x cols` matrix.
    fn mat(&self, b: usize, h: usize, row0: usize, rows: usize, cols: usize) -> MatRef<'a> {
        let s = self.strides;
        let off = b * s[0] + h * s[1] + row0 * s[2];
        MatRef {
            data: &self.data[off.min(self.data.len())..],
            rows,
            cols,
            row_stride: s[2],
            col_stride: s[3],
        }
    }

    fn fits(&self, shape: [usize; 4]) -> bool {
        if shape.contains(&0) {
            return true;
        }
        let last: usize = (0..4).map(|a| (shape[a] - 1) * self.strides[a]).sum();
        last < self.data.len()
    }
}

/// An additive score term broadcast over `[B, H, Lq, Lk]`: the row of keys for (b, h, i) starts at
/// `b * strides[0] + h * strides[1] + i * strides[2]` and is contiguous. A zero stride broadcasts.
#[derive(Clone, Copy, Debug)]
pub struct ScoreTerm<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 3],
}

impl ScoreTerm<'_> {
    /// The `lk` key entries for query row i of head (b, h).
    #[inline]
    pub fn row(&self, b: usize, h: usize, i: usize, lk: usize) -> &[f32] {
        let s = self.strides;
        &self.data[b * s[0] + h * s[1] + i * s[2]..][..lk]
    }
}

/// One attention problem: the operands and options the forward and backward share.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    pub dims: Dims,
    pub q: HeadsRef<'a>,
    pub k: HeadsRef<'a>,
    pub v: HeadsRef<'a>,
    /// Additive mask (no gradient), see [`ScoreTerm`].
    pub mask: Option<ScoreTerm<'a>>,
    /// Additive `[H, Lq, Lk]` bias, dense, shared across the batch.
    pub bias: Option<&'a [f32]>,
    /// Multiplies `Q K^T` (before the terms are added); usually [`default_scale`].
    pub scale: f32,
}

/// The gradients [`backward`] writes (each overwritten when requested): `dq` `[B, H, Lq, d]`,
/// `dk` `[B, H, Lk, d]`, `dv` `[B, H, Lk, dv]`, `dbias` `[H, Lq, Lk]`, all dense.
#[derive(Debug, Default)]
pub struct AttentionGrads<'a> {
    pub dq: Option<&'a mut [f32]>,
    pub dk: Option<&'a mut [f32]>,
    pub dv: Option<&'a mut [f32]>,
    pub dbias: Option<&'a mut [f32]>,
}

/// PyTorch's default scale, `1 / sqrt(d)` (1 for an empty feature dimension).
pub fn default_scale(d: usize) -> f32 {
    if d == 0 {
        1.0
    } else {
        1.0 / (d as f32).sqrt()
    }
}

impl Attention<'_> {
    /// Panics unless every view addresses only its own slice.
    fn check(&self) {
        let Dims {
            batch: nb,
            heads: nh,
            lq,
            lk,
            d,
            dv,
        } = self.dims;
        assert!(self.q.fits([nb, nh, lq, d]), "attention: q out of bounds");
        assert!(self.k.fits([nb, nh, lk, d]), "attention: k out of bounds");
        assert!(self.v.fits([nb, nh, lk, dv]), "attention: v out of bounds");
        if let Some(m) = &self.mask {
            if nb * nh * lq * lk > 0 {
                let s = m.strides;
                let last = (nb - 1) * s[0] + (nh - 1) * s[1] + (lq - 1) * s[2] + lk;
                assert!(last <= m.data.len(), "attention: mask out of bounds");
            }
        }
        if let Some(b) = self.bias {
            assert_eq!(b.len(), nh * lq * lk, "attention: bias must be [H, Lq, Lk]");
        }
    }
}

/// Query-row and key block sizes of the fused loops.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    rows: usize,
    cols: usize,
}

/// Forward: 128 query rows x 256 keys of scores (128 KB, L2-resident) per step. Tall row blocks
/// amortise the GEMM's packing of each K and V block over more queries (measured ~15% less CPU
/// than 32 rows at L = 128 and 512, d = 32); sequences up to 256 keys take one step, so the
/// running-softmax rescaling only happens past that.
const FORWARD_BLOCKS: Blocks = Blocks {
    rows: 128,
    cols: 256,
};
/// Row blocks are not cut below this to make parallel tasks (each block re-packs its K and V).
const MIN_SPLIT_ROWS: usize = 16;
/// Backward keeps two score-sized blocks (probabilities and their gradient, 64 KB each) live;
/// 128 x 128 measured ~7% less CPU than 64 x 64 at L = 128 and 512, d = 32.
const BACKWARD_BLOCKS: Blocks = Blocks {
    rows: 128,
    cols: 128,
};

thread_local! {
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Run `f` on this thread's scratch buffer (at least `len` long), kept across calls so steady-state
/// inference does not allocate. Taken out of the cell while in use: if the GEMM inside `f` lets
/// rayon run another attention task on this thread, that task finds the cell empty and allocates
/// its own instead of aliasing ours.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|c| c.set(buf));
    r
}

/// Fused forward: writes `out` `[B, H, Lq, dv]` and, when given, each query row's log-sum-exp of
/// its scores into `lse` `[B, H, Lq]` (what [`backward`] needs). Panics on inconsistent lengths.
pub fn forward(a: &Attention, out: &mut [f32], lse: Option<&mut [f32]>) {
    forward_with(a, out, lse, isa::current(), FORWARD_BLOCKS);
}

/// One task of the forward: a block of query rows of one head, with its slices of the outputs.
struct RowBlock<'o> {
    bh: usize,
    row0: usize,
    rows: usize,
    out: &'o mut [f32],
    lse: Option<&'o mut [f32]>,
}

fn forward_with(a: &Attention, out: &mut [f32], lse: Option<&mut [f32]>, isa: Isa, blk: Blocks) {
    a.check();
    let Dims {
        batch,
        heads,
        lq,
        lk,
        d,
        dv,
    } = a.dims;
    let bhn = batch * heads;
    assert_eq!(out.len(), bhn * lq * dv, "attention forward: out length");
    if let Some(l) = &lse {
        assert_eq!(l.len(), bhn * lq, "attention forward: lse length");
    }
    let macs = bhn * lq * lk * (d + dv);
    let split = parallel::worth_splitting(macs, ATTENTION_PAR_MIN_MACS);
    let mut br = blk.rows.max(1);
    if split {
        // Few heads (batch 1, one or two heads, long sequence): shorter row blocks so that every
        // thread gets about two tasks, down to MIN_SPLIT_ROWS rows.
        let per_head = (2 * parallel::num_threads()).div_ceil(bhn.max(1));
        br = br.min(lq.div_ceil(per_head).max(MIN_SPLIT_ROWS));
    }
    let bc = blk.cols.max(1);
    let mut tasks = Vec::with_capacity(bhn * lq.div_ceil(br));
    let (mut out_rest, mut lse_rest) = (out, lse);
    for bh in 0..bhn {
        let mut row0 = 0;
        while row0 < lq {
            let rows = br.min(lq - row0);
            let (o, rest) = std::mem::take(&mut out_rest).split_at_mut(rows * dv);
            out_rest = rest;
            let l = lse_rest.take().map(|l| {
                let (mine, rest) = l.split_at_mut(rows);
                lse_rest = Some(rest);
                mine
            });
            tasks.push(RowBlock {
                bh,
                row0,
                rows,
                out: o,
                lse: l,
            });
            row0 += rows;
        }
    }
    let scratch_len = 2 * br + br * bc.min(lk.max(1));
    let run = |t: RowBlock| with_scratch(scratch_len, |s| forward_block(a, isa, bc, t, s));
    if tasks.len() > 1 && split {
        parallel::note_fork();
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
}

/// The online-softmax loop over key blocks for one block of query rows.
fn forward_block(a: &Attention, isa: Isa, bc: usize, mut t: RowBlock, scratch: &mut [f32]) {
    let Dims {
        heads,
        lq,
        lk,
        d,
        dv,
        ..
    } = a.dims;
    let (b, h) = (t.bh / heads, t.bh % heads);
    let rows = t.rows;
    let (stats, s) = scratch.split_at_mut(2 * rows);
    // Running maximum and sum of exp(score - maximum) of each row.
    let (m, l) = stats.split_at_mut(rows);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let qm = a.q.mat(b, h, t.row0, rows, d);
    let mut j0 = 0;
    while j0 < lk {
        let cols = bc.min(lk - j0);
        let sb = &mut s[..rows * cols];
        gemm(
            qm,
            a.k.mat(b, h, j0, cols, d).t(),
            0.0,
            MatMut::row_major(sb, rows, cols),
            &[],
        );
        for (i, row) in sb.chunks_exact_mut(cols).enumerate() {
            let qi = t.row0 + i;
            let mask = a
                .mask
                .as_ref()
                .map(|mk| &mk.row(b, h, qi, lk)[j0..j0 + cols]);
            let bias = a.bias.map(|bb| &bb[(h * lq + qi) * lk + j0..][..cols]);
            let block_max = rowops::scale_add_max(isa, row, a.scale, mask, bias);
            let m_new = m[i].max(block_max);
            if m_new == f32::NEG_INFINITY {
                // Every key so far is masked: contribute nothing (NaN scores still propagate).
                row.iter_mut()
                    .filter(|x| !x.is_nan())
                    .for_each(|x| *x = 0.0);
                continue;
            }
            let sum = rowops::exp_sub_sum(isa, row, m_new);
            if j0 > 0 && m_new != m[i] {
                // The maximum grew: rescale what earlier key blocks accumulated.
                let corr = (m[i] - m_new).exp();
                t.out[i * dv..(i + 1) * dv]
                    .iter_mut()
                    .for_each(|o| *o *= corr);
                l[i] *= corr;
            }
            l[i] += sum;
            m[i] = m_new;
        }
        gemm(
            MatRef::row_major(sb, rows, cols),
            a.v.mat(b, h, j0, cols, dv),
            if j0 == 0 { 0.0 } else { 1.0 },
            MatMut::row_major(t.out, rows, dv),
            &[],
        );
        j0 += cols;
    }
    if lk == 0 {
        t.out.fill(0.0);
    }
    for i in 0..rows {
        let o = &mut t.out[i * dv..(i + 1) * dv];
        // l == 0: fully masked (output 0, keeping any NaN); NaN l propagates through both arms.
        let (inv, lse) = if l[i] > 0.0 {
            (1.0 / l[i], m[i] + l[i].ln())
        } else {
            (
                0.0,
                if l[i].is_nan() {
                    l[i]
                } else {
                    f32::NEG_INFINITY
                },
            )
        };
        o.iter_mut().for_each(|x| *x *= inv);
        if let Some(ls) = t.lse.as_deref_mut() {
            ls[i] = lse;
        }
    }
}

/// Fused backward. `out` and `lse` are what [`forward`] produced for the same `a`, `grad_out` the
/// upstream gradient `[B, H, Lq, dv]`. Writes the requested gradients (see [`AttentionGrads`]);
/// skipped ones cost nothing. Work is split over (batch, head); `dbias` partial sums are per task
/// group, reduced at the end.
pub fn backward(a: &Attention, out: &[f32], lse: &[f32], grad_out: &[f32], grads: AttentionGrads) {
    backward_with(
        a,
        out,
        lse,
        grad_out,
        grads,
        isa::current(),
        BACKWARD_BLOCKS,
    );
}

/// One task of the backward: one head, with its slices of the q/k/v gradients.
struct HeadTask<'o> {
    bh: usize,
    dq: Option<&'o mut [f32]>,
    dk: Option<&'o mut [f32]>,
    dv: Option<&'o mut [f32]>,
}

/// `n` consecutive pieces of `len` elements of an optional output.
fn split_opt(s: Option<&mut [f32]>, n: usize, len: usize) -> Vec<Option<&mut [f32]>> {
    match s {
        Some(s) if len > 0 => s.chunks_mut(len).map(Some).collect(),
        Some(_) => (0..n).map(|_| Some(&mut [][..])).collect(),
        None => (0..n).map(|_| None).collect(),
    }
}

/// The inputs the backward reads besides the attention problem itself.
#[derive(Clone, Copy)]
struct Saved<'s> {
    out: &'s [f32],
    lse: &'s [f32],
    grad_out: &'s [f32],
}

fn backward_with(
    a: &Attention,
    out: &[f32],
    lse: &[f32],
    grad_out: &[f32],
    grads: AttentionGrads,
    isa: Isa,
    blk: Blocks,
) {
    a.check();
    let Dims {
        batch,
        heads,
        lq,
        lk,
        d,
        dv,
    } = a.dims;
    let bhn = batch * heads;
    assert_eq!(out.len(), bhn * lq * dv, "attention backward: out length");
    assert_eq!(lse.len(), bhn * lq, "attention backward: lse length");
    assert_eq!(
        grad_out.len(),
        bhn * lq * dv,
        "attention backward: grad_out length"
    );
    let lens = [
        (&grads.dq, bhn * lq * d, "dq"),
        (&grads.dk, bhn * lk * d, "dk"),
        (&grads.dv, bhn * lk * dv, "dv"),
        (&grads.dbias, heads * lq * lk, "dbias"),
    ];
    for (g, len, name) in lens {
        if let Some(g) = g {
            assert_eq!(g.len(), len, "attention backward: {name} length");
        }
    }
    let AttentionGrads {
        dq,
        dk,
        dv: dvg,
        mut dbias,
    } = grads;
    if let Some(db) = dbias.as_deref_mut() {
        db.fill(0.0);
    }
    let want_bias = dbias.is_some();
    let tasks: Vec<HeadTask> = split_opt(dq, bhn, lq * d)
        .into_iter()
        .zip(split_opt(dk, bhn, lk * d))
        .zip(split_opt(dvg, bhn, lk * dv))
        .enumerate()
        .map(|(bh, ((dq, dk), dv))| HeadTask { bh, dq, dk, dv })
        .collect();
    let saved = Saved { out, lse, grad_out };
    let (br, bc) = (blk.rows.max(1), blk.cols.max(1));
    let scratch_len = lq + 2 * br * bc;
    let run = |t: HeadTask, db: Option<&mut [f32]>| {
        with_scratch(scratch_len, |s| {
            backward_head(a, saved, isa, (br, bc), t, db, s)
        })
    };
    let macs = 2 * bhn * lq * lk * (d + dv);
    if tasks.len() > 1 && parallel::worth_splitting(macs, ATTENTION_PAR_MIN_MACS) {
        parallel::note_fork();
        let partial = tasks
            .into_par_iter()
            .fold(
                || None::<Vec<f32>>,
                |mut acc, t| {
                    let db = want_bias
                        .then(|| acc.get_or_insert_with(|| vec![0.0; heads * lq * lk]))
                        .map(|v| v.as_mut_slice());
                    run(t, db);
                    acc
                },
            )
            .reduce(
                || None,
                |x, y| match (x, y) {
                    (Some(mut x), Some(y)) => {
                        x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                        Some(x)
                    }
                    (x, None) => x,
                    (None, y) => y,
                },
            );
        if let (Some(db), Some(p)) = (dbias, partial) {
            db.copy_from_slice(&p);
        }
    } else {
        for t in tasks {
            run(t, dbias.as_deref_mut());
        }
    }
}

/// The backward of one head: key blocks outside (their dK, dV rows accumulate in place), query
/// blocks inside (recomputing P from the saved log-sum-exp; dQ rows accumulate across key blocks).
fn backward_head(
    a: &Attention,
    sv: Saved,
    isa: Isa,
    (br, bc): (usize, usize),
    mut t: HeadTask,
    mut dbias: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let Dims {
        heads,
        lq,
        lk,
        d,
        dv,
        ..
    } = a.dims;
    let (b, h) = (t.bh / heads, t.bh % heads);
    let obase = t.bh * lq * dv;
    let lse = &sv.lse[t.bh * lq..(t.bh + 1) * lq];
    let (dsum, rest) = scratch.split_at_mut(lq);
    let (pbuf, dpbuf) = rest.split_at_mut(br * bc);
    // D_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax backward's row correction.
    for (i, di) in dsum.iter_mut().enumerate() {
        let r = obase + i * dv..obase + (i + 1) * dv;
        *di = sv.grad_out[r.clone()]
            .iter()
            .zip(&sv.out[r])
            .map(|(g, o)| g * o)
            .sum();
    }
    for g in [&mut t.dq, &mut t.dk, &mut t.dv].into_iter().flatten() {
        g.fill(0.0);
    }
    let need_ds = t.dq.is_some() || t.dk.is_some() || dbias.is_some();
    let mut j0 = 0;
    while j0 < lk {
        let cols = bc.min(lk - j0);
        let km = a.k.mat(b, h, j0, cols, d);
        let vm = a.v.mat(b, h, j0, cols, dv);
        let mut i0 = 0;
        while i0 < lq {
            let rows = br.min(lq - i0);
            let qm = a.q.mat(b, h, i0, rows, d);
            let gom = MatRef {
                data: &sv.grad_out[obase + i0 * dv..],
                rows,
                cols: dv,
                row_stride: dv,
                col_stride: 1,
            };
            let p = &mut pbuf[..rows * cols];
            gemm(qm, km.t(), 0.0, MatMut::row_major(p, rows, cols), &[]);
            for (i, row) in p.chunks_exact_mut(cols).enumerate() {
                let qi = i0 + i;
                let mask = a
                    .mask
                    .as_ref()
                    .map(|mk| &mk.row(b, h, qi, lk)[j0..j0 + cols]);
                let bias = a.bias.map(|bb| &bb[(h * lq + qi) * lk + j0..][..cols]);
                rowops::scale_add_max(isa, row, a.scale, mask, bias);
                if lse[qi] == f32::NEG_INFINITY {
                    row.fill(0.0);
                } else {
                    rowops::exp_sub_sum(isa, row, lse[qi]);
                }
            }
            let pm = MatRef::row_major(p, rows, cols);
            if let Some(g) = t.dv.as_deref_mut() {
                let dst = MatMut::row_major(&mut g[j0 * dv..(j0 + cols) * dv], cols, dv);
                gemm(pm.t(), gom, 1.0, dst, &[]);
            }
            if need_ds {
                let ds = &mut dpbuf[..rows * cols];
                gemm(gom, vm.t(), 0.0, MatMut::row_major(ds, rows, cols), &[]);
                for ((dsr, pr), di) in ds
                    .chunks_exact_mut(cols)
                    .zip(p.chunks_exact(cols))
                    .zip(&dsum[i0..i0 + rows])
                {
                    dsr.iter_mut()
                        .zip(pr)
                        .for_each(|(x, &pv)| *x = pv * (*x - di));
                }
                if let Some(db) = dbias.as_deref_mut() {
                    for (i, dsr) in ds.chunks_exact(cols).enumerate() {
                        let at = (h * lq + i0 + i) * lk + j0;
                        db[at..at + cols]
                            .iter_mut()
                            .zip(dsr)
                            .for_each(|(g, x)| *g += x);
                    }
                }
                // The scores were scale * Q K^T: the scale reaches Q and K only.
                ds.iter_mut().for_each(|x| *x *= a.scale);
                let dsm = MatRef::row_major(ds, rows, cols);
                if let Some(g) = t.dk.as_deref_mut() {
                    let dst = MatMut::row_major(&mut g[j0 * d..(j0 + cols) * d], cols, d);
                    gemm(dsm.t(), qm, 1.0, dst, &[]);
                }
                if let Some(g) = t.dq.as_deref_mut() {
                    let dst = MatMut::row_major(&mut g[i0 * d..(i0 + rows) * d], rows, d);
                    gemm(dsm, km, 1.0, dst, &[]);
                }
            }
            i0 += rows;
        }
        j0 += cols;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::simd::test_bits(seed)
            .take(n)
            .map(|s| (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            .collect()
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum MaskKind {
        None,
        /// BERT's `[B, 1, 1, Lk]` padding mask: batch b hides its last `b + 1` keys with -inf.
        Padding,
        /// A dense `[B, H, Lq, Lk]` mask of -1e9 entries, one query row fully masked with -inf.
        Dense,
        /// `[1, 1, Lq, Lk]` causal mask (key j > query i hidden), shared by batch and heads.
        Causal,
    }

    struct Case {
        dims: Dims,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        mask: Option<(Vec<f32>, [usize; 3])>,
        bias: Option<Vec<f32>>,
        scale: f32,
    }

    impl Case {
        fn new(dims: Dims, mask: MaskKind, bias: bool, seed: u64) -> Case {
            let Dims {
                batch,
                heads,
                lq,
                lk,
                d,
                dv,
            } = dims;
            let bhn = batch * heads;
            let mask = match mask {
                MaskKind::None => None,
                MaskKind::Padding => {
                    let mut m = vec![0.0; batch * lk];
                    for b in 0..batch {
                        for j in lk.saturating_sub(b + 1).max(1)..lk {
                            m[b * lk + j] = f32::NEG_INFINITY;
                        }
                    }
                    Some((m, [lk, 0, 0]))
                }
                MaskKind::Dense => {
                    let mut m: Vec<f32> = values(bhn * lq * lk, seed + 9)
                        .into_iter()
                        .map(|x| if x > 1.0 { -1e9 } else { x })
                        .collect();
                    if lq > 2 {
                        m[2 * lk..3 * lk].fill(f32::NEG_INFINITY);
                    }
                    Some((m, [heads * lq * lk, lq * lk, lk]))
                }
                MaskKind::Causal => {
                    let m = (0..lq * lk)
                        .map(|x| {
                            if x % lk > x / lk {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    Some((m, [0, 0, lk]))
                }
            };
            Case {
                dims,
                q: values(bhn * lq * d, seed),
                k: values(bhn * lk * d, seed + 1),
                v: values(bhn * lk * dv, seed + 2),
                mask,
                bias: bias.then(|| values(heads * lq * lk, seed + 3)),
                scale: default_scale(d),
            }
        }

        fn attn(&self) -> Attention<'_> {
            let Dims {
                heads,
                lq,
                lk,
                d,
                dv,
                ..
            } = self.dims;
            Attention {
                dims: self.dims,
                q: HeadsRef::contiguous(&self.q, heads, lq, d),
                k: HeadsRef::contiguous(&self.k, heads, lk, d),
                v: HeadsRef::contiguous(&self.v, heads, lk, dv),
                mask: self.mask.as_ref().map(|(data, strides)| ScoreTerm {
                    data,
                    strides: *strides,
                }),
                bias: self.bias.as_deref(),
                scale: self.scale,
            }
        }
    }

    /// Error of each element relative to the larger of its own magnitude and the RMS of `want`.
    #[track_caller]
    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_close_floor(got, want, tol, 1e-6, what);
    }

    /// As [`assert_close`], errors being relative to at least `floor`: gradients that are zero
    /// in exact arithmetic (a single key, say) come out as cancellation residue of order 1e-7.
    #[track_caller]
    fn assert_close_floor(got: &[f32], want: &[f32], tol: f32, floor: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len().max(1) as f32).sqrt();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs() / w.abs().max(rms).max(floor);
            assert!(
                err <= tol,
                "{what}: element {i} is {g}, want {w} (err {err:.1e})"
            );
        }
    }

    fn dims(batch: usize, heads: usize, lq: usize, lk: usize, d: usize, dv: usize) -> Dims {
        Dims {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
        }
    }

    /// L = 1, 7, 64, 130, 257 (none a multiple of the test blocks, 130 and 257 not of the
    /// default ones), d = 8, 32, 64, Lq != Lk both ways.
    fn shapes() -> Vec<Dims> {
        vec![
            dims(1, 1, 1, 1, 8, 8),
            dims(2, 3, 7, 7, 8, 8),
            dims(1, 2, 64, 64, 32, 32),
            dims(1, 2, 130, 130, 64, 64),
            dims(1, 1, 257, 257, 32, 32),
            dims(2, 2, 7, 130, 8, 16),
            dims(1, 3, 130, 7, 64, 32),
            dims(2, 1, 1, 257, 32, 8),
        ]
    }

    const MASKS: [MaskKind; 4] = [
        MaskKind::None,
        MaskKind::Padding,
        MaskKind::Dense,
        MaskKind::Causal,
    ];
    /// Small odd blocks: several key blocks per row even at L = 7, so the running-softmax
    /// rescaling and partial tail blocks are exercised everywhere.
    const ODD: Blocks = Blocks { rows: 5, cols: 3 };

    fn forward_variants(a: &Attention) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let Dims {
            batch,
            heads,
            lq,
            dv,
            ..
        } = a.dims;
        let mut res = Vec::new();
        for (name, isa, blk) in [
            ("default", isa::current(), FORWARD_BLOCKS),
            ("odd blocks", isa::current(), ODD),
            ("scalar odd blocks", Isa::Scalar, ODD),
        ] {
            let mut out = vec![f32::NAN; batch * heads * lq * dv];
            let mut lse = vec![f32::NAN; batch * heads * lq];
            forward_with(a, &mut out, Some(&mut lse), isa, blk);
            res.push((name.to_string(), out, lse));
        }
        res
    }

    #[test]
    fn fused_forward_matches_naive() {
        for (si, dm) in shapes().into_iter().enumerate() {
            for mask in MASKS {
                for bias in [false, true] {
                    let case = Case::new(dm, mask, bias, si as u64 * 31 + 5);
                    let a = case.attn();
                    let n_out = dm.batch * dm.heads * dm.lq * dm.dv;
                    let mut want = vec![0.0; n_out];
                    let mut want_lse = vec![0.0; dm.batch * dm.heads * dm.lq];
                    forward_naive(&a, &mut want, Some(&mut want_lse));
                    for (name, out, lse) in forward_variants(&a) {
                        let what = format!("{dm:?} {mask:?} bias={bias} {name}");
                        assert_close(&out, &want, 2e-5, &what);
                        for (g, w) in lse.iter().zip(&want_lse) {
                            assert!(
                                g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                                "{what}: lse {g} vs {w}"
                            );
                        }
                    }
                    let mut plain = vec![0.0; n_out];
                    forward(&a, &mut plain, None);
                    assert_close(&plain, &want, 2e-5, "forward without lse");
                }
            }
        }
    }

    #[test]
    fn fully_masked_rows_give_zero_output_and_gradients() {
        let dm = dims(2, 2, 9, 11, 8, 8);
        let mut case = Case::new(dm, MaskKind::Dense, true, 3);
        // Row 4 of every head: all -inf; in the last head, row 0 is masked in all but one key.
        let m = &mut case.mask.as_mut().unwrap().0;
        for bh in 0..4 {
            m[(bh * 9 + 4) * 11..(bh * 9 + 5) * 11].fill(f32::NEG_INFINITY);
        }
        m[(3 * 9) * 11..(3 * 9 + 1) * 11].fill(f32::NEG_INFINITY);
        m[3 * 9 * 11 + 6] = 0.0;
        let a = case.attn();
        for (name, out, lse) in forward_variants(&a) {
            assert!(out.iter().all(|x| x.is_finite()), "{name}: {out:?}");
            for bh in 0..4 {
                assert!(out[(bh * 9 + 4) * 8..(bh * 9 + 5) * 8]
                    .iter()
                    .all(|&x| x == 0.0));
                assert_eq!(lse[bh * 9 + 4], f32::NEG_INFINITY);
            }
            // The single visible key is copied through.
            let row0 = &out[27 * 8..28 * 8];
            let v6 = &case.v[(3 * 11 + 6) * 8..(3 * 11 + 7) * 8];
            assert_close(row0, v6, 1e-6, name.as_str());
            let go = values(out.len(), 77);
            let (mut dq, mut dk, mut dv, mut db) = (
                vec![f32::NAN; case.q.len()],
                vec![f32::NAN; case.k.len()],
                vec![f32::NAN; case.v.len()],
                vec![f32::NAN; 2 * 9 * 11],
            );
            backward(
                &a,
                &out,
                &lse,
                &go,
                AttentionGrads {
                    dq: Some(&mut dq),
                    dk: Some(&mut dk),
                    dv: Some(&mut dv),
                    dbias: Some(&mut db),
                },
            );
            for g in [&dq, &dk, &dv, &db] {
                assert!(g.iter().all(|x| x.is_finite()), "{name}: NaN gradient");
            }
            for bh in 0..4 {
                assert!(dq[(bh * 9 + 4) * 8..(bh * 9 + 5) * 8]
                    .iter()
                    .all(|&x| x == 0.0));
            }
            assert!(db[4 * 11..5 * 11].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn large_negative_mask_rows_average_the_values() {
        // A row masked with -1e9 everywhere (not -inf) is a uniform softmax, as in PyTorch.
        let dm = dims(1, 1, 3, 5, 4, 4);
        let mut case = Case::new(dm, MaskKind::Dense, false, 8);
        let m = &mut case.mask.as_mut().unwrap().0;
        m.fill(0.0);
        m[5..10].fill(-1e9);
        let a = case.attn();
        let mut out = vec![0.0; 12];
        forward(&a, &mut out, None);
        let mean: Vec<f32> = (0..4)
            .map(|c| (0..5).map(|j| case.v[j * 4 + c]).sum::<f32>() / 5.0)
            .collect();
        assert_close(&out[4..8], &mean, 1e-4, "uniform row");
    }

    #[test]
    fn strided_inputs_match_contiguous() {
        // q, k, v laid out as [B, L, H, C] (a projection's output before the head split).
        let dm = dims(2, 3, 13, 17, 8, 5);
        let case = Case::new(dm, MaskKind::Padding, true, 21);
        let a = case.attn();
        let relayout = |src: &[f32], l: usize, c: usize| {
            let mut dst = vec![0.0; src.len()];
            for b in 0..2 {
                for h in 0..3 {
                    for i in 0..l {
                        for x in 0..c {
                            dst[((b * l + i) * 3 + h) * c + x] = src[((b * 3 + h) * l + i) * c + x];
                        }
                    }
                }
            }
            dst
        };
        let (q2, k2, v2) = (
            relayout(&case.q, 13, 8),
            relayout(&case.k, 17, 8),
            relayout(&case.v, 17, 5),
        );
        let view = |data, l: usize, c: usize| HeadsRef {
            data,
            strides: [l * 3 * c, c, 3 * c, 1],
        };
        let s = Attention {
            q: view(&q2, 13, 8),
            k: view(&k2, 17, 8),
            v: view(&v2, 17, 5),
            ..a
        };
        let (mut o1, mut o2) = (vec![0.0; 2 * 3 * 13 * 5], vec![0.0; 2 * 3 * 13 * 5]);
        let (mut l1, mut l2) = (vec![0.0; 78], vec![0.0; 78]);
        forward(&a, &mut o1, Some(&mut l1));
        forward(&s, &mut o2, Some(&mut l2));
        assert_close(&o2, &o1, 1e-6, "strided forward");
        let go = values(o1.len(), 5);
        let mut g1 = vec![0.0; case.q.len()];
        let mut g2 = vec![0.0; case.q.len()];
        backward(
            &a,
            &o1,
            &l1,
            &go,
            AttentionGrads {
                dq: Some(&mut g1),
                ..Default::default()
            },
        );
        backward(
            &s,
            &o2,
            &l2,
            &go,
            AttentionGrads {
                dq: Some(&mut g2),
                ..Default::default()
            },
        );
        assert_close(&g2, &g1, 1e-5, "strided dq");
    }

    fn run_backward(
        a: &Attention,
        isa: Isa,
        blk: Blocks,
        go: &[f32],
        want: [bool; 4],
    ) -> [Option<Vec<f32>>; 4] {
        let Dims {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
        } = a.dims;
        let bhn = batch * heads;
        let mut out = vec![0.0; bhn * lq * dv];
        let mut lse = vec![0.0; bhn * lq];
        forward_with(a, &mut out, Some(&mut lse), isa, FORWARD_BLOCKS);
        let lens = [bhn * lq * d, bhn * lk * d, bhn * lk * dv, heads * lq * lk];
        let mut g: [Option<Vec<f32>>; 4] =
            std::array::from_fn(|i| want[i].then(|| vec![f32::NAN; lens[i]]));
        let [dq, dk, dv, db] = &mut g;
        let grads = AttentionGrads {
            dq: dq.as_deref_mut(),
            dk: dk.as_deref_mut(),
            dv: dv.as_deref_mut(),
            dbias: db.as_deref_mut(),
        };
        backward_with(a, &out, &lse, go, grads, isa, blk);
        g
    }

    fn naive_grads(a: &Attention, go: &[f32]) -> [Vec<f32>; 4] {
        let Dims {
            batch,
            heads,
            lq,
            lk,
            d,
            dv,
        } = a.dims;
        let bhn = batch * heads;
        let mut g = [
            vec![0.0; bhn * lq * d],
            vec![0.0; bhn * lk * d],
            vec![0.0; bhn * lk * dv],
            vec![0.0; heads * lq * lk],
        ];
        let [dq, dk, dv, db] = &mut g;
        backward_naive(
            a,
            go,
            AttentionGrads {
                dq: Some(dq),
                dk: Some(dk),
                dv: Some(dv),
                dbias: Some(db),
            },
        );
        g
    }

    #[test]
    fn fused_backward_matches_naive() {
        const NAMES: [&str; 4] = ["dq", "dk", "dv", "dbias"];
        for (si, dm) in shapes().into_iter().enumerate() {
            for (mi, mask) in MASKS.into_iter().enumerate() {
                let bias = (si + mi) % 2 == 0;
                let case = Case::new(dm, mask, bias, si as u64 * 17 + mi as u64);
                let a = case.attn();
                let go = values(dm.batch * dm.heads * dm.lq * dm.dv, 99);
                let want = naive_grads(&a, &go);
                for (name, isa, blk) in [
                    ("default", isa::current(), BACKWARD_BLOCKS),
                    ("odd blocks", isa::current(), ODD),
                    ("scalar odd blocks", Isa::Scalar, ODD),
                ] {
                    let got = run_backward(&a, isa, blk, &go, [true, true, true, bias]);
                    for (g, (w, n)) in got.iter().zip(want.iter().zip(NAMES)) {
                        if let Some(g) = g {
                            let what = format!("{dm:?} {mask:?} bias={bias} {name} {n}");
                            assert_close_floor(g, w, 1e-4, 1e-2, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn backward_computes_only_what_is_asked() {
        let dm = dims(2, 2, 19, 23, 8, 6);
        let case = Case::new(dm, MaskKind::Padding, true, 4);
        let a = case.attn();
        let go = values(2 * 2 * 19 * 6, 3);
        let want = naive_grads(&a, &go);
        for pick in 0..16usize {
            let mask = std::array::from_fn(|i| pick >> i & 1 == 1);
            let got = run_backward(&a, isa::current(), BACKWARD_BLOCKS, &go, mask);
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.is_some(), mask[i]);
                if let Some(g) = g {
                    let what = format!("pick {pick} grad {i}");
                    assert_close_floor(g, &want[i], 1e-4, 1e-2, &what);
                }
            }
        }
    }

    #[test]
    fn one_thread_and_pool_agree() {
        // Big enough to split; in a one-thread pool the same call stays on the caller.
        let dm = dims(3, 4, 40, 40, 16, 16);
        let case = Case::new(dm, MaskKind::Causal, true, 12);
        let a = case.attn();
        let go = values(3 * 4 * 40 * 16, 1);
        let pooled = run_backward(&a, isa::current(), BACKWARD_BLOCKS, &go, [true; 4]);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run_backward(&a, isa::current(), BACKWARD_BLOCKS, &go, [true; 4]));
        for (p, s) in pooled.iter().zip(&single) {
            assert_close(
                p.as_ref().unwrap(),
                s.as_ref().unwrap(),
                1e-5,
                "pool vs single",
            );
        }
    }

    #[test]
    fn empty_dimensions_do_not_panic() {
        for dm in [
            dims(0, 2, 3, 3, 4, 4),
            dims(1, 2, 0, 3, 4, 4),
            dims(1, 2, 3, 0, 4, 4),
            dims(1, 2, 3, 3, 0, 4),
            dims(1, 2, 3, 3, 4, 0),
        ] {
            let case = Case::new(dm, MaskKind::None, true, 1);
            let a = case.attn();
            let go = values(dm.batch * dm.heads * dm.lq * dm.dv, 2);
            let got = run_backward(&a, isa::current(), BACKWARD_BLOCKS, &go, [true; 4]);
            let want = naive_grads(&a, &go);
            let what = format!("{dm:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_close_floor(g.as_ref().unwrap(), w, 1e-4, 1e-2, &what);
            }
            let mut out = vec![f32::NAN; dm.batch * dm.heads * dm.lq * dm.dv];
            forward(&a, &mut out, None);
            let mut want = vec![0.0; out.len()];
            forward_naive(&a, &mut want, None);
            assert_close(&out, &want, 1e-5, &what);
        }
    }
}
