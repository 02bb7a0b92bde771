//! Moving activations between NCHW and channels-last, and the global average pool of a
//! channels-last image (whose `[N][C]` result is the same in either layout).

use super::element;
use crate::parallel;

/// `x` `[n][c][plane]` into `y` `[n][plane][c]`.
pub fn to_channels_last(x: &[f32], n: usize, c: usize, plane: usize, y: &mut [f32]) {
    transpose_images(x, n, c, plane, y);
}

/// `x` `[n][plane][c]` into `y` `[n][c][plane]`.
pub fn to_nchw(x: &[f32], n: usize, c: usize, plane: usize, y: &mut [f32]) {
    transpose_images(x, n, plane, c, y);
}

/// Each of `n` `rows x cols` matrices of `x` transposed into `y`: tasks take bands of source
/// columns (destination rows), each band walked in 8-column blocks so both sides' cache lines
/// are used whole.
fn transpose_images(x: &[f32], n: usize, rows: usize, cols: usize, y: &mut [f32]) {
    let len = rows * cols;
    assert!(
        x.len() == n * len && y.len() == n * len,
        "transpose: lengths"
    );
    if len == 0 {
        return;
    }
    const B: usize = 8;
    let pieces = parallel::rowwise_pieces(n * len);
    let bands = pieces.div_ceil(n).clamp(1, cols);
    let band = cols.div_ceil(bands).next_multiple_of(B);
    let bands = cols.div_ceil(band);
    let dst = crate::gemm::MatPtr {
        ptr: y.as_mut_ptr(),
        rows: n * cols,
        cols: rows,
        row_stride: rows,
    };
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    let fast = cfg!(target_arch = "x86_64") && crate::isa::current() == crate::isa::Isa::Avx2Fma;
    parallel::for_each_index(n * bands, pieces > 1, |t| {
        let (img, b) = (t / bands, t % bands);
        let src = &x[img * len..(img + 1) * len];
        let (c0, c1) = (b * band, ((b + 1) * band).min(cols));
        // SAFETY: destination rows img * cols + c0 .. c1 lie inside `y` and are written only by
        // this task (tasks split images and source-column bands).
        let out = unsafe {
            std::slice::from_raw_parts_mut(
                element(&dst, (img * cols + c0) * rows),
                (c1 - c0) * rows,
            )
        };
        for cb in (c0..c1).step_by(B) {
            let ce = (cb + B).min(c1);
            for rb in (0..rows).step_by(B) {
                let re = (rb + B).min(rows);
                #[cfg(target_arch = "x86_64")]
                if fast && ce - cb == B && re - rb == B {
                    let from = &src[rb * cols + cb..(rb + B - 1) * cols + cb + B];
                    let to = &mut out[(cb - c0) * rows + rb..(cb - c0 + B - 1) * rows + rb + B];
                    // SAFETY: AVX2 present (`fast`); `from` holds 8 rows of 8 floats `cols` apart
                    // and `to` 8 rows of 8 floats `rows` apart (their lengths, from the slicing).
                    unsafe { avx2::block8(from.as_ptr(), cols, to.as_mut_ptr(), rows) };
                    continue;
                }
                for r in rb..re {
                    for col in cb..ce {
                        out[(col - c0) * rows + r] = src[r * cols + col];
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// The 8x8 block at `src` (rows `lds` apart) transposed to `dst` (rows `ldd` apart).
    ///
    /// # Safety
    /// AVX2 present; 8 rows of 8 floats readable at `src`, writable at `dst`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller's contract bounds every row read and written.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
            for (i, v) in crate::gemm::transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * ldd), v);
            }
        }
    }
}

/// The mean over each image's `plane` pixels of channels-last `x` (`[n][plane][c]`) into `y`
/// (`[n][c]`).
pub fn global_avg_pool(x: &[f32], n: usize, plane: usize, c: usize, y: &mut [f32]) {
    assert!(
        x.len() == n * plane * c && y.len() == n * c,
        "global_avg_pool: lengths"
    );
    if plane == 0 {
        y.fill(f32::NAN);
        return;
    }
    let scale = 1.0 / plane as f32;
    for (img, out) in y.chunks_exact_mut(c.max(1)).enumerate() {
        out.fill(0.0);
        for px in x[img * plane * c..(img + 1) * plane * c].chunks_exact(c) {
            out.iter_mut().zip(px).for_each(|(o, v)| *o += v);
        }
        out.iter_mut().for_each(|o| *o *= scale);
    }
}
