//! Stride-1 convolutions without im2col: GEMMs over shifted views of a zero-padded input plane.
//!
//! Each image's input is copied once into a padded layout whose rows are `ws = W + pw` wide (the
//! `pw` zero columns between two rows serve as the right padding of one and the left padding of
//! the next) with `ph` zero rows above and below. Output pixel `(oy, ox)` is computed on a grid of
//! `OH x ws` positions, `p = oy * ws + ox`; the tap `(ky, kx)` of every grid position then reads
//! the padded plane at `p + ky * ws + kx`: for a fixed tap the patch matrix `[Cin x OH*ws]` is a
//! strided *view* of the padded plane, no copy. (Reads past the end of a row land in the next
//! row's zero columns; grid columns `ox >= OW` are garbage and dropped.) So:
//!
//! - forward: `Y_grid = sum over taps of W_tap[Cout x Cin] @ X_shift_tap[Cin x grid]`, the GEMM
//!   reading the shifted planes in place, then the valid columns copied out;
//! - input gradient: the forward of `dY` with the kernel flipped and channels swapped, padding
//!   `k - 1 - p` (stride 1 only);
//! - weight gradient: `dW_tap^T[Cin x Cout] += X_shift_tap[Cin x grid] @ dY_grid^T[grid x Cout]`,
//!   `dY_grid` being `dY` with zeros in the garbage columns, packed once per image for all taps.
//!
//! In the forward, the taps of one kernel column `kx` are batched into one GEMM of depth
//! `Cin * kh` through a stack of `kh` row-shifted copies of the padded planes
//! ([`Layout::stack`]), so each output tile is stored `kw` times rather than `kh * kw`.
//!
//! Against the tiled im2col this saves writing and re-reading `kh * kw` copies of the input, which
//! dominates when channels are few (ResNet's 16- and 32-channel stages at 28x28 and 14x14); the
//! price is `ws / OW` extra columns, small for wide planes, hence [`preferred`]'s width bound.

use super::im2col::copy_run;
use super::{
    accumulate_in_parts, epilogue_row, units_balance, Conv2dShape, ConvEpilogueOp, Weights,
};
use crate::gemm::{gemm_packed_serial, gemm_serial, pack_b, MatMut, MatRef};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::{with_scratch, with_staging};

/// Narrowest output for which [`preferred`] picks this path: the garbage columns cost `pw / OW`.
const MIN_OUT_W: usize = 10;

/// Whether the geometry fits this path: stride 1, no dilation, one group, and padding smaller
/// than the kernel (so the input gradient is again such a convolution).
pub fn supports(s: &Conv2dShape) -> bool {
    let p = &s.params;
    p.stride == (1, 1)
        && p.dilation == (1, 1)
        && p.groups == 1
        && p.padding.0 < s.kernel_h
        && p.padding.1 < s.kernel_w
        && s.kernel_h * s.kernel_w > 1
}

/// Whether this path beats the tiled im2col for `s`: wide enough planes, enough images to give
/// every thread whole images, and, for a single image, few output channels (the im2col's copies
/// then cost more than the product). At batch 1 on one thread: 128->4 at 14x14 47 us here against
/// 78, 64->16 at 28x28 200 against 216, but 16->64 at 28x28 183 against 162 and 64->64 at 56x56
/// 3.0 ms against 2.6.
pub fn preferred(s: &Conv2dShape) -> bool {
    let (_, ow) = s.out_hw();
    let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
    supports(s)
        && ow >= MIN_OUT_W
        && (!par || units_balance(s.batch))
        && (s.batch > 1 || s.out_channels <= MAX_SINGLE_IMAGE_COUT)
}

/// Most output channels for which a single image takes this path (see [`preferred`]).
const MAX_SINGLE_IMAGE_COUT: usize = 16;

/// The padded plane and the output grid of one image.
#[derive(Clone, Copy, Debug)]
struct Layout {
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    /// Row width of the padded plane and of the output grid.
    ws: usize,
    /// Floats per padded channel plane (rows, plus the last tap's overhang).
    plane: usize,
    /// Output grid positions, `oh * ws`.
    grid: usize,
    /// Row stride of the row-shifted stack (at least `grid + kw - 1`).
    zst: usize,
}

impl Layout {
    fn new(s: &Conv2dShape) -> Layout {
        let (oh, ow) = s.out_hw();
        let (ph, pw) = s.params.padding;
        let ws = s.in_w + pw;
        let rows = s.in_h + 2 * ph;
        Layout {
            h: s.in_h,
            w: s.in_w,
            ph,
            pw,
            kh: s.kernel_h,
            kw: s.kernel_w,
            oh,
            ow,
            ws,
            plane: rows * ws + s.kernel_w,
            grid: oh * ws,
            zst: (oh * ws + s.kernel_w - 1).next_multiple_of(16),
        }
    }

    /// The row-shifted stack of `channels` padded planes in `xb`: row `c * kh + ky` of `z` is
    /// plane `c` from row `ky` on (`zst` apart), so the patch matrix of every tap `(ky, kx)` of
    /// one kernel column `kx`, `[channels * kh x grid]`, is the single view `z[kx..]` with row
    /// stride `zst`: one GEMM of depth `channels * kh` per kernel column instead of `kh` GEMMs
    /// of depth `channels`, for `kh` copies of the input (im2col makes `kh * kw`).
    fn stack(&self, xb: &[f32], channels: usize, z: &mut [f32]) {
        let len = self.grid + self.kw - 1;
        for (r, row) in z
            .chunks_exact_mut(self.zst)
            .take(channels * self.kh)
            .enumerate()
        {
            let (c, ky) = (r / self.kh, r % self.kh);
            let at = c * self.plane + ky * self.ws;
            row[..len].copy_from_slice(&xb[at..at + len]);
        }
    }

    /// The patch matrix of tap `t` alone, `[channels x grid]`, as a view of the padded planes.
    fn shifted<'a>(&self, xb: &'a [f32], channels: usize, t: usize) -> MatRef<'a> {
        MatRef {
            data: &xb[(t / self.kw) * self.ws + t % self.kw..],
            rows: channels,
            cols: self.grid,
            row_stride: self.plane,
            col_stride: 1,
        }
    }

    /// The patch matrix of kernel column `kx`, `[channels * kh x grid]`, as a view of the stack.
    fn column<'a>(&self, z: &'a [f32], channels: usize, kx: usize) -> MatRef<'a> {
        MatRef {
            data: &z[kx..],
            rows: channels * self.kh,
            cols: self.grid,
            row_stride: self.zst,
            col_stride: 1,
        }
    }

    /// Copy `channels` planes of `h x w` from `x` into the padded layout in `buf`.
    fn pad(&self, x: &[f32], channels: usize, buf: &mut [f32]) {
        for (src, dst) in x
            .chunks_exact(self.h * self.w)
            .zip(buf.chunks_exact_mut(self.plane))
            .take(channels)
        {
            // Zero only the padding: the top rows and each gap of `pw` between data rows (and
            // the first row's left padding), then the bottom rows and the overhang.
            let first = self.ph * self.ws + self.pw;
            dst[..first].fill(0.0);
            for (y, row) in src.chunks_exact(self.w).enumerate() {
                let at = first + y * self.ws;
                copy_run(&mut dst[at..at + self.w], row);
                let gap = (at + self.w + self.pw).min(dst.len());
                if gap == at + self.w + 1 {
                    dst[at + self.w] = 0.0;
                } else {
                    dst[at + self.w..gap].fill(0.0);
                }
            }
            let end = (first + self.h * self.ws).min(dst.len());
            dst[end..].fill(0.0);
        }
    }
}

/// Forward (`s` must satisfy [`supports`]).
pub fn forward(s: &Conv2dShape, x: &[f32], w: Weights, out: &mut [f32], epi: &[ConvEpilogueOp]) {
    let l = Layout::new(s);
    let (cin, cout, kh, kw) = (s.in_channels, s.out_channels, l.kh, l.kw);
    let depth = cin * kh;
    let per_out = cin * kh * kw;
    // Weights by kernel column: wk[kx] is the row-major [Cout x (Cin, kh)] matrix of column kx,
    // in the call-level staging slot so inference allocates nothing after warm-up (16-bit
    // weights are decoded one output channel at a time on the way).
    with_staging(w.len(), |wk| {
        for co in 0..cout {
            w.range(co * per_out..(co + 1) * per_out).with_f32(|wc| {
                for ci in 0..cin {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wk[(kx * cout + co) * depth + ci * kh + ky] =
                                wc[(ci * kh + ky) * kw + kx];
                        }
                    }
                }
            });
        }
        let (img_in, img_out, plane_out) = (cin * l.h * l.w, cout * l.oh * l.ow, l.oh * l.ow);
        let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
        parallel::for_each_chunk_mut(out, img_out, par, |n, o| {
            with_scratch(cin * l.plane + depth * l.zst + cout * l.grid, |buf| {
                let (xb, rest) = buf.split_at_mut(cin * l.plane);
                let (z, yb) = rest.split_at_mut(depth * l.zst);
                l.pad(&x[n * img_in..(n + 1) * img_in], cin, xb);
                l.stack(xb, cin, z);
                for kx in 0..kw {
                    gemm_serial(
                        MatRef::row_major(
                            &wk[kx * cout * depth..(kx + 1) * cout * depth],
                            cout,
                            depth,
                        ),
                        l.column(z, cin, kx),
                        if kx == 0 { 0.0 } else { 1.0 },
                        MatMut::row_major(yb, cout, l.grid),
                        &[],
                    );
                }
                for (c, (dst, src)) in o
                    .chunks_exact_mut(plane_out)
                    .zip(yb.chunks_exact(l.grid))
                    .enumerate()
                {
                    for (drow, srow) in dst.chunks_exact_mut(l.ow).zip(src.chunks_exact(l.ws)) {
                        copy_run(drow, &srow[..l.ow]);
                    }
                    epilogue_row(epi, dst, c, (n * cout + c) * plane_out);
                }
            })
        });
    })
}

/// The convolution whose forward is the input gradient of `s` (stride 1): input `dY`, the kernel
/// flipped with input and output channels swapped, padding `k - 1 - p`.
pub(crate) fn transposed(s: &Conv2dShape) -> Conv2dShape {
    let (oh, ow) = s.out_hw();
    let (ph, pw) = s.params.padding;
    Conv2dShape {
        batch: s.batch,
        in_channels: s.out_channels,
        in_h: oh,
        in_w: ow,
        out_channels: s.in_channels,
        kernel_h: s.kernel_h,
        kernel_w: s.kernel_w,
        params: s.params.padding(s.kernel_h - 1 - ph, s.kernel_w - 1 - pw),
    }
}

/// The weights of [`transposed`]`(s)`: `[Cin, Cout, kh, kw]`, each kernel flipped.
pub(crate) fn flipped_weights(s: &Conv2dShape, w: &[f32]) -> Vec<f32> {
    let (cin, cout, kh, kw) = (s.in_channels, s.out_channels, s.kernel_h, s.kernel_w);
    let taps = kh * kw;
    let mut wf = vec![0.0f32; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            let src = &w[(co * cin + ci) * taps..][..taps];
            let dst = &mut wf[(ci * cout + co) * taps..][..taps];
            for (d, v) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *v;
            }
        }
    }
    wf
}

/// Input gradient (overwrites `dx`; `s` must satisfy [`supports`]).
pub fn backward_input(s: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let ts = transposed(s);
    debug_assert_eq!(ts.out_hw(), (s.in_h, s.in_w));
    forward(&ts, dy, Weights::F32(&flipped_weights(s, w)), dx, &[]);
}

/// Weight gradient (overwrites `dw`; `s` must satisfy [`supports`]).
pub fn backward_weight(s: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let l = Layout::new(s);
    let (cin, cout, taps) = (s.in_channels, s.out_channels, l.kh * l.kw);
    let (img_in, plane_out) = (cin * l.h * l.w, l.oh * l.ow);
    let img_out = cout * plane_out;
    let par = parallel::worth_splitting(s.macs(), CONV_PAR_MIN_MACS);
    // acc[t] is tap t's [Cin x Cout] gradient, transposed into place at the end. (Per tap, not
    // per kernel column through the stack: measured, the stack's copies cost more than its
    // taller GEMMs save here.)
    let mut acc = vec![0.0f32; dw.len()];
    accumulate_in_parts(s.batch, par, &mut acc, |items, acc| {
        with_scratch(cin * l.plane + cout * l.grid, |buf| {
            let (xb, db) = buf.split_at_mut(cin * l.plane);
            for n in items {
                l.pad(&x[n * img_in..(n + 1) * img_in], cin, xb);
                for (src, dst) in dy[n * img_out..(n + 1) * img_out]
                    .chunks_exact(plane_out)
                    .zip(db.chunks_exact_mut(l.grid))
                {
                    for (srow, drow) in src.chunks_exact(l.ow).zip(dst.chunks_exact_mut(l.ws)) {
                        copy_run(&mut drow[..l.ow], srow);
                        drow[l.ow..].fill(0.0);
                    }
                }
                let dyt = pack_b(MatRef::row_major(db, cout, l.grid).t());
                for t in 0..taps {
                    gemm_packed_serial(
                        l.shifted(xb, cin, t),
                        &dyt,
                        1.0,
                        MatMut::row_major(
                            &mut acc[t * cin * cout..(t + 1) * cin * cout],
                            cin,
                            cout,
                        ),
                        &[],
                    );
                }
            }
        })
    });
    for co in 0..cout {
        for ci in 0..cin {
            for t in 0..taps {
                dw[(co * cin + ci) * taps + t] = acc[(t * cin + ci) * cout + co];
            }
        }
    }
}
