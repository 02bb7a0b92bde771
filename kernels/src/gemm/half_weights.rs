//! Products whose weight operand is stored in 16 bits ([`crate::half_weights`]).
//!
//! Mostly, the weights are decoded block by block — at most [`BLOCK_FLOATS`] floats, a block that
//! stays in L2 — into per-thread scratch, and each block is multiplied by the f32 kernels, which
//! read it in place (or pack it, as they would any operand): the weights cross memory once, at two
//! bytes per value, and the decode is one pass over a block in cache, the price against f32
//! weights read in place. Only the block's depth range of the other operand is read per block.
//! The batch-1 linear layer, bound by memory, instead decodes in L1-sized pieces inside its dot
//! products ([`HalfRowDots`]).

use super::epilogue::apply_row;
use super::{
    check_c, check_out, driver, gemm_threads, scale_only, spec, Epilogue, EpilogueOp, MatMut,
    MatPtr, MatRef,
};
use crate::activation::Activation;
use crate::half_weights::HalfSlice;
use crate::parallel;
use crate::scratch::{with_decoded, with_staging};
use crate::simd::{self, Simd, SimdFn};

/// Floats of decoded weights per block (256 KiB).
const BLOCK_FLOATS: usize = 1 << 16;

/// Epilogue steps adapted on the stack (longer lists are rare and allocate).
const EPILOGUE_INLINE: usize = 8;

/// Rows per decoded block of depth `depth`: as many as fit [`BLOCK_FLOATS`], a multiple of `mr`
/// unless all `m` fit.
fn rows_per_block(m: usize, depth: usize, mr: usize) -> usize {
    let fit = (BLOCK_FLOATS / depth.max(1)).max(mr);
    if fit >= m {
        m
    } else {
        fit / mr * mr
    }
}

/// Decode rows `r0..r0 + rows`, columns `p0..p0 + depth` of the row-major `_ x k` matrix `w` into
/// `dst` (`rows x depth`, row-major).
fn decode_block(
    w: HalfSlice,
    k: usize,
    (r0, rows): (usize, usize),
    (p0, depth): (usize, usize),
    dst: &mut [f32],
) {
    if depth == k {
        w.range(r0 * k..(r0 + rows) * k)
            .decode_into(&mut dst[..rows * k]);
        return;
    }
    for (i, row) in dst.chunks_exact_mut(depth).take(rows).enumerate() {
        let at = (r0 + i) * k + p0;
        w.range(at..at + depth).decode_into(row);
    }
}

/// `epilogue` for the block of rows `r0..r0 + rows`, columns `c0..c0 + cols` of its output (given
/// to `f` so it can live on the stack). With `transposed`, the steps are stated for the transpose
/// of the output the block belongs to: per-column biases become per-row ones and the residual is
/// read transposed.
fn with_block_epilogue<'a, R>(
    epilogue: &Epilogue<'a>,
    transposed: bool,
    (r0, rows): (usize, usize),
    (c0, cols): (usize, usize),
    f: impl FnOnce(&Epilogue<'a>) -> R,
) -> R {
    let map = |op: &EpilogueOp<'a>| -> EpilogueOp<'a> {
        let op = match (*op, transposed) {
            (EpilogueOp::BiasPerCol(b), true) => EpilogueOp::BiasPerRow(b),
            (EpilogueOp::BiasPerRow(b), true) => EpilogueOp::BiasPerCol(b),
            (EpilogueOp::Add(r), true) => EpilogueOp::Add(r.t()),
            (op, _) => op,
        };
        match op {
            EpilogueOp::BiasPerCol(b) => EpilogueOp::BiasPerCol(&b[c0..c0 + cols]),
            EpilogueOp::BiasPerRow(b) => EpilogueOp::BiasPerRow(&b[r0..r0 + rows]),
            EpilogueOp::Add(r) => EpilogueOp::Add(MatRef {
                data: &r.data[r0 * r.row_stride + c0 * r.col_stride..],
                rows,
                cols,
                ..r
            }),
            EpilogueOp::Act(a) => EpilogueOp::Act(a),
        }
    };
    if epilogue.len() <= EPILOGUE_INLINE {
        let mut ops = [EpilogueOp::Act(Activation::Identity); EPILOGUE_INLINE];
        for (o, e) in ops.iter_mut().zip(epilogue) {
            *o = map(e);
        }
        f(&ops[..epilogue.len()])
    } else {
        f(&epilogue.iter().map(map).collect::<Vec<_>>())
    }
}

/// `C = beta * C + W * B`, then `epilogue`, on the calling thread (a convolution's tasks): `W` is
/// the row-major `c.rows x b.rows` matrix `w` in 16 bits. Blocks of rows and depth of `W` are
/// decoded and multiplied in turn, the epilogue applied with the last depth block.
pub fn gemm_half_a_serial(w: HalfSlice, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    check_c(c.rows, b.cols, &c, epilogue);
    // SAFETY: `c` borrows its elements uniquely for the whole call and was bounds-checked.
    unsafe { gemm_half_a_serial_raw(w, b, beta, c.into(), epilogue) }
}

/// [`gemm_half_a_serial`] into an output given by its raw parts (see [`super::gemm_serial_raw`]).
///
/// # Safety
/// As [`super::gemm_serial_raw`]: `c`'s elements are valid and this call's alone.
pub unsafe fn gemm_half_a_serial_raw(
    w: HalfSlice,
    b: MatRef,
    beta: f32,
    c: MatPtr,
    epilogue: &Epilogue,
) {
    let (m, k, n) = (c.rows, b.rows, b.cols);
    assert_eq!(w.len(), m * k, "gemm_half_a: weights are not {m} x {k}");
    assert!(b.in_bounds(), "gemm: view out of bounds");
    check_out(m, n, c.rows, c.cols, c.row_stride, epilogue);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: the contract, passed on.
        return unsafe { scale_only(beta, c, epilogue) };
    }
    let spec = spec::current();
    let (nkb, kc) = spec.k_blocks(k);
    let mb = rows_per_block(m, kc, spec.mr);
    let ldc = c.row_stride;
    with_decoded(mb * kc, |buf| {
        for r0 in (0..m).step_by(mb) {
            let rows = mb.min(m - r0);
            for kb in 0..nkb {
                let p0 = kb * kc;
                let depth = kc.min(k - p0);
                let blk = &mut buf[..rows * depth];
                decode_block(w, k, (r0, rows), (p0, depth), blk);
                let a = MatRef::row_major(blk, rows, depth);
                let b = MatRef {
                    data: &b.data[p0 * b.row_stride..],
                    rows: depth,
                    ..b
                };
                let c = MatPtr {
                    // SAFETY: row r0 < m of C.
                    ptr: unsafe { c.ptr.add(r0 * ldc) },
                    rows,
                    ..c
                };
                let ops = if kb + 1 == nkb { epilogue } else { &[] };
                let beta = if kb == 0 { beta } else { 1.0 };
                with_block_epilogue(ops, false, (r0, rows), (0, n), |e| {
                    // SAFETY: rows r0..r0 + rows of C, this call's alone.
                    unsafe { gemm_threads(spec, a, b, beta, c, e, 1) }
                });
            }
        }
    });
}

/// `Y = X * W^T`, then `epilogue` (overwrites `Y`): a linear layer whose weights `W`
/// (`y.cols x x.cols`, row-major, as stored) are in 16 bits. Split over the pool past the GEMM's
/// thresholds, by blocks of output features, each task decoding its own rows of `W`.
///
/// One row (batch 1, memory-bound): dot products that decode `W`'s rows in L1-sized pieces as
/// they read them ([`HalfRowDots`]). More rows: blocks of `W` decoded into scratch compute
/// `Y^T = W * X^T` into a staging buffer, transposed into `Y` at the end (output-feature blocks
/// of `Y^T` are contiguous, so the tasks own disjoint slices).
pub fn linear_half(x: MatRef, w: HalfSlice, y: MatMut, epilogue: &Epilogue) {
    let (m, k, n) = (x.rows, x.cols, y.cols);
    assert_eq!(w.len(), n * k, "linear_half: weights are not {n} x {k}");
    assert!(x.in_bounds(), "gemm: view out of bounds");
    check_c(m, n, &y, epilogue);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: `y` borrows its elements uniquely for the whole call.
        return unsafe { scale_only(0.0, y.into(), epilogue) };
    }
    let threads = driver::threads_for(m, n, k, false);
    if m == 1 && x.col_stride == 1 {
        row_times_half(&x.data[..k], w, &mut y.data[..n], epilogue, threads);
    } else {
        rows_times_half(x, w, y, epilogue, threads);
    }
}

/// Values of each of four weight rows decoded at a time by [`HalfRowDots`]: four rows of them
/// (4 KiB) stay in L1 between the decode and the dot products.
const ROW_CHUNK: usize = 256;

/// [`linear_half`] for one contiguous row `x`: the outputs split into chunks over the pool, each
/// chunk's dot products reading `W`'s rows straight from memory, once.
fn row_times_half(x: &[f32], w: HalfSlice, y: &mut [f32], epilogue: &Epilogue, threads: usize) {
    let n = y.len();
    let per = if threads > 1 {
        n.div_ceil(2 * threads).next_multiple_of(16)
    } else {
        n
    };
    parallel::for_each_chunk_mut(y, per, threads > 1, |ci, out| {
        let j0 = ci * per;
        simd::dispatch(HalfRowDots { x, w, j0, out });
        apply_row(epilogue, out, 0, j0);
    });
}

/// `out[j] = x · W[j0 + j, :]` over rows of `w` as long as `x`: four rows at a time, each
/// decoded [`ROW_CHUNK`] values at a time into a stack tile that the dot products read at once,
/// so the weights cross memory once, at two bytes a value, and the decoded values stay in L1.
struct HalfRowDots<'a> {
    x: &'a [f32],
    w: HalfSlice<'a>,
    j0: usize,
    out: &'a mut [f32],
}

impl SimdFn for HalfRowDots<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let Self { x, w, j0, out } = self;
        let k = x.len();
        let mut tile = [0.0f32; 4 * ROW_CHUNK];
        for (g, out4) in out.chunks_mut(4).enumerate() {
            let rows = out4.len();
            let (mut acc, mut tail) = ([s.zero(); 4], [0.0f32; 4]);
            for p0 in (0..k).step_by(ROW_CHUNK) {
                let len = ROW_CHUNK.min(k - p0);
                for r in 0..4 {
                    // A ragged last group repeats its last row (its sums are dropped).
                    let at = (j0 + 4 * g + r.min(rows - 1)) * k + p0;
                    w.range(at..at + len)
                        .decode_into(&mut tile[r * ROW_CHUNK..r * ROW_CHUNK + len]);
                }
                let xs = &x[p0..p0 + len];
                let body = len - len % S::LANES;
                for i in (0..body).step_by(S::LANES) {
                    let xv = s.load(&xs[i..]);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = s.mul_add(xv, s.load(&tile[r * ROW_CHUNK + i..]), *a);
                    }
                }
                for (i, &xv) in xs.iter().enumerate().skip(body) {
                    for (r, t) in tail.iter_mut().enumerate() {
                        *t += xv * tile[r * ROW_CHUNK + i];
                    }
                }
            }
            for (r, o) in out4.iter_mut().enumerate() {
                *o = s.reduce_add(acc[r]) + tail[r];
            }
        }
    }
}

/// [`linear_half`] for several rows of `X`, through `Y^T`.
fn rows_times_half(x: MatRef, w: HalfSlice, y: MatMut, epilogue: &Epilogue, threads: usize) {
    let spec = spec::current();
    let (m, k, n) = (x.rows, x.cols, y.cols);
    let (nkb, kc) = spec.k_blocks(k);
    let per = if threads > 1 {
        n.div_ceil(2 * threads).next_multiple_of(spec.mr)
    } else {
        n
    };
    with_staging(n * m, |yt| {
        parallel::for_each_chunk_mut(yt, per * m, threads > 1, |ci, part| {
            let (j0, feats) = (ci * per, part.len() / m);
            let ob = rows_per_block(feats, kc, spec.mr);
            with_decoded(ob * kc, |buf| {
                for o in (0..feats).step_by(ob) {
                    let rows = ob.min(feats - o);
                    for kb in 0..nkb {
                        let p0 = kb * kc;
                        let depth = kc.min(k - p0);
                        let blk = &mut buf[..rows * depth];
                        decode_block(w, k, (j0 + o, rows), (p0, depth), blk);
                        let xt = MatRef {
                            data: &x.data[p0 * x.col_stride..],
                            rows: depth,
                            cols: m,
                            row_stride: x.col_stride,
                            col_stride: x.row_stride,
                        };
                        let c = MatMut {
                            data: &mut part[o * m..],
                            rows,
                            cols: m,
                            row_stride: m,
                        };
                        let ops = if kb + 1 == nkb { epilogue } else { &[] };
                        let beta = if kb == 0 { 0.0 } else { 1.0 };
                        with_block_epilogue(ops, true, (j0 + o, rows), (0, m), |e| {
                            // SAFETY: `c` borrows its rows of `part` uniquely.
                            unsafe {
                                gemm_threads(
                                    spec,
                                    MatRef::row_major(blk, rows, depth),
                                    xt,
                                    beta,
                                    c.into(),
                                    e,
                                    1,
                                )
                            }
                        });
                    }
                }
            })
        });
        for (i, row) in y.data.chunks_mut(y.row_stride).take(m).enumerate() {
            for (j, v) in row[..n].iter_mut().enumerate() {
                *v = yt[j * m + i];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::half_weights::{HalfKind, HalfVec};
    use crate::simd::test_bits;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        test_bits(seed)
            .take(n)
            .map(|b| (b >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect()
    }

    /// The product with the decoded weights in f32, the reference.
    fn decoded(h: &HalfVec) -> Vec<f32> {
        h.to_f32()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 2e-5 * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn half_weights_times_b_equals_the_f32_product_of_the_decoded_weights() {
        // Deep (several depth blocks), tall (several row blocks), a sliver of a row.
        for (m, k, n) in [(7, 5, 3), (300, 700, 9), (1, 40, 33), (70, 2000, 20)] {
            for kind in [HalfKind::F16, HalfKind::Bf16] {
                let w = HalfVec::encode(kind, &data(m * k, 1)).unwrap();
                let b = data(k * n, 2);
                let bias = data(m, 3);
                let res = data(m * n, 4);
                let epi = [
                    EpilogueOp::BiasPerRow(&bias),
                    EpilogueOp::Add(MatRef::row_major(&res, m, n)),
                    EpilogueOp::Act(Activation::Relu),
                ];
                let init = data(m * n, 5);
                let mut got = init.clone();
                gemm_half_a_serial(
                    w.as_slice(),
                    MatRef::row_major(&b, k, n),
                    0.5,
                    MatMut::row_major(&mut got, m, n),
                    &epi,
                );
                let mut want = init;
                super::super::naive_gemm(
                    MatRef::row_major(&decoded(&w), m, k),
                    MatRef::row_major(&b, k, n),
                    0.5,
                    MatMut::row_major(&mut want, m, n),
                    &epi,
                );
                assert_close(&got, &want, &format!("{m}x{k}x{n} {kind:?}"));
            }
        }
    }

    #[test]
    fn linear_half_equals_the_f32_product_of_the_decoded_weights() {
        // Batch 1 and more, narrow and wide layers, a depth past one decoded block.
        for (m, k, n) in [
            (1, 12, 5),
            (1, 512, 1000),
            (1, 5000, 40),
            (4, 300, 70),
            (33, 9, 130),
        ] {
            let kind = if n % 2 == 0 {
                HalfKind::F16
            } else {
                HalfKind::Bf16
            };
            let w = HalfVec::encode(kind, &data(n * k, 6)).unwrap();
            let x = data(m * k, 7);
            let bias = data(n, 8);
            let row_bias = data(m, 9);
            let res = data(m * n, 10);
            let epi = [
                EpilogueOp::BiasPerCol(&bias),
                EpilogueOp::BiasPerRow(&row_bias),
                EpilogueOp::Add(MatRef::row_major(&res, m, n)),
                EpilogueOp::Act(Activation::Gelu),
            ];
            let mut got = vec![f32::NAN; m * n];
            linear_half(
                MatRef::row_major(&x, m, k),
                w.as_slice(),
                MatMut::row_major(&mut got, m, n),
                &epi,
            );
            let mut want = vec![0.0; m * n];
            super::super::naive_gemm(
                MatRef::row_major(&x, m, k),
                MatRef::row_major(&decoded(&w), n, k).t(),
                0.0,
                MatMut::row_major(&mut want, m, n),
                &epi,
            );
            assert_close(&got, &want, &format!("{m}x{k}x{n}"));
        }
        // One row read through a stride (a column of a matrix) takes the blocked path.
        let (k, n) = (300, 37);
        let w = HalfVec::encode(HalfKind::F16, &data(n * k, 11)).unwrap();
        let xs = data(3 * k, 12);
        let x = MatRef {
            data: &xs,
            rows: 1,
            cols: k,
            row_stride: 1,
            col_stride: 3,
        };
        let mut got = vec![f32::NAN; n];
        linear_half(x, w.as_slice(), MatMut::row_major(&mut got, 1, n), &[]);
        let mut want = vec![0.0; n];
        let wd = decoded(&w);
        super::super::naive_gemm(
            x,
            MatRef::row_major(&wd, n, k).t(),
            0.0,
            MatMut::row_major(&mut want, 1, n),
            &[],
        );
        assert_close(&got, &want, "strided row");
    }
}
