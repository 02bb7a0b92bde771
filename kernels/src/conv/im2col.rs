//! Tiled im2col and its adjoint, col2im.
//!
//! A tile is a run of consecutive output pixels `p0..p0 + len` (row-major over `OH x OW`, so it
//! may start and end mid-row). Its patch matrix has one row per (input channel, ky, kx) and one
//! column per pixel: `cols[r][q]` is the input value under tap r for pixel `p0 + q` (zero in the
//! padding). Rows are built one output-row segment at a time, so stride 1 is a `memcpy`.

use super::Conv2dShape;

/// The spatial geometry of a convolution, unpacked.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
}

impl Geom {
    pub fn new(s: &Conv2dShape) -> Geom {
        let (oh, ow) = s.out_hw();
        let p = &s.params;
        Geom {
            h: s.in_h,
            w: s.in_w,
            oh,
            ow,
            kh: s.kernel_h,
            kw: s.kernel_w,
            sh: p.stride.0,
            sw: p.stride.1,
            ph: p.padding.0,
            pw: p.padding.1,
            dh: p.dilation.0,
            dw: p.dilation.1,
        }
    }

    /// Output columns whose input column for kernel column `kx` lies inside the image.
    #[inline]
    pub fn cols_inside(&self, kx: usize) -> (usize, usize) {
        valid_range(self.ow, self.w, self.sw, kx * self.dw, self.pw)
    }

    /// Output rows whose input row for kernel row `ky` lies inside the image.
    #[inline]
    pub fn rows_inside(&self, ky: usize) -> (usize, usize) {
        valid_range(self.oh, self.h, self.sh, ky * self.dh, self.ph)
    }
}

/// The outputs `o` in `0..out_len` whose input index `o * stride + offset - pad` lies in
/// `0..in_len`: the range `lo..hi` (empty, `lo == hi`, when none do).
#[inline]
pub fn valid_range(
    out_len: usize,
    in_len: usize,
    stride: usize,
    offset: usize,
    pad: usize,
) -> (usize, usize) {
    let lo = if pad > offset {
        (pad - offset).div_ceil(stride)
    } else {
        0
    };
    let hi = if in_len + pad > offset {
        ((in_len + pad - offset - 1) / stride + 1).min(out_len)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Call `f(q, n, inside)` for each output-row segment of the tile `p0..p0 + len` for tap
/// `(ky, kx)`: `q..q + n` are the segment's tile columns; `inside` is `None` when the segment's
/// input row is padding, else `Some((a, b, src))`: tile columns `q + a..q + b` read the input
/// plane from index `src` on, stepping by the stride.
#[inline]
fn segments(
    g: &Geom,
    ky: usize,
    kx: usize,
    p0: usize,
    len: usize,
    mut f: impl FnMut(usize, usize, Option<(usize, usize, usize)>),
) {
    let (ylo, yhi) = g.rows_inside(ky);
    let (xlo, xhi) = g.cols_inside(kx);
    let mut q = 0;
    while q < len {
        let p = p0 + q;
        let (oy, ox0) = (p / g.ow, p % g.ow);
        let n = (g.ow - ox0).min(len - q);
        let a = xlo.clamp(ox0, ox0 + n);
        let b = xhi.clamp(ox0, ox0 + n);
        if oy < ylo || oy >= yhi || a >= b {
            f(q, n, None);
        } else {
            // In range by construction: oy in ylo..yhi and a in xlo..xhi.
            let iy = oy * g.sh + ky * g.dh - g.ph;
            let ix = a * g.sw + kx * g.dw - g.pw;
            f(q, n, Some((a - ox0, b - ox0, iy * g.w + ix)));
        }
        q += n;
    }
}

/// Fill `channels * kh * kw` rows of `cols` (row `r` at `cols[r * ld..]`, `len` floats) with the
/// patches of output pixels `p0..p0 + len`, reading `channels` input planes of `h * w` from `x`.
pub fn im2col_tile(
    g: &Geom,
    x: &[f32],
    channels: usize,
    p0: usize,
    len: usize,
    cols: &mut [f32],
    ld: usize,
) {
    let plane = g.h * g.w;
    let nrows = channels * g.kh * g.kw;
    assert!(x.len() >= channels * plane, "im2col: input too short");
    assert!(ld >= len, "im2col: rows overlap");
    assert!(
        nrows == 0 || cols.len() >= (nrows - 1) * ld + len,
        "im2col: tile too short"
    );
    assert!(p0 + len <= g.oh * g.ow, "im2col: tile past the output");
    let mut r = 0;
    for c in 0..channels {
        let src = &x[c * plane..(c + 1) * plane];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[r * ld..r * ld + len];
                r += 1;
                segments(g, ky, kx, p0, len, |q, n, inside| {
                    let seg = &mut row[q..q + n];
                    match inside {
                        None => seg.fill(0.0),
                        Some((a, b, s)) => {
                            seg[..a].fill(0.0);
                            seg[b..].fill(0.0);
                            let dst = &mut seg[a..b];
                            if g.sw == 1 {
                                copy_run(dst, &src[s..s + dst.len()]);
                            } else {
                                for (i, d) in dst.iter_mut().enumerate() {
                                    *d = src[s + i * g.sw];
                                }
                            }
                        }
                    }
                });
            }
        }
    }
}

/// The adjoint of [`im2col_tile`]: add each element of `cols` (row `r` at `cols[r * ld..]`) into
/// the input position it was read from (padding positions are dropped), accumulating into
/// `channels` planes of `dx`.
pub fn col2im_tile(
    g: &Geom,
    cols: &[f32],
    ld: usize,
    channels: usize,
    p0: usize,
    len: usize,
    dx: &mut [f32],
) {
    let plane = g.h * g.w;
    let nrows = channels * g.kh * g.kw;
    assert!(dx.len() >= channels * plane, "col2im: output too short");
    assert!(ld >= len, "col2im: rows overlap");
    assert!(
        nrows == 0 || cols.len() >= (nrows - 1) * ld + len,
        "col2im: tile too short"
    );
    assert!(p0 + len <= g.oh * g.ow, "col2im: tile past the output");
    let mut r = 0;
    for c in 0..channels {
        let dst = &mut dx[c * plane..(c + 1) * plane];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &cols[r * ld..r * ld + len];
                r += 1;
                segments(g, ky, kx, p0, len, |q, _, inside| {
                    if let Some((a, b, s)) = inside {
                        let src = &row[q + a..q + b];
                        if g.sw == 1 {
                            for (d, v) in dst[s..s + src.len()].iter_mut().zip(src) {
                                *d += v;
                            }
                        } else {
                            for (i, v) in src.iter().enumerate() {
                                dst[s + i * g.sw] += v;
                            }
                        }
                    }
                });
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of small planes (a row of 4 to 30 floats), with
/// fixed-size moves instead of a call to `memcpy`, whose overhead dominates at these lengths.
#[inline(always)]
pub(crate) fn copy_run(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len(), "copy_run: lengths differ");
    if n >= 8 {
        let mut i = 0;
        while i + 8 <= n {
            dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
            i += 8;
        }
        if i < n {
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = *v;
        }
    }
}

/// One input row zero-padded by `pw` on the left and split into `sw` column phases of `hp` floats
/// each (`row.len() == sw * hp`): element `i` of phase `p` is padded column `sw * i + p`, that is
/// input column `sw * i + p - pw`, or zero outside the input. With `sw == 2` a window of outputs
/// at stride 2 reads each phase contiguously. Each phase must hold the padded row's share:
/// `hp >= (pw + src.len()).div_ceil(sw)`.
pub(crate) fn fill_phases(src: &[f32], pw: usize, sw: usize, hp: usize, row: &mut [f32]) {
    let w = src.len();
    assert!(hp >= (pw + w).div_ceil(sw), "fill_phases: phase too short");
    for (p, phase) in row.chunks_exact_mut(hp).enumerate() {
        let i0 = pw.saturating_sub(p).div_ceil(sw);
        let x0 = sw * i0 + p - pw;
        let n = if x0 < w { (w - x0).div_ceil(sw) } else { 0 };
        phase[..i0].fill(0.0);
        if n > 0 {
            let dst = &mut phase[i0..i0 + n];
            if sw == 1 {
                dst.copy_from_slice(&src[x0..x0 + n]);
            } else {
                copy_even(dst, &src[x0..x0 + 2 * n - 1]);
            }
        }
        phase[i0 + n..].fill(0.0);
    }
}

/// `dst[i] = src[2 i]` (stride-2 patch rows) for `src` exactly `2 dst.len() - 1` long: eight (AVX2)
/// or four (NEON) at a time from deinterleaving vector loads, then in pairs the compiler reads
/// without bounds checks (the scalar loop was 18-28 % of a 224x224 stem convolution).
#[inline]
pub(crate) fn copy_even(dst: &mut [f32], src: &[f32]) {
    assert_eq!(src.len() + 1, 2 * dst.len(), "copy_even: lengths");
    let done = copy_even_simd(dst, src);
    let (dst, src) = (&mut dst[done..], &src[2 * done..]);
    let (pairs, last) = src.split_at(src.len() - 1);
    let (body, tail) = dst.split_at_mut(dst.len() - 1);
    for (d, p) in body.iter_mut().zip(pairs.chunks_exact(2)) {
        *d = p[0];
    }
    tail[0] = last[0];
}

/// The vector part of [`copy_even`]: how many leading outputs it wrote (whole vectors whose loads
/// stay inside `src`; at least one output is left for the scalar tail).
#[inline]
fn copy_even_simd(dst: &mut [f32], src: &[f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::current() == crate::isa::Isa::Avx2Fma {
        // SAFETY: AVX2 is present (the ISA was detected); the kernel checks its own bounds.
        return unsafe { even_avx2(dst, src) };
    }
    #[cfg(target_arch = "aarch64")]
    if crate::isa::current() == crate::isa::Isa::Neon {
        // SAFETY: NEON is present on every aarch64 target; the kernel checks its own bounds.
        return unsafe { even_neon(dst, src) };
    }
    let _ = (dst, src);
    0
}

/// # Safety
/// AVX2 must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn even_avx2(dst: &mut [f32], src: &[f32]) -> usize {
    use core::arch::x86_64::*;
    let mut i = 0;
    // Output i + 8 is left over, so the 16 floats read from src[2i..] end before src's end.
    while i + 8 < dst.len() && 2 * i + 16 <= src.len() {
        // SAFETY: src[2i .. 2i + 16] and dst[i .. i + 8] are in bounds (loop condition).
        unsafe {
            let lo = _mm256_loadu_ps(src.as_ptr().add(2 * i));
            let hi = _mm256_loadu_ps(src.as_ptr().add(2 * i + 8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then 64-bit lanes reordered 0,2,1,3.
            let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(ev)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), ev);
        }
        i += 8;
    }
    i
}

/// # Safety
/// NEON must be present.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn even_neon(dst: &mut [f32], src: &[f32]) -> usize {
    use core::arch::aarch64::*;
    let mut i = 0;
    while i + 4 < dst.len() && 2 * i + 8 <= src.len() {
        // SAFETY: src[2i .. 2i + 8] and dst[i .. i + 4] are in bounds (loop condition).
        unsafe {
            vst1q_f32(
                dst.as_mut_ptr().add(i),
                vld2q_f32(src.as_ptr().add(2 * i)).0,
            )
        };
        i += 4;
    }
    i
}

/// [`im2col_tile`] of whole output planes (`p0 = 0`, `len = oh * ow`) through a zero-padded copy
/// of one input plane at a time in `pad` (at least `(h + 2 * ph) * (w + 2 * pw)` floats, contents
/// unspecified): each patch row is then `oh` plain runs of `ow` reads, with no per-segment
/// padding logic, which matters for the small planes of deep layers (7x7, 4x4).
pub fn im2col_planes(
    g: &Geom,
    x: &[f32],
    channels: usize,
    cols: &mut [f32],
    ld: usize,
    pad: &mut [f32],
) {
    let (plane, len) = (g.h * g.w, g.oh * g.ow);
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let nrows = channels * g.kh * g.kw;
    assert!(x.len() >= channels * plane, "im2col: input too short");
    assert!(ld >= len, "im2col: rows overlap");
    assert!(
        nrows == 0 || cols.len() >= (nrows - 1) * ld + len,
        "im2col: tile too short"
    );
    let pad = &mut pad[..hp * wp];
    // The border stays zero; each channel overwrites the interior.
    pad.fill(0.0);
    let mut r = 0;
    for c in 0..channels {
        let src = &x[c * plane..(c + 1) * plane];
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let at = (y + g.ph) * wp + g.pw;
            copy_run(&mut pad[at..at + g.w], row);
        }
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = &mut cols[r * ld..r * ld + len];
                r += 1;
                for (oy, out) in row.chunks_exact_mut(g.ow).enumerate() {
                    let s = (oy * g.sh + ky * g.dh) * wp + kx * g.dw;
                    if g.sw == 1 {
                        copy_run(out, &pad[s..s + g.ow]);
                    } else if g.sw == 2 {
                        copy_even(out, &pad[s..s + 2 * g.ow - 1]);
                    } else {
                        for (i, d) in out.iter_mut().enumerate() {
                            *d = pad[s + i * g.sw];
                        }
                    }
                }
            }
        }
    }
}
