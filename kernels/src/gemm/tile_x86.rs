//! The x86_64 register tile, written once over a vector type: `__m256` (8 lanes) for the AVX2
//! family and its narrow tiles, `__m512` (16 lanes) for the AVX-512 family. Each family wraps
//! [`tile`] in a function compiled with its own target features, so the same body becomes VEX
//! code in one and EVEX code (broadcast A values folded into the multiply-adds) in the other.

use super::spec::TileEpi;
use super::EpilogueOp;
use super::Lanes;
use core::arch::x86_64::*;

/// Where row `p` of B's panel starts.
pub(crate) trait BRows: Copy {
    /// # Safety
    /// `p` is below the tile's depth `k`.
    unsafe fn row(self, p: usize) -> *const f32;

    /// Where vector `v` (of `lanes` floats) of row `p` starts: `lanes * v` floats into the row,
    /// unless its vectors lie in separate panels.
    ///
    /// # Safety
    /// As [`BRows::row`]; `v` is below the tile's vectors per row.
    #[inline(always)]
    unsafe fn vector(self, p: usize, v: usize, lanes: usize) -> *const f32 {
        // SAFETY: the caller's contract; the row holds the tile's vectors back to back.
        unsafe { self.row(p).add(lanes * v) }
    }
}

/// Rows `ldb` floats apart: packed panels (`ldb == NR`), or row-major B read in place.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub b: *const f32,
    pub ldb: usize,
}

impl BRows for Strided {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        // SAFETY: the tile contract keeps `b + p * ldb` inside B.
        unsafe { self.b.add(p * self.ldb) }
    }
}

/// Two packed panels side by side: row `p` of the first at `b + p * ldb`, of the second
/// `second` floats further (the next panel of a packed B block), one vector from each.
#[derive(Clone, Copy)]
pub(crate) struct PanelPair {
    pub b: *const f32,
    pub ldb: usize,
    pub second: usize,
}

impl BRows for PanelPair {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        // SAFETY: the pair tile contract keeps `b + p * ldb` inside the first panel.
        unsafe { self.b.add(p * self.ldb) }
    }

    #[inline(always)]
    unsafe fn vector(self, p: usize, v: usize, _lanes: usize) -> *const f32 {
        // SAFETY: the pair tile contract: panel `v` (0 or 1) holds row `p`.
        unsafe { self.b.add(p * self.ldb + v * self.second) }
    }
}

/// Row `p` at `b + offs[p]`: the implicit-GEMM convolution, whose B rows are shifted windows of a
/// padded input plane (one offset per channel and tap), never copied into a patch matrix.
#[derive(Clone, Copy)]
pub(crate) struct Indexed {
    pub b: *const f32,
    pub offs: *const u32,
}

impl BRows for Indexed {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        // SAFETY: the indirect tile contract: `offs` holds k offsets, each inside B.
        unsafe { self.b.add(*self.offs.add(p) as usize) }
    }
}

/// Floats ahead of the current k step that a tile prefetches packed A from (16 KB): a layer's
/// weights streamed from DRAM (ResNet-18's 512-channel 3x3s, 9.4 MB each, 44 MB in all against a
/// 32 MB L3) outrun the hardware prefetchers on one sequential stream. On Zen 5, its 4x4 conv
/// with the weights cold: 0.54 -> 0.22 ms on two threads (warm: 0.23), 1.03 -> 0.38 ms on one.
const PREFETCH_A_FLOATS: usize = 4096;

/// An `R x (V * L::N)` tile (`ROWS`: A has unit column stride, else unit row stride); see
/// [`super::spec::TileKernel`] for the contract, with `V * L::N` for `NR` and `b.row(p)` for
/// `b + p * ldb`.
///
/// # Safety
/// Inlined into a function compiled with `L`'s target features; the pointers satisfy the
/// [`super::spec::TileKernel`] contract.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<L: Lanes, B: BRows, const R: usize, const ROWS: bool, const V: usize>(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: B,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
) {
    // SAFETY (whole block): every pointer offset stays within the contract's ranges: A step p
    // reads A(i, p) for i < R, B step p reads b.row(p)[.. V * L::N], C rows i < R hold
    // `cols` writable floats (all V * L::N of them on the full-width path).
    unsafe {
        let mut acc = [[L::zero(); V]; R];
        // One k step into the accumulators `$acc`.
        macro_rules! step {
            ($acc:ident, $p:expr) => {{
                let mut bv = [L::zero(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = L::load(b.vector($p, v, L::N));
                }
                let ap = if ROWS { a.add($p) } else { a.add($p * csa) };
                // Packed panels (A's rows interleaved, `csa` floats a step): one prefetch a
                // cache line, from the step that reaches into it (6-row AVX2 panels cross a
                // line every 2-3 steps). A prefetch never faults, and `wrapping_add` keeps the
                // address computation defined past the panel's end.
                if !ROWS && csa <= 16 {
                    let r = ($p * csa) % 16;
                    if r == 0 || r + csa > 16 {
                        let ahead = ap.wrapping_add(csa - 1 + PREFETCH_A_FLOATS);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    }
                }
                for i in 0..R {
                    let ai = L::broadcast(ap.add(if ROWS { i * rsa } else { i }));
                    for v in 0..V {
                        $acc[i][v] = L::fma(ai, bv[v], $acc[i][v]);
                    }
                }
            }};
        }
        let mut p = 0;
        if R * V <= 4 {
            // Too few accumulators to cover the FMA latency: interleave a second set.
            let mut acc2 = [[L::zero(); V]; R];
            while p + 2 <= k {
                step!(acc, p);
                step!(acc2, p + 1);
                p += 2;
            }
            for i in 0..R {
                for v in 0..V {
                    acc[i][v] = L::add(acc[i][v], acc2[i][v]);
                }
            }
        }
        while p < k {
            step!(acc, p);
            p += 1;
        }

        if cols == V * L::N {
            let vbeta = L::splat(beta);
            for (i, row) in acc.iter_mut().enumerate() {
                let cp = c.add(i * ldc);
                for (v, x) in row.iter_mut().enumerate() {
                    if beta == 1.0 {
                        *x = L::add(L::load(cp.add(L::N * v)), *x);
                    } else if beta != 0.0 {
                        *x = L::fma(vbeta, L::load(cp.add(L::N * v)), *x);
                    }
                }
            }
            let fused = epi.ops.iter().all(in_registers);
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                let mut out = *row;
                if fused {
                    out = in_register_epilogue(epi, i, out);
                }
                for (v, x) in out.iter().enumerate() {
                    L::store(cp.add(L::N * v), *x);
                }
            }
            if !fused {
                // The tile's R rows of `cols` floats are ours and the operands cover them.
                super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
            }
        } else {
            // Ragged columns: each row through a buffer (a row of the widest tile is 16 floats).
            const ROW_BUF: usize = 16;
            debug_assert!(V * L::N <= ROW_BUF);
            let mut buf = [0.0f32; ROW_BUF];
            let whole = cols / L::N;
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                if beta == 0.0 {
                    // Whole vectors straight out, the rest in fixed-size pieces: a memcpy call
                    // per row cost 6 % of a one-thread Winograd F4 call, whose blocks end in
                    // ragged panels.
                    for (v, x) in row.iter().enumerate().take(whole) {
                        L::store(cp.add(L::N * v), *x);
                    }
                    if whole < V {
                        L::store(buf.as_mut_ptr(), row[whole]);
                        copy_short(cp.add(L::N * whole), &buf, cols - L::N * whole);
                    }
                    continue;
                }
                for (v, x) in row.iter().enumerate() {
                    L::store(buf.as_mut_ptr().add(L::N * v), *x);
                }
                let out = std::slice::from_raw_parts_mut(cp, cols);
                super::kernel_scalar::store_row(out, &buf[..cols], beta);
            }
            if !epi.ops.is_empty() {
                // The tile's R rows of `cols` floats are ours and the operands cover them.
                super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, R, epi.col0, cols);
            }
        }
    }
}

/// `dst[..n] = src[..n]` for `n < 16`, in pieces of 8, 4, 2 and 1 floats (fixed-size moves,
/// where a loop or `copy_from_slice` becomes a `memcpy` call).
///
/// # Safety
/// `dst` is valid for writes of `n` floats; `src` holds at least `n`.
#[inline(always)]
unsafe fn copy_short(dst: *mut f32, src: &[f32; 16], n: usize) {
    debug_assert!(n < 16);
    let mut at = 0;
    for piece in [8, 4, 2, 1] {
        if n - at >= piece {
            // SAFETY: `at + piece <= n`: inside both `src` and `dst`'s `n` floats.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(at), dst.add(at), piece);
            }
            at += piece;
        }
    }
}

/// Whether [`in_register_epilogue`] does `op` (the cheap steps every conv/linear epilogue is made
/// of: bias, a dense residual, and the clamping activations).
fn in_registers(op: &EpilogueOp) -> bool {
    use crate::activation::Activation as A;
    match op {
        EpilogueOp::BiasPerCol(_) | EpilogueOp::BiasPerRow(_) => true,
        EpilogueOp::Add(r) => r.col_stride == 1,
        EpilogueOp::Act(a) => matches!(a, A::Identity | A::Relu | A::Relu6 | A::Clamp { .. }),
    }
}

/// `epi` applied to row `i` of a full tile, held in `V` vectors, before its one store. Clamps
/// take the data second, as [`crate::activation`]'s vector lanes do, so NaN propagates alike.
///
/// # Safety
/// `L`'s target features; every op passes [`in_registers`] and its operand covers row
/// `row0 + i` and columns `col0 .. + V * L::N` (the GEMM entry checks operands against C).
#[inline(always)]
unsafe fn in_register_epilogue<L: Lanes, const V: usize>(
    epi: TileEpi,
    i: usize,
    mut vs: [L; V],
) -> [L; V] {
    use crate::activation::Activation as A;
    let (row, col0, width) = (epi.row0 + i, epi.col0, V * L::N);
    // SAFETY (whole block): the loads read operand row `row`, columns `col0 .. + width`, which
    // the operands cover (contract); the slicing checks it again.
    unsafe {
        let clamp = |v: L, lo: f32, hi: Option<f32>| {
            let v = L::max(L::splat(lo), v);
            match hi {
                Some(hi) => L::min(L::splat(hi), v),
                None => v,
            }
        };
        for op in epi.ops {
            match *op {
                EpilogueOp::BiasPerCol(b) => {
                    let bp = b[col0..col0 + width].as_ptr();
                    for (v, x) in vs.iter_mut().enumerate() {
                        *x = L::add(*x, L::load(bp.add(L::N * v)));
                    }
                }
                EpilogueOp::BiasPerRow(b) => {
                    let bi = L::splat(b[row]);
                    for x in vs.iter_mut() {
                        *x = L::add(*x, bi);
                    }
                }
                EpilogueOp::Add(m) => {
                    let s = row * m.row_stride + col0;
                    let rp = m.data[s..s + width].as_ptr();
                    for (v, x) in vs.iter_mut().enumerate() {
                        *x = L::add(*x, L::load(rp.add(L::N * v)));
                    }
                }
                EpilogueOp::Act(A::Relu) => vs.iter_mut().for_each(|x| *x = clamp(*x, 0.0, None)),
                EpilogueOp::Act(A::Relu6) => {
                    vs.iter_mut().for_each(|x| *x = clamp(*x, 0.0, Some(6.0)))
                }
                EpilogueOp::Act(A::Clamp { lo, hi }) => {
                    vs.iter_mut().for_each(|x| *x = clamp(*x, lo, Some(hi)))
                }
                _ => {}
            }
        }
    }
    vs
}
