//! The portable micro-kernel: a 4x8 tile in plain Rust. It is the reference the SIMD kernels are
//! tested against and the path every target falls back to (`TLC_ISA=scalar`).

use super::spec::{TileEpi, TileKernel};
use super::EpilogueOp;

pub(crate) const MR: usize = 4;
pub(crate) const NR: usize = 8;

/// Kernels for A with unit column stride.
pub(crate) static ROWS: &[TileKernel] = &[tile::<1>, tile::<2>, tile::<3>, tile::<4>];
/// Kernels for A with unit row stride (the strides are general here, so the tables agree).
pub(crate) static COLS: &[TileKernel] = ROWS;

/// An `R x NR` tile; see [`TileKernel`] for the contract.
///
/// # Safety
/// The pointers must satisfy the [`TileKernel`] contract.
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
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
    let mut acc = [[0.0f32; NR]; R];
    for p in 0..k {
        // SAFETY: the contract makes A(i, p) readable for i < R and NR floats of B row p.
        let (ap, bp) = unsafe {
            let mut ap = [0.0f32; R];
            for (i, v) in ap.iter_mut().enumerate() {
                *v = *a.add(i * rsa + p * csa);
            }
            (ap, std::slice::from_raw_parts(b.add(p * ldb), NR))
        };
        for (acc_i, &ai) in acc.iter_mut().zip(&ap) {
            for (s, &bj) in acc_i.iter_mut().zip(bp) {
                *s += ai * bj;
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        // SAFETY: the contract makes row i's `cols` floats at c + i * ldc ours to write.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        store_row(row, &acc_i[..cols], beta);
    }
    if !epi.ops.is_empty() {
        // SAFETY: the tile's R rows of `cols` floats are ours (contract).
        unsafe { super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols) };
    }
}

/// `row = beta * row + acc`, never reading `row` when `beta == 0`.
#[inline(always)]
pub(crate) fn store_row(row: &mut [f32], acc: &[f32], beta: f32) {
    if beta == 0.0 {
        row.copy_from_slice(acc);
    } else if beta == 1.0 {
        row.iter_mut().zip(acc).for_each(|(c, &v)| *c += v);
    } else {
        row.iter_mut()
            .zip(acc)
            .for_each(|(c, &v)| *c = beta * *c + v);
    }
}

/// The m = 1 path ([`super::gemv`]) compiled for this kernel family.
///
/// # Safety
/// None beyond the [`super::gemv::GemvFn`] contract.
pub(crate) unsafe fn gemv(
    a: &super::MatRef,
    b: &super::MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &[EpilogueOp],
) {
    super::gemv::gemv::<false>(a, b, beta, out, j0, epi)
}
