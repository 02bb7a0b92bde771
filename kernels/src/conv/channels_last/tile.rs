//! The channels-last GEMM tile: up to [`pixels`] rows of `A` (one pixel's channels or patch each)
//! times one 16-channel panel of packed `W^T`, stored straight into channels-last output rows
//! with the conv epilogue applied in registers. Nothing is transposed: a pixel's 16 results are
//! its 16 consecutive output channels, so every store is one contiguous run.

use crate::activation::Activation;
use crate::conv::ConvEpilogueOp;
use crate::gemm::PANEL;

/// Pixels per tile of the portable and AVX2 families (6 x 2 registers = 12 accumulators).
const NARROW_PIXELS: usize = 6;

/// Pixels per tile in this process's family ([`family`]'s length): the AVX-512 tile keeps one
/// register per pixel and takes twice as many pixels as the AVX2 one.
pub(super) fn pixels() -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        return avx512::PIXELS;
    }
    NARROW_PIXELS
}

/// A tile's place in the output, for its epilogue.
#[derive(Clone, Copy)]
pub(super) struct TileEpi<'e, 'a> {
    pub ops: &'e [ConvEpilogueOp<'a>],
    /// `ops` as applied in registers ([`Fused::of`], parsed once per call; the SIMD tiles').
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fused: Option<Fused<'a>>,
    /// The tile's first channel (bias index).
    pub ch0: usize,
    /// Flat index of the tile's first value in the output, and so in a residual of its shape.
    pub at: usize,
    /// Output row stride (channels per pixel).
    pub ldc: usize,
}

/// Where a tile reads `A`: pixel `i`'s depth `p` at `a + i * lda + p` (pixel rows: channels-last
/// inputs, gathered patches), or, for the `OFFS` tiles, at `a + offs[p] + i` (an NCHW input's
/// padded band read through the implicit GEMM's offset table, pixels adjacent).
#[derive(Clone, Copy)]
pub(super) struct Lhs {
    pub a: *const f32,
    pub lda: usize,
    pub offs: *const u32,
}

/// One tile: `k`-deep rows of `A` ([`Lhs`]) for `R` pixels, the panel at `b` (`k x 16`, 64-byte
/// aligned), results for channels `< n` (at most 16) to `c + i * ldc`.
pub(super) type Tile = unsafe fn(usize, Lhs, *const f32, *mut f32, usize, &TileEpi);

/// The tiles this process runs for a panel with `n` output channels, `[r - 1]` for `r` pixels
/// ([`pixels`] of them), reading `A` through offsets when `OFFS`. On AVX2 a panel of at most 8
/// channels (the last of 24, or of a pruned layer) multiplies one register per pixel, not two:
/// 144 -> 24 convs did a third of their multiply-adds on zeros.
pub(super) fn family<const OFFS: bool>(n: usize) -> &'static [Tile] {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        return &const { avx512::family::<OFFS>() };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::current() == crate::isa::Isa::Avx2Fma {
        return if n <= 8 {
            &const { avx2::family::<true, OFFS>() }
        } else {
            &const { avx2::family::<false, OFFS>() }
        };
    }
    #[cfg(target_arch = "aarch64")]
    if crate::isa::current() == crate::isa::Isa::Neon {
        return &const { neon::family::<OFFS>() };
    }
    let _ = n;
    &const { portable_family::<OFFS>() }
}

/// Tiles over two adjacent panels at once (`b` the first, the second `k * 16` floats on; up to
/// 32 channels), `[r - 1]` for `r` pixels ([`pixels`] of them), where this process has them:
/// each A value broadcast once feeds two multiply-adds, where the one-panel tile spends a load
/// per multiply-add.
pub(super) fn pair_family() -> Option<&'static [Tile]> {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        return Some(&const { avx512::pair_family() });
    }
    None
}

/// The portable tiles, `[r - 1]` for `r` pixels.
const fn portable_family<const OFFS: bool>() -> [Tile; NARROW_PIXELS] {
    [
        portable::<1, OFFS>,
        portable::<2, OFFS>,
        portable::<3, OFFS>,
        portable::<4, OFFS>,
        portable::<5, OFFS>,
        portable::<6, OFFS>,
    ]
}

/// Pixel `i`'s depth `p` of `lhs` (see [`Lhs`]).
///
/// # Safety
/// That element is readable.
#[inline(always)]
unsafe fn lhs_at<const OFFS: bool>(lhs: Lhs, i: usize, p: usize) -> *const f32 {
    // SAFETY: the caller's contract.
    unsafe {
        if OFFS {
            lhs.a.add(*lhs.offs.add(p) as usize + i)
        } else {
            lhs.a.add(i * lhs.lda + p)
        }
    }
}

/// Floats ahead of a tile's panel row that it prefetches: the panels of a layer lie one after
/// another, so this runs into the next panel near the end of one. MobileNetV2's deep 1x1
/// weights (up to 1.6 MB a layer) come from L3; on Zen 5 the network ran 0.93x its time with it
/// (one and two threads, paired).
#[cfg(target_arch = "x86_64")]
const PREFETCH_FLOATS: usize = 4096;

/// Prefetch the line `PREFETCH_FLOATS` past row `p` of the panel at `b`.
///
/// # Safety
/// None beyond the CPU's: a prefetch never faults, and `wrapping_add` keeps the address
/// computation defined past the panel's end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_panel(b: *const f32, p: usize) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: SSE is part of x86_64; the prefetch reads nothing architecturally.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(p * PANEL + PREFETCH_FLOATS) as *const i8) }
}

/// An epilogue in the order the inference plan emits it — bias, residual, clamping activation,
/// each optional — which the SIMD kernels apply in registers with the operands loaded once per
/// tile; any other list runs in [`epilogue_scalar`] after the store.
#[derive(Clone, Copy, Default)]
pub(super) struct Fused<'a> {
    pub bias: Option<&'a [f32]>,
    /// Of the output's shape and layout.
    pub residual: Option<&'a [f32]>,
    /// Lower and upper bound of the activation (none: identity).
    pub clamp: Option<(f32, f32)>,
}

impl<'a> Fused<'a> {
    /// `ops` as a [`Fused`], if they are in that form.
    pub(super) fn of(ops: &[ConvEpilogueOp<'a>]) -> Option<Fused<'a>> {
        let mut f = Fused::default();
        let mut stage = 0;
        for op in ops {
            match *op {
                ConvEpilogueOp::Bias(b) if stage < 1 => {
                    f.bias = Some(b);
                    stage = 1;
                }
                ConvEpilogueOp::Add(r) if stage < 2 => {
                    f.residual = Some(r);
                    stage = 2;
                }
                ConvEpilogueOp::Act(a) if stage < 3 => {
                    if a != Activation::Identity {
                        f.clamp = Some(clamp_of(a)?);
                    }
                    stage = 3;
                }
                _ => return None,
            }
        }
        Some(f)
    }
}

/// The epilogue on one pixel's `row` of output channels `ch0..`, stored at flat index `at`.
pub(super) fn epilogue_scalar(ops: &[ConvEpilogueOp], row: &mut [f32], ch0: usize, at: usize) {
    for op in ops {
        match *op {
            ConvEpilogueOp::Bias(b) => row.iter_mut().zip(&b[ch0..]).for_each(|(v, b)| *v += b),
            ConvEpilogueOp::Add(r) => row.iter_mut().zip(&r[at..]).for_each(|(v, x)| *v += x),
            ConvEpilogueOp::Act(a) => crate::activation::apply_inplace(a, row),
        }
    }
}

/// The lower and upper clamp of an in-register activation (`None`: identity).
pub(super) fn clamp_of(a: Activation) -> Option<(f32, f32)> {
    match a {
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Relu6 => Some((0.0, 6.0)),
        Activation::Clamp { lo, hi } => Some((lo, hi)),
        _ => None,
    }
}

/// The portable tile (any CPU; the reference the SIMD tiles are tested against).
///
/// # Safety
/// `lhs`'s depths `0..k` of pixels `i < R` and the panel's `k x 16` floats are readable; output
/// rows `c + i * epi.ldc .. + n` are writable and the caller's alone; `epi`'s operands cover them.
unsafe fn portable<const R: usize, const OFFS: bool>(
    k: usize,
    lhs: Lhs,
    b: *const f32,
    c: *mut f32,
    n: usize,
    epi: &TileEpi,
) {
    let mut acc = [[0f32; PANEL]; R];
    for p in 0..k {
        // SAFETY: panel row p lies inside the panel (contract).
        let bp = unsafe { std::slice::from_raw_parts(b.add(p * PANEL), PANEL) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: pixel i's depth p is readable (contract).
            let x = unsafe { *lhs_at::<OFFS>(lhs, i, p) };
            row.iter_mut().zip(bp).for_each(|(o, w)| *o += x * w);
        }
    }
    for (i, row) in acc.iter_mut().enumerate() {
        let at = epi.at + i * epi.ldc;
        epilogue_scalar(epi.ops, &mut row[..n], epi.ch0, at);
        // SAFETY: output row i's n channels are writable and ours (contract).
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * epi.ldc), n) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        epilogue_scalar, lhs_at, prefetch_panel, Lhs, Tile, TileEpi, NARROW_PIXELS, PANEL,
    };
    use core::arch::x86_64::*;

    /// The tiles of one kind, `[r - 1]` for `r` pixels.
    pub(super) const fn family<const HALF: bool, const OFFS: bool>() -> [Tile; NARROW_PIXELS] {
        [
            tile::<1, HALF, OFFS>,
            tile::<2, HALF, OFFS>,
            tile::<3, HALF, OFFS>,
            tile::<4, HALF, OFFS>,
            tile::<5, HALF, OFFS>,
            tile::<6, HALF, OFFS>,
        ]
    }

    /// The AVX2+FMA tile: `R <= 6` pixels x two 8-channel registers (one when `HALF`: the
    /// panel's upper 8 channels are not computed), as [`super::portable`].
    ///
    /// # Safety
    /// AVX2 and FMA present, and [`super::portable`]'s contract; `n <= 8` when `HALF`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const HALF: bool, const OFFS: bool>(
        k: usize,
        lhs: Lhs,
        b: *const f32,
        c: *mut f32,
        n: usize,
        epi: &TileEpi,
    ) {
        // SAFETY (whole body): the function's contract bounds every pointer used; loads and
        // stores past channel `n` go through `load_n` / `store_n`, which touch `n` floats only.
        unsafe {
            let mut acc_lo = [_mm256_setzero_ps(); 6];
            let mut acc_hi = [_mm256_setzero_ps(); 6];
            for p in 0..k {
                let b0 = _mm256_load_ps(b.add(p * PANEL));
                prefetch_panel(b, p);
                if HALF {
                    for (i, acc) in acc_lo.iter_mut().enumerate().take(R) {
                        let x = _mm256_broadcast_ss(&*lhs_at::<OFFS>(lhs, i, p));
                        *acc = _mm256_fmadd_ps(x, b0, *acc);
                    }
                    continue;
                }
                let b1 = _mm256_load_ps(b.add(p * PANEL + 8));
                for i in 0..R {
                    let x = _mm256_broadcast_ss(&*lhs_at::<OFFS>(lhs, i, p));
                    acc_lo[i] = _mm256_fmadd_ps(x, b0, acc_lo[i]);
                    acc_hi[i] = _mm256_fmadd_ps(x, b1, acc_hi[i]);
                }
            }
            let Some(f) = epi.fused else {
                for i in 0..R {
                    let cp = c.add(i * epi.ldc);
                    store_n(cp, n, acc_lo[i], acc_hi[i]);
                    let row = std::slice::from_raw_parts_mut(cp, n);
                    epilogue_scalar(epi.ops, row, epi.ch0, epi.at + i * epi.ldc);
                }
                return;
            };
            // Whole panels load and store two registers directly; the last, partial panel of
            // a layer goes through `load_n` / `store_n`.
            let full = n == PANEL;
            let load = |p: *const f32| {
                if full {
                    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                } else {
                    load_n(p, n)
                }
            };
            let zero = _mm256_setzero_ps();
            let (b0, b1) = match f.bias {
                Some(b) => load(b.as_ptr().add(epi.ch0)),
                None => (zero, zero),
            };
            let (min, max) = f.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            let (min, max) = (_mm256_set1_ps(min), _mm256_set1_ps(max));
            for i in 0..R {
                let mut v0 = _mm256_add_ps(acc_lo[i], b0);
                let mut v1 = _mm256_add_ps(acc_hi[i], b1);
                if let Some(r) = f.residual {
                    let (r0, r1) = load(r.as_ptr().add(epi.at + i * epi.ldc));
                    v0 = _mm256_add_ps(v0, r0);
                    v1 = _mm256_add_ps(v1, r1);
                }
                if f.clamp.is_some() {
                    v0 = _mm256_min_ps(max, _mm256_max_ps(min, v0));
                    v1 = _mm256_min_ps(max, _mm256_max_ps(min, v1));
                }
                let cp = c.add(i * epi.ldc);
                if full {
                    _mm256_storeu_ps(cp, v0);
                    _mm256_storeu_ps(cp.add(8), v1);
                } else {
                    store_n(cp, n, v0, v1);
                }
            }
        }
    }

    /// `n <= 16` floats at `p` as two registers, lanes past `n` zero.
    ///
    /// # Safety
    /// AVX2 present; `p .. p + n` readable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::conv::channels_last) unsafe fn load_n(
        p: *const f32,
        n: usize,
    ) -> (__m256, __m256) {
        // SAFETY: `n` floats at `p` are readable (contract).
        unsafe {
            if n == PANEL {
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            } else {
                let mut t = [0f32; PANEL];
                std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), n);
                (
                    _mm256_loadu_ps(t.as_ptr()),
                    _mm256_loadu_ps(t.as_ptr().add(8)),
                )
            }
        }
    }

    /// The first `n <= 16` lanes of (`v0`, `v1`) to `p`.
    ///
    /// # Safety
    /// AVX2 present; `p .. p + n` writable.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::conv::channels_last) unsafe fn store_n(
        p: *mut f32,
        n: usize,
        v0: __m256,
        v1: __m256,
    ) {
        // SAFETY: `n` floats at `p` are writable (contract).
        unsafe {
            if n == PANEL {
                _mm256_storeu_ps(p, v0);
                _mm256_storeu_ps(p.add(8), v1);
            } else {
                let mut t = [0f32; PANEL];
                _mm256_storeu_ps(t.as_mut_ptr(), v0);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), v1);
                std::ptr::copy_nonoverlapping(t.as_ptr(), p, n);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{epilogue_scalar, lhs_at, prefetch_panel, Lhs, Tile, TileEpi, PANEL};
    use core::arch::x86_64::*;

    /// Pixels per tile: one 16-channel register each, the A value folded into its multiply-add
    /// as a broadcast operand. Fourteen divides MobileNetV2's every image width; on Zen 5
    /// MobileNetV2 at 224 ran 0.94x its time with 12 (one thread, paired; 8: 1.01x, 16 and 20
    /// as 14).
    pub(super) const PIXELS: usize = 14;

    /// The tiles, `[r - 1]` for `r` pixels; a panel's last channels are masked, so one kind
    /// serves every width.
    pub(super) const fn family<const OFFS: bool>() -> [Tile; PIXELS] {
        [
            tile::<1, OFFS>,
            tile::<2, OFFS>,
            tile::<3, OFFS>,
            tile::<4, OFFS>,
            tile::<5, OFFS>,
            tile::<6, OFFS>,
            tile::<7, OFFS>,
            tile::<8, OFFS>,
            tile::<9, OFFS>,
            tile::<10, OFFS>,
            tile::<11, OFFS>,
            tile::<12, OFFS>,
            tile::<13, OFFS>,
            tile::<14, OFFS>,
        ]
    }

    /// The paired tiles, `[r - 1]` for `r` pixels.
    pub(super) const fn pair_family() -> [Tile; PIXELS] {
        [
            pair::<1>, pair::<2>, pair::<3>, pair::<4>, pair::<5>, pair::<6>, pair::<7>, pair::<8>,
            pair::<9>, pair::<10>, pair::<11>, pair::<12>, pair::<13>, pair::<14>,
        ]
    }

    /// `R <= 14` pixels x two 16-channel registers: panel `b` (channels `< 16`) and the next one
    /// at `b + k * 16` (channels `16 .. n`, `16 < n <= 32`), pixel rows of A (`lda` apart), as
    /// [`super::portable`] over both.
    ///
    /// # Safety
    /// AVX-512F present, and [`super::portable`]'s contract for both panels with `n` channels.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn pair<const R: usize>(
        k: usize,
        lhs: Lhs,
        b: *const f32,
        c: *mut f32,
        n: usize,
        epi: &TileEpi,
    ) {
        // SAFETY (whole body): as `tile`'s; the second panel is `k * 16` floats past the first
        // (contract), and only its first `n - 16` channels are stored.
        unsafe {
            let b2 = b.add(k * PANEL);
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for p in 0..k {
                let w0 = _mm512_load_ps(b.add(p * PANEL));
                let w1 = _mm512_load_ps(b2.add(p * PANEL));
                prefetch_panel(b2, p);
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*lhs_at::<false>(lhs, i, p));
                    a[0] = _mm512_fmadd_ps(x, w0, a[0]);
                    a[1] = _mm512_fmadd_ps(x, w1, a[1]);
                }
            }
            let full = n >= 2 * PANEL;
            let mask: __mmask16 = if full {
                !0
            } else {
                (1u32 << (n - PANEL)) as u16 - 1
            };
            let Some(f) = epi.fused else {
                for (i, a) in acc.iter().enumerate() {
                    let cp = c.add(i * epi.ldc);
                    _mm512_storeu_ps(cp, a[0]);
                    _mm512_mask_storeu_ps(cp.add(PANEL), mask, a[1]);
                    let row = std::slice::from_raw_parts_mut(cp, n);
                    epilogue_scalar(epi.ops, row, epi.ch0, epi.at + i * epi.ldc);
                }
                return;
            };
            let (bias0, bias1) = match f.bias {
                Some(b) => {
                    let b = b.as_ptr().add(epi.ch0);
                    (
                        _mm512_loadu_ps(b),
                        _mm512_maskz_loadu_ps(mask, b.add(PANEL)),
                    )
                }
                None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
            };
            let (min, max) = f.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            let (min, max) = (_mm512_set1_ps(min), _mm512_set1_ps(max));
            for (i, a) in acc.iter().enumerate() {
                let mut v0 = _mm512_add_ps(a[0], bias0);
                let mut v1 = _mm512_add_ps(a[1], bias1);
                if let Some(r) = f.residual {
                    let r = r.as_ptr().add(epi.at + i * epi.ldc);
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(r));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask, r.add(PANEL)));
                }
                if f.clamp.is_some() {
                    v0 = _mm512_min_ps(max, _mm512_max_ps(min, v0));
                    v1 = _mm512_min_ps(max, _mm512_max_ps(min, v1));
                }
                let cp = c.add(i * epi.ldc);
                _mm512_storeu_ps(cp, v0);
                if full {
                    _mm512_storeu_ps(cp.add(PANEL), v1);
                } else {
                    _mm512_mask_storeu_ps(cp.add(PANEL), mask, v1);
                }
            }
        }
    }

    /// The AVX-512 tile: `R <= 14` pixels x one 16-channel register, as [`super::portable`].
    ///
    /// # Safety
    /// AVX-512F present ([`crate::isa::avx512`]), and [`super::portable`]'s contract.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn tile<const R: usize, const OFFS: bool>(
        k: usize,
        lhs: Lhs,
        b: *const f32,
        c: *mut f32,
        n: usize,
        epi: &TileEpi,
    ) {
        // SAFETY (whole body): the function's contract bounds every pointer used; the panel is
        // 64-byte aligned; loads and stores of operands and output are masked to `n` channels
        // (masked-off lanes are neither read nor written).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for p in 0..k {
                let w = _mm512_load_ps(b.add(p * PANEL));
                prefetch_panel(b, p);
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*lhs_at::<OFFS>(lhs, i, p));
                    *a = _mm512_fmadd_ps(x, w, *a);
                }
            }
            let full = n >= PANEL;
            let mask: __mmask16 = if full { !0 } else { (1u16 << n) - 1 };
            let Some(f) = epi.fused else {
                for (i, a) in acc.iter().enumerate() {
                    let cp = c.add(i * epi.ldc);
                    _mm512_mask_storeu_ps(cp, mask, *a);
                    let row = std::slice::from_raw_parts_mut(cp, n);
                    epilogue_scalar(epi.ops, row, epi.ch0, epi.at + i * epi.ldc);
                }
                return;
            };
            let bias = match f.bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(epi.ch0)),
                None => _mm512_setzero_ps(),
            };
            let (min, max) = f.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            let (min, max) = (_mm512_set1_ps(min), _mm512_set1_ps(max));
            for (i, a) in acc.iter().enumerate() {
                let mut v = _mm512_add_ps(*a, bias);
                if let Some(r) = f.residual {
                    let r = _mm512_maskz_loadu_ps(mask, r.as_ptr().add(epi.at + i * epi.ldc));
                    v = _mm512_add_ps(v, r);
                }
                if f.clamp.is_some() {
                    // `v` second: a NaN in it propagates, as in the other tiles.
                    v = _mm512_min_ps(max, _mm512_max_ps(min, v));
                }
                let cp = c.add(i * epi.ldc);
                if full {
                    _mm512_storeu_ps(cp, v);
                } else {
                    _mm512_mask_storeu_ps(cp, mask, v);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{epilogue_scalar, lhs_at, Lhs, Tile, TileEpi, NARROW_PIXELS, PANEL};
    use crate::gemm::Lanes;
    use core::arch::aarch64::*;

    /// q registers per pixel: a 16-channel panel in 4-lane registers.
    const REGS: usize = PANEL / 4;

    /// The tiles, `[r - 1]` for `r` pixels.
    pub(super) const fn family<const OFFS: bool>() -> [Tile; NARROW_PIXELS] {
        [
            tile::<1, OFFS>,
            tile::<2, OFFS>,
            tile::<3, OFFS>,
            tile::<4, OFFS>,
            tile::<5, OFFS>,
            tile::<6, OFFS>,
        ]
    }

    /// The NEON tile: `R <= 6` pixels x four 4-channel registers (24 accumulators, the panel
    /// row's four registers and one broadcast A value: 29 of the 32 q registers), as
    /// [`super::portable`].
    ///
    /// # Safety
    /// [`super::portable`]'s contract (NEON is part of every aarch64 target).
    #[target_feature(enable = "neon")]
    unsafe fn tile<const R: usize, const OFFS: bool>(
        k: usize,
        lhs: Lhs,
        b: *const f32,
        c: *mut f32,
        n: usize,
        epi: &TileEpi,
    ) {
        // SAFETY (whole body): the function's contract bounds every pointer used; loads and
        // stores past channel `n` go through `load_n` / `store_n`, which touch `n` floats only.
        unsafe {
            let mut acc = [[vdupq_n_f32(0.0); REGS]; R];
            for p in 0..k {
                let bp = b.add(p * PANEL);
                let w: [float32x4_t; REGS] = std::array::from_fn(|r| vld1q_f32(bp.add(4 * r)));
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = vld1q_dup_f32(lhs_at::<OFFS>(lhs, i, p));
                    for (a, w) in a.iter_mut().zip(&w) {
                        *a = vfmaq_f32(*a, x, *w);
                    }
                }
            }
            let Some(f) = epi.fused else {
                for (i, a) in acc.iter().enumerate() {
                    let cp = c.add(i * epi.ldc);
                    store_n(cp, n, a);
                    let row = std::slice::from_raw_parts_mut(cp, n);
                    epilogue_scalar(epi.ops, row, epi.ch0, epi.at + i * epi.ldc);
                }
                return;
            };
            let bias = match f.bias {
                Some(b) => load_n(b.as_ptr().add(epi.ch0), n),
                None => [vdupq_n_f32(0.0); REGS],
            };
            let (lo, hi) = f.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
            for (i, a) in acc.iter().enumerate() {
                let mut v: [float32x4_t; REGS] = std::array::from_fn(|r| vaddq_f32(a[r], bias[r]));
                if let Some(res) = f.residual {
                    let r = load_n(res.as_ptr().add(epi.at + i * epi.ldc), n);
                    v = std::array::from_fn(|j| vaddq_f32(v[j], r[j]));
                }
                if f.clamp.is_some() {
                    v = std::array::from_fn(|j| vminq_f32(hi, vmaxq_f32(lo, v[j])));
                }
                store_n(c.add(i * epi.ldc), n, &v);
            }
        }
    }

    /// `n <= 16` floats at `p` as four registers, lanes past `n` zero.
    ///
    /// # Safety
    /// `p .. p + n` readable.
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> [float32x4_t; REGS] {
        // SAFETY: register r reads floats 4r .. min(n, 4r + 4) only (contract).
        std::array::from_fn(|r| unsafe {
            match n.saturating_sub(4 * r) {
                0 => float32x4_t::zero(),
                live @ 1..4 => float32x4_t::load_part(p.add(4 * r), live),
                _ => float32x4_t::load(p.add(4 * r)),
            }
        })
    }

    /// The first `n <= 16` lanes of `v` to `p`.
    ///
    /// # Safety
    /// `p .. p + n` writable.
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, n: usize, v: &[float32x4_t; REGS]) {
        for (r, &v) in v.iter().enumerate() {
            // SAFETY: register r writes floats 4r .. min(n, 4r + 4) only (contract).
            unsafe {
                match n.saturating_sub(4 * r) {
                    0 => {}
                    live @ 1..4 => float32x4_t::store_part(p.add(4 * r), live, v),
                    _ => float32x4_t::store(p.add(4 * r), v),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::channels_last::tests::rand;
    use crate::gemm::{MatRef, PackedPanels};

    /// Every tile family this CPU can run (whatever `TLC_AVX512` picks for the process), with
    /// the channel counts to try it on (a pair spans two panels).
    fn families<const OFFS: bool>() -> Vec<(&'static str, &'static [Tile], &'static [usize])> {
        const ONE: &[usize] = &[1, 7, 8, 9, 16];
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut all: Vec<(&'static str, &'static [Tile], &'static [usize])> =
            vec![("portable", &const { portable_family::<OFFS>() }, ONE)];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::isa::detect() == crate::isa::Isa::Avx2Fma {
                all.push(("avx2", &const { avx2::family::<false, OFFS>() }, ONE));
                all.push((
                    "avx2-half",
                    &const { avx2::family::<true, OFFS>() },
                    &[1, 7, 8],
                ));
            }
            if crate::isa::detect_avx512() {
                all.push(("avx512", &const { avx512::family::<OFFS>() }, ONE));
                if !OFFS {
                    let pairs = &const { avx512::pair_family() };
                    all.push(("avx512-pair", pairs, &[17, 24, 31, 32]));
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if crate::isa::detect() == crate::isa::Isa::Neon {
            all.push(("neon", &const { neon::family::<OFFS>() }, ONE));
        }
        all
    }

    /// Each family's tiles, every pixel count and panel width, fused and scalar epilogues,
    /// against a plain loop: the channels past `n` and the rows past `r` stay untouched.
    fn tiles_match_a_plain_loop<const OFFS: bool>() {
        const LDC: usize = 37;
        const ROWS: usize = 14;
        const SENTINEL: f32 = 1234.5;
        // Pixel i's depth p: `lda` apart, or (`OFFS`) at `offs[p] + i`, pixels adjacent.
        let (lda, band) = (41, 29);
        for k in [1, 5, 37] {
            // Two panels, one after the other (the pairs read both).
            let w = rand(k * 2 * PANEL, k as u64);
            let packed = PackedPanels::new(MatRef::row_major(&w, k, 2 * PANEL));
            let a = rand(ROWS * lda + k * band, 7);
            let offs: Vec<u32> = (0..k).map(|p| (p * band) as u32).collect();
            let (bias, residual) = (rand(LDC + 8, 3), rand(3 + ROWS * LDC, 4));
            let at = |i: usize, p: usize| {
                if OFFS {
                    a[p * band + i]
                } else {
                    a[i * lda + p]
                }
            };
            let epilogues: [&[ConvEpilogueOp]; 4] = [
                &[],
                &[
                    ConvEpilogueOp::Bias(&bias),
                    ConvEpilogueOp::Add(&residual),
                    ConvEpilogueOp::Act(Activation::Relu6),
                ],
                &[
                    ConvEpilogueOp::Bias(&bias),
                    ConvEpilogueOp::Act(Activation::Relu),
                ],
                // Not a clamp: the tiles store, then run it in `epilogue_scalar`.
                &[
                    ConvEpilogueOp::Bias(&bias),
                    ConvEpilogueOp::Act(Activation::Gelu),
                ],
            ];
            for ops in epilogues {
                for (name, tiles, widths) in families::<OFFS>() {
                    for (r, tile) in tiles.iter().enumerate().map(|(i, t)| (i + 1, t)) {
                        for &n in widths {
                            let epi = TileEpi {
                                ops,
                                fused: Fused::of(ops),
                                ch0: 5,
                                at: 3,
                                ldc: LDC,
                            };
                            let lhs = Lhs {
                                a: a.as_ptr(),
                                lda,
                                offs: offs.as_ptr(),
                            };
                            let mut got = vec![SENTINEL; ROWS * LDC];
                            // SAFETY: `a` holds depth k of 14 pixels either way, two k x 16
                            // panels lie one after the other, and `got` holds 14 rows of
                            // LDC >= n channels; the bias covers channels 5 .. 5 + 32 and the
                            // residual 3 + 14 LDC.
                            unsafe {
                                tile(k, lhs, packed.panel(0).as_ptr(), got.as_mut_ptr(), n, &epi)
                            };
                            for i in 0..ROWS {
                                let mut want: Vec<f32> = (0..n)
                                    .map(|j| (0..k).map(|p| at(i, p) * w[p * 2 * PANEL + j]).sum())
                                    .collect();
                                epilogue_scalar(ops, &mut want, 5, 3 + i * LDC);
                                for j in 0..LDC {
                                    let g = got[i * LDC + j];
                                    if i >= r || j >= n {
                                        assert_eq!(
                                            g, SENTINEL,
                                            "{name} r={r} n={n}: wrote ({i}, {j})"
                                        );
                                        continue;
                                    }
                                    let e = want[j];
                                    assert!(
                                        (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                                        "{name} r={r} n={n} k={k} offs={OFFS}: ({i}, {j}) is {g}, expected {e}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_of_pixel_rows_match_a_plain_loop() {
        tiles_match_a_plain_loop::<false>();
    }

    #[test]
    fn tiles_of_offset_bands_match_a_plain_loop() {
        tiles_match_a_plain_loop::<true>();
    }
}
