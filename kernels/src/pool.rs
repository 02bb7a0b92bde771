//! Pooling kernels over the `planes = N*C` independent `h x w` planes of an NCHW tensor, with
//! PyTorch's window rules: max-pool (kernel, stride, padding counting as -inf, dilation,
//! ceil_mode), average pool (count_include_pad, ceil_mode), adaptive average pool (any output
//! size, with a fast path for the global 1x1 case), and the backward of each.
//!
//! Max-pool has two forwards: [`max_pool2d`] for inference, separable (a vertical SIMD max of the
//! window's rows into a -inf padded row, then a SIMD window max along it), and
//! [`max_pool2d_with_indices`] for training, which then records each output's argmax the way
//! PyTorch does (first maximum in row-major window order, NaN wins). Planes are spread over the pool once
//! a pass is big enough ([`crate::parallel::rowwise_pieces`]). The padded rows and column sums are
//! per-thread scratch ([`crate::scratch`]): the forwards allocate nothing after warm-up.

use crate::parallel;
use crate::scratch::with_scratch;
use crate::simd::{self, Scalar, Simd, SimdFn, MAX_LANES};
use rayon::prelude::*;

/// A 2-D pooling window: `[height, width]` pairs of PyTorch's kernel_size, stride, padding and
/// dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Window2d {
    /// A square `k x k` window with stride `s`, padding `p` and no dilation.
    pub fn square(k: usize, s: usize, p: usize) -> Window2d {
        Window2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [1, 1],
        }
    }

    fn check(&self) {
        assert!(
            self.kernel
                .iter()
                .chain(&self.stride)
                .chain(&self.dilation)
                .all(|&v| v > 0),
            "pool: kernel, stride and dilation must be positive: {self:?}"
        );
    }
}

/// The planes a pooling pass maps: `planes` planes of `h x w` to `out_h x out_w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl PoolDims {
    /// Elements of one input plane.
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// Elements of one output plane.
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    fn check(&self, what: &str, input: usize, output: usize) {
        assert!(
            input == self.planes * self.in_plane() && output == self.planes * self.out_plane(),
            "{what}: slices of {input} and {output} elements do not match {self:?}"
        );
    }
}

/// Output length along one axis, PyTorch's rule: `floor` (or `ceil` with `ceil_mode`) of
/// `(input + 2 padding - dilation (kernel - 1) - 1) / stride + 1`, where in ceil mode the last
/// window must start inside the input or its left padding. `None` when no window fits.
pub fn pooled_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let (i, k, s, p, d) = (
        input as i64,
        kernel as i64,
        stride as i64,
        padding as i64,
        dilation as i64,
    );
    let span = i + 2 * p - d * (k - 1) - 1 + if ceil_mode { s - 1 } else { 0 };
    let mut out = span.div_euclid(s) + 1;
    if ceil_mode && (out - 1) * s >= i + p {
        out -= 1;
    }
    (out >= 1).then_some(out as usize)
}

/// `(start, end)` of the input rows (or columns) adaptive pooling averages for output `o` of
/// `out`: `floor(o n / out)` to `ceil((o + 1) n / out)`.
#[inline]
pub fn adaptive_span(o: usize, out: usize, n: usize) -> (usize, usize) {
    (o * n / out, ((o + 1) * n).div_ceil(out))
}

/// Average-pool window `o` along one axis: `(start, end)` clipped to the input and the window's
/// length counting padding (clipped at `n + pad`, as PyTorch does for ceil-mode windows).
#[inline]
fn avg_span(o: usize, stride: usize, pad: usize, k: usize, n: usize) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + k as isize).min((n + pad) as isize);
    let padded = (end - start) as usize;
    (
        start.max(0) as usize,
        end.clamp(0, n as isize) as usize,
        padded,
    )
}

/// Length of the scratch row of the separable max: the input row at offset `padding[1]`, -inf
/// borders (padding, ceil-mode overhang) and slack so every SIMD load stays inside.
fn padded_row_len(dims: PoolDims, win: Window2d) -> usize {
    let (kw, sw, pw, dw) = (
        win.kernel[1],
        win.stride[1],
        win.padding[1],
        win.dilation[1],
    );
    let span = (dims.out_w.max(1) - 1) * sw + (kw - 1) * dw + 1;
    (pw + dims.w).max(span) + 16
}

/// Run `f` on a per-thread padded row ([`padded_row_len`]) filled with -inf: each output row
/// overwrites only its middle, so the borders stay -inf.
fn with_padded_row<R>(dims: PoolDims, win: Window2d, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_scratch(padded_row_len(dims, win), |row| {
        row.fill(f32::NEG_INFINITY);
        f(row)
    })
}

/// `acc = max_nan(acc, x)` element-wise: NaN in either operand gives NaN (PyTorch's rule).
#[inline(always)]
fn max_into<S: Simd>(s: S, acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "max_into: lengths differ");
    let body = acc.len() - acc.len() % S::LANES;
    let (a_body, a_tail) = acc.split_at_mut(body);
    for (a, x) in a_body
        .chunks_exact_mut(S::LANES)
        .zip(x.chunks_exact(S::LANES))
    {
        s.store(a, s.max_nan(s.load(a), s.load(x)));
    }
    for (a, &v) in a_tail.iter_mut().zip(&x[body..]) {
        *a = Scalar.max_nan(*a, v);
    }
}

/// The vector of `row[at], row[at + STRIDE], ..` (strides 1 and 2), reading `STRIDE LANES`
/// elements.
///
/// # Safety
/// `at + STRIDE LANES <= row.len()`.
#[inline(always)]
unsafe fn load_strided<S: Simd, const STRIDE: usize>(s: S, row: &[f32], at: usize) -> S::V {
    debug_assert!(at + STRIDE * S::LANES <= row.len());
    // SAFETY: the caller's contract.
    let v = unsafe { row.get_unchecked(at..at + STRIDE * S::LANES) };
    if STRIDE == 1 {
        s.load(v)
    } else {
        s.load_even(v)
    }
}

/// How many vectors of outputs, from the first on, have windows (each spanning `span`) that
/// [`load_strided`] reads inside a row of `len`: the vector from output `o` reads up to offset
/// `STRIDE o + span + STRIDE LANES`, so vector `v` fits while `STRIDE LANES (v + 1) + span <= len`.
#[inline(always)]
fn fitting_vectors<S: Simd>(stride: usize, span: usize, len: usize) -> usize {
    len.saturating_sub(span) / (stride * S::LANES)
}

/// `out[o] = max over j < k of row[o stride + j dilation]`, NaN-propagating: the horizontal half
/// of a separable max-pool over a row already padded with -inf. Strides 1 and 2 are vectorised.
#[inline(always)]
fn window_max<S: Simd>(
    s: S,
    row: &[f32],
    (stride, dilation, k): (usize, usize, usize),
    out: &mut [f32],
) {
    #[inline(always)]
    fn vectors<S: Simd, const STRIDE: usize>(
        s: S,
        row: &[f32],
        (dilation, k): (usize, usize),
        out: &mut [f32],
    ) -> usize {
        let fit = fitting_vectors::<S>(STRIDE, (k - 1) * dilation, row.len());
        let mut o = 0;
        for y in out.chunks_exact_mut(S::LANES).take(fit) {
            // SAFETY (every load): fitting_vectors() bounds the window reads to the row.
            let mut m = unsafe { load_strided::<S, STRIDE>(s, row, STRIDE * o) };
            for j in 1..k {
                // SAFETY: as above.
                let v = unsafe { load_strided::<S, STRIDE>(s, row, STRIDE * o + j * dilation) };
                m = s.max_nan(m, v);
            }
            s.store(y, m);
            o += S::LANES;
        }
        o
    }
    let done = match stride {
        1 => vectors::<S, 1>(s, row, (dilation, k), out),
        2 => vectors::<S, 2>(s, row, (dilation, k), out),
        _ => 0,
    };
    for (o, y) in out.iter_mut().enumerate().skip(done) {
        let base = o * stride;
        *y = (1..k).fold(row[base], |m, j| {
            Scalar.max_nan(m, row[base + j * dilation])
        });
    }
}

/// For each output `o`, scanning its window `j = k-1 .. 0`: where `row[o stride + j dilation]`
/// equals `target[o]`, set `code[o] = base + o stride + j dilation` (wrapping). Called on a
/// window's rows from last to first, it leaves in `code` the first match in row-major order:
/// the argmax half of a max-pool with indices. NaN never matches.
#[inline(always)]
fn window_match<S: Simd>(
    s: S,
    row: &[f32],
    (stride, dilation, k): (usize, usize, usize),
    target: &[f32],
    base: u32,
    code: &mut [u32],
) {
    #[inline(always)]
    fn vectors<S: Simd, const STRIDE: usize>(
        s: S,
        row: &[f32],
        (dilation, k): (usize, usize),
        target: &[f32],
        base: u32,
        code: &mut [u32],
    ) -> usize {
        let fit = fitting_vectors::<S>(STRIDE, (k - 1) * dilation, row.len());
        let mut steps = [0u32; MAX_LANES];
        for (i, v) in steps.iter_mut().enumerate() {
            *v = (i * STRIDE) as u32;
        }
        let lane = s.load_u32(&steps);
        let mut o = 0;
        for (t, c) in target
            .chunks_exact(S::LANES)
            .zip(code.chunks_exact_mut(S::LANES))
            .take(fit)
        {
            let (t, mut acc) = (s.load(t), s.load_u32(c));
            for j in (0..k).rev() {
                let off = STRIDE * o + j * dilation;
                // SAFETY: fitting_vectors() bounds the window reads to the row.
                let v = unsafe { load_strided::<S, STRIDE>(s, row, off) };
                let cand = s.add_u32(s.splat_u32(base.wrapping_add(off as u32)), lane);
                acc = s.select_u32(s.eq(v, t), cand, acc);
            }
            s.store_u32(c, acc);
            o += S::LANES;
        }
        o
    }
    assert_eq!(target.len(), code.len(), "window_match: lengths differ");
    let done = match stride {
        1 => vectors::<S, 1>(s, row, (dilation, k), target, base, code),
        2 => vectors::<S, 2>(s, row, (dilation, k), target, base, code),
        _ => 0,
    };
    for (o, (c, &t)) in code.iter_mut().zip(target).enumerate().skip(done) {
        for j in (0..k).rev() {
            let pos = o * stride + j * dilation;
            if row[pos] == t {
                *c = base.wrapping_add(pos as u32);
            }
        }
    }
}

/// Max-pool one plane: per output row, the vertical max of the window's rows into `row`, then
/// the window max along it.
#[inline(always)]
fn max_plane<S: Simd>(
    s: S,
    plane: &[f32],
    dims: PoolDims,
    win: Window2d,
    row: &mut [f32],
    out: &mut [f32],
) {
    let PoolDims { h, w, out_w, .. } = dims;
    let ([kh, kw], [sh, sw], [ph, pw], [dh, dw]) =
        (win.kernel, win.stride, win.padding, win.dilation);
    for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
        let mid = &mut row[pw..pw + w];
        let mut any = false;
        for i in 0..kh {
            let r = (oy * sh + i * dh) as isize - ph as isize;
            if r < 0 || r >= h as isize {
                continue;
            }
            let src = &plane[r as usize * w..][..w];
            if any {
                max_into(s, mid, src);
            } else {
                mid.copy_from_slice(src);
                any = true;
            }
        }
        if !any {
            mid.fill(f32::NEG_INFINITY);
        }
        window_max(s, row, (sw, dw, kw), out_row);
    }
}

/// Max-pool for inference (no indices): separable, SIMD in both directions.
pub fn max_pool2d(x: &[f32], dims: PoolDims, win: Window2d, y: &mut [f32]) {
    dims.check("max_pool2d", x.len(), y.len());
    win.check();
    if y.is_empty() {
        return;
    }
    let pieces = parallel::rowwise_pieces(x.len());
    parallel::for_each_item_run_mut(y, dims.out_plane(), pieces, |first, run| {
        with_padded_row(dims, win, |row| {
            simd::dispatch(MaxPlanes {
                x,
                dims,
                win,
                first,
                y: run,
                indices: None,
                row,
            })
        })
    });
}

/// Max-pool of whole planes `first..` of `x` into `y`, and their argmax into `indices` if given,
/// through `row` (a -inf padded row from [`with_padded_row`]).
struct MaxPlanes<'a> {
    x: &'a [f32],
    dims: PoolDims,
    win: Window2d,
    first: usize,
    y: &'a mut [f32],
    indices: Option<&'a mut [u32]>,
    row: &'a mut [f32],
}

impl SimdFn for MaxPlanes<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let Self { x, dims, win, .. } = self;
        let (ip, op) = (dims.in_plane(), dims.out_plane());
        let row = self.row;
        let plane = |k: usize| &x[(self.first + k) * ip..][..ip];
        match self.indices {
            None => {
                for (k, out) in self.y.chunks_exact_mut(op).enumerate() {
                    max_plane(s, plane(k), dims, win, row, out);
                }
            }
            Some(indices) => {
                for (k, (yp, ixp)) in self
                    .y
                    .chunks_exact_mut(op)
                    .zip(indices.chunks_exact_mut(op))
                    .enumerate()
                {
                    max_plane(s, plane(k), dims, win, row, yp);
                    argmax_plane(s, plane(k), dims, win, yp, row, ixp);
                }
            }
        }
    }
}

/// Index value for an output whose window holds no input element (its value is -inf).
pub const NO_INDEX: u32 = u32::MAX;

/// The first in-range position of a window along one axis and its end: PyTorch's `start`
/// stepped past the padding by whole dilations, and `min(start + span, n)`.
#[inline]
fn max_span(o: usize, stride: usize, pad: usize, k: usize, dil: usize, n: usize) -> (usize, usize) {
    let mut start = (o * stride) as isize - pad as isize;
    let end = (start + ((k - 1) * dil + 1) as isize).min(n as isize);
    while start < 0 {
        start += dil as isize;
    }
    (start as usize, end.max(0) as usize)
}

/// A window's rows or columns: `(start, end, step)`.
type Span = (usize, usize, usize);

/// The positions (`row * w + col`) of a window in row-major order.
fn window_positions(w: usize, rows: Span, cols: Span) -> impl Iterator<Item = usize> {
    (rows.0..rows.1)
        .step_by(rows.2)
        .flat_map(move |r| (cols.0..cols.1).step_by(cols.2).map(move |c| r * w + c))
}

/// PyTorch's argmax of one window, scalar: the first position holding the maximum `best`, or
/// the last NaN when `best` is NaN.
fn argmax_scalar(plane: &[f32], w: usize, rows: Span, cols: Span, best: f32) -> u32 {
    let mut positions = window_positions(w, rows, cols);
    if best.is_nan() {
        positions.filter(|&i| plane[i].is_nan()).last()
    } else {
        positions.find(|&i| plane[i] == best)
    }
    .map_or(NO_INDEX, |i| i as u32)
}

/// Where in its window each output's maximum `y` sits, by PyTorch's rule (first position in
/// row-major order holding the maximum; the last NaN for a NaN maximum). The window's rows are
/// matched last to first against the maxima in SIMD, each row through the same -inf padded row
/// buffer as [`max_plane`]; -inf maxima (which the padding matches too) and NaN maxima (which
/// match nothing) are redone by the scalar rule.
#[inline(always)]
fn argmax_plane<S: Simd>(
    s: S,
    plane: &[f32],
    dims: PoolDims,
    win: Window2d,
    y: &[f32],
    row: &mut [f32],
    idx: &mut [u32],
) {
    let PoolDims { h, w, out_w, .. } = dims;
    let ([kh, kw], [sh, sw], [ph, pw], [dh, dw]) =
        (win.kernel, win.stride, win.padding, win.dilation);
    for (oy, (y_row, idx_row)) in y
        .chunks_exact(out_w)
        .zip(idx.chunks_exact_mut(out_w))
        .enumerate()
    {
        idx_row.fill(NO_INDEX);
        for i in (0..kh).rev() {
            let r = (oy * sh + i * dh) as isize - ph as isize;
            if r < 0 || r >= h as isize {
                continue;
            }
            let r = r as usize;
            row[pw..pw + w].copy_from_slice(&plane[r * w..][..w]);
            let base = ((r * w) as u32).wrapping_sub(pw as u32);
            window_match(s, row, (sw, dw, kw), y_row, base, idx_row);
        }
        for (ox, (&best, at)) in y_row.iter().zip(idx_row.iter_mut()).enumerate() {
            if best == f32::NEG_INFINITY || best.is_nan() {
                let (y0, y1) = max_span(oy, sh, ph, kh, dh, h);
                let (x0, x1) = max_span(ox, sw, pw, kw, dw, w);
                *at = if y0 < y1 && x0 < x1 {
                    argmax_scalar(plane, w, (y0, y1, dh), (x0, x1, dw), best)
                } else {
                    NO_INDEX
                };
            }
        }
    }
}

/// Max-pool that also records, per output, the argmax's index inside its input plane
/// (`row * w + col`, [`NO_INDEX`] for a window entirely in the padding) for the backward: the
/// SIMD forward, then a SIMD match of each window's rows against the maxima.
pub fn max_pool2d_with_indices(
    x: &[f32],
    dims: PoolDims,
    win: Window2d,
    y: &mut [f32],
    indices: &mut [u32],
) {
    dims.check("max_pool2d_with_indices", x.len(), y.len());
    assert_eq!(
        indices.len(),
        y.len(),
        "max_pool2d_with_indices: one index per output"
    );
    assert!(
        dims.in_plane() < NO_INDEX as usize,
        "max_pool2d_with_indices: plane too large"
    );
    win.check();
    let op = dims.out_plane();
    if y.is_empty() {
        return;
    }
    let run = |first: usize, y: &mut [f32], idx: &mut [u32]| {
        with_padded_row(dims, win, |row| {
            simd::dispatch(MaxPlanes {
                x,
                dims,
                win,
                first,
                y,
                indices: Some(idx),
                row,
            })
        })
    };
    let pieces = parallel::rowwise_pieces(x.len());
    if pieces <= 1 || dims.planes < 2 {
        run(0, y, indices);
        return;
    }
    let per = dims.planes.div_ceil(pieces);
    parallel::note_fork();
    y.par_chunks_mut(per * op)
        .zip(indices.par_chunks_mut(per * op))
        .enumerate()
        .for_each(|(i, (y, idx))| run(i * per, y, idx));
}

/// Backward of max-pool: each output's gradient goes to its recorded argmax (summed where
/// windows overlap on the same maximum).
pub fn max_pool2d_backward(dy: &[f32], indices: &[u32], dims: PoolDims, dx: &mut [f32]) {
    dims.check("max_pool2d_backward", dx.len(), dy.len());
    assert_eq!(
        indices.len(),
        dy.len(),
        "max_pool2d_backward: one index per output"
    );
    let (ip, op) = (dims.in_plane(), dims.out_plane());
    let pieces = parallel::rowwise_pieces(dx.len());
    parallel::for_each_item_run_mut(dx, ip, pieces, |first, run| {
        for (k, plane) in run.chunks_exact_mut(ip).enumerate() {
            plane.fill(0.0);
            let o = (first + k) * op;
            for (&g, &i) in dy[o..o + op].iter().zip(&indices[o..o + op]) {
                if i != NO_INDEX {
                    plane[i as usize] += g;
                }
            }
        }
    });
}

/// Average pool (dilation must be 1, as in PyTorch). The divisor is the window's size counting
/// padding with `count_include_pad`, its in-input part otherwise; a window wholly in the padding
/// gives 0.
pub fn avg_pool2d(
    x: &[f32],
    dims: PoolDims,
    win: Window2d,
    count_include_pad: bool,
    y: &mut [f32],
) {
    dims.check("avg_pool2d", x.len(), y.len());
    win.check();
    assert_eq!(win.dilation, [1, 1], "avg_pool2d: no dilation");
    if y.is_empty() || dims.out_w == 0 {
        return;
    }
    let pieces = parallel::rowwise_pieces(x.len());
    parallel::for_each_item_run_mut(y, dims.out_plane(), pieces, |first, run| {
        with_scratch(dims.w, |colsum| {
            avg_planes(x, dims, win, count_include_pad, first, run, colsum)
        })
    });
}

/// Average-pool planes `first..` of `x` into `run`, summing each window's rows into `colsum`
/// (`w` floats of scratch).
fn avg_planes(
    x: &[f32],
    dims: PoolDims,
    win: Window2d,
    count_include_pad: bool,
    first: usize,
    run: &mut [f32],
    colsum: &mut [f32],
) {
    let PoolDims { h, w, out_w, .. } = dims;
    let ([kh, kw], [sh, sw], [ph, pw]) = (win.kernel, win.stride, win.padding);
    for (k, out) in run.chunks_exact_mut(dims.out_plane()).enumerate() {
        let plane = &x[(first + k) * h * w..][..h * w];
        for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
            let (y0, y1, ph_n) = avg_span(oy, sh, ph, kh, h);
            if y0 >= y1 {
                out_row.fill(0.0);
                continue;
            }
            sum_rows(plane, w, y0, y1, colsum);
            for (ox, o) in out_row.iter_mut().enumerate() {
                let (x0, x1, pw_n) = avg_span(ox, sw, pw, kw, w);
                *o = if x0 >= x1 {
                    0.0
                } else {
                    let div = if count_include_pad {
                        ph_n * pw_n
                    } else {
                        (y1 - y0) * (x1 - x0)
                    };
                    colsum[x0..x1].iter().sum::<f32>() / div as f32
                };
            }
        }
    }
}

/// `colsum = Σ rows y0..y1 of the plane` (a plain add loop, which the compiler vectorises).
fn sum_rows(plane: &[f32], w: usize, y0: usize, y1: usize, colsum: &mut [f32]) {
    colsum.copy_from_slice(&plane[y0 * w..][..w]);
    for r in y0 + 1..y1 {
        colsum
            .iter_mut()
            .zip(&plane[r * w..][..w])
            .for_each(|(s, v)| *s += v);
    }
}

/// Backward of [`avg_pool2d`]: each output's gradient, divided by its divisor, spread over the
/// in-input part of its window.
pub fn avg_pool2d_backward(
    dy: &[f32],
    dims: PoolDims,
    win: Window2d,
    count_include_pad: bool,
    dx: &mut [f32],
) {
    dims.check("avg_pool2d_backward", dx.len(), dy.len());
    win.check();
    assert_eq!(win.dilation, [1, 1], "avg_pool2d_backward: no dilation");
    let PoolDims {
        h, w, out_h, out_w, ..
    } = dims;
    let ([kh, kw], [sh, sw], [ph, pw]) = (win.kernel, win.stride, win.padding);
    let (ip, op) = (dims.in_plane(), dims.out_plane());
    let pieces = parallel::rowwise_pieces(dx.len());
    parallel::for_each_item_run_mut(dx, ip, pieces, |first, run| {
        for (k, plane) in run.chunks_exact_mut(ip).enumerate() {
            plane.fill(0.0);
            let g = &dy[(first + k) * op..][..op];
            for oy in 0..out_h {
                let (y0, y1, ph_n) = avg_span(oy, sh, ph, kh, h);
                for ox in 0..out_w {
                    let (x0, x1, pw_n) = avg_span(ox, sw, pw, kw, w);
                    if y0 >= y1 || x0 >= x1 {
                        continue;
                    }
                    let div = if count_include_pad {
                        ph_n * pw_n
                    } else {
                        (y1 - y0) * (x1 - x0)
                    };
                    let v = g[oy * out_w + ox] / div as f32;
                    for r in y0..y1 {
                        plane[r * w + x0..r * w + x1]
                            .iter_mut()
                            .for_each(|d| *d += v);
                    }
                }
            }
        }
    });
}

/// Adaptive average pool to `dims.out_h x dims.out_w` (PyTorch's start/end rule, windows may
/// overlap); the global 1x1 case is one SIMD sum per plane.
pub fn adaptive_avg_pool2d(x: &[f32], dims: PoolDims, y: &mut [f32]) {
    dims.check("adaptive_avg_pool2d", x.len(), y.len());
    let PoolDims {
        h, w, out_h, out_w, ..
    } = dims;
    assert!(h > 0 && w > 0, "adaptive_avg_pool2d: empty planes");
    let ip = dims.in_plane();
    let pieces = parallel::rowwise_pieces(x.len());
    if out_h == 1 && out_w == 1 {
        parallel::for_each_item_run_mut(y, 1, pieces, |first, run| {
            simd::dispatch(PlaneMeans(&x[first * ip..][..run.len() * ip], ip, run))
        });
        return;
    }
    if y.is_empty() {
        return;
    }
    parallel::for_each_item_run_mut(y, dims.out_plane(), pieces, |first, run| {
        with_scratch(w, |colsum| {
            for (k, out) in run.chunks_exact_mut(dims.out_plane()).enumerate() {
                let plane = &x[(first + k) * ip..][..ip];
                for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
                    let (y0, y1) = adaptive_span(oy, out_h, h);
                    sum_rows(plane, w, y0, y1, colsum);
                    for (ox, o) in out_row.iter_mut().enumerate() {
                        let (x0, x1) = adaptive_span(ox, out_w, w);
                        *o = colsum[x0..x1].iter().sum::<f32>() / ((y1 - y0) * (x1 - x0)) as f32;
                    }
                }
            }
        })
    });
}

/// `y[p]` = the mean of plane `p` of `x` (planes of `ip`), one SIMD sum each.
struct PlaneMeans<'a>(&'a [f32], usize, &'a mut [f32]);

impl SimdFn for PlaneMeans<'_> {
    type Output = ();
    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let inv = 1.0 / self.1 as f32;
        for (o, plane) in self.2.iter_mut().zip(self.0.chunks_exact(self.1)) {
            *o = simd::sums(s, simd::Sum, [plane])[0] * inv;
        }
    }
}

/// Backward of [`adaptive_avg_pool2d`].
pub fn adaptive_avg_pool2d_backward(dy: &[f32], dims: PoolDims, dx: &mut [f32]) {
    dims.check("adaptive_avg_pool2d_backward", dx.len(), dy.len());
    let PoolDims {
        h, w, out_h, out_w, ..
    } = dims;
    let (ip, op) = (dims.in_plane(), dims.out_plane());
    let pieces = parallel::rowwise_pieces(dx.len());
    parallel::for_each_item_run_mut(dx, ip, pieces, |first, run| {
        for (k, plane) in run.chunks_exact_mut(ip).enumerate() {
            let g = &dy[(first + k) * op..][..op];
            if op == 1 {
                plane.fill(g[0] / ip as f32);
                continue;
            }
            plane.fill(0.0);
            for oy in 0..out_h {
                let (y0, y1) = adaptive_span(oy, out_h, h);
                for ox in 0..out_w {
                    let (x0, x1) = adaptive_span(ox, out_w, w);
                    let v = g[oy * out_w + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                    for r in y0..y1 {
                        plane[r * w + x0..r * w + x1]
                            .iter_mut()
                            .for_each(|d| *d += v);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        crate::simd::test_bits(seed)
            .take(n)
            .map(|s| ((s >> 11) % 100_000) as f32 / 25_000.0 - 2.0)
            .collect()
    }

    /// (h, w, window, ceil_mode): odd sizes, stride != kernel, padding, dilation, ceil mode, and
    /// rows long enough for whole SIMD blocks at strides 1 and 2.
    fn geometries() -> Vec<(usize, usize, Window2d, bool)> {
        let win = |k: [usize; 2], s: [usize; 2], p: [usize; 2], d: [usize; 2]| Window2d {
            kernel: k,
            stride: s,
            padding: p,
            dilation: d,
        };
        vec![
            (5, 7, win([3, 2], [1, 2], [1, 1], [1, 1]), false),
            (7, 7, Window2d::square(3, 2, 1), false),
            (7, 7, Window2d::square(3, 2, 1), true),
            (8, 9, Window2d::square(2, 2, 0), true),
            (6, 5, win([2, 3], [3, 1], [1, 1], [2, 1]), true),
            (9, 11, win([3, 3], [2, 2], [1, 1], [2, 2]), false),
            (1, 1, Window2d::square(2, 2, 0), true),
            (4, 4, win([2, 2], [1, 1], [1, 1], [3, 3]), false),
            (17, 19, Window2d::square(1, 1, 0), false),
            (33, 35, Window2d::square(3, 2, 1), false),
            (12, 40, win([2, 4], [1, 1], [1, 2], [1, 1]), false),
            (10, 29, win([3, 3], [3, 3], [1, 1], [1, 1]), true),
        ]
    }

    fn dims_for(planes: usize, h: usize, w: usize, win: Window2d, ceil: bool) -> PoolDims {
        let size = |i: usize, a: usize| {
            pooled_size(
                i,
                win.kernel[a],
                win.stride[a],
                win.padding[a],
                win.dilation[a],
                ceil,
            )
            .unwrap()
        };
        PoolDims {
            planes,
            h,
            w,
            out_h: size(h, 0),
            out_w: size(w, 1),
        }
    }

    /// Max over the window by direct position arithmetic (PyTorch's definition).
    fn naive_max(x: &[f32], d: PoolDims, win: Window2d) -> Vec<f32> {
        let mut y = Vec::new();
        for p in 0..d.planes {
            for oy in 0..d.out_h {
                for ox in 0..d.out_w {
                    let mut m = f32::NEG_INFINITY;
                    for i in 0..win.kernel[0] {
                        for j in 0..win.kernel[1] {
                            let r = (oy * win.stride[0] + i * win.dilation[0]) as isize
                                - win.padding[0] as isize;
                            let c = (ox * win.stride[1] + j * win.dilation[1]) as isize
                                - win.padding[1] as isize;
                            if r >= 0 && c >= 0 && (r as usize) < d.h && (c as usize) < d.w {
                                let v = x[p * d.h * d.w + r as usize * d.w + c as usize];
                                m = Scalar.max_nan(m, v);
                            }
                        }
                    }
                    y.push(m);
                }
            }
        }
        y
    }

    /// The row kernels with a chosen ISA (scalar if this CPU lacks it).
    enum RowOp<'a> {
        Max(&'a [f32], (usize, usize, usize), &'a mut [f32]),
        Match(&'a [f32], (usize, usize, usize), &'a [f32], &'a mut [u32]),
        Into(&'a mut [f32], &'a [f32]),
    }

    impl SimdFn for RowOp<'_> {
        type Output = ();
        fn call<S: Simd>(self, s: S) {
            match self {
                RowOp::Max(row, w, out) => window_max(s, row, w, out),
                RowOp::Match(row, w, t, code) => window_match(s, row, w, t, 1000, code),
                RowOp::Into(acc, x) => max_into(s, acc, x),
            }
        }
    }

    fn isas() -> [crate::isa::Isa; 2] {
        [crate::isa::detect(), crate::isa::Isa::Scalar]
    }

    /// Window max and window match, SIMD and scalar, against their definitions at every stride,
    /// dilation and window size, with rows exactly as long as the windows need and longer.
    #[test]
    fn window_kernels_match_their_definitions() {
        for out_len in [0usize, 1, 3, 7, 8, 9, 17, 56] {
            for (stride, dilation, k) in
                (1..=3).flat_map(|s| (1..=2).flat_map(move |d| (1..=4).map(move |k| (s, d, k))))
            {
                for slack in [0, 1, 5, 20] {
                    let need = (out_len.max(1) - 1) * stride + (k - 1) * dilation + 1;
                    let len = if out_len == 0 { slack } else { need + slack };
                    // Few distinct values, so windows hold several copies of their maximum.
                    let row: Vec<f32> = data(len, (out_len * 31 + k + slack) as u64)
                        .iter()
                        .map(|v| (v * 2.0).round())
                        .collect();
                    let window = |o: usize| (0..k).map(move |j| o * stride + j * dilation);
                    let want: Vec<f32> = (0..out_len)
                        .map(|o| window(o).map(|p| row[p]).fold(f32::MIN, f32::max))
                        .collect();
                    let what = format!("out {out_len} s {stride} d {dilation} k {k} +{slack}");
                    for isa in isas() {
                        let mut y = vec![0.0; out_len];
                        let w = (stride, dilation, k);
                        simd::dispatch_on(isa, RowOp::Max(&row, w, &mut y));
                        assert_eq!(y, want, "max {what} {isa:?}");
                        let mut target = want.clone();
                        if out_len > 2 {
                            target[1] = f32::NAN;
                            target[2] = 99.0;
                        }
                        let mut code = vec![7u32; out_len];
                        simd::dispatch_on(isa, RowOp::Match(&row, w, &target, &mut code));
                        for (o, &c) in code.iter().enumerate() {
                            let first = window(o).find(|&p| row[p] == target[o]);
                            assert_eq!(c, first.map_or(7, |p| 1000 + p as u32), "{what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_max_propagates_nan_like_pytorch() {
        for isa in isas() {
            for n in [5usize, 8, 19] {
                let mut acc = data(n, 9);
                let mut x = data(n, 10);
                x[n - 1] = f32::NAN;
                acc[0] = f32::NAN;
                simd::dispatch_on(isa, RowOp::Into(&mut acc, &x));
                assert!(acc[0].is_nan() && acc[n - 1].is_nan());
                assert!(acc[1..n - 1].iter().all(|v| !v.is_nan()));
                let mut row = data(2 * n + 4, 11);
                row[4] = f32::NAN;
                let mut out = vec![0.0; n];
                simd::dispatch_on(isa, RowOp::Max(&row, (2, 1, 3), &mut out));
                assert!(out[1].is_nan() && out[2].is_nan() && !out[0].is_nan());
                assert!(!out[3].is_nan(), "{isa:?} n={n}");
            }
        }
    }

    #[test]
    fn pooled_size_follows_pytorch() {
        // Values printed by PyTorch 2.x for these arguments.
        assert_eq!(pooled_size(1, 2, 2, 0, 1, true), Some(1));
        assert_eq!(pooled_size(5, 2, 2, 1, 1, true), Some(3));
        assert_eq!(pooled_size(2, 3, 1, 0, 1, false), None);
        assert_eq!(pooled_size(4, 2, 2, 1, 3, false), Some(2));
        assert_eq!(pooled_size(6, 2, 1, 1, 1, false), Some(7));
        assert_eq!(pooled_size(112, 3, 2, 1, 1, false), Some(56));
        assert_eq!(pooled_size(7, 3, 2, 1, 1, true), Some(4));
        assert_eq!(pooled_size(7, 3, 2, 0, 1, true), Some(3));
        assert_eq!(pooled_size(8, 3, 0, 0, 1, false), None);
    }

    /// PyTorch's indexed max over window positions in row-major order: `v > best || isnan(v)`
    /// updates, starting from the first in-input position.
    fn naive_argmax(x: &[f32], d: PoolDims, win: Window2d) -> Vec<u32> {
        let mut out = Vec::new();
        for p in 0..d.planes {
            let plane = &x[p * d.h * d.w..][..d.h * d.w];
            for oy in 0..d.out_h {
                for ox in 0..d.out_w {
                    let (mut best, mut at) = (f32::NEG_INFINITY, NO_INDEX);
                    for i in 0..win.kernel[0] {
                        for j in 0..win.kernel[1] {
                            let r = (oy * win.stride[0] + i * win.dilation[0]) as isize
                                - win.padding[0] as isize;
                            let c = (ox * win.stride[1] + j * win.dilation[1]) as isize
                                - win.padding[1] as isize;
                            if r < 0 || c < 0 || r as usize >= d.h || c as usize >= d.w {
                                continue;
                            }
                            let pos = r as usize * d.w + c as usize;
                            if at == NO_INDEX {
                                at = pos as u32;
                            }
                            if plane[pos] > best || plane[pos].is_nan() {
                                (best, at) = (plane[pos], pos as u32);
                            }
                        }
                    }
                    out.push(at);
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_paths_match_the_definition() {
        for (g, (h, w, win, ceil)) in geometries().into_iter().enumerate() {
            for planes in [1usize, 3] {
                let d = dims_for(planes, h, w, win, ceil);
                // Distinct values, then a handful of levels (many ties), then some -inf and NaN.
                let distinct = data(planes * h * w, g as u64);
                let ties: Vec<f32> = distinct.iter().map(|v| v.round()).collect();
                let mut odd = ties.clone();
                for (i, v) in odd.iter_mut().enumerate() {
                    *v = match i % 11 {
                        3 => f32::NEG_INFINITY,
                        7 if i % 3 == 0 => f32::NAN,
                        _ => *v,
                    };
                }
                for x in [distinct, ties, odd] {
                    let expect = naive_max(&x, d, win);
                    let same = |a: &[f32], what: &str| {
                        let eq = a
                            .iter()
                            .zip(&expect)
                            .all(|(p, q)| p == q || p.is_nan() && q.is_nan());
                        assert!(eq, "{what} {d:?} {win:?}: {a:?} vs {expect:?}");
                    };
                    let mut y = vec![0.0; expect.len()];
                    max_pool2d(&x, d, win, &mut y);
                    same(&y, "fast");
                    let mut yi = vec![0.0; expect.len()];
                    let mut idx = vec![0u32; expect.len()];
                    max_pool2d_with_indices(&x, d, win, &mut yi, &mut idx);
                    same(&yi, "indexed");
                    assert_eq!(idx, naive_argmax(&x, d, win), "indices {d:?} {win:?}");
                }
            }
        }
        // All -inf with padding: each index is the first in-input position, as in PyTorch.
        let d = PoolDims {
            planes: 1,
            h: 2,
            w: 2,
            out_h: 2,
            out_w: 2,
        };
        let (mut y, mut idx) = (vec![0.0; 4], vec![0u32; 4]);
        max_pool2d_with_indices(
            &[f32::NEG_INFINITY; 4],
            d,
            Window2d::square(2, 2, 1),
            &mut y,
            &mut idx,
        );
        assert_eq!(idx, vec![0, 1, 2, 3]);
    }

    #[test]
    fn max_pool_propagates_nan_and_keeps_first_of_ties() {
        let d = PoolDims {
            planes: 1,
            h: 2,
            w: 4,
            out_h: 1,
            out_w: 2,
        };
        let x = [1.0, f32::NAN, 2.0, 2.0, 0.5, 3.0, 2.0, 1.0];
        let (mut y, mut idx) = (vec![0.0; 2], vec![0u32; 2]);
        max_pool2d_with_indices(&x, d, Window2d::square(2, 2, 0), &mut y, &mut idx);
        assert!(y[0].is_nan() && idx[0] == 1);
        assert_eq!((y[1], idx[1]), (2.0, 2));
        let mut yf = vec![0.0; 2];
        max_pool2d(&x, d, Window2d::square(2, 2, 0), &mut yf);
        assert!(yf[0].is_nan() && yf[1] == 2.0);
    }

    #[test]
    fn max_pool_backward_routes_to_the_argmax() {
        for (g, (h, w, win, ceil)) in geometries().into_iter().enumerate() {
            let d = dims_for(2, h, w, win, ceil);
            let x = data(2 * h * w, g as u64 + 7);
            let (mut y, mut idx) = (vec![0.0; 2 * d.out_plane()], vec![0u32; 2 * d.out_plane()]);
            max_pool2d_with_indices(&x, d, win, &mut y, &mut idx);
            let dy = data(y.len(), 99);
            let mut dx = vec![f32::NAN; x.len()];
            max_pool2d_backward(&dy, &idx, d, &mut dx);
            let mut expect = vec![0.0f32; x.len()];
            for (o, &i) in idx.iter().enumerate() {
                expect[(o / d.out_plane()) * h * w + i as usize] += dy[o];
            }
            assert_eq!(dx, expect, "{d:?}");
        }
    }

    fn naive_avg(x: &[f32], d: PoolDims, win: Window2d, cip: bool) -> Vec<f64> {
        let mut y = Vec::new();
        for p in 0..d.planes {
            for oy in 0..d.out_h {
                for ox in 0..d.out_w {
                    let hs = (oy * win.stride[0]) as isize - win.padding[0] as isize;
                    let ws = (ox * win.stride[1]) as isize - win.padding[1] as isize;
                    let he = (hs + win.kernel[0] as isize).min((d.h + win.padding[0]) as isize);
                    let we = (ws + win.kernel[1] as isize).min((d.w + win.padding[1]) as isize);
                    let (mut s, mut n) = (0.0f64, 0usize);
                    for r in hs.max(0)..he.min(d.h as isize) {
                        for c in ws.max(0)..we.min(d.w as isize) {
                            s += x[p * d.h * d.w + r as usize * d.w + c as usize] as f64;
                            n += 1;
                        }
                    }
                    let div = if cip {
                        ((he - hs) * (we - ws)) as usize
                    } else {
                        n
                    };
                    y.push(if n == 0 { 0.0 } else { s / div as f64 });
                }
            }
        }
        y
    }

    fn assert_close(a: &[f32], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x as f64 - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn avg_pool_matches_the_definition_and_its_adjoint() {
        for (g, (h, w, mut win, ceil)) in geometries().into_iter().enumerate() {
            win.dilation = [1, 1];
            if win.padding[0] * 2 > win.kernel[0] || win.padding[1] * 2 > win.kernel[1] {
                continue;
            }
            let d = dims_for(2, h, w, win, ceil);
            let x = data(2 * h * w, g as u64 + 3);
            for cip in [false, true] {
                let mut y = vec![0.0; 2 * d.out_plane()];
                avg_pool2d(&x, d, win, cip, &mut y);
                assert_close(
                    &y,
                    &naive_avg(&x, d, win, cip),
                    &format!("{d:?} {win:?} {cip}"),
                );
                // The backward is the transpose: <dy, A x> = <A^T dy, x>.
                let dy = data(y.len(), 5);
                let mut dx = vec![f32::NAN; x.len()];
                avg_pool2d_backward(&dy, d, win, cip, &mut dx);
                let (l, r) = (dot(&dy, &y), dot(&dx, &x));
                assert!((l - r).abs() < 1e-4 * l.abs().max(1.0), "{l} vs {r}");
            }
        }
    }

    #[test]
    fn adaptive_pool_matches_the_definition_and_its_adjoint() {
        let cases = [
            (7, 5, 3, 2),
            (5, 5, 3, 3),
            (3, 4, 5, 7),
            (6, 6, 1, 1),
            (9, 7, 2, 1),
            (32, 32, 1, 1),
            (8, 8, 8, 8),
        ];
        for (h, w, oh, ow) in cases {
            for planes in [1usize, 40] {
                let d = PoolDims {
                    planes,
                    h,
                    w,
                    out_h: oh,
                    out_w: ow,
                };
                let x = data(planes * h * w, (h * w + oh) as u64);
                let mut y = vec![0.0; planes * oh * ow];
                adaptive_avg_pool2d(&x, d, &mut y);
                let mut expect = Vec::new();
                for p in 0..planes {
                    for oy in 0..oh {
                        let y0 = ((oy * h) as f64 / oh as f64).floor() as usize;
                        let y1 = (((oy + 1) * h) as f64 / oh as f64).ceil() as usize;
                        for ox in 0..ow {
                            let x0 = ((ox * w) as f64 / ow as f64).floor() as usize;
                            let x1 = (((ox + 1) * w) as f64 / ow as f64).ceil() as usize;
                            let mut s = 0.0f64;
                            for r in y0..y1 {
                                for c in x0..x1 {
                                    s += x[p * h * w + r * w + c] as f64;
                                }
                            }
                            expect.push(s / ((y1 - y0) * (x1 - x0)) as f64);
                        }
                    }
                }
                assert_close(&y, &expect, &format!("{d:?}"));
                let dy = data(y.len(), 8);
                let mut dx = vec![f32::NAN; x.len()];
                adaptive_avg_pool2d_backward(&dy, d, &mut dx);
                let (l, r) = (dot(&dy, &y), dot(&dx, &x));
                assert!((l - r).abs() < 1e-4 * l.abs().max(1.0), "{d:?}: {l} vs {r}");
            }
        }
    }

    /// Large enough to be split over the pool: the same answers as plane by plane.
    #[test]
    fn parallel_runs_match_plane_by_plane() {
        let win = Window2d::square(3, 2, 1);
        let d = dims_for(16, 56, 56, win, false);
        let x = data(16 * 56 * 56, 1);
        let mut y = vec![0.0; 16 * d.out_plane()];
        max_pool2d(&x, d, win, &mut y);
        let one = PoolDims { planes: 1, ..d };
        for p in 0..16 {
            let mut yp = vec![0.0; d.out_plane()];
            max_pool2d(&x[p * 56 * 56..][..56 * 56], one, win, &mut yp);
            assert_eq!(&y[p * d.out_plane()..][..d.out_plane()], &yp[..]);
        }
        let mut yi = vec![0.0; y.len()];
        let mut idx = vec![0u32; y.len()];
        max_pool2d_with_indices(&x, d, win, &mut yi, &mut idx);
        assert_eq!(y, yi);
        let mut ya = vec![0.0; y.len()];
        avg_pool2d(&x, d, win, true, &mut ya);
        assert_close(&ya, &naive_avg(&x, d, win, true), "avg parallel");
    }
}
