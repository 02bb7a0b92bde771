//! x86_64 AVX2+FMA micro-kernel: a 6x16 register tile (12 ymm accumulators, two B vectors and one
//! broadcast A value: 15 of the 16 ymm registers), two FMA ports busy every cycle on Zen 3/4;
//! and a 6x8 one for ragged last panels (a 49-pixel plane is three full panels and one column).

use super::spec::{IndirectKernel, TileEpi, TileKernel};
use super::tile_x86::{Indexed, Strided};
use super::EpilogueOp;
use core::arch::x86_64::*;

pub(crate) const MR: usize = 6;
pub(crate) const NR: usize = 16;
/// Columns of the narrow tile (one vector), for ragged last panels of at most 8 columns.
pub(crate) const NARROW_NR: usize = 8;

/// Kernels for A with unit column stride (A(i, p) at `a + i * rsa + p`).
pub(crate) static ROWS: &[TileKernel] = &[
    tile::<1, true, 2>,
    tile::<2, true, 2>,
    tile::<3, true, 2>,
    tile::<4, true, 2>,
    tile::<5, true, 2>,
    tile::<6, true, 2>,
];

/// Kernels for A with unit row stride (A(i, p) at `a + p * csa + i`: packed panels, A^T views).
pub(crate) static COLS: &[TileKernel] = &[
    tile::<1, false, 2>,
    tile::<2, false, 2>,
    tile::<3, false, 2>,
    tile::<4, false, 2>,
    tile::<5, false, 2>,
    tile::<6, false, 2>,
];

/// [`ROWS`], 8 columns wide.
pub(crate) static NARROW_ROWS: &[TileKernel] = &[
    tile::<1, true, 1>,
    tile::<2, true, 1>,
    tile::<3, true, 1>,
    tile::<4, true, 1>,
    tile::<5, true, 1>,
    tile::<6, true, 1>,
];

/// [`COLS`], 8 columns wide.
pub(crate) static NARROW_COLS: &[TileKernel] = &[
    tile::<1, false, 1>,
    tile::<2, false, 1>,
    tile::<3, false, 1>,
    tile::<4, false, 1>,
    tile::<5, false, 1>,
    tile::<6, false, 1>,
];

/// Indirect-B tiles (see [`IndirectKernel`]), 16 columns wide.
pub(crate) static INDIRECT: &[IndirectKernel] = &[
    indirect::<1, 2>,
    indirect::<2, 2>,
    indirect::<3, 2>,
    indirect::<4, 2>,
    indirect::<5, 2>,
    indirect::<6, 2>,
];

/// [`INDIRECT`], 8 columns wide.
pub(crate) static INDIRECT_NARROW: &[IndirectKernel] = &[
    indirect::<1, 1>,
    indirect::<2, 1>,
    indirect::<3, 1>,
    indirect::<4, 1>,
    indirect::<5, 1>,
    indirect::<6, 1>,
];

/// [`super::tile_x86::tile`] over `V` ymm registers per row, compiled for AVX2+FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the pointers must satisfy the [`TileKernel`] contract
/// (with `8V` for `NR`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const ROWS: bool, const V: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
) {
    // SAFETY: this function's contract is the generic tile's, and its target features are
    // `__m256`'s.
    unsafe {
        let b = Strided { b, ldb };
        super::tile_x86::tile::<__m256, _, R, ROWS, V>(k, a, rsa, csa, b, c, ldc, cols, beta, epi)
    }
}

/// [`super::tile_x86::tile`] with B rows at offsets, over `V` ymm registers per row.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the [`IndirectKernel`] contract (with `8V` for `NR`).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn indirect<const R: usize, const V: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    b: *const f32,
    offs: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
) {
    // SAFETY: this function's contract is the generic tile's (A with unit column stride), and
    // its target features are `__m256`'s.
    unsafe {
        let b = Indexed { b, offs };
        super::tile_x86::tile::<__m256, _, R, true, V>(k, a, rsa, 1, b, c, ldc, cols, beta, epi)
    }
}

/// The m = 1 path ([`super::gemv`]) compiled for this kernel family.
///
/// # Safety
/// The CPU must support this family's target features; the [`super::gemv::GemvFn`] contract.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv(
    a: &super::MatRef,
    b: &super::MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &[EpilogueOp],
) {
    super::gemv::gemv::<true>(a, b, beta, out, j0, epi)
}
