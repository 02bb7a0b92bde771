//! Row-vector times matrix (m = 1, batch-1 inference), without packing anything.
//!
//! Row-major B (`col_stride == 1`): stream four rows of B at a time into an L1-resident chunk of
//! accumulators, so every read of B is sequential (the tiled kernels would walk B's rows with a
//! large stride, which defeats the prefetchers). B^T views (`row_stride == 1`, Linear's `W^T`):
//! each output is a dot product of A with one contiguous column, eight columns at a time.
//! The bodies are generic and `#[inline(always)]`, compiled per ISA by thin wrappers in the
//! kernel files (`FUSED` selects `mul_add`, which is only fast with hardware FMA).

use super::{epilogue::apply_row, kernel_scalar::store_row, Epilogue, MatRef};

/// Columns per accumulator chunk: 4 KiB stays in L1 beside four streamed B rows, and longer
/// row runs keep the prefetchers ahead (1024 measured 30% faster than 256 on 1x512x4096).
const CHUNK: usize = 1024;

/// `gemv(a, b, beta, out, j0, epi)`: `out[j] = beta * out[j] + sum_p a(0, p) * b(p, j0 + j)`,
/// then `epi` (output row 0, columns `j0..`). Safe apart from the target features it assumes.
pub(crate) type GemvFn = unsafe fn(&MatRef, &MatRef, f32, &mut [f32], usize, &Epilogue);

/// Whether [`run`] handles this product.
pub(crate) fn applies(m: usize, a: &MatRef, b: &MatRef) -> bool {
    m == 1 && (b.col_stride == 1 || (b.row_stride == 1 && a.col_stride == 1))
}

#[inline(always)]
fn fma<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The generic body of a [`GemvFn`].
#[inline(always)]
pub(crate) fn gemv<const FUSED: bool>(
    a: &MatRef,
    b: &MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &Epilogue,
) {
    if b.col_stride == 1 {
        rows::<FUSED>(a, b, beta, out, j0, epi)
    } else {
        dots::<FUSED>(a, b, beta, out, j0, epi)
    }
}

#[inline(always)]
fn rows<const FUSED: bool>(
    a: &MatRef,
    b: &MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &Epilogue,
) {
    let k = a.cols;
    let rs = b.row_stride;
    let mut acc = [0.0f32; CHUNK];
    for (ci, oc) in out.chunks_mut(CHUNK).enumerate() {
        let c0 = j0 + ci * CHUNK;
        let w = oc.len();
        let acc = &mut acc[..w];
        acc.fill(0.0);
        let row = |p: usize| &b.data[p * rs + c0..p * rs + c0 + w];
        let mut p = 0;
        while p + 4 <= k {
            let (a0, a1, a2, a3) = (a.at(0, p), a.at(0, p + 1), a.at(0, p + 2), a.at(0, p + 3));
            let (r0, r1, r2, r3) = (row(p), row(p + 1), row(p + 2), row(p + 3));
            for ((((s, &x0), &x1), &x2), &x3) in acc.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
                *s = fma::<FUSED>(
                    a3,
                    x3,
                    fma::<FUSED>(a2, x2, fma::<FUSED>(a1, x1, fma::<FUSED>(a0, x0, *s))),
                );
            }
            p += 4;
        }
        while p < k {
            let a0 = a.at(0, p);
            for (s, &x0) in acc.iter_mut().zip(row(p)) {
                *s = fma::<FUSED>(a0, x0, *s);
            }
            p += 1;
        }
        store_row(oc, acc, beta);
        apply_row(epi, oc, 0, c0);
    }
}

#[inline(always)]
fn dots<const FUSED: bool>(
    a: &MatRef,
    b: &MatRef,
    beta: f32,
    out: &mut [f32],
    j0: usize,
    epi: &Epilogue,
) {
    const L: usize = 8;
    // Columns per group: eight independent accumulators hide the FMA latency on short columns
    // (160x1280, MobileNetV2's last expansion on a one-pixel plane: 0.0177 -> 0.0154 ms with the
    // weights in L3, 0.021 -> 0.013 in L2, against four); sixteen spill registers (2x slower).
    const G: usize = 8;
    let k = a.cols;
    let av = &a.data[..k];
    let col = |j: usize| &b.data[j * b.col_stride..j * b.col_stride + k];
    let dot_group = |cols: [&[f32]; G]| -> [f32; G] {
        let mut acc = [[0.0f32; L]; G];
        let (ah, at) = av.split_at(k - k % L);
        for (p, x) in ah.chunks_exact(L).enumerate() {
            for (c, s) in cols.iter().zip(acc.iter_mut()) {
                let y = &c[p * L..p * L + L];
                for l in 0..L {
                    s[l] = fma::<FUSED>(x[l], y[l], s[l]);
                }
            }
        }
        let mut r = [0.0f32; G];
        for (q, (c, s)) in cols.iter().zip(&acc).enumerate() {
            let tail: f32 = at.iter().zip(&c[k - k % L..]).map(|(x, y)| x * y).sum();
            r[q] = s.iter().sum::<f32>() + tail;
        }
        r
    };
    let w = out.len();
    let mut sums = [0.0f32; G];
    for j in (0..w).step_by(G) {
        let q = G.min(w - j);
        // Ragged last group: repeat the last column (its extra results are dropped).
        let cols: [&[f32]; G] = std::array::from_fn(|t| col(j0 + j + t.min(q - 1)));
        let r = dot_group(cols);
        sums[..q].copy_from_slice(&r[..q]);
        store_row(&mut out[j..j + q], &sums[..q], beta);
    }
    apply_row(epi, out, 0, j0);
}
