//! Lane-parallel primitives shared by the normalisation and pooling kernels.
//!
//! The reductions here (sums, centred sums of squares and of products) are what the compiler
//! cannot vectorise by itself, because float addition is not associative; the fused affine passes
//! that follow them get FMA and full-width lanes only with explicit `target_feature` code. Each
//! public function checks its slice lengths and dispatches once per call on [`isa::current`];
//! `scalar` holds the reference every SIMD version is tested against.

use crate::isa::{self, Isa};

/// Call `$name` of the SIMD module the CPU supports, or of `scalar`.
macro_rules! dispatch {
    ($name:ident($($arg:expr),*)) => {
        match isa::current() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                // SAFETY: isa::current() reports Avx2Fma only when the CPU has AVX2 and FMA, and
                // the public wrapper checked the slice lengths the SIMD loop relies on.
                unsafe { avx2::$name($($arg),*) }
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                // SAFETY: isa::current() reports Neon only on aarch64 CPUs with NEON, and the
                // public wrapper checked the slice lengths the SIMD loop relies on.
                unsafe { neon::$name($($arg),*) }
            }
            _ => scalar::$name($($arg),*),
        }
    };
}

/// `Σ x`.
pub fn sum(x: &[f32]) -> f32 {
    dispatch!(sum(x))
}

/// `Σ (x - m)²`.
pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
    dispatch!(sum_sq_dev(x, m))
}

/// `(Σ dy, Σ dy (x - m))`: the two sums of a normalisation's backward.
pub fn sum_and_centered_dot(dy: &[f32], x: &[f32], m: f32) -> (f32, f32) {
    assert_eq!(dy.len(), x.len(), "sum_and_centered_dot: lengths differ");
    dispatch!(sum_and_centered_dot(dy, x, m))
}

/// `(Σ dy w, Σ dy w (x - m))`: the same with a per-element weight (layer norm's gamma).
pub fn weighted_sum_and_centered_dot(dy: &[f32], w: &[f32], x: &[f32], m: f32) -> (f32, f32) {
    assert!(
        dy.len() == x.len() && w.len() == x.len(),
        "weighted_sum_and_centered_dot: lengths differ"
    );
    dispatch!(weighted_sum_and_centered_dot(dy, w, x, m))
}

/// `y = x s + t`.
pub fn scale_shift(x: &[f32], s: f32, t: f32, y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "scale_shift: lengths differ");
    dispatch!(scale_shift(x, s, t, y))
}

/// `dx = k dy + p x + q`: a normalisation's input gradient once its sums are known.
pub fn affine2(dy: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
    assert!(
        dy.len() == dx.len() && x.len() == dx.len(),
        "affine2: lengths differ"
    );
    dispatch!(affine2(dy, x, k, p, q, dx))
}

/// `dx = k dy w + p x + q`.
pub fn weighted_affine2(dy: &[f32], w: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
    assert!(
        dy.len() == dx.len() && w.len() == dx.len() && x.len() == dx.len(),
        "weighted_affine2: lengths differ"
    );
    dispatch!(weighted_affine2(dy, w, x, k, p, q, dx))
}

/// `y = (x - m) r g + b` with per-element `g` and `b`.
pub fn normalize_affine(x: &[f32], m: f32, r: f32, g: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == y.len() && g.len() == y.len() && b.len() == y.len(),
        "normalize_affine: lengths differ"
    );
    dispatch!(normalize_affine(x, m, r, g, b, y))
}

/// `acc = max(acc, x)` element-wise, a NaN in either operand giving NaN (PyTorch's pooling rule).
pub fn max_into(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "max_into: lengths differ");
    dispatch!(max_into(acc, x))
}

/// `out[o] = max over j < k of row[o stride + j dilation]`, NaN-propagating: the horizontal half
/// of a separable max-pool over a row already padded with -inf. Strides 1 and 2 are vectorised.
pub fn window_max(row: &[f32], stride: usize, dilation: usize, k: usize, out: &mut [f32]) {
    assert!(
        k > 0 && stride > 0 && dilation > 0,
        "window_max: empty window"
    );
    if let Some(last) = out.len().checked_sub(1) {
        assert!(
            last * stride + (k - 1) * dilation < row.len(),
            "window_max: windows run past the row"
        );
    }
    dispatch!(window_max(row, stride, dilation, k, out))
}

/// For each output `o`, scanning its window `j = k-1 .. 0`: where `row[o stride + j dilation]`
/// equals `target[o]`, set `code[o] = base + o stride + j dilation` (wrapping). Called on a
/// window's rows from last to first, it leaves in `code` the first match in row-major order:
/// the argmax half of a max-pool with indices. NaN never matches.
pub fn window_match(
    row: &[f32],
    (stride, dilation, k): (usize, usize, usize),
    target: &[f32],
    base: u32,
    code: &mut [u32],
) {
    assert!(
        k > 0 && stride > 0 && dilation > 0,
        "window_match: empty window"
    );
    assert_eq!(target.len(), code.len(), "window_match: lengths differ");
    if let Some(last) = code.len().checked_sub(1) {
        assert!(
            last * stride + (k - 1) * dilation < row.len(),
            "window_match: windows run past the row"
        );
    }
    dispatch!(window_match(row, (stride, dilation, k), target, base, code))
}

/// The scalar maximum pooling uses: NaN wins, ties keep the accumulator.
#[inline(always)]
pub fn max_nan(acc: f32, v: f32) -> f32 {
    if v > acc || v.is_nan() {
        v
    } else {
        acc
    }
}

/// Portable references (and the path `TLC_ISA=scalar` runs). Sums keep eight partial sums, as
/// the SIMD versions keep lanes, which is both faster and more accurate than one running sum.
pub mod scalar {
    use super::max_nan;

    #[inline(always)]
    fn sum_by_eight(n: usize, term: impl Fn(usize) -> f32) -> f32 {
        let mut acc = [0.0f32; 8];
        let full = n - n % 8;
        for base in (0..full).step_by(8) {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += term(base + l);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for i in full..n {
            s += term(i);
        }
        s
    }

    pub fn sum(x: &[f32]) -> f32 {
        sum_by_eight(x.len(), |i| x[i])
    }

    pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
        sum_by_eight(x.len(), |i| (x[i] - m) * (x[i] - m))
    }

    pub fn sum_and_centered_dot(dy: &[f32], x: &[f32], m: f32) -> (f32, f32) {
        (
            sum_by_eight(dy.len(), |i| dy[i]),
            sum_by_eight(dy.len(), |i| dy[i] * (x[i] - m)),
        )
    }

    pub fn weighted_sum_and_centered_dot(dy: &[f32], w: &[f32], x: &[f32], m: f32) -> (f32, f32) {
        (
            sum_by_eight(dy.len(), |i| dy[i] * w[i]),
            sum_by_eight(dy.len(), |i| dy[i] * w[i] * (x[i] - m)),
        )
    }

    pub fn scale_shift(x: &[f32], s: f32, t: f32, y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * s + t);
    }

    pub fn affine2(dy: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
        dx.iter_mut()
            .zip(dy.iter().zip(x))
            .for_each(|(d, (&g, &x))| *d = k * g + (p * x + q));
    }

    pub fn weighted_affine2(
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        k: f32,
        p: f32,
        q: f32,
        dx: &mut [f32],
    ) {
        for (i, d) in dx.iter_mut().enumerate() {
            *d = k * (dy[i] * w[i]) + (p * x[i] + q);
        }
    }

    pub fn normalize_affine(x: &[f32], m: f32, r: f32, g: &[f32], b: &[f32], y: &mut [f32]) {
        for (i, y) in y.iter_mut().enumerate() {
            *y = (x[i] - m) * r * g[i] + b[i];
        }
    }

    pub fn max_into(acc: &mut [f32], x: &[f32]) {
        acc.iter_mut()
            .zip(x)
            .for_each(|(a, &v)| *a = max_nan(*a, v));
    }

    pub fn window_max(row: &[f32], stride: usize, dilation: usize, k: usize, out: &mut [f32]) {
        for (o, y) in out.iter_mut().enumerate() {
            let base = o * stride;
            let mut m = row[base];
            for j in 1..k {
                m = max_nan(m, row[base + j * dilation]);
            }
            *y = m;
        }
    }

    pub fn window_match(
        row: &[f32],
        (stride, dilation, k): (usize, usize, usize),
        target: &[f32],
        base: u32,
        code: &mut [u32],
    ) {
        for (o, (c, &t)) in code.iter_mut().zip(target).enumerate() {
            for j in (0..k).rev() {
                let pos = o * stride + j * dilation;
                if row[pos] == t {
                    *c = base.wrapping_add(pos as u32);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! AVX2+FMA versions: 8 lanes, several accumulators in flight for the reductions. Callers
    //! must run on a CPU with AVX2 and FMA and pass the lengths the public wrappers check.
    use super::max_nan;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// max(acc, v) where a NaN in `v` survives too (`_mm256_max_ps` alone would drop it): the NaN
    /// bits OR-ed into the result keep its exponent all ones and its mantissa non-zero.
    #[inline(always)]
    unsafe fn max_nan8(acc: __m256, v: __m256) -> __m256 {
        let m = _mm256_max_ps(v, acc);
        let nan = _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), v);
        _mm256_or_ps(m, nan)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum(x: &[f32]) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in a.iter_mut().enumerate() {
                *acc = _mm256_add_ps(*acc, _mm256_loadu_ps(p.add(i + 8 * l)));
            }
            i += 32;
        }
        while i + 8 <= n {
            a[0] = _mm256_add_ps(a[0], _mm256_loadu_ps(p.add(i)));
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ));
        for &v in &x[i..] {
            s += v;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let mv = _mm256_set1_ps(m);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in a.iter_mut().enumerate() {
                let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8 * l)), mv);
                *acc = _mm256_fmadd_ps(d, d, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv);
            a[0] = _mm256_fmadd_ps(d, d, a[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ));
        for &v in &x[i..] {
            s += (v - m) * (v - m);
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sum_and_centered_dot(dy: &[f32], x: &[f32], m: f32) -> (f32, f32) {
        let (n, pg, px) = (dy.len(), dy.as_ptr(), x.as_ptr());
        let mv = _mm256_set1_ps(m);
        let mut s = [_mm256_setzero_ps(); 2];
        let mut d = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for l in 0..2 {
                let g = _mm256_loadu_ps(pg.add(i + 8 * l));
                let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(i + 8 * l)), mv);
                s[l] = _mm256_add_ps(s[l], g);
                d[l] = _mm256_fmadd_ps(g, c, d[l]);
            }
            i += 16;
        }
        while i + 8 <= n {
            let g = _mm256_loadu_ps(pg.add(i));
            let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(i)), mv);
            s[0] = _mm256_add_ps(s[0], g);
            d[0] = _mm256_fmadd_ps(g, c, d[0]);
            i += 8;
        }
        let mut ss = hsum(_mm256_add_ps(s[0], s[1]));
        let mut dd = hsum(_mm256_add_ps(d[0], d[1]));
        for j in i..n {
            ss += dy[j];
            dd += dy[j] * (x[j] - m);
        }
        (ss, dd)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum_and_centered_dot(
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        m: f32,
    ) -> (f32, f32) {
        let (n, pg, pw, px) = (dy.len(), dy.as_ptr(), w.as_ptr(), x.as_ptr());
        let mv = _mm256_set1_ps(m);
        let mut s = [_mm256_setzero_ps(); 2];
        let mut d = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for l in 0..2 {
                let o = i + 8 * l;
                let g = _mm256_mul_ps(_mm256_loadu_ps(pg.add(o)), _mm256_loadu_ps(pw.add(o)));
                let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(o)), mv);
                s[l] = _mm256_add_ps(s[l], g);
                d[l] = _mm256_fmadd_ps(g, c, d[l]);
            }
            i += 16;
        }
        while i + 8 <= n {
            let g = _mm256_mul_ps(_mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pw.add(i)));
            let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(i)), mv);
            s[0] = _mm256_add_ps(s[0], g);
            d[0] = _mm256_fmadd_ps(g, c, d[0]);
            i += 8;
        }
        let mut ss = hsum(_mm256_add_ps(s[0], s[1]));
        let mut dd = hsum(_mm256_add_ps(d[0], d[1]));
        for j in i..n {
            let g = dy[j] * w[j];
            ss += g;
            dd += g * (x[j] - m);
        }
        (ss, dd)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scale_shift(x: &[f32], s: f32, t: f32, y: &mut [f32]) {
        let (n, px, py) = (x.len(), x.as_ptr(), y.as_mut_ptr());
        let (sv, tv) = (_mm256_set1_ps(s), _mm256_set1_ps(t));
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                py.add(i),
                _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), sv, tv),
            );
            i += 8;
        }
        for j in i..n {
            y[j] = x[j].mul_add(s, t);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn affine2(dy: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
        let (n, pg, px, pd) = (dx.len(), dy.as_ptr(), x.as_ptr(), dx.as_mut_ptr());
        let (kv, pv, qv) = (_mm256_set1_ps(k), _mm256_set1_ps(p), _mm256_set1_ps(q));
        let mut i = 0;
        while i + 8 <= n {
            let lin = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), pv, qv);
            _mm256_storeu_ps(
                pd.add(i),
                _mm256_fmadd_ps(_mm256_loadu_ps(pg.add(i)), kv, lin),
            );
            i += 8;
        }
        for j in i..n {
            dx[j] = dy[j].mul_add(k, x[j].mul_add(p, q));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_affine2(
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        k: f32,
        p: f32,
        q: f32,
        dx: &mut [f32],
    ) {
        let n = dx.len();
        let (pg, pw, px, pd) = (dy.as_ptr(), w.as_ptr(), x.as_ptr(), dx.as_mut_ptr());
        let (kv, pv, qv) = (_mm256_set1_ps(k), _mm256_set1_ps(p), _mm256_set1_ps(q));
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_mul_ps(_mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pw.add(i)));
            let lin = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), pv, qv);
            _mm256_storeu_ps(pd.add(i), _mm256_fmadd_ps(g, kv, lin));
            i += 8;
        }
        for j in i..n {
            dx[j] = (dy[j] * w[j]).mul_add(k, x[j].mul_add(p, q));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn normalize_affine(x: &[f32], m: f32, r: f32, g: &[f32], b: &[f32], y: &mut [f32]) {
        let n = y.len();
        let (px, pg, pb, py) = (x.as_ptr(), g.as_ptr(), b.as_ptr(), y.as_mut_ptr());
        let (mv, rv) = (_mm256_set1_ps(m), _mm256_set1_ps(r));
        let mut i = 0;
        while i + 8 <= n {
            let xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(px.add(i)), mv), rv);
            let o = _mm256_fmadd_ps(xh, _mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pb.add(i)));
            _mm256_storeu_ps(py.add(i), o);
            i += 8;
        }
        for j in i..n {
            y[j] = ((x[j] - m) * r).mul_add(g[j], b[j]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max_into(acc: &mut [f32], x: &[f32]) {
        let (n, pa, px) = (acc.len(), acc.as_mut_ptr(), x.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let m = max_nan8(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(px.add(i)));
            _mm256_storeu_ps(pa.add(i), m);
            i += 8;
        }
        for j in i..n {
            acc[j] = max_nan(acc[j], x[j]);
        }
    }

    /// Eight even-indexed elements starting at `p` (reads `p[0..16]`).
    #[inline(always)]
    unsafe fn load_even8(p: *const f32) -> __m256 {
        let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
        // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then reorder the 64-bit pairs.
        let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn window_max(
        row: &[f32],
        stride: usize,
        dilation: usize,
        k: usize,
        out: &mut [f32],
    ) {
        let (len, pr, po) = (row.len(), row.as_ptr(), out.as_mut_ptr());
        let span = (k - 1) * dilation;
        let mut o = 0;
        // Vector blocks of 8 outputs while every load stays inside `row`.
        match stride {
            1 => {
                while o + 8 <= out.len() && o + 8 + span <= len {
                    let mut m = _mm256_loadu_ps(pr.add(o));
                    for j in 1..k {
                        m = max_nan8(m, _mm256_loadu_ps(pr.add(o + j * dilation)));
                    }
                    _mm256_storeu_ps(po.add(o), m);
                    o += 8;
                }
            }
            2 => {
                while o + 8 <= out.len() && 2 * o + 16 + span <= len {
                    let mut m = load_even8(pr.add(2 * o));
                    for j in 1..k {
                        m = max_nan8(m, load_even8(pr.add(2 * o + j * dilation)));
                    }
                    _mm256_storeu_ps(po.add(o), m);
                    o += 8;
                }
            }
            _ => {}
        }
        super::scalar::window_max(&row[o * stride..], stride, dilation, k, &mut out[o..]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn window_match(
        row: &[f32],
        (stride, dilation, k): (usize, usize, usize),
        target: &[f32],
        base: u32,
        code: &mut [u32],
    ) {
        let (len, pr, pt, pc) = (row.len(), row.as_ptr(), target.as_ptr(), code.as_mut_ptr());
        let span = (k - 1) * dilation;
        let lane = _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(stride as i32),
        );
        let mut o = 0;
        if stride <= 2 {
            // Both strides read 8 * stride floats from each window offset (see window_max).
            while o + 8 <= code.len() && stride * o + 8 * stride + span <= len {
                let t = _mm256_loadu_ps(pt.add(o));
                let mut acc = _mm256_loadu_si256(pc.add(o) as *const __m256i);
                for j in (0..k).rev() {
                    let off = stride * o + j * dilation;
                    let v = if stride == 1 {
                        _mm256_loadu_ps(pr.add(off))
                    } else {
                        load_even8(pr.add(off))
                    };
                    let hit = _mm256_castps_si256(_mm256_cmp_ps(v, t, _CMP_EQ_OQ));
                    let cand = _mm256_add_epi32(
                        _mm256_set1_epi32(base.wrapping_add(off as u32) as i32),
                        lane,
                    );
                    acc = _mm256_blendv_epi8(acc, cand, hit);
                }
                _mm256_storeu_si256(pc.add(o) as *mut __m256i, acc);
                o += 8;
            }
        }
        let base = base.wrapping_add((o * stride) as u32);
        super::scalar::window_match(
            &row[o * stride..],
            (stride, dilation, k),
            &target[o..],
            base,
            &mut code[o..],
        );
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    //! NEON versions: 4 lanes, several accumulators in flight for the reductions. Callers must
    //! pass the lengths the public wrappers check (every aarch64 Linux CPU has NEON).
    use super::max_nan;
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub unsafe fn sum(x: &[f32]) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let mut a = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (l, acc) in a.iter_mut().enumerate() {
                *acc = vaddq_f32(*acc, vld1q_f32(p.add(i + 4 * l)));
            }
            i += 16;
        }
        while i + 4 <= n {
            a[0] = vaddq_f32(a[0], vld1q_f32(p.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
        for &v in &x[i..] {
            s += v;
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
        let (n, p) = (x.len(), x.as_ptr());
        let mv = vdupq_n_f32(m);
        let mut a = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (l, acc) in a.iter_mut().enumerate() {
                let d = vsubq_f32(vld1q_f32(p.add(i + 4 * l)), mv);
                *acc = vfmaq_f32(*acc, d, d);
            }
            i += 16;
        }
        while i + 4 <= n {
            let d = vsubq_f32(vld1q_f32(p.add(i)), mv);
            a[0] = vfmaq_f32(a[0], d, d);
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
        for &v in &x[i..] {
            s += (v - m) * (v - m);
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn sum_and_centered_dot(dy: &[f32], x: &[f32], m: f32) -> (f32, f32) {
        let (n, pg, px) = (dy.len(), dy.as_ptr(), x.as_ptr());
        let mv = vdupq_n_f32(m);
        let mut s = [vdupq_n_f32(0.0); 2];
        let mut d = [vdupq_n_f32(0.0); 2];
        let mut i = 0;
        while i + 8 <= n {
            for l in 0..2 {
                let g = vld1q_f32(pg.add(i + 4 * l));
                let c = vsubq_f32(vld1q_f32(px.add(i + 4 * l)), mv);
                s[l] = vaddq_f32(s[l], g);
                d[l] = vfmaq_f32(d[l], g, c);
            }
            i += 8;
        }
        while i + 4 <= n {
            let g = vld1q_f32(pg.add(i));
            let c = vsubq_f32(vld1q_f32(px.add(i)), mv);
            s[0] = vaddq_f32(s[0], g);
            d[0] = vfmaq_f32(d[0], g, c);
            i += 4;
        }
        let mut ss = vaddvq_f32(vaddq_f32(s[0], s[1]));
        let mut dd = vaddvq_f32(vaddq_f32(d[0], d[1]));
        for j in i..n {
            ss += dy[j];
            dd += dy[j] * (x[j] - m);
        }
        (ss, dd)
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn weighted_sum_and_centered_dot(
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        m: f32,
    ) -> (f32, f32) {
        let (n, pg, pw, px) = (dy.len(), dy.as_ptr(), w.as_ptr(), x.as_ptr());
        let mv = vdupq_n_f32(m);
        let mut s = [vdupq_n_f32(0.0); 2];
        let mut d = [vdupq_n_f32(0.0); 2];
        let mut i = 0;
        while i + 8 <= n {
            for l in 0..2 {
                let o = i + 4 * l;
                let g = vmulq_f32(vld1q_f32(pg.add(o)), vld1q_f32(pw.add(o)));
                let c = vsubq_f32(vld1q_f32(px.add(o)), mv);
                s[l] = vaddq_f32(s[l], g);
                d[l] = vfmaq_f32(d[l], g, c);
            }
            i += 8;
        }
        while i + 4 <= n {
            let g = vmulq_f32(vld1q_f32(pg.add(i)), vld1q_f32(pw.add(i)));
            let c = vsubq_f32(vld1q_f32(px.add(i)), mv);
            s[0] = vaddq_f32(s[0], g);
            d[0] = vfmaq_f32(d[0], g, c);
            i += 4;
        }
        let mut ss = vaddvq_f32(vaddq_f32(s[0], s[1]));
        let mut dd = vaddvq_f32(vaddq_f32(d[0], d[1]));
        for j in i..n {
            let g = dy[j] * w[j];
            ss += g;
            dd += g * (x[j] - m);
        }
        (ss, dd)
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn scale_shift(x: &[f32], s: f32, t: f32, y: &mut [f32]) {
        let (n, px, py) = (x.len(), x.as_ptr(), y.as_mut_ptr());
        let (sv, tv) = (vdupq_n_f32(s), vdupq_n_f32(t));
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(py.add(i), vfmaq_f32(tv, vld1q_f32(px.add(i)), sv));
            i += 4;
        }
        for j in i..n {
            y[j] = x[j].mul_add(s, t);
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn affine2(dy: &[f32], x: &[f32], k: f32, p: f32, q: f32, dx: &mut [f32]) {
        let (n, pg, px, pd) = (dx.len(), dy.as_ptr(), x.as_ptr(), dx.as_mut_ptr());
        let (kv, pv, qv) = (vdupq_n_f32(k), vdupq_n_f32(p), vdupq_n_f32(q));
        let mut i = 0;
        while i + 4 <= n {
            let lin = vfmaq_f32(qv, vld1q_f32(px.add(i)), pv);
            vst1q_f32(pd.add(i), vfmaq_f32(lin, vld1q_f32(pg.add(i)), kv));
            i += 4;
        }
        for j in i..n {
            dx[j] = dy[j].mul_add(k, x[j].mul_add(p, q));
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn weighted_affine2(
        dy: &[f32],
        w: &[f32],
        x: &[f32],
        k: f32,
        p: f32,
        q: f32,
        dx: &mut [f32],
    ) {
        let n = dx.len();
        let (pg, pw, px, pd) = (dy.as_ptr(), w.as_ptr(), x.as_ptr(), dx.as_mut_ptr());
        let (kv, pv, qv) = (vdupq_n_f32(k), vdupq_n_f32(p), vdupq_n_f32(q));
        let mut i = 0;
        while i + 4 <= n {
            let g = vmulq_f32(vld1q_f32(pg.add(i)), vld1q_f32(pw.add(i)));
            let lin = vfmaq_f32(qv, vld1q_f32(px.add(i)), pv);
            vst1q_f32(pd.add(i), vfmaq_f32(lin, g, kv));
            i += 4;
        }
        for j in i..n {
            dx[j] = (dy[j] * w[j]).mul_add(k, x[j].mul_add(p, q));
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn normalize_affine(x: &[f32], m: f32, r: f32, g: &[f32], b: &[f32], y: &mut [f32]) {
        let n = y.len();
        let (px, pg, pb, py) = (x.as_ptr(), g.as_ptr(), b.as_ptr(), y.as_mut_ptr());
        let (mv, rv) = (vdupq_n_f32(m), vdupq_n_f32(r));
        let mut i = 0;
        while i + 4 <= n {
            let xh = vmulq_f32(vsubq_f32(vld1q_f32(px.add(i)), mv), rv);
            vst1q_f32(
                py.add(i),
                vfmaq_f32(vld1q_f32(pb.add(i)), xh, vld1q_f32(pg.add(i))),
            );
            i += 4;
        }
        for j in i..n {
            y[j] = ((x[j] - m) * r).mul_add(g[j], b[j]);
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn max_into(acc: &mut [f32], x: &[f32]) {
        let (n, pa, px) = (acc.len(), acc.as_mut_ptr(), x.as_ptr());
        let mut i = 0;
        // FMAX returns NaN when either operand is NaN: PyTorch's rule without extra work.
        while i + 4 <= n {
            vst1q_f32(
                pa.add(i),
                vmaxq_f32(vld1q_f32(pa.add(i)), vld1q_f32(px.add(i))),
            );
            i += 4;
        }
        for j in i..n {
            acc[j] = max_nan(acc[j], x[j]);
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn window_max(
        row: &[f32],
        stride: usize,
        dilation: usize,
        k: usize,
        out: &mut [f32],
    ) {
        let (len, pr, po) = (row.len(), row.as_ptr(), out.as_mut_ptr());
        let span = (k - 1) * dilation;
        let mut o = 0;
        match stride {
            1 => {
                while o + 4 <= out.len() && o + 4 + span <= len {
                    let mut m = vld1q_f32(pr.add(o));
                    for j in 1..k {
                        m = vmaxq_f32(m, vld1q_f32(pr.add(o + j * dilation)));
                    }
                    vst1q_f32(po.add(o), m);
                    o += 4;
                }
            }
            2 => {
                // vld2q de-interleaves 8 floats: .0 holds the even-indexed four.
                while o + 4 <= out.len() && 2 * o + 8 + span <= len {
                    let mut m = vld2q_f32(pr.add(2 * o)).0;
                    for j in 1..k {
                        m = vmaxq_f32(m, vld2q_f32(pr.add(2 * o + j * dilation)).0);
                    }
                    vst1q_f32(po.add(o), m);
                    o += 4;
                }
            }
            _ => {}
        }
        super::scalar::window_max(&row[o * stride..], stride, dilation, k, &mut out[o..]);
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn window_match(
        row: &[f32],
        (stride, dilation, k): (usize, usize, usize),
        target: &[f32],
        base: u32,
        code: &mut [u32],
    ) {
        let (len, pr, pt, pc) = (row.len(), row.as_ptr(), target.as_ptr(), code.as_mut_ptr());
        let span = (k - 1) * dilation;
        let steps: [u32; 4] = [0, 1, 2, 3];
        let lane = vmulq_n_u32(vld1q_u32(steps.as_ptr()), stride as u32);
        let mut o = 0;
        if stride <= 2 {
            while o + 4 <= code.len() && stride * o + 4 * stride + span <= len {
                let t = vld1q_f32(pt.add(o));
                let mut acc = vld1q_u32(pc.add(o));
                for j in (0..k).rev() {
                    let off = stride * o + j * dilation;
                    let v = if stride == 1 {
                        vld1q_f32(pr.add(off))
                    } else {
                        vld2q_f32(pr.add(off)).0
                    };
                    let cand = vaddq_u32(vdupq_n_u32(base.wrapping_add(off as u32)), lane);
                    acc = vbslq_u32(vceqq_f32(v, t), cand, acc);
                }
                vst1q_u32(pc.add(o), acc);
                o += 4;
            }
        }
        let base = base.wrapping_add((o * stride) as u32);
        super::scalar::window_match(
            &row[o * stride..],
            (stride, dilation, k),
            &target[o..],
            base,
            &mut code[o..],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2] with a non-zero mean.
    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 4001) as f32 / 1000.0 - 1.7
            })
            .collect()
    }

    fn close(a: f32, b: f32, scale: f32) -> bool {
        (a - b).abs() <= 1e-5 * scale.max(1.0) || (a.is_nan() && b.is_nan())
    }

    fn assert_slices(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!(close(x, y, y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    const SIZES: [usize; 12] = [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1027];

    /// Every public primitive, through the dispatcher (the CPU's SIMD), against `scalar`.
    #[test]
    fn simd_matches_scalar_on_odd_sizes() {
        for n in SIZES {
            let (x, dy, w) = (data(n, 1), data(n, 2), data(n, 3));
            let b = data(n, 4);
            let scale = n as f32 * 4.0;
            assert!(close(sum(&x), scalar::sum(&x), scale), "sum n={n}");
            assert!(close(
                sum_sq_dev(&x, 0.3),
                scalar::sum_sq_dev(&x, 0.3),
                scale * 4.0
            ));
            let (a, c) = sum_and_centered_dot(&dy, &x, -0.2);
            let (ra, rc) = scalar::sum_and_centered_dot(&dy, &x, -0.2);
            assert!(
                close(a, ra, scale) && close(c, rc, scale * 4.0),
                "dot n={n}"
            );
            let (a, c) = weighted_sum_and_centered_dot(&dy, &w, &x, 0.1);
            let (ra, rc) = scalar::weighted_sum_and_centered_dot(&dy, &w, &x, 0.1);
            assert!(
                close(a, ra, scale * 2.0) && close(c, rc, scale * 8.0),
                "wdot n={n}"
            );

            let (mut y, mut r) = (vec![0.0; n], vec![0.0; n]);
            scale_shift(&x, 1.5, -0.25, &mut y);
            scalar::scale_shift(&x, 1.5, -0.25, &mut r);
            assert_slices(&y, &r, "scale_shift");
            affine2(&dy, &x, 0.7, -1.1, 0.05, &mut y);
            scalar::affine2(&dy, &x, 0.7, -1.1, 0.05, &mut r);
            assert_slices(&y, &r, "affine2");
            weighted_affine2(&dy, &w, &x, 0.7, -1.1, 0.05, &mut y);
            scalar::weighted_affine2(&dy, &w, &x, 0.7, -1.1, 0.05, &mut r);
            assert_slices(&y, &r, "weighted_affine2");
            normalize_affine(&x, 0.2, 1.3, &w, &b, &mut y);
            scalar::normalize_affine(&x, 0.2, 1.3, &w, &b, &mut r);
            assert_slices(&y, &r, "normalize_affine");

            let mut acc = w.clone();
            let mut racc = w.clone();
            max_into(&mut acc, &x);
            scalar::max_into(&mut racc, &x);
            assert_eq!(acc, racc, "max_into n={n}");
        }
    }

    #[test]
    fn window_max_matches_scalar_for_strides_and_dilations() {
        for out_len in [0usize, 1, 3, 7, 8, 9, 17, 56] {
            for stride in 1..=3 {
                for dilation in 1..=2 {
                    for k in 1..=4 {
                        for slack in [0, 1, 5, 20] {
                            let len = if out_len == 0 {
                                slack
                            } else {
                                (out_len - 1) * stride + (k - 1) * dilation + 1 + slack
                            };
                            let row = data(len, (out_len * 31 + k) as u32);
                            let mut y = vec![0.0; out_len];
                            let mut r = vec![0.0; out_len];
                            window_max(&row, stride, dilation, k, &mut y);
                            scalar::window_max(&row, stride, dilation, k, &mut r);
                            assert_eq!(y, r, "out {out_len} s {stride} d {dilation} k {k}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn window_match_matches_scalar_for_strides_and_dilations() {
        for out_len in [0usize, 1, 3, 7, 8, 9, 17, 56] {
            for stride in 1..=3 {
                for dilation in 1..=2 {
                    for k in 1..=4 {
                        let len = (out_len.max(1) - 1) * stride + (k - 1) * dilation + 1 + 17;
                        // Few distinct values, so windows hold several copies of their maximum.
                        let row: Vec<f32> = data(len, (out_len + k) as u32)
                            .iter()
                            .map(|v| (v * 2.0).round())
                            .collect();
                        let mut target = vec![0.0; out_len];
                        window_max(&row, stride, dilation, k, &mut target);
                        if out_len > 2 {
                            target[1] = f32::NAN;
                            target[2] = 99.0;
                        }
                        let base = 1000u32;
                        let mut code = vec![7u32; out_len];
                        let mut expect = code.clone();
                        window_match(&row, (stride, dilation, k), &target, base, &mut code);
                        scalar::window_match(
                            &row,
                            (stride, dilation, k),
                            &target,
                            base,
                            &mut expect,
                        );
                        assert_eq!(code, expect, "out {out_len} s {stride} d {dilation} k {k}");
                        for (o, &c) in code.iter().enumerate() {
                            let first = (0..k)
                                .map(|j| o * stride + j * dilation)
                                .find(|&p| row[p] == target[o]);
                            assert_eq!(c, first.map_or(7, |p| base + p as u32));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn max_propagates_nan_like_pytorch() {
        for n in [5usize, 8, 19] {
            let mut acc = data(n, 9);
            let mut x = data(n, 10);
            x[n - 1] = f32::NAN;
            acc[0] = f32::NAN;
            max_into(&mut acc, &x);
            assert!(acc[0].is_nan() && acc[n - 1].is_nan());
            assert!(acc[1..n - 1].iter().all(|v| !v.is_nan()));
            let mut row = data(2 * n + 4, 11);
            row[4] = f32::NAN;
            let mut out = vec![0.0; n];
            window_max(&row, 2, 1, 3, &mut out);
            assert!(out[1].is_nan() && out[2].is_nan() && !out[0].is_nan() && !out[3].is_nan());
        }
    }

    /// The SIMD modules called directly (the dispatcher may have been forced to scalar).
    #[test]
    fn explicit_simd_paths_match_scalar() {
        let x = data(37, 5);
        let dy = data(37, 6);
        #[cfg(target_arch = "x86_64")]
        if crate::isa::detect() == Isa::Avx2Fma {
            // SAFETY: the CPU was just detected to support AVX2 and FMA; lengths match.
            let (s, (a, c)) = unsafe { (avx2::sum(&x), avx2::sum_and_centered_dot(&dy, &x, 0.5)) };
            assert!(close(s, scalar::sum(&x), 40.0));
            let (ra, rc) = scalar::sum_and_centered_dot(&dy, &x, 0.5);
            assert!(close(a, ra, 40.0) && close(c, rc, 160.0));
        }
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: every aarch64 Linux CPU has NEON; lengths match.
            let (s, (a, c)) = unsafe { (neon::sum(&x), neon::sum_and_centered_dot(&dy, &x, 0.5)) };
            assert!(close(s, scalar::sum(&x), 40.0));
            let (ra, rc) = scalar::sum_and_centered_dot(&dy, &x, 0.5);
            assert!(close(a, ra, 40.0) && close(c, rc, 160.0));
        }
    }
}
