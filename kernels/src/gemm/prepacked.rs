//! A matrix packed once into the channel-major tiles' A panels, for products that reuse it on
//! every call: a convolution's weights (`[Cout x Cin*kh*kw]`) in an inference plan.
//!
//! Unpacked, the blocked GEMM repacks A block by block on every call when the output is wide
//! (at least `PACK_A_MIN_N` columns: 295 KB of weights per call for ResNet-18's 64->128 3x3/2
//! at 28x28), and otherwise reads A in place, `MR` rows at a stride of a whole weight row each
//! (MobileNetV2's 320->1280 1x1 at 7x7 streams 1.6 MB that way). Packed, every tile reads its
//! `MR` rows as one sequential stream.
//!
//! Layout: `ceil(m / MR)` panels of the whole depth, `panel[p * MR + i] = A(panel_row0 + i, p)`
//! (rows past `m` zero). A K block at depth `p0` of a panel is the contiguous run from `p0 * MR`,
//! so the one layout serves the blocked path (any K blocking) and the direct path (none).

use super::direct;
use super::driver::{self, BSource};
use super::spec::{self, Spec};
use super::{check_out, pack, Epilogue, MatPtr, MatRef};

/// `A` (`m x k`) packed for this process's channel-major tile family.
pub struct PackedRows {
    buf: Vec<f32>,
    start: usize,
    m: usize,
    k: usize,
    mr: usize,
}

impl PackedRows {
    /// Pack `a` (any strides).
    pub fn new(a: MatRef) -> PackedRows {
        assert!(a.in_bounds(), "pack_rows: view out of bounds");
        let (m, k, mr) = (a.rows, a.cols, spec::current().mr);
        let len = m.div_ceil(mr) * mr * k;
        let mut buf = Vec::new();
        let start = {
            let data = crate::scratch::aligned(&mut buf, len);
            (data.as_ptr() as usize - buf.as_ptr() as usize) / std::mem::size_of::<f32>()
        };
        if len > 0 {
            let dst = &mut buf[start..start + len];
            pack::pack_a(&a, 0, m, 0, k, mr, dst);
            pack::flush_subnormals(dst);
        }
        PackedRows {
            buf,
            start,
            m,
            k,
            mr,
        }
    }

    /// Rows of A.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth (columns of A).
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Row ranges handed to [`gemm_prepacked_serial_raw`] start at multiples of this (the tile
    /// family's rows per panel).
    pub fn row_quantum(&self) -> usize {
        self.mr
    }

    /// The panels from row `r0` on (a multiple of [`Self::row_quantum`]).
    fn panels_at(&self, r0: usize) -> &[f32] {
        let len = self.m.div_ceil(self.mr) * self.mr * self.k;
        &self.buf[self.start + r0 * self.k..self.start + len]
    }
}

impl std::fmt::Debug for PackedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedRows({}x{}, {} per panel)",
            self.m, self.k, self.mr
        )
    }
}

/// `C = beta * C + A[r0..r0 + rows] * B`, then `epi`, on the calling thread, A from `a`'s panels.
/// Panics unless `r0` is a multiple of `a.row_quantum()` and the rows lie in `a`, the shapes
/// agree, or `a` was packed for another tile family.
///
/// # Safety
/// As [`super::gemm_serial_raw`]: `c`'s elements are valid for reads and writes for the whole
/// call and this call's alone.
pub unsafe fn gemm_prepacked_serial_raw(
    a: &PackedRows,
    r0: usize,
    rows: usize,
    b: MatRef,
    beta: f32,
    c: MatPtr,
    epi: &Epilogue,
) {
    let spec: &Spec = spec::current();
    assert_eq!(spec.mr, a.mr, "gemm: rows packed for another tile family");
    assert!(
        r0.is_multiple_of(a.mr) && r0 + rows <= a.m,
        "gemm: packed rows {r0}..{} of {} (panels of {})",
        r0 + rows,
        a.m,
        a.mr
    );
    assert!(b.in_bounds(), "gemm: view out of bounds");
    assert_eq!(a.k, b.rows, "gemm: inner dimensions differ");
    check_out(rows, b.cols, c.rows, c.cols, c.row_stride, epi);
    if rows == 0 || b.cols == 0 {
        return;
    }
    // The drivers read only A's shape from this view; its elements come from the panels.
    let shape = MatRef {
        data: &[],
        rows,
        cols: a.k,
        row_stride: a.k,
        col_stride: 1,
    };
    let panels = Some(a.panels_at(r0));
    if a.k == 0 {
        // SAFETY: the caller's contract.
        return unsafe { super::scale_only(beta, c, epi) };
    }
    // SAFETY (both): the caller's contract; `panels` holds `ceil(rows / mr)` whole-depth panels
    // of A's rows r0.. in this family's layout (asserted above).
    if direct::applies(rows, &b) || direct::narrow(&b) {
        unsafe { direct::run(spec, &shape, panels, &b, beta, c, epi, 1) }
    } else {
        unsafe { driver::run(spec, &shape, panels, BSource::View(b), beta, c, epi, 1) }
    }
}
