//! Depthwise convolution: one input channel per group, `mult = Cout / Cin` output channels per
//! input channel (output channel `oc` reads input channel `oc / mult`).
//!
//! Forward: each input plane is copied into a scratch plane zero-padded on all sides — the
//! padding, plus enough zeros on the right that the last (partial) vector of outputs loads without
//! bounds checks — so every output row uses every kernel tap and no border case remains. Output
//! rows are computed [`ROWS`] at a time, a vector of columns each, all taps accumulated in
//! registers: the rows' accumulators are independent chains, which keeps the FMA pipes busy even
//! on 7-pixel-wide planes. Stride 1 loads are plain unaligned loads, stride 2 loads deinterleave
//! (on wide enough rows the padded rows are split into their two column phases once instead, and
//! read plainly); other strides use the scalar kernel. A leading bias and a final clamping activation (ReLU,
//! ReLU6, clamp) are applied in registers; any other epilogue runs on each finished row in L1.
//!
//! Backward (direct, scalar loops the compiler vectorises): the input gradient scatters each
//! output-gradient row through the taps; the weight gradient is dot products of rows.

use super::im2col::{copy_run, valid_range, Geom};
use super::{dot, epilogue_row, Conv2dShape, ConvEpilogueOp, Weights};
use crate::activation::Activation;
use crate::isa::{self, Isa};
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;
use std::ops::Range;

/// The widest SIMD vector any kernel here uses, in f32 lanes (AVX-512).
const MAX_LANES: usize = 16;
/// Output rows computed together by the SIMD kernels.
pub const ROWS: usize = 4;

/// Row length of a padded scratch plane: the left padding plus the input row, and room for the
/// reads of the last vector of outputs (rounded up to [`MAX_LANES`]; stride-2 loads read one
/// element past the last one they use).
pub(crate) fn padded_width(g: &Geom) -> usize {
    let ow_up = g.ow.div_ceil(MAX_LANES).max(1) * MAX_LANES;
    let reach = (ow_up - 1) * g.sw + 2 + (g.kw - 1) * g.dw;
    reach.max(g.pw + g.w)
}

/// Copy an `h x w` plane into `dst` (rows of `wp`): `top` zero rows, then each input row as `pw`
/// zeros, the row, zeros; then zero rows to the end of `dst`.
fn pad_plane(src: &[f32], g: &Geom, wp: usize, top: usize, dst: &mut [f32]) {
    if dst.len() <= SMALL_PLANE {
        // One fill then the rows: fewer, larger memory calls beat per-row fills on tiny planes.
        dst.fill(0.0);
        for (s, d) in src
            .chunks_exact(g.w)
            .zip(dst[top * wp..].chunks_exact_mut(wp))
        {
            d[g.pw..g.pw + g.w].copy_from_slice(s);
        }
        return;
    }
    let (head, rest) = dst.split_at_mut(top * wp);
    head.fill(0.0);
    let (body, tail) = rest.split_at_mut(g.h * wp);
    for (s, d) in src.chunks_exact(g.w).zip(body.chunks_exact_mut(wp)) {
        d[..g.pw].fill(0.0);
        d[g.pw..g.pw + g.w].copy_from_slice(s);
        d[g.pw + g.w..].fill(0.0);
    }
    tail.fill(0.0);
}

/// Padded planes up to this many floats are zeroed whole before the rows are copied in.
const SMALL_PLANE: usize = 2048;

/// Kernel rows `ky0..ky1` whose input row for output row `oy` lies inside the image.
#[inline]
fn kernel_rows(g: &Geom, oy: usize) -> (usize, usize) {
    valid_range(g.kh, g.h, g.dh, oy * g.sh, g.ph)
}

/// Output rows of one channel over a fully padded plane: for `r < out.len() / ow`,
/// `out[r*ow + ox] = clamp(init + sum over ky, kx of
///     taps[ky*kw + kx] * src[((oy0 + r)*sy + ky*dy)*ld + ox*sx + kx*dx], lo, hi)`.
#[derive(Clone, Copy, Debug)]
pub struct PlaneJob<'a> {
    /// The padded input plane, rows of `ld`.
    pub src: &'a [f32],
    pub ld: usize,
    /// The kernel, `kh x kw`.
    pub taps: &'a [f32],
    pub kh: usize,
    pub kw: usize,
    /// Strides and dilations (vertical, horizontal).
    pub sy: usize,
    pub sx: usize,
    pub dy: usize,
    pub dx: usize,
    /// Starting value (the bias, or 0).
    pub init: f32,
    /// Clamp bounds applied at store (infinite for none; NaN passes through).
    pub lo: f32,
    pub hi: f32,
    /// 0: `src`'s rows as they lie. Otherwise (horizontal stride 2 only) each row holds its two
    /// column phases of `phase` floats (`im2col::fill_phases`): padded column `2 i + p` at
    /// `p * phase + i`, so the SIMD kernels read stride-2 windows with plain loads.
    pub phase: usize,
}

/// The SIMD kernels' mode for stride 2 over column phases ([`PlaneJob::phase`]); 1 and 2 are the
/// strides over rows as they lie.
const PHASES: usize = 3;

/// Input rows per output row in kernel mode `s`.
const fn row_step(s: usize) -> usize {
    if s == PHASES {
        2
    } else {
        s
    }
}

/// Input columns (within a phase) per output column in kernel mode `s`.
const fn col_step(s: usize) -> usize {
    if s == PHASES {
        1
    } else {
        s
    }
}

/// Where padded column offset `t` (a tap's `kx * dx`) of an output window starts, in mode `s`.
#[inline(always)]
fn tap_col(s: usize, job: &PlaneJob, t: usize) -> usize {
    if s == PHASES {
        (t & 1) * job.phase + t / 2
    } else {
        t
    }
}

impl PlaneJob<'_> {
    /// Whether every read a SIMD kernel makes for output rows `oy0..oy0 + rows` of `ow` outputs
    /// (rounded up to [`MAX_LANES`]) lies inside `src`, and the taps cover the kernel.
    fn reads_in_bounds(&self, oy0: usize, rows: usize, ow: usize) -> bool {
        if rows == 0 || ow == 0 {
            return true;
        }
        let ow_up = ow.div_ceil(MAX_LANES) * MAX_LANES;
        let reach = (self.kw - 1) * self.dx;
        let row_last = if self.phase > 0 {
            // The odd phase's window of the widest tap.
            self.phase + reach / 2 + ow_up - 1
        } else {
            (ow_up - 1) * self.sx + (self.sx - 1) + reach
        };
        let last = ((oy0 + rows - 1) * self.sy + (self.kh - 1) * self.dy) * self.ld + row_last;
        self.kh >= 1
            && self.kw >= 1
            && self.sx >= 1
            && (self.phase == 0 || (self.sx == 2 && 2 * self.phase <= self.ld))
            && last < self.src.len()
            && self.taps.len() >= self.kh * self.kw
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

/// The scalar reference kernel (any stride): output rows `oy0..` into `out` (rows of `ow`).
pub fn rows_scalar(job: &PlaneJob, oy0: usize, ow: usize, out: &mut [f32]) {
    for (r, orow) in out.chunks_exact_mut(ow.max(1)).enumerate() {
        let oy = oy0 + r;
        for (ox, o) in orow.iter_mut().enumerate() {
            let mut acc = job.init;
            let (mode, step) = if job.phase > 0 {
                (PHASES, 1)
            } else {
                (1, job.sx)
            };
            for ky in 0..job.kh {
                let base = (oy * job.sy + ky * job.dy) * job.ld + ox * step;
                for kx in 0..job.kw {
                    let at = base + tap_col(mode, job, kx * job.dx);
                    acc += job.taps[ky * job.kw + kx] * job.src[at];
                }
            }
            *o = clamp(acc, job.lo, job.hi);
        }
    }
}

/// The row kernels: the scalar reference and one SIMD instantiation per vector width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2,
    /// 16 lanes; a stride-2 load deinterleaves with one two-source permute where AVX2 needs a
    /// shuffle and a cross-lane permute for every 8 outputs.
    Avx512,
    Neon,
}

impl Kernel {
    /// The kernel for `isa`: AVX-512 within AVX2 where [`isa::avx512`] allows.
    pub fn of(isa: Isa) -> Kernel {
        match isa {
            Isa::Scalar => Kernel::Scalar,
            Isa::Avx2Fma if isa::avx512() => Kernel::Avx512,
            Isa::Avx2Fma => Kernel::Avx2,
            Isa::Neon => Kernel::Neon,
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => isa::detect() == Isa::Avx2Fma,
            Kernel::Avx512 => isa::detect_avx512(),
            Kernel::Neon => isa::detect() == Isa::Neon,
        }
    }

    /// Every kernel this CPU runs (the tests compare them all with the scalar one).
    pub fn available() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512, Kernel::Neon]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }
}

/// The kernel for `isa` (SIMD for horizontal strides 1 and 2, the scalar reference otherwise):
/// output rows `oy0..oy0 + out.len() / ow` into `out` (rows of `ow`).
pub fn rows(isa: Isa, job: &PlaneJob, oy0: usize, ow: usize, out: &mut [f32]) {
    rows_on(Kernel::of(isa), job, oy0, ow, out)
}

/// [`rows`] on a given kernel (one of [`Kernel::available`]).
pub fn rows_on(kernel: Kernel, job: &PlaneJob, oy0: usize, ow: usize, out: &mut [f32]) {
    let nrows = out.len().checked_div(ow).unwrap_or(0);
    assert_eq!(nrows * ow, out.len(), "depthwise: output is not whole rows");
    if nrows == 0 {
        return;
    }
    if !matches!(job.sx, 1 | 2) || kernel == Kernel::Scalar {
        return rows_scalar(job, oy0, ow, out);
    }
    assert!(
        job.reads_in_bounds(oy0, nrows, ow),
        "depthwise: reads out of bounds"
    );
    assert!(
        kernel.runs_here(),
        "depthwise: {kernel:?} kernel on a CPU without it"
    );
    // SAFETY (every arm): the kernel's features are present (asserted above), and `reads_in_bounds` proves every load of every (rounded-up
    // to MAX_LANES) output vector of these rows lies inside `src` and every tap inside `taps`;
    // stores go to whole vectors inside `out` or, masked or lane by lane, to the columns of
    // `out` in a partial one.
    unsafe {
        let mode = if job.phase > 0 { PHASES } else { job.sx };
        match (kernel, mode) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, 1) => avx2::rows::<1>(job, oy0, ow, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, 2) => avx2::rows::<2>(job, oy0, ow, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, _) => avx2::rows::<PHASES>(job, oy0, ow, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, 1) => avx512::rows::<1>(job, oy0, ow, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, 2) => avx512::rows::<2>(job, oy0, ow, out),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, _) => avx512::rows::<PHASES>(job, oy0, ow, out),
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, 1) => neon::rows::<1>(job, oy0, ow, out),
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, 2) => neon::rows::<2>(job, oy0, ow, out),
            #[cfg(target_arch = "aarch64")]
            (Kernel::Neon, _) => neon::rows::<PHASES>(job, oy0, ow, out),
            _ => rows_scalar(job, oy0, ow, out),
        }
    }
}

/// The kernel size `K` with its own SIMD instantiation, if `job` has one: square 3x3 or 5x5
/// kernels, dilation 1, equal strides. Their blocks are compile-time shapes that stream over the
/// input rows with one pointer, each input vector loaded once for every output row it feeds, and
/// keep their accumulators in registers; with run-time bounds LLVM kept the accumulators, or a
/// pointer per tap, on the stack (1.5-3x slower).
fn specialised(job: &PlaneJob) -> usize {
    let plain = job.dy == 1 && job.dx == 1 && job.sy == job.sx && job.kh == job.kw;
    match job.kh {
        3 | 5 if plain => job.kh,
        _ => 0,
    }
}

/// The SIMD drivers are the same on both ISAs, over each one's `load::<S>`, `store`,
/// `store_first` (the first `n < lanes` lanes), `splat`, `fma(acc, w, x)` and `clamp`.
macro_rules! simd_rows {
    ($feature:literal, $lanes:expr, $vec:ty) => {
        /// Caller guarantees `job.reads_in_bounds(oy0, out.len() / ow, ow)`, `ow > 0`, and
        /// `K == specialised(job)`.
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn rows<const S: usize>(
            job: &PlaneJob,
            oy0: usize,
            ow: usize,
            out: &mut [f32],
        ) {
            match super::specialised(job) {
                3 => drive::<S, 3>(job, oy0, ow, out),
                5 => drive::<S, 5>(job, oy0, ow, out),
                _ => drive::<S, 0>(job, oy0, ow, out),
            }
        }

        /// All the rows: blocks of [`ROWS`](super::ROWS) rows, then the rest together; within them
        /// `NB` vectors of columns at a time, then one, then a partial vector.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn drive<const S: usize, const K: usize>(
            job: &PlaneJob,
            oy0: usize,
            ow: usize,
            out: &mut [f32],
        ) {
            let nrows = out.len() / ow;
            let mut r = 0;
            while r + super::ROWS <= nrows {
                let o = &mut out[r * ow..];
                // 5x5: one vector wide, or its inputs and accumulators overflow the registers.
                if K == 5 {
                    row_block::<S, K, { super::ROWS }, 1>(job, oy0 + r, ow, o);
                } else {
                    row_block::<S, K, { super::ROWS }, 2>(job, oy0 + r, ow, o);
                }
                r += super::ROWS;
            }
            // The remaining rows together too: independent chains matter most on narrow planes.
            let rest = &mut out[r * ow..];
            match nrows - r {
                3 => row_block::<S, K, 3, 2>(job, oy0 + r, ow, rest),
                2 => row_block::<S, K, 2, 2>(job, oy0 + r, ow, rest),
                1 => row_block::<S, K, 1, 4>(job, oy0 + r, ow, rest),
                _ => {}
            }
        }

        /// `R` rows from `oy` (into `out`, rows of `ow`), `NB` vectors wide where possible.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn row_block<const S: usize, const K: usize, const R: usize, const NB: usize>(
            job: &PlaneJob,
            oy: usize,
            ow: usize,
            out: &mut [f32],
        ) {
            let dst = out.as_mut_ptr();
            let mut ox = 0;
            while ox + NB * $lanes <= ow {
                block::<S, K, R, NB>(job, oy, ox, dst.add(ox), ow, NB * $lanes);
                ox += NB * $lanes;
            }
            while ox < ow {
                block::<S, K, R, 1>(job, oy, ox, dst.add(ox), ow, (ow - ox).min($lanes));
                ox += $lanes;
            }
        }

        /// `R` rows x `NB` vectors of outputs at `(oy, ox)`, clamped and stored at `dst` (rows
        /// of `ow`): all of them when `cols == NB * lanes`, else the first `cols` columns of one
        /// vector per row.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn block<const S: usize, const K: usize, const R: usize, const NB: usize>(
            job: &PlaneJob,
            oy: usize,
            ox: usize,
            dst: *mut f32,
            ow: usize,
            cols: usize,
        ) {
            let mut acc = [[splat(job.init); NB]; R];
            let src = job.src.as_ptr();
            let (rs, cs) = (super::row_step(S), super::col_step(S));
            if K > 0 {
                // Input row j feeds output row r through kernel row j - r * rs.
                let mut p = src.add(oy * rs * job.ld + ox * cs);
                for j in 0..(R - 1) * rs + K {
                    let mut xs = [[splat(0.0); NB]; K];
                    for (kx, xk) in xs.iter_mut().enumerate() {
                        let q = p.add(super::tap_col(S, job, kx));
                        for (b, x) in xk.iter_mut().enumerate() {
                            *x = load::<S>(q.add(b * $lanes * cs));
                        }
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        if j < r * rs || j - r * rs >= K {
                            continue;
                        }
                        let taps = job.taps.as_ptr().add((j - r * rs) * K);
                        for (kx, xk) in xs.iter().enumerate() {
                            let w = splat(*taps.add(kx));
                            for (a, x) in row.iter_mut().zip(xk) {
                                *a = fma(*a, w, *x);
                            }
                        }
                    }
                    p = p.add(job.ld);
                }
            } else {
                let row_step = job.sy * job.ld;
                for ky in 0..job.kh {
                    let base = src.add((oy * job.sy + ky * job.dy) * job.ld + ox * cs);
                    let taps = job.taps.as_ptr().add(ky * job.kw);
                    for kx in 0..job.kw {
                        let w = splat(*taps.add(kx));
                        let p = base.add(super::tap_col(S, job, kx * job.dx));
                        for (r, row) in acc.iter_mut().enumerate() {
                            for (b, a) in row.iter_mut().enumerate() {
                                *a = fma(*a, w, load::<S>(p.add(r * row_step + b * $lanes * cs)));
                            }
                        }
                    }
                }
            }
            let (lo, hi) = (splat(job.lo), splat(job.hi));
            for (r, row) in acc.iter().enumerate() {
                let d = dst.add(r * ow);
                if cols == NB * $lanes {
                    for (b, a) in row.iter().enumerate() {
                        store(d.add(b * $lanes), clamp(*a, lo, hi));
                    }
                } else {
                    store_first(d, clamp(row[0], lo, hi), cols);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::PlaneJob;
    use core::arch::x86_64::*;

    /// Eight outputs' inputs: 8 consecutive floats (stride 1, or a column phase) or the even
    /// ones of 16 (stride 2).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load<const S: usize>(p: *const f32) -> __m256 {
        if S != 2 {
            _mm256_loadu_ps(p)
        } else {
            let lo = _mm256_loadu_ps(p);
            let hi = _mm256_loadu_ps(p.add(8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then 64-bit lanes reordered 0,2,1,3.
            let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(ev)))
        }
    }

    /// The leading whole 16-float blocks of `src` into their two column phases of `row` (see
    /// [`super::split_columns`]): one shuffle and one cross-lane permute per 8 outputs of each
    /// phase. Returns the floats done (a multiple of 16); the caller does the rest.
    ///
    /// # Safety
    /// AVX2 present; `row[even_at .. + ceil(len / 2)]` and `row[odd_at .. + len / 2]` exist.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn split_row(src: &[f32], row: &mut [f32], at: (usize, usize)) -> usize {
        let (even_at, odd_at) = at;
        let whole = src.len() / 16 * 16;
        for c in (0..whole).step_by(16) {
            // SAFETY: c + 16 <= src.len(); the runs hold c / 2 + 8 <= ceil(len / 2) and <= len /
            // 2 floats (the function's contract), so both stores stay inside `row`.
            unsafe {
                let lo = _mm256_loadu_ps(src.as_ptr().add(c));
                let hi = _mm256_loadu_ps(src.as_ptr().add(c + 8));
                let order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                let e = order(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi));
                let o = order(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi));
                _mm256_storeu_ps(row.as_mut_ptr().add(even_at + c / 2), e);
                _mm256_storeu_ps(row.as_mut_ptr().add(odd_at + c / 2), o);
            }
        }
        whole
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }

    /// Lanes `0..n` of `v` to `p..p + n` (`n < 8`): a masked store, nothing past them touched.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
        _mm256_maskstore_ps(p, mask, v)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn fma(acc: __m256, w: __m256, x: __m256) -> __m256 {
        _mm256_fmadd_ps(w, x, acc)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn clamp(v: __m256, lo: __m256, hi: __m256) -> __m256 {
        // Operand order keeps NaN: max/min return the second operand when either is NaN.
        _mm256_min_ps(hi, _mm256_max_ps(lo, v))
    }

    simd_rows!("avx2,fma", 8, __m256);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::PlaneJob;
    use core::arch::x86_64::*;

    /// Sixteen outputs' inputs: 16 consecutive floats (stride 1, or a column phase) or the even
    /// ones of 32 (stride 2, one two-source permute).
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn load<const S: usize>(p: *const f32) -> __m512 {
        if S != 2 {
            _mm512_loadu_ps(p)
        } else {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p.add(16)))
        }
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }

    /// Lanes `0..n` of `v` to `p..p + n` (`n < 16`): a masked store, nothing past them touched.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn fma(acc: __m512, w: __m512, x: __m512) -> __m512 {
        _mm512_fmadd_ps(w, x, acc)
    }

    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn clamp(v: __m512, lo: __m512, hi: __m512) -> __m512 {
        // Operand order keeps NaN: max/min return the second operand when either is NaN.
        _mm512_min_ps(hi, _mm512_max_ps(lo, v))
    }

    simd_rows!("avx512f,avx512vl", 16, __m512);

    /// [`super::split_columns`]: per 32 inputs of a row, two masked loads, two permutes, two
    /// masked stores (short rows of small planes had paid a call and a scalar tail per phase).
    ///
    /// # Safety
    /// AVX-512F present; for every row `r < src.len() / w`, `rows + r * wp + even_at .. +
    /// ceil(w / 2)` and `rows + r * wp + odd_at .. + w / 2` are writable.
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(super) unsafe fn split_columns(
        src: &[f32],
        w: usize,
        rows: *mut f32,
        wp: usize,
        (even_at, odd_at): (usize, usize),
    ) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
        for (r, s) in src.chunks_exact(w).enumerate() {
            let (s, row) = (s.as_ptr(), rows.wrapping_add(r * wp));
            let mut c = 0;
            while c < w {
                let rest = w - c;
                // SAFETY: the masks keep the loads inside the source row's columns c..w and the
                // stores inside the runs (elements c / 2 .. + ceil(rest / 2), resp. rest / 2).
                unsafe {
                    let lo = _mm512_maskz_loadu_ps(mask(rest), s.add(c));
                    let hi = _mm512_maskz_loadu_ps(mask(rest.saturating_sub(16)), s.add(c + 16));
                    let e = _mm512_permutex2var_ps(lo, even, hi);
                    let o = _mm512_permutex2var_ps(lo, odd, hi);
                    _mm512_mask_storeu_ps(row.add(even_at + c / 2), mask(rest.div_ceil(2)), e);
                    _mm512_mask_storeu_ps(row.add(odd_at + c / 2), mask(rest / 2), o);
                }
                c += 32;
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::PlaneJob;
    use core::arch::aarch64::*;

    /// Four outputs' inputs: 4 consecutive floats (stride 1, or a column phase) or the even
    /// ones of 8 (stride 2).
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn load<const S: usize>(p: *const f32) -> float32x4_t {
        if S != 2 {
            vld1q_f32(p)
        } else {
            vld2q_f32(p).0
        }
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_f32(p, v)
    }

    /// Lanes `0..n` of `v` to `p..p + n` (`n < 4`), nothing past them touched.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn store_first(p: *mut f32, v: float32x4_t, n: usize) {
        match n {
            1 => *p = vgetq_lane_f32::<0>(v),
            2 => vst1_f32(p, vget_low_f32(v)),
            3 => {
                vst1_f32(p, vget_low_f32(v));
                *p.add(2) = vgetq_lane_f32::<2>(v);
            }
            _ => {}
        }
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn splat(v: f32) -> float32x4_t {
        vdupq_n_f32(v)
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn fma(acc: float32x4_t, w: float32x4_t, x: float32x4_t) -> float32x4_t {
        vfmaq_f32(acc, w, x)
    }

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn clamp(v: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> float32x4_t {
        // FMAX/FMIN propagate NaN.
        vminq_f32(hi, vmaxq_f32(lo, v))
    }

    simd_rows!("neon", 4, float32x4_t);
}

/// How the epilogue splits between the kernel (leading bias, a final clamping activation) and a
/// pass over each finished row (everything else, in order).
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
        match rest {
            [ConvEpilogueOp::Act(a)] if clamp_bounds(*a).is_some() => {
                let (lo, hi) = clamp_bounds(*a).unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
                Plan {
                    bias,
                    lo,
                    hi,
                    rest: &[],
                }
            }
            _ => Plan {
                bias,
                lo: f32::NEG_INFINITY,
                hi: f32::INFINITY,
                rest,
            },
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
pub fn forward(
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    forward_isa(isa::current(), shape, x, w, out, epi);
}

/// Multiply-adds per parallel task of the forward: many tasks on large planes (rayon balances
/// them), few on small ones (each task zeroes its padded plane once).
const TASK_MACS: usize = 1 << 16;

/// A plane's fixed cost (padding it, setting up its rows) in multiply-adds of the threading
/// thresholds: ~60-100 ns, as long as a dense conv's 3-5 thousand. Counting only the products,
/// MobileNetV2's 576-channel 14x14 -> 7x7 depthwise (254 k) stayed on one thread at 0.06 ms.
const UNIT_MACS: usize = 4096;

/// Output planes up to this many pixels take [`small_plane`].
const SMALL_OUT: usize = 16;
/// Most (tap, input pixel) pairs [`small_plane`] lists: 16 pixels of a 5x5 kernel.
const MAX_PAIRS: usize = SMALL_OUT * 25;

/// Small output planes (4x4 down to one pixel: MobileNetV2's late stages on 28x28 images): the
/// taps that land inside the image are listed once per output pixel, then each channel is a few
/// products per pixel (one per pixel on a 1x1 plane, whatever the kernel). Padding a plane and
/// running the row kernels cost ~60 ns a channel, several times the products themselves at 2x2.
fn small_plane(
    shape: &Conv2dShape,
    g: &Geom,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    let (cin, cout) = (shape.in_channels, shape.out_channels);
    let mult = cout / cin;
    let (plane_in, plane_out, khw) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    // Per output pixel p, its (tap, input offset) pairs are pairs[start[p]..start[p + 1]].
    let mut pairs = [(0usize, 0usize); MAX_PAIRS];
    let mut start = [0usize; SMALL_OUT + 1];
    let mut len = 0;
    for oy in 0..g.oh {
        let (ky0, ky1) = kernel_rows(g, oy);
        for ox in 0..g.ow {
            let (kx0, kx1) = valid_range(g.kw, g.w, g.dw, ox * g.sw, g.pw);
            for ky in ky0..ky1 {
                let iy = oy * g.sh + ky * g.dh - g.ph;
                for kx in kx0..kx1 {
                    let ix = ox * g.sw + kx * g.dw - g.pw;
                    pairs[len] = (ky * g.kw + kx, iy * g.w + ix);
                    len += 1;
                }
            }
            start[oy * g.ow + ox + 1] = len;
        }
    }
    let plan = Plan::new(epi);
    let par = parallel::worth_splitting(shape.macs(), CONV_PAR_MIN_MACS);
    w.with_f32(|wf| {
        parallel::for_each_chunk_mut(out, plane_out, par, |i, o| {
            let (n, oc) = (i / cout, i % cout);
            let xs = &x[(n * cin + oc / mult) * plane_in..][..plane_in];
            let taps = &wf[oc * khw..][..khw];
            let init = plan.bias.map_or(0.0, |b| b[oc]);
            for (p, v) in o.iter_mut().enumerate() {
                let mut acc = init;
                for &(t, at) in &pairs[start[p]..start[p + 1]] {
                    acc += taps[t] * xs[at];
                }
                *v = clamp(acc, plan.lo, plan.hi);
            }
            if !plan.rest.is_empty() {
                epilogue_row(plan.rest, o, oc, i * plane_out);
            }
        })
    });
}

/// Each input row `r` of `src` (rows of `w`) into the two column phases of padded row `r` of
/// `rows` (rows of `wp`): `row[even_at + i] = src_row[2 i]`, `row[odd_at + i] = src_row[2 i + 1]`.
/// Panics if a run leaves its row.
fn split_columns(src: &[f32], w: usize, rows: &mut [f32], wp: usize, at: (usize, usize)) {
    let (even_at, odd_at) = at;
    assert!(
        even_at + w.div_ceil(2) <= wp && odd_at + w / 2 <= wp,
        "depthwise: phase runs out of the row"
    );
    assert!(
        src.len() / w.max(1) * wp <= rows.len(),
        "depthwise: too few rows"
    );
    #[cfg(target_arch = "x86_64")]
    if isa::detect_avx512() {
        // SAFETY: AVX-512F is present; the masked loads read each source row and the masked
        // stores write the two runs of its padded row, inside `rows` (asserted above).
        return unsafe { avx512::split_columns(src, w, rows.as_mut_ptr(), wp, at) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa::current() == Isa::Avx2Fma {
        for (s, row) in src.chunks_exact(w).zip(rows.chunks_exact_mut(wp)) {
            // SAFETY: AVX2 is dispatched; the asserts above keep both runs inside `row`.
            let done = unsafe { avx2::split_row(s, row, at) };
            for (i, pair) in s[done..].chunks(2).enumerate() {
                row[even_at + done / 2 + i] = pair[0];
                if let Some(&v) = pair.get(1) {
                    row[odd_at + done / 2 + i] = v;
                }
            }
        }
        return;
    }
    for (s, row) in src.chunks_exact(w).zip(rows.chunks_exact_mut(wp)) {
        for (i, pair) in s.chunks(2).enumerate() {
            row[even_at + i] = pair[0];
            if let Some(&v) = pair.get(1) {
                row[odd_at + i] = v;
            }
        }
    }
}

/// Whether `kernel` reads stride-2 rows of `ow` outputs from column phases: AVX-512 for rows of
/// more than half a vector (7 outputs from 14 ran 1.08x slower), AVX2 for rows of more than two
/// vectors (MobileNetV2's 112 -> 56 layer ran 0.75x the time on two threads, 56 -> 28 the same,
/// 28 -> 14 1.27x and 14 -> 7 1.7x slower: the phase rows are padded to 16 lanes and zeroed).
fn phased(kernel: Kernel, ow: usize) -> bool {
    match kernel {
        Kernel::Avx512 => ow > MAX_LANES / 2,
        Kernel::Avx2 => ow > 16,
        _ => false,
    }
}

/// Forward with the kernel of `isa`.
pub fn forward_isa(
    isa: Isa,
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    forward_on(Kernel::of(isa), shape, x, w, out, epi)
}

/// Forward with a given row kernel (tests compare them).
pub fn forward_on(
    kernel: Kernel,
    shape: &Conv2dShape,
    x: &[f32],
    w: Weights,
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
    // A pixel's taps inside the image number at most min(taps, input pixels).
    if plane_out <= SMALL_OUT && plane_out * khw.min(plane_in) <= MAX_PAIRS {
        return small_plane(shape, &g, x, w, out, epi);
    }
    // Stride 2 on the AVX-512 and AVX2 kernels ([`phased`]): each padded row split into its two
    // column phases (one deinterleave per 32, resp. 16, inputs), so the kernel loads stride-2
    // windows plainly instead of deinterleaving every load (three taps of a row each
    // deinterleaved the same inputs again): on AVX-512 MobileNetV2's layers at 112, 56 and 28
    // ran 0.67, 0.71 and 0.84x the time on one thread.
    let phase = if g.sw == 2 && phased(kernel, g.ow) {
        let ow_up = g.ow.div_ceil(MAX_LANES).max(1) * MAX_LANES;
        (g.pw + g.w).div_ceil(2).max(ow_up + (g.kw - 1) * g.dw / 2)
    } else {
        0
    };
    let wp = if phase > 0 {
        2 * phase
    } else {
        padded_width(&g)
    };
    // Input column c is padded column c + pw: phase (c + pw) % 2, element (c + pw) / 2. The even
    // columns go to phase pw % 2 from element pw / 2, the odd ones to the other from (pw + 1) / 2.
    let (even_at, odd_at) = (
        (g.pw % 2) * phase + g.pw / 2,
        ((g.pw + 1) % 2) * phase + g.pw.div_ceil(2),
    );
    let hp = g.h + 2 * g.ph;
    let plan = Plan::new(epi);
    // Tasks of whole (image, input channel) units, each unit's `mult` output planes contiguous;
    // several units per task, so the padded plane's zero border is written once per task and
    // each unit copies only its rows in (per unit, padding and set-up had cost ~60 ns, as much
    // as the products of a 7x7 plane).
    let units = shape.batch * cin;
    let work = shape.macs() + units * UNIT_MACS;
    let par = parallel::worth_splitting(work, CONV_PAR_MIN_MACS);
    let tasks = if par {
        let t = parallel::num_threads();
        (work / TASK_MACS)
            .next_multiple_of(t)
            .clamp(t, units.max(1))
    } else {
        1
    };
    let per_task = units.div_ceil(tasks);
    parallel::for_each_chunk_mut(out, per_task * mult * plane_out, par, |t, o| {
        // The padded plane, then room for one kernel's taps decoded from 16 bits.
        with_scratch(hp * wp + khw, |buf| {
            let (pad, decoded) = buf.split_at_mut(hp * wp);
            pad.fill(0.0);
            for (u, ou) in o.chunks_exact_mut(mult * plane_out).enumerate() {
                let i = t * per_task + u;
                let n = i / cin;
                let src = &x[i * plane_in..(i + 1) * plane_in];
                if phase > 0 {
                    // Only the input's columns: the zeros around them stay from the fill.
                    let rows = &mut pad[g.ph * wp..(g.ph + g.h) * wp];
                    split_columns(src, g.w, rows, wp, (even_at, odd_at));
                } else {
                    for (srow, prow) in src
                        .chunks_exact(g.w)
                        .zip(pad[g.ph * wp..].chunks_exact_mut(wp))
                    {
                        copy_run(&mut prow[g.pw..g.pw + g.w], srow);
                    }
                }
                for (j, oplane) in ou.chunks_exact_mut(plane_out).enumerate() {
                    let oc = (i % cin) * mult + j;
                    let taps: &[f32] = match w.range(oc * khw..(oc + 1) * khw) {
                        Weights::F32(t) => t,
                        Weights::Half(h) => {
                            h.decode_into(decoded);
                            decoded
                        }
                        Weights::Packed(_) => unreachable!("`range` refuses packed weights"),
                    };
                    let job = PlaneJob {
                        src: pad,
                        ld: wp,
                        taps,
                        kh: g.kh,
                        kw: g.kw,
                        sy: g.sh,
                        sx: g.sw,
                        dy: g.dh,
                        dx: g.dw,
                        init: plan.bias.map_or(0.0, |b| b[oc]),
                        lo: plan.lo,
                        hi: plan.hi,
                        phase,
                    };
                    rows_on(kernel, &job, 0, g.ow, oplane);
                    if !plan.rest.is_empty() {
                        // The plane is contiguous: one pass over it, not one per short row.
                        let at = (n * shape.out_channels + oc) * plane_out;
                        epilogue_row(plan.rest, oplane, oc, at);
                    }
                }
            }
        })
    });
}

/// Input gradient (overwrites `dx`): each output gradient row is scattered
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
    // Stride 1: each tap's gradient is one long dot product. The input plane is padded on all
    // sides and dY to the same row width (zeros past `ow`), so tap (ky, kx) pairs dY's element i
    // with the padded input's element i + ky dh W + kx dw; the zero columns cancel the pairs
    // that wrap into the next row. Short per-row dots cost more in overhead than in arithmetic
    // (8.6 GFLOP/s for the 1 -> 16 stem of a 28x28 network).
    let wl = g.w + 2 * g.pw;
    let hl = g.h + 2 * g.ph + 1;
    let long_dots = g.sh == 1 && g.sw == 1;
    let channel_long = |c: usize, images: Range<usize>, dwc: &mut [f32]| {
        with_scratch(hl * wl + g.oh * wl, |buf| {
            let (pad, dyp) = buf.split_at_mut(hl * wl);
            let n_out = g.oh * wl;
            for n in images {
                pad.fill(0.0);
                let src = &x[(n * cin + c) * plane_in..][..plane_in];
                for (y, row) in src.chunks_exact(g.w).enumerate() {
                    let at = (y + g.ph) * wl + g.pw;
                    pad[at..at + g.w].copy_from_slice(row);
                }
                for j in 0..mult {
                    let oc = c * mult + j;
                    let dys = &dy[(n * cout + oc) * plane_out..][..plane_out];
                    for (d, s) in dyp.chunks_exact_mut(wl).zip(dys.chunks_exact(g.ow)) {
                        d[..g.ow].copy_from_slice(s);
                        d[g.ow..].fill(0.0);
                    }
                    let dwk = &mut dwc[j * khw..(j + 1) * khw];
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let off = ky * g.dh * wl + kx * g.dw;
                            dwk[ky * g.kw + kx] += dot(&pad[off..off + n_out], &dyp[..n_out]);
                        }
                    }
                }
            }
        })
    };
    // Channel `c`'s `mult` kernels, accumulated over `images`.
    let channel = |c: usize, images: Range<usize>, dwc: &mut [f32]| {
        if long_dots {
            return channel_long(c, images, dwc);
        }
        with_scratch(g.h * wp, |pad| {
            for n in images {
                pad_plane(&x[(n * cin + c) * plane_in..][..plane_in], &g, wp, 0, pad);
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
    };
    if par && cin < 2 * parallel::num_threads() {
        // Too few channels to share out (a network's first layer on grey images has one):
        // split the batch instead, each part summing its images' gradients.
        super::accumulate_in_parts(shape.batch, true, dw, |images, acc| {
            for (c, dwc) in acc.chunks_exact_mut(mult * khw).enumerate() {
                channel(c, images.clone(), dwc);
            }
        });
        return;
    }
    parallel::for_each_chunk_mut(dw, mult * khw, par, |c, dwc| {
        channel(c, 0..shape.batch, dwc)
    });
}
