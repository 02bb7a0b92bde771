//! Depthwise convolution: one input channel per group, `mult = Cout / Cin` output channels per
//! input channel (output channel `oc` reads input channel `oc / mult`).
//!
//! Each input plane is first copied into a scratch plane padded horizontally (left padding, then
//! zeros far enough right that every vector of outputs, including the last partial one, can be
//! loaded without bounds checks). Output rows are then computed `LANES` at a time with all the
//! kernel taps accumulated in registers; rows of the kernel that fall in the vertical padding are
//! skipped. Stride 1 loads are plain unaligned loads, stride 2 loads deinterleave; other strides
//! use the scalar kernel. The bias and a clamping activation (ReLU, ReLU6, clamp) are applied in
//! registers at store; any other epilogue runs on the finished row while it is in L1.

use super::im2col::{valid_range, Geom};
use super::scratch::with_scratch;
use super::{dot, Conv2dShape, ConvEpilogueOp};
use crate::activation::{self, Activation};
use crate::isa::{self, Isa};
use crate::parallel::{self, CONV_PAR_MIN_MACS};

/// The widest SIMD vector any kernel here uses, in f32 lanes (AVX2).
const MAX_LANES: usize = 8;

/// Row length of the padded scratch plane: the left padding plus the input row, and room for the
/// reads of the last vector of outputs (rounded up to [`MAX_LANES`]; stride-2 loads read one
/// element past the last one they use).
pub(crate) fn padded_width(g: &Geom) -> usize {
    let ow_up = g.ow.div_ceil(MAX_LANES).max(1) * MAX_LANES;
    let reach = (ow_up - 1) * g.sw + 2 + (g.kw - 1) * g.dw;
    reach.max(g.pw + g.w)
}

/// Copy an `h x w` plane into `dst` (`h` rows of `wp`): `pw` zeros, the row, zeros.
fn pad_plane(src: &[f32], g: &Geom, wp: usize, dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(g.w).zip(dst.chunks_exact_mut(wp)) {
        d[..g.pw].fill(0.0);
        d[g.pw..g.pw + g.w].copy_from_slice(s);
        d[g.pw + g.w..].fill(0.0);
    }
}

/// Kernel rows `ky0..ky1` whose input row for output row `oy` lies inside the image.
#[inline]
fn kernel_rows(g: &Geom, oy: usize) -> (usize, usize) {
    valid_range(g.kh, g.h, g.dh, oy * g.sh, g.ph)
}

/// One output row of one channel:
/// `out[ox] = clamp(init + sum over r < nrows, kx < kw of taps[r*kw + kx] * src[row0 + r*row_step + ox*sx + kx*dx], lo, hi)`.
#[derive(Clone, Copy, Debug)]
pub struct RowJob<'a> {
    /// The padded input plane.
    pub src: &'a [f32],
    /// Start of the first kernel row's input row in `src`.
    pub row0: usize,
    /// Distance between consecutive kernel rows' input rows (dilation * padded width).
    pub row_step: usize,
    /// Kernel rows to accumulate (those inside the image).
    pub nrows: usize,
    /// The kernel's taps from the first accumulated row on, `kw` per row.
    pub taps: &'a [f32],
    pub kw: usize,
    /// Horizontal stride and dilation.
    pub sx: usize,
    pub dx: usize,
    /// Starting value (the bias, or 0).
    pub init: f32,
    /// Clamp bounds applied at store (infinite for none; NaN passes through).
    pub lo: f32,
    pub hi: f32,
}

impl RowJob<'_> {
    /// Whether every read a SIMD kernel makes for `ow` outputs (rounded up to [`MAX_LANES`]) lies
    /// inside `src` and the taps cover the rows.
    fn reads_in_bounds(&self, ow: usize) -> bool {
        if self.nrows == 0 || ow == 0 {
            return true;
        }
        let ow_up = ow.div_ceil(MAX_LANES) * MAX_LANES;
        let last = self.row0
            + (self.nrows - 1) * self.row_step
            + (ow_up - 1) * self.sx
            + (self.sx - 1)
            + (self.kw - 1) * self.dx;
        last < self.src.len() && self.taps.len() >= self.nrows * self.kw && self.sx >= 1
    }
}

#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    // Comparisons are false for NaN, so NaN passes through (as in the SIMD kernels).
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// The scalar reference row kernel (any stride).
pub fn row_scalar(job: &RowJob, out: &mut [f32]) {
    for (ox, o) in out.iter_mut().enumerate() {
        let mut acc = job.init;
        for r in 0..job.nrows {
            let base = job.row0 + r * job.row_step + ox * job.sx;
            let taps = &job.taps[r * job.kw..(r + 1) * job.kw];
            for (kx, &t) in taps.iter().enumerate() {
                acc += t * job.src[base + kx * job.dx];
            }
        }
        *o = clamp(acc, job.lo, job.hi);
    }
}

/// The row kernel for `isa` (SIMD for strides 1 and 2, the scalar reference otherwise).
pub fn row(isa: Isa, job: &RowJob, out: &mut [f32]) {
    match (isa, job.sx) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2Fma, 1 | 2) => {
            assert!(
                job.reads_in_bounds(out.len()),
                "depthwise row: reads out of bounds"
            );
            // SAFETY: Avx2Fma is only selected when the CPU supports AVX2 and FMA, and the assert
            // above proves every load of every (rounded-up) output vector lies inside `src` and
            // every tap inside `taps`; stores go to `out` or a stack buffer.
            unsafe {
                if job.sx == 1 {
                    avx2::row::<1>(job, out)
                } else {
                    avx2::row::<2>(job, out)
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, 1 | 2) => {
            assert!(
                job.reads_in_bounds(out.len()),
                "depthwise row: reads out of bounds"
            );
            // SAFETY: NEON is present on every aarch64 target we run on (isa::detect checked),
            // and the assert above proves every load lies inside `src` and `taps`.
            unsafe {
                if job.sx == 1 {
                    neon::row::<1>(job, out)
                } else {
                    neon::row::<2>(job, out)
                }
            }
        }
        _ => row_scalar(job, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::RowJob;
    use core::arch::x86_64::*;

    /// Eight outputs' inputs: 8 consecutive floats (stride 1) or the even ones of 16 (stride 2).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load<const S: usize>(p: *const f32) -> __m256 {
        if S == 1 {
            _mm256_loadu_ps(p)
        } else {
            let lo = _mm256_loadu_ps(p);
            let hi = _mm256_loadu_ps(p.add(8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then 64-bit lanes reordered 0,2,1,3.
            let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(ev)))
        }
    }

    /// `NB` vectors of outputs starting at `ox`, clamped.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const S: usize, const NB: usize>(job: &RowJob, ox: usize) -> [__m256; NB] {
        let mut acc = [_mm256_set1_ps(job.init); NB];
        let src = job.src.as_ptr();
        for r in 0..job.nrows {
            let base = src.add(job.row0 + r * job.row_step + ox * S);
            let taps = job.taps.as_ptr().add(r * job.kw);
            for kx in 0..job.kw {
                let wv = _mm256_set1_ps(*taps.add(kx));
                let p = base.add(kx * job.dx);
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, load::<S>(p.add(b * 8 * S)), *a);
                }
            }
        }
        let (lo, hi) = (_mm256_set1_ps(job.lo), _mm256_set1_ps(job.hi));
        for a in acc.iter_mut() {
            // Operand order keeps NaN: max/min return the second operand when either is NaN.
            *a = _mm256_min_ps(hi, _mm256_max_ps(lo, *a));
        }
        acc
    }

    /// The whole row: blocks of 32, then 8, then a partial vector through a stack buffer.
    /// Caller guarantees `job.reads_in_bounds(out.len())`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row<const S: usize>(job: &RowJob, out: &mut [f32]) {
        let ow = out.len();
        let dst = out.as_mut_ptr();
        let mut ox = 0;
        while ox + 32 <= ow {
            let acc = block::<S, 4>(job, ox);
            for (b, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(dst.add(ox + 8 * b), *a);
            }
            ox += 32;
        }
        while ox + 8 <= ow {
            let [a] = block::<S, 1>(job, ox);
            _mm256_storeu_ps(dst.add(ox), a);
            ox += 8;
        }
        if ox < ow {
            let [a] = block::<S, 1>(job, ox);
            let mut tmp = [0.0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), a);
            out[ox..].copy_from_slice(&tmp[..ow - ox]);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::RowJob;
    use core::arch::aarch64::*;

    /// Four outputs' inputs: 4 consecutive floats (stride 1) or the even ones of 8 (stride 2).
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load<const S: usize>(p: *const f32) -> float32x4_t {
        if S == 1 {
            vld1q_f32(p)
        } else {
            vld2q_f32(p).0
        }
    }

    /// `NB` vectors of outputs starting at `ox`, clamped.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn block<const S: usize, const NB: usize>(job: &RowJob, ox: usize) -> [float32x4_t; NB] {
        let mut acc = [vdupq_n_f32(job.init); NB];
        let src = job.src.as_ptr();
        for r in 0..job.nrows {
            let base = src.add(job.row0 + r * job.row_step + ox * S);
            let taps = job.taps.as_ptr().add(r * job.kw);
            for kx in 0..job.kw {
                let wv = vdupq_n_f32(*taps.add(kx));
                let p = base.add(kx * job.dx);
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, wv, load::<S>(p.add(b * 4 * S)));
                }
            }
        }
        let (lo, hi) = (vdupq_n_f32(job.lo), vdupq_n_f32(job.hi));
        for a in acc.iter_mut() {
            // FMAX/FMIN propagate NaN.
            *a = vminq_f32(hi, vmaxq_f32(lo, *a));
        }
        acc
    }

    /// The whole row: blocks of 16, then 4, then a partial vector through a stack buffer.
    /// Caller guarantees `job.reads_in_bounds(out.len())`.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn row<const S: usize>(job: &RowJob, out: &mut [f32]) {
        let ow = out.len();
        let dst = out.as_mut_ptr();
        let mut ox = 0;
        while ox + 16 <= ow {
            let acc = block::<S, 4>(job, ox);
            for (b, a) in acc.iter().enumerate() {
                vst1q_f32(dst.add(ox + 4 * b), *a);
            }
            ox += 16;
        }
        while ox + 4 <= ow {
            let [a] = block::<S, 1>(job, ox);
            vst1q_f32(dst.add(ox), a);
            ox += 4;
        }
        if ox < ow {
            let [a] = block::<S, 1>(job, ox);
            let mut tmp = [0.0f32; 4];
            vst1q_f32(tmp.as_mut_ptr(), a);
            out[ox..].copy_from_slice(&tmp[..ow - ox]);
        }
    }
}

/// How the epilogue splits between the row kernel (leading bias, a final clamping activation) and
/// a pass over each finished row (everything else, in order).
struct Plan<'e, 'a> {
    bias: Option<&'a [f32]>,
    lo: f32,
    hi: f32,
    rest: &'e [ConvEpilogueOp<'a>],
}

impl<'e, 'a> Plan<'e, 'a> {
    fn new(epi: &'e [ConvEpilogueOp<'a>]) -> Self {
        let (bias, rest) = match epi {
            [ConvEpilogueOp::Bias(b), rest @ ..] => (Some(*b), rest),
            _ => (None, epi),
        };
        let unbounded = (f32::NEG_INFINITY, f32::INFINITY);
        match rest {
            [ConvEpilogueOp::Act(a)] if clamp_bounds(*a).is_some() => {
                let (lo, hi) = clamp_bounds(*a).unwrap_or(unbounded);
                Plan {
                    bias,
                    lo,
                    hi,
                    rest: &[],
                }
            }
            _ => Plan {
                bias,
                lo: unbounded.0,
                hi: unbounded.1,
                rest,
            },
        }
    }

    /// Apply the rest of the epilogue to a finished row of output channel `oc` that starts at
    /// index `at` of the output.
    fn finish_row(&self, row: &mut [f32], oc: usize, at: usize) {
        let len = row.len();
        for op in self.rest {
            match *op {
                ConvEpilogueOp::Bias(b) => row.iter_mut().for_each(|v| *v += b[oc]),
                ConvEpilogueOp::Add(r) => row
                    .iter_mut()
                    .zip(&r[at..at + len])
                    .for_each(|(v, x)| *v += x),
                ConvEpilogueOp::Act(a) => activation::apply_inplace(a, row),
            }
        }
    }
}

/// The activations that are a clamp, as `(lo, hi)`.
fn clamp_bounds(a: Activation) -> Option<(f32, f32)> {
    match a {
        Activation::Identity => Some((f32::NEG_INFINITY, f32::INFINITY)),
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Relu6 => Some((0.0, 6.0)),
        Activation::Clamp { lo, hi } => Some((lo, hi)),
        _ => None,
    }
}

/// Forward (shape has one input channel per group).
pub fn forward(shape: &Conv2dShape, x: &[f32], w: &[f32], out: &mut [f32], epi: &[ConvEpilogueOp]) {
    forward_isa(isa::current(), shape, x, w, out, epi);
}

/// Forward with the row kernel of `isa` (tests compare the ISAs).
pub fn forward_isa(
    isa: Isa,
    shape: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert_eq!(
        shape.in_per_group(),
        1,
        "depthwise: more than one input channel per group"
    );
    let g = Geom::new(shape);
    let cin = shape.in_channels;
    let mult = shape.out_channels / cin;
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let khw = g.kh * g.kw;
    let wp = padded_width(&g);
    let plan = Plan::new(epi);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    // One task per (image, input channel): its `mult` output planes are contiguous.
    parallel::for_each_chunk_mut(out, mult * plane_out, par, |i, o| {
        let (n, c) = (i / cin, i % cin);
        with_scratch(g.h * wp, |pad| {
            pad_plane(&x[i * plane_in..(i + 1) * plane_in], &g, wp, pad);
            for j in 0..mult {
                let oc = c * mult + j;
                let taps = &w[oc * khw..(oc + 1) * khw];
                let init = plan.bias.map_or(0.0, |b| b[oc]);
                for oy in 0..g.oh {
                    let (ky0, ky1) = kernel_rows(&g, oy);
                    let job = RowJob {
                        src: pad,
                        row0: if ky1 > ky0 {
                            (oy * g.sh + ky0 * g.dh - g.ph) * wp
                        } else {
                            0
                        },
                        row_step: g.dh * wp,
                        nrows: ky1 - ky0,
                        taps: &taps[ky0 * g.kw..],
                        kw: g.kw,
                        sx: g.sw,
                        dx: g.dw,
                        init,
                        lo: plan.lo,
                        hi: plan.hi,
                    };
                    let orow = &mut o[j * plane_out + oy * g.ow..][..g.ow];
                    row(isa, &job, orow);
                    plan.finish_row(
                        orow,
                        oc,
                        (n * shape.out_channels + oc) * plane_out + oy * g.ow,
                    );
                }
            }
        })
    });
}

/// Input gradient (into `dx`, zeroed by the caller): each output gradient row is scattered
/// through the taps into a padded accumulation plane, whose interior is then copied out.
pub fn backward_input(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let g = Geom::new(shape);
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let mult = cout / cin;
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let khw = g.kh * g.kw;
    let wp = padded_width(&g);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    parallel::for_each_chunk_mut(dx, plane_in, par, |i, dxp| {
        let (n, c) = (i / cin, i % cin);
        with_scratch(g.h * wp, |acc| {
            acc.fill(0.0);
            for j in 0..mult {
                let oc = c * mult + j;
                let taps = &w[oc * khw..(oc + 1) * khw];
                let dyp = &dy[(n * cout + oc) * plane_out..][..plane_out];
                for (oy, dyrow) in dyp.chunks_exact(g.ow).enumerate() {
                    let (ky0, ky1) = kernel_rows(&g, oy);
                    for ky in ky0..ky1 {
                        let iy = oy * g.sh + ky * g.dh - g.ph;
                        let arow = &mut acc[iy * wp..(iy + 1) * wp];
                        for kx in 0..g.kw {
                            let t = taps[ky * g.kw + kx];
                            let off = kx * g.dw;
                            if g.sw == 1 {
                                for (a, &d) in arow[off..off + g.ow].iter_mut().zip(dyrow) {
                                    *a += t * d;
                                }
                            } else {
                                for (ox, &d) in dyrow.iter().enumerate() {
                                    arow[off + ox * g.sw] += t * d;
                                }
                            }
                        }
                    }
                }
            }
            for (d, a) in dxp.chunks_exact_mut(g.w).zip(acc.chunks_exact(wp)) {
                d.copy_from_slice(&a[g.pw..g.pw + g.w]);
            }
        })
    });
}

/// Weight gradient (into `dw`, zeroed by the caller): per input channel (owning its `mult`
/// kernels), dot products of output-gradient rows with padded input rows, over the batch.
pub fn backward_weight(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let g = Geom::new(shape);
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let mult = cout / cin;
    let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
    let khw = g.kh * g.kw;
    let wp = padded_width(&g);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    parallel::for_each_chunk_mut(dw, mult * khw, par, |c, dwc| {
        with_scratch(g.h * wp, |pad| {
            for n in 0..shape.batch {
                pad_plane(&x[(n * cin + c) * plane_in..][..plane_in], &g, wp, pad);
                for j in 0..mult {
                    let oc = c * mult + j;
                    let dyp = &dy[(n * cout + oc) * plane_out..][..plane_out];
                    let dwk = &mut dwc[j * khw..(j + 1) * khw];
                    for (oy, dyrow) in dyp.chunks_exact(g.ow).enumerate() {
                        let (ky0, ky1) = kernel_rows(&g, oy);
                        for ky in ky0..ky1 {
                            let iy = oy * g.sh + ky * g.dh - g.ph;
                            let prow = &pad[iy * wp..(iy + 1) * wp];
                            for kx in 0..g.kw {
                                let off = kx * g.dw;
                                dwk[ky * g.kw + kx] += if g.sw == 1 {
                                    dot(&prow[off..off + g.ow], dyrow)
                                } else {
                                    dyrow
                                        .iter()
                                        .enumerate()
                                        .map(|(ox, &d)| d * prow[off + ox * g.sw])
                                        .sum::<f32>()
                                };
                            }
                        }
                    }
                }
            }
        })
    });
}
