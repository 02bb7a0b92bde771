//! x86_64 AVX-512 micro-kernel: an 8x16 register tile (8 zmm accumulators). On Zen 4 a zmm
//! multiply-add is one instruction for two 256-bit halves and the A broadcast folds into it as
//! an embedded-broadcast operand, so a k step is 9 instructions where the AVX2 6x16 tile needs
//! 20; the row count divides the 8-multiple channel counts of every network here. Ragged last
//! panels of at most 8 columns use ymm tiles (EVEX-encoded here too). The indirect tiles (the
//! implicit-GEMM convolutions: image stems) also come 32 columns wide, 8x2 zmm, for runs of 32
//! output pixels: ResNet-18's 7x7 stem at 224 ran 0.76 -> 0.63 ms on two threads (Zen 5). Pair
//! tiles (8x2 zmm over two adjacent B panels, [`PAIRS`]) serve packed A wherever two whole
//! panels are side by side: one broadcast per two multiply-adds. ResNet-18's Winograd products
//! at 28x28 and 14x14 ran 0.94x their time (one thread), VGG-16-bn CIFAR's 0.84-0.96x.

use super::spec::{IndirectKernel, PairKernel, TileEpi, TileKernel};
use super::tile_x86::{Indexed, PanelPair, Strided};
use core::arch::x86_64::*;

pub(crate) const MR: usize = 8;
pub(crate) const NR: usize = 16;
/// Columns of the narrow tile (one ymm), for ragged last panels of at most 8 columns.
pub(crate) const NARROW_NR: usize = 8;

/// `tile::<L, R, ROWS>` for R = 1..=MR, as a table indexed by R - 1.
macro_rules! table {
    ($l:ty, $rows:expr) => {
        table!($l, $rows; 1 2 3 4 5 6 7 8)
    };
    (indirect $l:ty) => {
        table!(indirect $l; 1 2 3 4 5 6 7 8)
    };
    ($l:ty, $rows:expr; $($r:literal)*) => {
        &[$(tile::<$l, $r, $rows>),*]
    };
    (indirect $l:ty; $($r:literal)*) => {
        &[$(indirect::<$l, $r, 1>),*]
    };
    (indirect_wide; $($r:literal)*) => {
        &[$(indirect::<__m512, $r, 2>),*]
    };
}

/// Kernels for A with unit column stride (A(i, p) at `a + i * rsa + p`).
pub(crate) static ROWS: &[TileKernel] = table!(__m512, true);
/// Kernels for A with unit row stride (A(i, p) at `a + p * csa + i`: packed panels, A^T views).
pub(crate) static COLS: &[TileKernel] = table!(__m512, false);
/// [`ROWS`], 8 columns wide.
pub(crate) static NARROW_ROWS: &[TileKernel] = table!(__m256, true);
/// [`COLS`], 8 columns wide.
pub(crate) static NARROW_COLS: &[TileKernel] = table!(__m256, false);

/// Indirect-B tiles (see [`IndirectKernel`]), 16 columns wide.
pub(crate) static INDIRECT: &[IndirectKernel] = table!(indirect __m512);
/// [`INDIRECT`], 8 columns wide.
pub(crate) static INDIRECT_NARROW: &[IndirectKernel] = table!(indirect __m256);
/// [`INDIRECT`], 32 columns wide (two zmm a row): a k step loads two B vectors and broadcasts
/// each A value once for two multiply-adds, where the 16-wide tile spends a load per multiply-add.
pub(crate) static INDIRECT_WIDE: &[IndirectKernel] = table!(indirect_wide; 1 2 3 4 5 6 7 8);

/// Tiles over two B panels (see [`PairKernel`]), 32 columns: two zmm a row.
pub(crate) static PAIRS: &[PairKernel] = &[
    pair::<1>, pair::<2>, pair::<3>, pair::<4>, pair::<5>, pair::<6>, pair::<7>, pair::<8>,
];

/// [`super::tile_x86::tile`] over two zmm a row, one from each of two B panels.
///
/// # Safety
/// [`crate::isa::detect_avx512`] holds, and the pointers satisfy the [`PairKernel`] contract.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair<const R: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    second: usize,
    c: *mut f32,
    ldc: usize,
    beta: f32,
    epi: TileEpi,
) {
    // SAFETY: this function's contract is the generic tile's over the two panels (A with unit
    // row stride), every one of the 32 columns stored.
    unsafe {
        let b = PanelPair { b, ldb, second };
        super::tile_x86::tile::<__m512, _, R, false, 2>(k, a, rsa, csa, b, c, ldc, 32, beta, epi)
    }
}

/// [`super::tile_x86::tile`] over one register of `L` per row, compiled for AVX-512.
///
/// # Safety
/// [`crate::isa::detect_avx512`] holds, and the pointers satisfy the [`TileKernel`] contract (with `L`'s lane
/// count for `NR`).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<L: super::Lanes, const R: usize, const ROWS: bool>(
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
    // SAFETY: this function's contract is the generic tile's, and its target features cover
    // both register types.
    unsafe {
        let b = Strided { b, ldb };
        super::tile_x86::tile::<L, _, R, ROWS, 1>(k, a, rsa, csa, b, c, ldc, cols, beta, epi)
    }
}

/// [`super::tile_x86::tile`] with B rows at offsets, `V` registers of `L` per row.
///
/// # Safety
/// [`crate::isa::detect_avx512`] holds; the [`IndirectKernel`] contract (with `V` times `L`'s lane
/// count for `NR`).
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn indirect<L: super::Lanes, const R: usize, const V: usize>(
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
    // its target features cover both register types.
    unsafe {
        let b = Indexed { b, offs };
        super::tile_x86::tile::<L, _, R, true, V>(k, a, rsa, 1, b, c, ldc, cols, beta, epi)
    }
}
