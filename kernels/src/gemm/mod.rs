//! Single-precision GEMM with a fused store epilogue.
//!
//! `C = beta * C + A * B`, then the [`EpilogueOp`]s in order (bias, residual add, activation), applied
//! to each output tile while it is still in cache. A and B are read through arbitrary row/column
//! strides, so transposed operands cost nothing extra; C is row-major with a row stride.

mod direct;
mod driver;
mod epilogue;
mod gemv;
mod half_weights;
mod indirect;
#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
#[cfg(target_arch = "aarch64")]
mod kernel_neon;
mod kernel_scalar;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod lanes;
mod pack;
mod pixel_major;
mod prepacked;
mod spec;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tile_x86;

use crate::activation::{self, Activation};
use crate::parallel;
use driver::BSource;
use spec::Spec;

pub use half_weights::{gemm_half_a_serial, gemm_half_a_serial_raw, linear_half};
pub use indirect::{
    gemm_indirect_serial_raw, indirect_row_reach, indirect_supported, OffsetRows, OffsetTable,
};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use lanes::Lanes;
#[cfg(target_arch = "x86_64")]
pub(crate) use pixel_major::avx2::transpose8;
pub(crate) use pixel_major::even_tiles;
pub use pixel_major::{
    gemm_pixel_major_raw, supported as pixel_major_supported, wide_tiles as wide_pixel_tiles,
    PackedPanels, PixelRows, PANEL,
};
pub use prepacked::{gemm_prepacked_serial_raw, PackedRows};

/// The GEMM micro-kernel family this process runs, as "MRxNR-family" (e.g. `8x16-avx512`): the
/// element-wise kernels' [`crate::isa::current`] can be AVX2 while the GEMM runs AVX-512 tiles.
pub fn kernel_name() -> String {
    format!("{:?}", spec::current())
}

/// A read-only matrix view: element (i, j) is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Element (i, j).
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// Whether every element the view addresses lies inside `data`.
    pub fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// A mutable row-major matrix view with a row stride (columns are contiguous).
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A dense row-major `rows x cols` matrix.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    /// Whether every element the view addresses lies inside `data`.
    pub fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + self.cols <= self.data.len()
    }
}

/// An output matrix by its raw parts (row-major, columns contiguous). The tiled paths write
/// through one; a caller passes one to [`gemm_serial_raw`] when its own parallel tasks write
/// different columns of the same rows, where `&mut` slices spanning those rows would alias.
#[derive(Clone, Copy, Debug)]
pub struct MatPtr {
    pub ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

// SAFETY: a MatPtr is only dereferenced by the GEMM (C, or a B block being packed), under its
// callers' promise that the call has its `rows x cols` elements to itself; tasks sharing one
// write pairwise disjoint elements.
unsafe impl Send for MatPtr {}
// SAFETY: as above; the fields are never mutated through a shared MatPtr.
unsafe impl Sync for MatPtr {}

impl MatPtr {
    /// Row `i`'s `cols` elements.
    ///
    /// # Safety
    /// `i < rows`, the elements are valid, and nothing else accesses them while the slice lives.
    unsafe fn row_mut<'x>(self, i: usize) -> &'x mut [f32] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.row_stride), self.cols) }
    }

    /// The `rows x cols` block whose first element is (`r0`, `c0`).
    pub fn block(self, r0: usize, c0: usize, rows: usize, cols: usize) -> MatPtr {
        assert!(
            r0 + rows <= self.rows && c0 + cols <= self.cols,
            "MatPtr::block: outside the view"
        );
        MatPtr {
            // Wrapping: the view's validity is its user's promise, not this method's.
            ptr: self.ptr.wrapping_add(r0 * self.row_stride + c0),
            rows,
            cols,
            row_stride: self.row_stride,
        }
    }

    /// The base pointer (a method, so closures capture the whole Sync view, not the raw field).
    #[inline]
    pub fn get(self) -> *mut f32 {
        self.ptr
    }
}

impl<'a> From<MatMut<'a>> for MatPtr {
    /// The view's parts; it is consumed, so the borrow it held ends with it (the GEMM's own
    /// callers keep the matrix borrowed for the whole call).
    fn from(c: MatMut<'a>) -> Self {
        MatPtr {
            ptr: c.data.as_mut_ptr(),
            rows: c.rows,
            cols: c.cols,
            row_stride: c.row_stride,
        }
    }
}

/// One step of the store epilogue, applied in list order to each finished output tile.
#[derive(Clone, Copy, Debug)]
pub enum EpilogueOp<'a> {
    /// `c[i][j] += bias[j]` (one value per output column; Linear's bias).
    BiasPerCol(&'a [f32]),
    /// `c[i][j] += bias[i]` (one value per output row; conv's bias in the weights-times-patches form).
    BiasPerRow(&'a [f32]),
    /// `c[i][j] += r[i][j]` (a residual connection), `r` having C's dimensions.
    Add(MatRef<'a>),
    /// `c[i][j] = act(c[i][j])`.
    Act(Activation),
}

/// The list of epilogue steps a GEMM applies on store.
pub type Epilogue<'a> = [EpilogueOp<'a>];

fn check_shapes(a: &MatRef, b: &MatRef, c: &MatMut, epilogue: &Epilogue) {
    assert!(b.in_bounds(), "gemm: view out of bounds");
    check_a_c(a, b.rows, b.cols, c, epilogue);
}

/// The checks that do not involve B's data: dimensions, A and C bounds, the epilogue's operands.
fn check_a_c(a: &MatRef, k: usize, n: usize, c: &MatMut, epilogue: &Epilogue) {
    assert_eq!(a.cols, k, "gemm: inner dimensions differ");
    assert!(a.in_bounds(), "gemm: view out of bounds");
    check_c(a.rows, n, c, epilogue);
}

/// The checks of an `m x n` output and its epilogue's operands.
fn check_c(m: usize, n: usize, c: &MatMut, epilogue: &Epilogue) {
    assert!(c.in_bounds(), "gemm: view out of bounds");
    check_out(m, n, c.rows, c.cols, c.row_stride, epilogue);
}

/// The checks of an `m x n` output of `rows x cols` (row stride `ldc`) and its epilogue.
fn check_out(m: usize, n: usize, rows: usize, cols: usize, ldc: usize, epilogue: &Epilogue) {
    assert!(m == rows && n == cols, "gemm: output dimensions differ");
    assert!(ldc >= cols, "gemm: output rows overlap");
    for op in epilogue {
        match op {
            EpilogueOp::BiasPerCol(v) => assert_eq!(v.len(), cols, "gemm: column bias length"),
            EpilogueOp::BiasPerRow(v) => assert_eq!(v.len(), rows, "gemm: row bias length"),
            EpilogueOp::Add(r) => {
                assert!(
                    r.rows == rows && r.cols == cols && r.in_bounds(),
                    "gemm: residual dims"
                )
            }
            EpilogueOp::Act(_) => {}
        }
    }
}

/// Apply `epilogue` to rows `row0..row0 + rows` of the output, given as `c_rows` (row stride
/// `ldc`, columns `col0..col0 + cols`).
pub fn apply_epilogue(
    epilogue: &Epilogue,
    c_rows: &mut [f32],
    ldc: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
) {
    for op in epilogue {
        for i in 0..rows {
            let row = &mut c_rows[i * ldc..i * ldc + cols];
            match *op {
                EpilogueOp::BiasPerCol(bias) => row
                    .iter_mut()
                    .zip(&bias[col0..col0 + cols])
                    .for_each(|(c, b)| *c += b),
                EpilogueOp::BiasPerRow(bias) => {
                    let b = bias[row0 + i];
                    row.iter_mut().for_each(|c| *c += b)
                }
                EpilogueOp::Add(r) => {
                    for (j, c) in row.iter_mut().enumerate() {
                        *c += r.at(row0 + i, col0 + j);
                    }
                }
                EpilogueOp::Act(act) => activation::apply_inplace(act, row),
            }
        }
    }
}

/// `C = beta * C + A * B`, then `epilogue`. `beta` is usually 0 (overwrite) or 1 (accumulate);
/// with `beta == 0` C is never read (it may hold garbage).
///
/// Panics if the views' dimensions disagree or address memory outside their slices: callers (the
/// engine) validate shapes and report errors before reaching a kernel.
pub fn gemm(a: MatRef, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    check_shapes(&a, &b, &c, epilogue);
    gemm_with(spec::current(), a, b, beta, c, epilogue);
}

/// [`gemm`] on the calling thread only, for callers that already split their work across the
/// pool (a convolution's per-image tasks): a nested fork-join per call only adds overhead there.
pub fn gemm_serial(a: MatRef, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    check_shapes(&a, &b, &c, epilogue);
    // SAFETY: `c` borrows its elements uniquely for the whole call and was bounds-checked.
    unsafe { gemm_threads(spec::current(), a, b, beta, c.into(), epilogue, 1) }
}

/// [`gemm_serial`] into an output given by its raw parts: for a task of the caller's own
/// parallel split that writes some columns of rows other tasks write other columns of.
///
/// # Safety
/// `c.ptr` must be valid for reads and writes of the `c.rows x c.cols` elements at row stride
/// `c.row_stride` for the whole call, and no other thread may access those elements meanwhile.
pub unsafe fn gemm_serial_raw(a: MatRef, b: MatRef, beta: f32, c: MatPtr, epilogue: &Epilogue) {
    assert!(b.in_bounds() && a.in_bounds(), "gemm: view out of bounds");
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    check_out(a.rows, b.cols, c.rows, c.cols, c.row_stride, epilogue);
    // SAFETY: the caller's contract.
    unsafe { gemm_threads(spec::current(), a, b, beta, c, epilogue, 1) }
}

/// [`gemm`] on a given kernel family (tests compare the SIMD families with the scalar one).
fn gemm_with(spec: &Spec, a: MatRef, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    // SAFETY: `c` borrows its elements uniquely for the whole call (checked by the callers).
    unsafe { gemm_threads(spec, a, b, beta, c.into(), epilogue, usize::MAX) }
}

/// [`gemm_with`] on at most `max_threads` threads, for checked shapes.
///
/// # Safety
/// As [`gemm_serial_raw`]: `c`'s elements are valid and this call's alone.
unsafe fn gemm_threads(
    spec: &Spec,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: MatPtr,
    epilogue: &Epilogue,
    max_threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: the contract, passed on.
        return unsafe { scale_only(beta, c, epilogue) };
    }
    if gemv::applies(m, &a, &b) {
        let threads = driver::threads_for(m, n, k, false).min(max_threads);
        let per = n.div_ceil(2 * threads).next_multiple_of(16);
        // SAFETY: C is one row (m == 1), this call's alone.
        let out = unsafe { c.row_mut(0) };
        parallel::for_each_chunk_mut(out, per, threads > 1, |ci, chunk| {
            // SAFETY: `spec.gemv` belongs to this process's ISA; its slices are bounds-checked.
            unsafe { (spec.gemv)(&a, &b, beta, chunk, ci * per, epilogue) }
        });
    } else if direct::applies(m, &b) || (max_threads == 1 && direct::narrow(&b)) {
        let threads = driver::threads_for(m, n, k, false).min(max_threads);
        // SAFETY: the contract, passed on.
        unsafe { direct::run(spec, &a, None, &b, beta, c, epilogue, threads) };
    } else {
        let threads = driver::threads_for(m, n, k, true).min(max_threads);
        // SAFETY: the contract, passed on.
        unsafe { driver::run(spec, &a, None, BSource::View(b), beta, c, epilogue, threads) };
    }
}

/// An empty product: `C = beta * C` (zero when `beta == 0`, whatever C held), then the epilogue.
///
/// # Safety
/// As [`gemm_serial_raw`].
unsafe fn scale_only(beta: f32, c: MatPtr, epilogue: &Epilogue) {
    for i in 0..c.rows {
        // SAFETY: row i < rows of C, this call's alone.
        let r = unsafe { c.row_mut(i) };
        if beta == 0.0 {
            r.fill(0.0);
        } else {
            r.iter_mut().for_each(|v| *v *= beta);
        }
        apply_epilogue(epilogue, r, c.cols, i, 1, 0, c.cols);
    }
}

/// B packed once into the micro-kernel's panel layout, for weights multiplied many times
/// (inference pre-packs every Linear/conv weight). Made by [`pack_b`], used by [`gemm_packed`].
pub struct PackedB {
    buf: Vec<f32>,
    /// Start of the cache-line-aligned data inside `buf`.
    start: usize,
    k: usize,
    n: usize,
    /// `n` rounded up to the panel width: K block `[p0, p0 + kc)` starts at `p0 * npad`, its
    /// panel `j` at `p0 * npad + j * kc * nr`.
    npad: usize,
    /// The kernel family packed for ([`Spec::name`]): its panel width and K blocking.
    family: &'static str,
}

impl PackedB {
    /// Rows of the packed B (the GEMM's depth k).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns of the packed B (the GEMM's n).
    pub fn cols(&self) -> usize {
        self.n
    }

    fn data(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.k * self.npad]
    }
    /// Set subnormal values to zero (as every packing does); packing from a borrowed view
    /// and flushing here spares a copy of the weights.
    pub fn flush_subnormals(&mut self) {
        let (s, len) = (self.start, self.k * self.npad);
        pack::flush_subnormals(&mut self.buf[s..s + len]);
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({}x{}, {})", self.k, self.n, self.family)
    }
}

/// Pack `b` (any strides) for [`gemm_packed`] with this process's kernel family.
pub fn pack_b(b: MatRef) -> PackedB {
    pack_b_with(spec::current(), b)
}

fn pack_b_with(spec: &Spec, b: MatRef) -> PackedB {
    assert!(b.in_bounds(), "pack_b: view out of bounds");
    let (k, n, nr) = (b.rows, b.cols, spec.nr);
    let npad = n.div_ceil(nr) * nr;
    let mut buf = Vec::new();
    let start = {
        let data = crate::scratch::aligned(&mut buf, k * npad);
        let start = data.as_ptr() as usize - buf.as_ptr() as usize;
        start / std::mem::size_of::<f32>()
    };
    if n > 0 && k > 0 {
        let (nkb, kc) = spec.k_blocks(k);
        let data = &mut buf[start..start + k * npad];
        for kb in 0..nkb {
            let p0 = kb * kc;
            let kcb = kc.min(k - p0);
            pack::pack_b(
                &b,
                p0,
                kcb,
                0,
                0,
                nr,
                &mut data[p0 * npad..(p0 + kcb) * npad],
            );
        }
    }
    PackedB {
        buf,
        start,
        k,
        n,
        npad,
        family: spec.name,
    }
}

/// Columns of the channel-major register tile (the width of B's panels) on this CPU: callers
/// that cut the columns among tasks cut at multiples of it.
pub(crate) fn column_panel() -> usize {
    spec::current().nr
}

/// [`gemm`] with a pre-packed B: `C = beta * C + A * B`, then `epilogue`.
pub fn gemm_packed(a: MatRef, b: &PackedB, beta: f32, c: MatMut, epilogue: &Epilogue) {
    gemm_packed_with(spec::current(), a, b, beta, c, epilogue, usize::MAX)
}

/// [`gemm_packed`] on the calling thread only (see [`gemm_serial`]).
pub fn gemm_packed_serial(a: MatRef, b: &PackedB, beta: f32, c: MatMut, epilogue: &Epilogue) {
    gemm_packed_with(spec::current(), a, b, beta, c, epilogue, 1)
}

fn gemm_packed_with(
    spec: &Spec,
    a: MatRef,
    b: &PackedB,
    beta: f32,
    c: MatMut,
    epilogue: &Epilogue,
    max_threads: usize,
) {
    assert_eq!(
        b.family, spec.name,
        "gemm_packed: B was packed for another kernel family"
    );
    check_a_c(&a, b.k, b.n, &c, epilogue);
    let (m, k, n) = (a.rows, a.cols, b.n);
    if m == 0 || n == 0 {
        return;
    }
    let c = MatPtr::from(c);
    if k == 0 {
        // SAFETY: `c` borrows its elements uniquely for the whole call, bounds-checked above.
        return unsafe { scale_only(beta, c, epilogue) };
    }
    // Pre-packed B: one fork-join per K block, like the small-m paths; a row or a few in one.
    let threads = driver::threads_for(m, n, k, false).min(max_threads);
    // SAFETY: as above.
    unsafe {
        if m <= spec.mr {
            driver::run_packed_few_rows(spec, &a, b, beta, c, epilogue, threads)
        } else {
            driver::run(
                spec,
                &a,
                None,
                BSource::Packed(b),
                beta,
                c,
                epilogue,
                threads,
            )
        }
    }
}

/// The reference GEMM every optimised path is tested against: matrixmultiply's packed kernel,
/// then the epilogue as a second pass.
pub fn reference_gemm(a: MatRef, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    check_shapes(&a, &b, &c, epilogue);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.data.chunks_mut(c.row_stride).take(m).for_each(|r| {
            r[..n].iter_mut().for_each(|v| *v *= beta);
        });
    } else {
        // SAFETY: check_shapes proved every (i, j) addressed through these strides lies inside the
        // three slices, the output rows do not overlap (row_stride >= cols), and `c` is a unique
        // borrow, so matrixmultiply's reads and writes stay in bounds and do not alias.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.data.as_ptr(),
                a.row_stride as isize,
                a.col_stride as isize,
                b.data.as_ptr(),
                b.row_stride as isize,
                b.col_stride as isize,
                beta,
                c.data.as_mut_ptr(),
                c.row_stride as isize,
                1,
            );
        }
    }
    apply_epilogue(epilogue, c.data, c.row_stride, 0, m, 0, n);
}

/// Naive triple loop in f64, for tests: the ground truth with no blocking at all.
pub fn naive_gemm(a: MatRef, b: MatRef, beta: f32, c: MatMut, epilogue: &Epilogue) {
    check_shapes(&a, &b, &c, epilogue);
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0f64;
            for p in 0..a.cols {
                s += a.at(i, p) as f64 * b.at(p, j) as f64;
            }
            let idx = i * c.row_stride + j;
            let prev = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c.data[idx] as f64
            };
            c.data[idx] = (prev + s) as f32;
        }
    }
    apply_epilogue(epilogue, c.data, c.row_stride, 0, a.rows, 0, b.cols);
}
