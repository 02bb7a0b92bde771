//! GEMM whose B rows are found through an offset table: `B(p, j) = data[offs[p] + j]`.
//!
//! A stride-1 convolution's patch matrix is exactly such a B over a zero-padded input plane: row
//! `(channel, ky, kx)` of one output row's patches is a window of the plane, so the micro-kernels
//! read the plane in place (see `conv::implicit`) and no patch matrix is written or re-read.

use super::spec::{self, Spec, TileEpi};
use super::{check_out, Epilogue, MatPtr, MatRef};

/// A table of offsets into one slice, with its largest entry found once: the offset GEMMs bound
/// every read by it in O(1), where a scan per call ran over `k` entries for every output row of
/// an implicit convolution.
#[derive(Clone, Copy, Debug)]
pub struct OffsetTable<'a> {
    offs: &'a [u32],
    max: usize,
}

impl<'a> OffsetTable<'a> {
    pub fn new(offs: &'a [u32]) -> Self {
        let max = offs.iter().copied().max().unwrap_or(0) as usize;
        OffsetTable { offs, max }
    }

    pub fn as_slice(&self) -> &'a [u32] {
        self.offs
    }

    pub fn len(&self) -> usize {
        self.offs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offs.is_empty()
    }

    /// Whether `span` floats behind every offset lie inside a slice of `len` floats.
    pub(crate) fn fits(&self, span: usize, len: usize) -> bool {
        self.offs.is_empty() || self.max + span <= len
    }
}

/// B as rows of one slice: row `p` is `data[offs[p] as usize ..][.. cols]`.
#[derive(Clone, Copy, Debug)]
pub struct OffsetRows<'a> {
    pub data: &'a [f32],
    pub offs: OffsetTable<'a>,
    pub cols: usize,
}

/// Whether this process's kernel family has indirect tiles (x86_64 has; elsewhere callers take
/// another route).
pub fn indirect_supported() -> bool {
    !spec::current().indirect.is_empty()
}

/// Columns that must be readable behind every row offset of a `cols`-wide [`OffsetRows`]: the
/// tiles load whole panels, so a ragged last panel reads past `cols`.
pub fn indirect_row_reach(cols: usize) -> usize {
    cols.next_multiple_of(spec::current().nr)
}

/// `C = A * B`, then `epilogue`, on the calling thread, where A has unit column stride.
///
/// Panics if [`indirect_supported`] is false, A's column stride is not 1, the dimensions disagree,
/// or a row of B (with [`indirect_row_reach`] columns) leaves `b.data`.
///
/// # Safety
/// As [`super::gemm_serial_raw`]: `c.ptr` is valid for reads and writes of C's elements for the
/// whole call, and no other thread accesses them meanwhile.
pub unsafe fn gemm_indirect_serial_raw(a: MatRef, b: OffsetRows, c: MatPtr, epilogue: &Epilogue) {
    // SAFETY: the caller's contract.
    unsafe { gemm_indirect_with(spec::current(), a, b, c, epilogue) }
}

/// [`gemm_indirect_serial_raw`] on a given kernel family (the tests run every family).
///
/// # Safety
/// As [`gemm_indirect_serial_raw`].
pub(crate) unsafe fn gemm_indirect_with(
    spec: &Spec,
    a: MatRef,
    b: OffsetRows,
    c: MatPtr,
    epilogue: &Epilogue,
) {
    assert!(
        !spec.indirect.is_empty(),
        "gemm: no indirect tiles on this CPU"
    );
    assert!(
        a.col_stride == 1 && a.in_bounds(),
        "gemm: A must be row-major and in bounds"
    );
    assert_eq!(a.cols, b.offs.len(), "gemm: inner dimensions differ");
    check_out(a.rows, b.cols, c.rows, c.cols, c.row_stride, epilogue);
    let reach = b.cols.next_multiple_of(spec.nr);
    assert!(
        b.offs.fits(reach, b.data.len()),
        "gemm: indirect B row out of bounds"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    for row in (0..m).step_by(spec.mr) {
        let rows = spec.mr.min(m - row);
        let mut col = 0;
        while col < n {
            let (kern, cols) = spec.indirect_step(rows, n - col);
            let epi = TileEpi {
                ops: epilogue,
                row0: row,
                col0: col,
            };
            // SAFETY: A(i, p) for i < rows, p < k lies in A's view (checked); every B row holds
            // `reach >= col + nr` readable floats behind its offset (checked above); the tile lies
            // inside C, which the caller hands this call alone.
            unsafe {
                kern(
                    k,
                    a.data[row * a.row_stride..].as_ptr(),
                    a.row_stride,
                    b.data[col..].as_ptr(),
                    b.offs.as_slice().as_ptr(),
                    c.ptr.add(row * c.row_stride + col),
                    c.row_stride,
                    cols,
                    0.0,
                    epi,
                );
            }
            col += cols;
        }
    }
}
