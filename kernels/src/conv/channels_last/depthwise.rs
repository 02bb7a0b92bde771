//! Depthwise convolution on channels-last activations: 8 channels per register (16 with
//! AVX-512, 4 with NEON), every load and store a contiguous run of a pixel's channels. For each output row
//! the kernel walks the row's pixels in tiles and, inside a tile, the channels in blocks of a
//! register, so a tile's input columns are used whole (3x3 and 5x5 kernels; other sizes take the
//! portable loop).

use crate::conv::{Conv2dShape, ConvEpilogueOp};
use crate::parallel::{self, CONV_PAR_MIN_MACS};

/// Multiply-adds per parallel piece of a layer large enough to split at all: a quarter of a GEMM
/// conv's, as a depthwise layer moves as many bytes per multiply-add as a pointwise one moves
/// per 16 (MobileNetV2's 7x7 x 960 layers, 0.42 M multiply-adds, ran 1.4x slower on two threads
/// when left whole).
const DW_PAR_MIN_MACS: usize = CONV_PAR_MIN_MACS / 4;

/// Fewest multiply-adds of a layer split at all (half a GEMM conv's threshold, so small networks
/// stay on the calling thread): MobileNetV2's stride-2 14x14 x 576 layer (0.25 M) took 0.024 ms
/// whole and 0.013 ms on two threads.
const DW_PAR_MIN_LAYER_MACS: usize = CONV_PAR_MIN_MACS / 2;

/// Depthwise weights packed tap-major: tap `t`'s `C` channel weights at `t * C`.
#[derive(Clone, Debug)]
pub struct Taps {
    data: Vec<f32>,
    channels: usize,
    taps: usize,
}

impl Taps {
    /// Bytes of the weights.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

    /// Whether these are the weights of a depthwise convolution of shape `s`.
    pub(super) fn fits(&self, s: &Conv2dShape) -> bool {
        self.channels == s.in_channels && self.taps == s.kernel_h * s.kernel_w
    }

    fn tap(&self, t: usize) -> &[f32] {
        &self.data[t * self.channels..(t + 1) * self.channels]
    }
}

/// Whether [`forward`] runs `s`: one input and one output channel per group.
pub fn supports(s: &Conv2dShape) -> bool {
    s.params.groups == s.in_channels && s.out_channels == s.in_channels
}

/// `[C][1][kh][kw]` weights as [`Taps`].
pub fn pack(s: &Conv2dShape, w: &[f32]) -> Taps {
    assert!(supports(s), "conv2d: not a depthwise convolution");
    let (c, taps) = (s.in_channels, s.kernel_h * s.kernel_w);
    assert_eq!(w.len(), c * taps, "conv2d: weight length");
    let mut data = vec![0f32; c * taps];
    for ch in 0..c {
        for t in 0..taps {
            data[t * c + ch] = w[ch * taps + t];
        }
    }
    // Subnormal weights would slow every multiply that reads them.
    data.iter_mut()
        .filter(|v| v.is_subnormal())
        .for_each(|v| *v = 0.0);
    Taps {
        data,
        channels: c,
        taps,
    }
}

/// Channels-last depthwise convolution: `x` `[N][H][W][C]` into `out` `[N][OH][OW][C]`, with
/// `epi` (a residual channels-last too). Tasks split the output rows.
pub fn forward(s: &Conv2dShape, x: &[f32], w: &Taps, out: &mut [f32], epi: &[ConvEpilogueOp]) {
    forward_with(s, x, w, out, epi, None)
}

/// [`forward`] with `row_kernel` (one of [`row_kernels`]) instead of the one this process picks.
pub(super) fn forward_with(
    s: &Conv2dShape,
    x: &[f32],
    w: &Taps,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
    row_kernel: Option<RowKernel>,
) {
    assert!(supports(s), "conv2d: not a depthwise convolution");
    assert!(w.fits(s), "conv2d: packed weights of another shape");
    assert_eq!(x.len(), s.input_len(), "conv2d: input length");
    assert_eq!(out.len(), s.output_len(), "conv2d: output length");
    crate::conv::check_epilogue(s, epi);
    let (oh, ow) = s.out_hw();
    let c = s.in_channels;
    let row_len = ow * c;
    let rows = s.batch * oh;
    if rows == 0 || row_len == 0 {
        return;
    }
    let par = parallel::worth_splitting(s.macs(), DW_PAR_MIN_LAYER_MACS);
    let pieces = if par {
        parallel::pieces(s.macs(), DW_PAR_MIN_MACS)
            .next_multiple_of(parallel::num_threads())
            .min(rows)
    } else {
        1
    };
    let per = rows_per_task(rows, pieces, parallel::num_threads());
    let row = row_kernel.unwrap_or_else(|| pick_row_kernel(s));
    let image = s.in_h * s.in_w * c;
    parallel::for_each_chunk_mut(out, per * row_len, par && pieces > 1, |i, chunk| {
        for (j, dst) in chunk.chunks_exact_mut(row_len).enumerate() {
            let r = i * per + j;
            let n = r / oh;
            let input = InputRows {
                data: &x[n * image..(n + 1) * image],
                held: s.in_h,
            };
            row(s, input, w, r % oh, dst, r * row_len, epi);
        }
    });
}

/// Output rows per task for at most `pieces` tasks: the fewest whose tasks share out evenly over
/// `threads` (14 rows in 8 pieces of 2 on two threads left one thread 8 rows and the other 6;
/// 2 tasks of 7 rows take 7 each).
fn rows_per_task(rows: usize, pieces: usize, threads: usize) -> usize {
    let least = rows.div_ceil(pieces.max(1)).max(1);
    let span = |per: usize| rows.div_ceil(per).div_ceil(threads.max(1)) * per;
    (least..=rows.max(least))
        .min_by_key(|&per| (span(per), per))
        .unwrap_or(least)
}

/// The input rows a row kernel reads: input row `iy` (`W * C` floats) at slot `iy % held` of
/// `data` — a whole image (`held = H`), or the ring of rows a fused expansion keeps
/// ([`super::expand_dw`]), which must hold every row the output row reads.
#[derive(Clone, Copy)]
pub(super) struct InputRows<'a> {
    pub data: &'a [f32],
    pub held: usize,
}

impl InputRows<'_> {
    /// Float offset of input row `iy` (of width `w` pixels, `c` channels) in `data`.
    fn offset(&self, iy: usize, w: usize, c: usize) -> usize {
        let at = (iy % self.held) * w * c;
        assert!(
            at + w * c <= self.data.len(),
            "depthwise: input row outside its buffer"
        );
        at
    }
}

/// One output row `oy` of `input`'s image into `dst` (at flat index `at` of the output).
pub(super) type RowKernel =
    fn(&Conv2dShape, InputRows, &Taps, usize, &mut [f32], usize, &[ConvEpilogueOp]);

pub(super) fn pick_row_kernel(s: &Conv2dShape) -> RowKernel {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::current() == crate::isa::Isa::Avx2Fma
        && s.params.dilation == (1, 1)
        && (1..=2).contains(&s.params.stride.1)
    {
        match (s.kernel_h, s.kernel_w) {
            (3, 3) if crate::isa::avx512() => return simd_rows::row_avx512::<3, 3>,
            (5, 5) if crate::isa::avx512() => return simd_rows::row_avx512::<5, 5>,
            (3, 3) => return simd_rows::row_avx2::<3, 3>,
            (5, 5) => return simd_rows::row_avx2::<5, 5>,
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if crate::isa::current() == crate::isa::Isa::Neon
        && s.params.dilation == (1, 1)
        && (1..=2).contains(&s.params.stride.1)
    {
        match (s.kernel_h, s.kernel_w) {
            (3, 3) => return simd_rows::row_neon::<3, 3>,
            (5, 5) => return simd_rows::row_neon::<5, 5>,
            _ => {}
        }
    }
    let _ = s;
    row_portable
}

/// Every row kernel this CPU can run for `s`, by name (whatever the process picks), for tests
/// to hold each against the portable one.
#[cfg(test)]
pub(super) fn row_kernels(s: &Conv2dShape) -> Vec<(&'static str, RowKernel)> {
    // Mutable where SIMD kernels join it.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(unused_mut)
    )]
    let mut all: Vec<(&'static str, RowKernel)> = vec![("portable", row_portable)];
    #[cfg(target_arch = "x86_64")]
    if crate::isa::detect() == crate::isa::Isa::Avx2Fma
        && s.params.dilation == (1, 1)
        && (1..=2).contains(&s.params.stride.1)
    {
        let pick = |k3: RowKernel, k5: RowKernel| match (s.kernel_h, s.kernel_w) {
            (3, 3) => Some(k3),
            (5, 5) => Some(k5),
            _ => None,
        };
        all.extend(
            pick(simd_rows::row_avx2::<3, 3>, simd_rows::row_avx2::<5, 5>).map(|k| ("avx2", k)),
        );
        if crate::isa::detect_avx512() {
            let k = pick(simd_rows::row_avx512::<3, 3>, simd_rows::row_avx512::<5, 5>);
            all.extend(k.map(|k| ("avx512", k)));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if crate::isa::detect() == crate::isa::Isa::Neon
        && s.params.dilation == (1, 1)
        && (1..=2).contains(&s.params.stride.1)
    {
        match (s.kernel_h, s.kernel_w) {
            (3, 3) => all.push(("neon", simd_rows::row_neon::<3, 3>)),
            (5, 5) => all.push(("neon", simd_rows::row_neon::<5, 5>)),
            _ => {}
        }
    }
    let _ = s;
    all
}

/// The input row read by kernel row `ky` for output row `oy`, if inside the image.
fn input_row(s: &Conv2dShape, oy: usize, ky: usize) -> Option<usize> {
    let p = s.params;
    let iy = (oy * p.stride.0 + ky * p.dilation.0).checked_sub(p.padding.0)?;
    (iy < s.in_h).then_some(iy)
}

/// The input column read by kernel column `kx` for output column `ox`, if inside the image.
fn input_col(s: &Conv2dShape, ox: usize, kx: usize) -> Option<usize> {
    let p = s.params;
    let ix = (ox * p.stride.1 + kx * p.dilation.1).checked_sub(p.padding.1)?;
    (ix < s.in_w).then_some(ix)
}

/// The portable row kernel (any geometry; the reference for the SIMD one).
#[allow(clippy::too_many_arguments)]
fn row_portable(
    s: &Conv2dShape,
    input: InputRows,
    w: &Taps,
    oy: usize,
    dst: &mut [f32],
    at: usize,
    epi: &[ConvEpilogueOp],
) {
    let c = s.in_channels;
    for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
        px.fill(0.0);
        for ky in 0..s.kernel_h {
            let Some(iy) = input_row(s, oy, ky) else {
                continue;
            };
            let line = &input.data[input.offset(iy, s.in_w, c)..];
            for kx in 0..s.kernel_w {
                let Some(ix) = input_col(s, ox, kx) else {
                    continue;
                };
                let src = &line[ix * c..][..c];
                let tap = w.tap(ky * s.kernel_w + kx);
                for ((o, v), t) in px.iter_mut().zip(src).zip(tap) {
                    *o += v * t;
                }
            }
        }
        super::tile::epilogue_scalar(epi, px, 0, at + ox * c);
    }
}

/// The SIMD row kernels: one body over [`Lanes`](crate::gemm::Lanes), compiled per vector type.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd_rows {
    use super::{input_col, input_row, InputRows, Taps};
    use crate::conv::channels_last::tile::{epilogue_scalar, Fused};
    use crate::conv::{Conv2dShape, ConvEpilogueOp};
    use crate::gemm::Lanes;
    #[cfg(target_arch = "aarch64")]
    use core::arch::aarch64::*;
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::*;

    /// Output pixels per register tile: eight independent accumulator chains hide the FMA
    /// latency (4 pixels a tile ran at a fifth of the FMA throughput, latency-bound).
    const PX: usize = 8;

    /// A safe row kernel `$name` over registers of `$v`, and `row` compiled with `$features`
    /// beneath it (`$enabled`).
    macro_rules! row_kernel {
        ($(#[$doc:meta])* $name:ident, $enabled:ident, $features:literal, $v:ty) => {
            $(#[$doc])*
            pub(super) fn $name<const KH: usize, const KW: usize>(
                s: &Conv2dShape,
                input: InputRows,
                w: &Taps,
                oy: usize,
                dst: &mut [f32],
                at: usize,
                epi: &[ConvEpilogueOp],
            ) {
                // SAFETY: `pick_row_kernel` (and the tests' `row_kernels`) pick this kernel only
                // where the CPU has `$features`.
                unsafe { $enabled::<KH, KW>(s, input, w, oy, dst, at, epi) }
            }

            #[doc = concat!("[`row`] compiled with ", $features, ".")]
            ///
            /// # Safety
            /// The CPU has those features.
            #[target_feature(enable = $features)]
            unsafe fn $enabled<const KH: usize, const KW: usize>(
                s: &Conv2dShape,
                input: InputRows,
                w: &Taps,
                oy: usize,
                dst: &mut [f32],
                at: usize,
                epi: &[ConvEpilogueOp],
            ) {
                // SAFETY: the features `row` needs for this vector type are enabled here.
                unsafe { row::<$v, KH, KW>(s, input, w, oy, dst, at, epi) }
            }
        };
    }

    #[cfg(target_arch = "x86_64")]
    row_kernel!(
        /// The AVX2 row kernel for `KH x KW` taps (8 channels a register).
        row_avx2,
        row_avx2_enabled,
        "avx2,fma",
        __m256
    );
    #[cfg(target_arch = "x86_64")]
    row_kernel!(
        /// The AVX-512 row kernel for `KH x KW` taps (16 channels a register, the last block
        /// masked).
        row_avx512,
        row_avx512_enabled,
        "avx512f,avx512vl,avx2,fma",
        __m512
    );
    #[cfg(target_arch = "aarch64")]
    row_kernel!(
        /// The NEON row kernel for `KH x KW` taps (4 channels a register).
        row_neon,
        row_neon_enabled,
        "neon",
        float32x4_t
    );

    /// The row kernel for `KH x KW` taps, undilated, over registers of `V`; see
    /// [`super::row_portable`]. Pixel tiles outside, channel blocks inside: a tile's input
    /// columns are used whole before the next (channel blocks outside re-read the row's `KH`
    /// input lines from L2 once per block). Inlined into a caller compiled with `V`'s features.
    ///
    /// # Safety
    /// The CPU has `V`'s features and the caller is compiled with them.
    #[inline(always)]
    unsafe fn row<V: Lanes, const KH: usize, const KW: usize>(
        s: &Conv2dShape,
        input: InputRows,
        w: &Taps,
        oy: usize,
        dst: &mut [f32],
        at: usize,
        epi: &[ConvEpilogueOp],
    ) {
        let c = s.in_channels;
        let ow = dst.len() / c;
        let (sx, px) = (s.params.stride.1, s.params.padding.1);
        // Output columns whose window lies inside the image: no per-tap column checks.
        let first = px.div_ceil(sx).min(ow);
        let last = if s.in_w + px >= KW {
            ((s.in_w + px - KW) / sx + 1).clamp(first, ow)
        } else {
            first
        };
        let fused = Fused::of(epi);
        let mut valid = [(0, 0); KH];
        let mut n_valid = 0;
        for ky in 0..KH {
            if let Some(iy) = input_row(s, oy, ky) {
                valid[n_valid] = (input.offset(iy, s.in_w, c), ky);
                n_valid += 1;
            }
        }
        let t: Tile<KH> = Tile {
            s,
            c,
            valid,
            n_valid,
            image: input.data,
            taps: w,
            dst: dst.as_mut_ptr(),
            at,
            epi: fused.unwrap_or_default(),
        };
        let full = c / V::N * V::N;
        let mut ox = 0;
        while ox < ow {
            if !(first..last).contains(&ox) {
                // SAFETY: `V`'s features (contract); `ox < ow`.
                unsafe { t.edge::<V, KW>(ox, full) };
                ox += 1;
                continue;
            }
            // The widest tile that fits before `last`.
            let tile = [PX, 4, 1]
                .into_iter()
                .find(|&p| ox + p <= last)
                .unwrap_or(1);
            // SAFETY: `V`'s features are present (contract); output columns
            // ox .. ox + tile are interior (their windows inside the row), and the tile reads
            // channels < c of the pixels its window covers (rows `t.valid`), of the taps and of
            // the epilogue's operands at its outputs, and writes those channels of its output
            // pixels, all inside their slices (lengths checked by `forward`).
            unsafe {
                match (tile, sx) {
                    (PX, 1) => t.interior::<V, KW, PX, 1>(ox, full),
                    (4, 1) => t.interior::<V, KW, 4, 1>(ox, full),
                    (_, 1) => t.interior::<V, KW, 1, 1>(ox, full),
                    (PX, _) => t.interior::<V, KW, PX, 2>(ox, full),
                    (4, _) => t.interior::<V, KW, 4, 2>(ox, full),
                    _ => t.interior::<V, KW, 1, 2>(ox, full),
                }
            }
            ox += tile;
        }
        if fused.is_none() {
            for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                epilogue_scalar(epi, px, 0, at + ox * c);
            }
        }
    }

    /// One output row's operands.
    struct Tile<'a, 'e, const KH: usize> {
        s: &'a Conv2dShape,
        c: usize,
        /// The kernel rows inside the image as (offset of the input row in `image`, kernel
        /// row), the first `n_valid`.
        valid: [(usize, usize); KH],
        n_valid: usize,
        image: &'a [f32],
        taps: &'a Taps,
        /// The output row (`ow * c` floats) and its flat index in the output.
        dst: *mut f32,
        at: usize,
        /// The epilogue when it runs in registers, else empty (the caller applies it).
        epi: Fused<'e>,
    }

    /// A register of `V` at `p`, or its first `lanes` (the rest zero) unless `FULL`.
    ///
    /// # Safety
    /// `V`'s features; `p .. p + lanes` readable (`+ V::N` when `FULL`).
    #[inline(always)]
    unsafe fn load<V: Lanes, const FULL: bool>(p: *const f32, lanes: usize) -> V {
        // SAFETY: the caller's contract.
        unsafe {
            if FULL {
                V::load(p)
            } else {
                V::load_part(p, lanes)
            }
        }
    }

    impl<const KH: usize> Tile<'_, '_, KH> {
        /// `P` output pixels from `ox` whose windows lie inside the row, every channel: blocks
        /// of `V::N` below `full` (`c` rounded down to them), then the partial block.
        ///
        /// # Safety
        /// `V`'s features; `ox .. ox + P` interior columns.
        #[inline(always)]
        unsafe fn interior<V: Lanes, const KW: usize, const P: usize, const SX: usize>(
            &self,
            ox: usize,
            full: usize,
        ) {
            // SAFETY: as `block`'s, for every block.
            unsafe {
                for c0 in (0..full).step_by(V::N) {
                    self.block::<V, KW, P, SX, true>(ox, c0, V::N);
                }
                if full < self.c {
                    self.block::<V, KW, P, SX, false>(ox, full, self.c - full);
                }
            }
        }

        /// `P` interior output pixels from `ox` at stride `SX`, channels `c0 .. c0 + lanes`. With
        /// the stride and widths fixed the offsets are constant multiples of the pixel stride (a
        /// runtime stride left an integer multiply per load), and the tap loops unroll (a loop
        /// over input columns testing which outputs each reaches did not, at stride 2, and kept
        /// the accumulators on the stack).
        ///
        /// # Safety
        /// `V`'s features; `ox .. ox + P` interior columns, `SX` the stride, `c0 + lanes <= c`,
        /// `lanes == V::N` when `FULL`.
        #[inline(always)]
        unsafe fn block<
            V: Lanes,
            const KW: usize,
            const P: usize,
            const SX: usize,
            const FULL: bool,
        >(
            &self,
            ox: usize,
            c0: usize,
            lanes: usize,
        ) {
            // SAFETY: interior windows read columns ox * SX - px .. + (P - 1) * SX + KW of the
            // rows in `self.valid`, inside the image (contract), at channels c0 .. c0 + lanes.
            unsafe {
                let c = self.c;
                let ix0 = ox * SX - self.s.params.padding.1;
                let img = self.image.as_ptr().add(c0);
                let taps = self.taps.data.as_ptr().add(c0);
                let mut acc = [V::zero(); P];
                for &(row, ky) in &self.valid[..self.n_valid] {
                    let line = img.add(row + ix0 * c);
                    let w: [V; KW] = std::array::from_fn(|kx| {
                        load::<V, FULL>(taps.add((ky * KW + kx) * c), lanes)
                    });
                    // Output j reads column j * SX + kx; the loops unroll completely and the
                    // loads of a column shared by two outputs merge.
                    for (j, a) in acc.iter_mut().enumerate() {
                        for (kx, wk) in w.iter().enumerate() {
                            let v = load::<V, FULL>(line.add((j * SX + kx) * c), lanes);
                            *a = V::fma(v, *wk, *a);
                        }
                    }
                }
                let ops = self.operands::<V, FULL>(c0, lanes);
                for (j, a) in acc.into_iter().enumerate() {
                    self.finish::<V, FULL>(ox + j, c0, lanes, a, &ops);
                }
            }
        }

        /// Output pixel `ox` (a border one: each tap's column checked), every channel.
        ///
        /// # Safety
        /// `V`'s features; `ox < ow`.
        #[inline(always)]
        unsafe fn edge<V: Lanes, const KW: usize>(&self, ox: usize, full: usize) {
            // SAFETY: c0 + V::N <= c for the whole blocks, then the partial one.
            unsafe {
                for c0 in (0..full).step_by(V::N) {
                    self.edge_block::<V, KW, true>(ox, c0, V::N);
                }
                if full < self.c {
                    self.edge_block::<V, KW, false>(ox, full, self.c - full);
                }
            }
        }

        /// Border output pixel `ox`, channels `c0 .. c0 + lanes`.
        ///
        /// # Safety
        /// `V`'s features; `ox < ow`, `c0 + lanes <= c`, `lanes == V::N` when `FULL`.
        #[inline(always)]
        unsafe fn edge_block<V: Lanes, const KW: usize, const FULL: bool>(
            &self,
            ox: usize,
            c0: usize,
            lanes: usize,
        ) {
            // SAFETY: only columns `input_col` finds inside the image are read.
            unsafe {
                let img = self.image.as_ptr().add(c0);
                let taps = self.taps.data.as_ptr().add(c0);
                let mut acc = V::zero();
                for &(row, ky) in &self.valid[..self.n_valid] {
                    for kx in 0..KW {
                        if let Some(ix) = input_col(self.s, ox, kx) {
                            let v = load::<V, FULL>(img.add(row + ix * self.c), lanes);
                            let tap = load::<V, FULL>(taps.add((ky * KW + kx) * self.c), lanes);
                            acc = V::fma(v, tap, acc);
                        }
                    }
                }
                let ops = self.operands::<V, FULL>(c0, lanes);
                self.finish::<V, FULL>(ox, c0, lanes, acc, &ops);
            }
        }

        /// A block's epilogue operands: its bias and the activation's bounds (all-pass when
        /// none).
        ///
        /// # Safety
        /// `V`'s features; `c0 + lanes <= c`, `lanes == V::N` when `FULL`.
        #[inline(always)]
        unsafe fn operands<V: Lanes, const FULL: bool>(
            &self,
            c0: usize,
            lanes: usize,
        ) -> Operands<V> {
            let (lo, hi) = self.epi.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            // SAFETY: the bias holds c floats; `V`'s features (contract).
            unsafe {
                Operands {
                    bias: match self.epi.bias {
                        Some(b) => load::<V, FULL>(b.as_ptr().add(c0), lanes),
                        None => V::zero(),
                    },
                    lo: V::splat(lo),
                    hi: V::splat(hi),
                }
            }
        }

        /// The epilogue on output pixel `ox`'s channels `c0..`, stored.
        ///
        /// # Safety
        /// `V`'s features; `ox < ow`, `c0 + lanes <= c`, `lanes == V::N` when `FULL`.
        #[inline(always)]
        unsafe fn finish<V: Lanes, const FULL: bool>(
            &self,
            ox: usize,
            c0: usize,
            lanes: usize,
            acc: V,
            ops: &Operands<V>,
        ) {
            // SAFETY: output pixel ox's channels c0 .. c0 + lanes are inside the row, and the
            // residual has the output's shape.
            unsafe {
                let o = ox * self.c + c0;
                let mut acc = V::add(acc, ops.bias);
                if let Some(r) = self.epi.residual {
                    acc = V::add(acc, load::<V, FULL>(r.as_ptr().add(self.at + o), lanes));
                }
                if self.epi.clamp.is_some() {
                    acc = V::min(ops.hi, V::max(ops.lo, acc));
                }
                let out = self.dst.add(o);
                if FULL {
                    V::store(out, acc);
                } else {
                    V::store_part(out, lanes, acc);
                }
            }
        }
    }

    /// A block's epilogue operands ([`Tile::operands`]).
    struct Operands<V> {
        bias: V,
        lo: V,
        hi: V,
    }
}

#[cfg(test)]
mod split_tests {
    use super::rows_per_task;

    #[test]
    fn row_tasks_share_out_evenly() {
        // (rows, pieces, threads) -> rows per task.
        for (rows, pieces, threads, per) in [
            (14, 8, 2, 7),
            (56, 8, 2, 7),
            (7, 6, 2, 2),
            (28, 8, 2, 7),
            (1, 8, 2, 1),
            (10, 1, 2, 10),
            (9, 4, 3, 3),
        ] {
            assert_eq!(rows_per_task(rows, pieces, threads), per, "{rows} rows");
        }
    }
}
