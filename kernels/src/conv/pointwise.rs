//! 1x1 convolution with stride 1 and no padding: the input plane already is the patch matrix, so
//! each image and group is one GEMM `W_g[Cout_g x Cin_g] @ X_g[Cin_g x H*W]` with no copy.

use super::{accumulate_in_parts, channel_block, with_gemm_epilogue, Conv2dShape, ConvEpilogueOp};
use crate::gemm::{gemm, MatMut, MatRef};
use crate::parallel::{self, CONV_PAR_MIN_MACS};

/// Forward. Tasks own blocks of output channels of one image (whole groups when there are
/// enough), which are contiguous in the output.
pub fn forward(shape: &Conv2dShape, x: &[f32], w: &[f32], out: &mut [f32], epi: &[ConvEpilogueOp]) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g) = (shape.in_per_group(), shape.out_per_group());
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    let cb = channel_block(shape, cout_g, par);
    parallel::for_each_chunk_mut(out, cb * plane, par, |i, o| {
        let (n, c) = (i * cb / cout, i * cb % cout);
        let gi = c / cout_g;
        let xg = &x[(n * cin + gi * cin_g) * plane..][..cin_g * plane];
        with_gemm_epilogue(shape, epi, n, c, cb, 0, plane, |e| {
            gemm(
                MatRef::row_major(&w[c * cin_g..(c + cb) * cin_g], cb, cin_g),
                MatRef::row_major(xg, cin_g, plane),
                0.0,
                MatMut::row_major(o, cb, plane),
                e,
            )
        });
    });
}

/// Input gradient: `dX_g = W_g^T @ dY_g`, in blocks of input channels.
pub fn backward_input(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g) = (shape.in_per_group(), shape.out_per_group());
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    let cb = channel_block(shape, cin_g, par);
    parallel::for_each_chunk_mut(dx, cb * plane, par, |i, dxc| {
        let (n, c) = (i * cb / cin, i * cb % cin);
        let (gi, c0) = (c / cin_g, c % cin_g);
        let wt = MatRef {
            data: &w[gi * cout_g * cin_g + c0..],
            rows: cb,
            cols: cout_g,
            row_stride: 1,
            col_stride: cin_g,
        };
        gemm(
            wt,
            MatRef::row_major(
                &dy[(n * cout + gi * cout_g) * plane..][..cout_g * plane],
                cout_g,
                plane,
            ),
            0.0,
            MatMut::row_major(dxc, cb, plane),
            &[],
        );
    });
}

/// Weight gradient: `dW_g += dY_g[:, r] @ X_g[:, r]^T` over images and pixel ranges `r`.
pub fn backward_weight(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let plane = shape.in_h * shape.in_w;
    let (cin_g, cout_g, groups) = (
        shape.in_per_group(),
        shape.out_per_group(),
        shape.params.groups,
    );
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    // A single image is split into pixel ranges so both threads get work.
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
                let dyg = MatRef {
                    data: &dy[(n * cout + gi * cout_g) * plane + q0..],
                    rows: cout_g,
                    cols: q1 - q0,
                    row_stride: plane,
                    col_stride: 1,
                };
                let xgt = MatRef {
                    data: &x[(n * cin + gi * cin_g) * plane + q0..],
                    rows: q1 - q0,
                    cols: cin_g,
                    row_stride: 1,
                    col_stride: plane,
                };
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
