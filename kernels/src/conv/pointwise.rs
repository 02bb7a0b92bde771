//! 1x1 convolution with stride 1 and no padding: the input plane already is the patch matrix, so
//! each image and group is one GEMM `W_g[Cout_g x Cin_g] @ X_g[Cin_g x H*W]` with no copy.
//!
//! Parallel split: whole (image, group) products when there are enough of them; otherwise pixel
//! ranges (column blocks of X, read in place through strided views) with every output channel
//! per task; only when planes are too small for ranges, blocks of at least 16 output channels
//! (each task repacks X, which is then small).

use super::{
    accumulate_in_parts, channel_block, for_each_channel_block, gemm_weight_rows,
    gemm_weight_rows_raw, ranges_in_place, ranges_per_image, units_balance, with_gemm_epilogue,
    Conv2dShape, ConvEpilogueOp, Weights,
};
use crate::gemm::{gemm_serial as gemm, gemm_serial_raw, MatMut, MatPtr, MatRef};
use crate::parallel::{self, CONV_PAR_MIN_MACS};

/// Fewest pixels per parallel range.
const MIN_RANGE: usize = 256;

/// Columns `p0..p0 + len` of the `rows x plane` matrix at `data[start..]`.
fn columns(
    data: &[f32],
    start: usize,
    rows: usize,
    plane: usize,
    p0: usize,
    len: usize,
) -> MatRef<'_> {
    MatRef {
        data: &data[start + p0..],
        rows,
        cols: len,
        row_stride: plane,
        col_stride: 1,
    }
}

/// One pixel per image: each image's output is `W x` (a matrix-vector product,
/// [`super::matvec_image`]); the tiled path would use one column in sixteen of every register
/// tile.
fn single_pixel(
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    w.with_f32(|wf| {
        for (n, o) in out.chunks_exact_mut(cout).enumerate() {
            super::matvec_image(&x[n * cin..(n + 1) * cin], wf, o, epi, n);
        }
    });
}

/// Forward.
pub fn forward(
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let cin = shape.in_channels;
    if plane == 1 && groups == 1 {
        return single_pixel(shape, x, w, out, epi);
    }
    // Image n, group gi, pixels p0..p0+len into `dst` (its cout_g rows).
    //
    // SAFETY (of calls): `dst`'s elements are valid and the calling task's alone.
    let run = |n: usize, gi: usize, p0: usize, len: usize, dst: MatPtr| {
        let xg = columns(x, (n * cin + gi * cin_g) * plane, cin_g, plane, p0, len);
        with_gemm_epilogue(shape, epi, n, gi * cout_g, cout_g, p0, len, |e| {
            // SAFETY: the closure's contract.
            unsafe { gemm_weight_rows_raw(w, (gi * cout_g, cout_g), cin_g, xg, 0.0, dst, e) }
        });
    };
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    if !par || units_balance(shape.batch * groups) {
        parallel::for_each_chunk_mut(out, cout_g * plane, par, |i, o| {
            let dst = MatMut::row_major(o, cout_g, plane);
            run(i / groups, i % groups, 0, plane, dst.into())
        });
        return;
    }
    let per_image = ranges_per_image(shape, plane, MIN_RANGE);
    let threads = parallel::num_threads();
    if shape.batch * per_image >= threads {
        ranges_in_place(
            out,
            shape.batch,
            shape.out_channels,
            plane,
            per_image,
            |n, p0, dst| {
                let len = dst.cols;
                for gi in 0..groups {
                    run(n, gi, p0, len, dst.block(gi * cout_g, 0, cout_g, len));
                }
            },
        );
        return;
    }
    // Small planes: blocks of output channels (each task packs the small X for itself).
    let cb = w.align_rows(channel_block(shape, cout_g, 16, threads, par), cout_g);
    for_each_channel_block(out, cout_g, plane, cb, par, |u, c0, o| {
        let (n, gi) = (u / groups, u % groups);
        let (c, cb) = (gi * cout_g + c0, o.len() / plane);
        let xg = columns(x, (n * cin + gi * cin_g) * plane, cin_g, plane, 0, plane);
        with_gemm_epilogue(shape, epi, n, c, cb, 0, plane, |e| {
            gemm_weight_rows(
                w,
                (c, cb),
                cin_g,
                xg,
                0.0,
                MatMut::row_major(o, cb, plane),
                e,
            )
        });
    });
}

/// Input gradient: `dX_g = W_g^T @ dY_g` (overwrites `dx`).
pub fn backward_input(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let cout = shape.out_channels;
    let wt = |gi: usize| MatRef {
        data: &w[gi * cout_g * cin_g..(gi + 1) * cout_g * cin_g],
        rows: cin_g,
        cols: cout_g,
        row_stride: 1,
        col_stride: cin_g,
    };
    // Image n, group gi, pixels p0..p0+len into `dst` (its cin_g rows).
    //
    // SAFETY (of calls): `dst`'s elements are valid and the calling task's alone.
    let run = |n: usize, gi: usize, p0: usize, len: usize, dst: MatPtr| {
        let dyg = columns(dy, (n * cout + gi * cout_g) * plane, cout_g, plane, p0, len);
        // SAFETY: the closure's contract.
        unsafe { gemm_serial_raw(wt(gi), dyg, 0.0, dst, &[]) };
    };
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    if !par || units_balance(shape.batch * groups) {
        parallel::for_each_chunk_mut(dx, cin_g * plane, par, |i, o| {
            let dst = MatMut::row_major(o, cin_g, plane);
            run(i / groups, i % groups, 0, plane, dst.into())
        });
    } else {
        let per_image = ranges_per_image(shape, plane, MIN_RANGE);
        ranges_in_place(
            dx,
            shape.batch,
            shape.in_channels,
            plane,
            per_image,
            |n, p0, dst| {
                let len = dst.cols;
                for gi in 0..groups {
                    run(n, gi, p0, len, dst.block(gi * cin_g, 0, cin_g, len));
                }
            },
        );
    }
}

/// Weight gradient: `dW_g += dY_g[:, r] @ X_g[:, r]^T` over images and pixel ranges `r`
/// (overwrites `dw`, zeroed by the caller).
pub fn backward_weight(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    // A single image is split into pixel ranges so every thread gets work.
    let ranges = if par && shape.batch < parallel::num_threads() {
        parallel::num_threads().min(plane.max(1))
    } else {
        1
    };
    accumulate_in_parts(shape.batch * ranges, par, dw, |items, acc| {
        for item in items {
            let (n, r) = (item / ranges, item % ranges);
            let (q0, q1) = (r * plane / ranges, (r + 1) * plane / ranges);
            for gi in 0..groups {
                let dyg = columns(
                    dy,
                    (n * cout + gi * cout_g) * plane,
                    cout_g,
                    plane,
                    q0,
                    q1 - q0,
                );
                let xgt = columns(x, (n * cin + gi * cin_g) * plane, cin_g, plane, q0, q1 - q0).t();
                let k = cout_g * cin_g;
                gemm(
                    dyg,
                    xgt,
                    1.0,
                    MatMut::row_major(&mut acc[gi * k..(gi + 1) * k], cout_g, cin_g),
                    &[],
                );
            }
        }
    });
}
