//! Convolution products computed pixel-major and stored channel-major: `C = (A_T * W_T)^T`, where
//! row `i` of `A_T` is one output pixel's patch (read through an offset per patch element, so a
//! padded input plane, an input image or an im2col matrix serve alike) and `W_T` is the weights
//! transposed and packed once into 16-channel panels.
//!
//! In this orientation the 16 vector lanes hold 16 output channels, which every network here has
//! in multiples of 16, while pixels fill the register tile's rows, where a short row costs only
//! its own multiply-adds: a 7-pixel output row fills 7 of 8 rows, where the channel-major tile
//! filled 7 of 16 lanes. The weight loads are aligned and contiguous, and the 8 pixels of a k
//! step are one contiguous run (the channel-major tile broadcasts from 8 weight rows `K` apart).
//! Each finished tile is transposed in registers and stored as 16 channel rows of 8 pixels: the
//! NCHW output, with the conv epilogue (bias, residual, clamping activation) applied on the way.
//!
//! Two tile families: AVX-512 (up to 8 pixels x one 16-lane register, masked stores) and AVX2+FMA
//! (up to 6 pixels x two 8-lane registers: 12 accumulators, as the channel-major 6x16 tile).
//! [`supported`] says whether the process runs either.

#[cfg(target_arch = "x86_64")]
use super::spec::TileEpi;
use super::{Epilogue, MatPtr, MatRef, OffsetTable};

/// Channels per packed panel (the vector width).
pub const PANEL: usize = 16;

/// `W_T` (`k x n`: depth by channels) packed as `ceil(n / 16)` panels of `k x 16` floats, one
/// after another, 64-byte aligned; channels past `n` are zero.
pub struct PackedPanels {
    buf: Vec<f32>,
    start: usize,
    k: usize,
    n: usize,
}

impl PackedPanels {
    /// Pack `b` (`k x n`, any strides).
    pub fn new(b: MatRef) -> PackedPanels {
        assert!(b.in_bounds(), "pack_panels: view out of bounds");
        let (k, n) = (b.rows, b.cols);
        let panels = n.div_ceil(PANEL);
        let mut buf = Vec::new();
        let start = {
            let data = crate::scratch::aligned(&mut buf, panels * k * PANEL);
            (data.as_ptr() as usize - buf.as_ptr() as usize) / std::mem::size_of::<f32>()
        };
        if k > 0 && n > 0 {
            let dst = &mut buf[start..start + panels * k * PANEL];
            super::pack::pack_b(&b, 0, k, 0, 0, PANEL, dst);
            super::pack::flush_subnormals(dst);
        }
        PackedPanels { buf, start, k, n }
    }

    /// Depth (patch length).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Channels.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Panels of 16 channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Panel `j`: `k x 16` floats, row `p` at `16 p`, 64-byte aligned.
    pub(crate) fn panel(&self, j: usize) -> &[f32] {
        let len = self.k * PANEL;
        &self.buf[self.start + j * len..self.start + (j + 1) * len]
    }
}

impl std::fmt::Debug for PackedPanels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedPanels({}x{})", self.k, self.n)
    }
}

/// The pixel-major operand: pixel `i`'s patch element `p` is `data[offs[p] + i]`.
#[derive(Clone, Copy, Debug)]
pub struct PixelRows<'a> {
    pub data: &'a [f32],
    pub offs: OffsetTable<'a>,
    /// Pixels.
    pub pixels: usize,
}

/// Whether this process runs the pixel-major tiles (AVX-512 enabled, see [`crate::isa::avx512`],
/// or AVX2+FMA dispatched).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::avx512() || crate::isa::current() == crate::isa::Isa::Avx2Fma
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the pixel tiles are the AVX-512 ones (8 pixels, one transpose per tile), not AVX2's.
pub fn wide_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::isa::avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C[j][i] = sum_p A(i, p) * W_T(p, j)` for the channels of panels `panels` and every pixel,
/// then `epi` (on C: rows are channels relative to the first panel's, columns pixels), on the
/// calling thread. `c` is C's block for those channels: `c.rows` channels from panel
/// `panels.start`, `c.cols == a.pixels`.
///
/// Panics unless [`supported`], or when the shapes disagree or a patch read leaves `a.data`.
///
/// # Safety
/// `c` is valid for reads and writes of its elements, and they are this call's alone.
pub unsafe fn gemm_pixel_major_raw(
    a: PixelRows,
    w: &PackedPanels,
    panels: std::ops::Range<usize>,
    c: MatPtr,
    epi: &Epilogue,
) {
    assert!(supported(), "gemm: no pixel-major tiles on this CPU");
    assert_eq!(a.offs.len(), w.k, "gemm: inner dimensions differ");
    assert!(panels.end <= w.panels(), "gemm: panel range out of bounds");
    let chans = (panels.end * PANEL).min(w.n) - (panels.start * PANEL).min(w.n);
    assert!(
        c.rows == chans && c.cols == a.pixels,
        "gemm: output block {}x{} for {chans} channels x {} pixels",
        c.rows,
        c.cols,
        a.pixels
    );
    super::check_out(c.rows, c.cols, c.rows, c.cols, c.row_stride, epi);
    assert!(
        a.offs.fits(a.pixels, a.data.len()),
        "gemm: pixel-major patch read out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if a.pixels == 0 || chans == 0 {
            return;
        }
        let tiles = tile_family();
        for (q, jp) in panels.enumerate() {
            let bp = w.panel(jp).as_ptr();
            let row0 = q * PANEL;
            let rows = PANEL.min(chans - row0);
            for (i0, r) in even_tiles(a.pixels, tiles.len()) {
                let epi = TileEpi {
                    ops: epi,
                    row0,
                    col0: i0,
                };
                // The AVX2 tiles store 8 pixels per channel row where the block has them (the
                // next tile overwrites what lies past this one's `r`).
                let room = i0 + 8 <= c.cols;
                // SAFETY: the tile reads data[offs[p] + i0 + i] for i < r <= pixels - i0, inside
                // `data` (checked above), and its panel's k x 16 floats; it writes rows row0..row0
                // + rows (< c.rows) at columns i0..i0 + r (< c.cols) of C, or i0..i0 + 8 when
                // `room` says those lie inside C's columns too; the caller hands C to this call
                // alone and later tiles of this loop rewrite the columns past r; `supported`
                // holds (asserted), and `tile_family` picked tiles this CPU runs.
                unsafe {
                    tiles[r - 1](
                        w.k,
                        a.data.as_ptr().add(i0),
                        a.offs.as_slice().as_ptr(),
                        bp,
                        c.ptr.add(row0 * c.row_stride + i0),
                        c.row_stride,
                        rows,
                        room,
                        epi,
                    )
                }
            }
        }
    }
}

/// `pixels` split into runs of at most `width` as even as possible (`(start, len)`): 7 pixels in
/// tiles of 6 as 4 + 3, where 6 + 1 spent a whole tile's loop on one pixel.
pub(crate) fn even_tiles(pixels: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = pixels.div_ceil(width);
    let (base, extra) = (pixels / n.max(1), pixels % n.max(1));
    (0..n).map(move |t| (t * base + t.min(extra), base + usize::from(t < extra)))
}

#[cfg(target_arch = "x86_64")]
type Tile =
    unsafe fn(usize, *const f32, *const u32, *const f32, *mut f32, usize, usize, bool, TileEpi);

/// The tiles of this process's family, `[r - 1]` for `r` pixels (their count the widest tile).
#[cfg(target_arch = "x86_64")]
fn tile_family() -> &'static [Tile] {
    if crate::isa::avx512() {
        &AVX512_TILES
    } else {
        &AVX2_TILES
    }
}

#[cfg(target_arch = "x86_64")]
static AVX512_TILES: [Tile; 8] = [
    avx512::tile::<1>,
    avx512::tile::<2>,
    avx512::tile::<3>,
    avx512::tile::<4>,
    avx512::tile::<5>,
    avx512::tile::<6>,
    avx512::tile::<7>,
    avx512::tile::<8>,
];

#[cfg(target_arch = "x86_64")]
static AVX2_TILES: [Tile; 6] = [
    avx2::tile::<1>,
    avx2::tile::<2>,
    avx2::tile::<3>,
    avx2::tile::<4>,
    avx2::tile::<5>,
    avx2::tile::<6>,
];

/// Whether a tile applies `op` in registers (the conv steps: per-channel bias, a dense residual,
/// the clamping activations); tiles with any other op store first and run the scalar epilogue.
#[cfg(target_arch = "x86_64")]
fn in_registers(op: &super::EpilogueOp) -> bool {
    use crate::activation::Activation as A;
    match op {
        super::EpilogueOp::BiasPerRow(_) => true,
        super::EpilogueOp::Add(r) => r.col_stride == 1,
        super::EpilogueOp::Act(a) => {
            matches!(a, A::Identity | A::Relu | A::Relu6 | A::Clamp { .. })
        }
        super::EpilogueOp::BiasPerCol(_) => false,
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{in_registers, TileEpi, PANEL};
    use core::arch::x86_64::*;

    /// `R` pixels (tile rows) by one 16-channel panel over depth `k`: pixel `i`'s patch element
    /// `p` at `a + offs[p] + i`, panel row `p` at `b + 16 p` (64-byte aligned); the result, with
    /// `epi`, stored transposed: channel `j < rows` to `c + j * ldc .. + R`.
    ///
    /// # Safety
    /// AVX-512F/VL present; those reads are in bounds, those writes valid and the caller's alone,
    /// and `epi`'s operands cover channels `row0 .. + rows` and pixels `col0 .. + R`.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        offs: *const u32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        _room: bool,
        epi: TileEpi,
    ) {
        // SAFETY (whole body): the function's contract bounds every pointer used.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 8];
            for p in 0..k {
                let bv = _mm512_load_ps(b.add(p * PANEL));
                let ap = a.add(*offs.add(p) as usize);
                for (i, x) in acc.iter_mut().enumerate().take(R) {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i)), bv, *x);
                }
            }
            let chans = transpose(acc);
            let mask: __mmask8 = ((1u16 << R) - 1) as u8;
            let simple = epi.ops.iter().all(in_registers);
            for (j, v) in chans.iter().enumerate().take(rows) {
                let cp = c.add(j * ldc);
                let mut v = *v;
                if simple {
                    // The masked lanes read the residual row at the tile's pixels, which the
                    // operand covers (contract); the others are not read.
                    let residual = |r: &[f32]| _mm256_maskz_loadu_ps(mask, r.as_ptr());
                    v = super::avx2::epilogue(epi, j, v, residual);
                }
                _mm256_mask_storeu_ps(cp, mask, v);
            }
            if !simple {
                // The tile's channel rows of R pixels are ours and the operands cover them.
                super::super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, rows, epi.col0, R);
            }
        }
    }

    /// Rows `r[i]` (pixel i, lane j = channel j) as 16 vectors: `out[j]` lane i = `r[i][j]`.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn transpose(r: [__m512; 8]) -> [__m256; 16] {
        // Per 128-bit block q: pairs of pixels interleaved, then quads of one channel.
        let t0 = _mm512_unpacklo_ps(r[0], r[1]);
        let t1 = _mm512_unpackhi_ps(r[0], r[1]);
        let t2 = _mm512_unpacklo_ps(r[2], r[3]);
        let t3 = _mm512_unpackhi_ps(r[2], r[3]);
        let t4 = _mm512_unpacklo_ps(r[4], r[5]);
        let t5 = _mm512_unpackhi_ps(r[4], r[5]);
        let t6 = _mm512_unpacklo_ps(r[6], r[7]);
        let t7 = _mm512_unpackhi_ps(r[6], r[7]);
        // u[m] block q: channel 4q + m, pixels 0-3; u[m + 4]: the same channel, pixels 4-7.
        let u = [
            _mm512_shuffle_ps::<0x44>(t0, t2),
            _mm512_shuffle_ps::<0xEE>(t0, t2),
            _mm512_shuffle_ps::<0x44>(t1, t3),
            _mm512_shuffle_ps::<0xEE>(t1, t3),
            _mm512_shuffle_ps::<0x44>(t4, t6),
            _mm512_shuffle_ps::<0xEE>(t4, t6),
            _mm512_shuffle_ps::<0x44>(t5, t7),
            _mm512_shuffle_ps::<0xEE>(t5, t7),
        ];
        // Blocks q of u[m] and u[m + 4] side by side: channels m and m + 4, then m + 8, m + 12.
        let lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        let mut out = [_mm256_setzero_ps(); 16];
        for m in 0..4 {
            let a = _mm512_permutex2var_ps(u[m], lo, u[m + 4]);
            let b = _mm512_permutex2var_ps(u[m], hi, u[m + 4]);
            out[m] = _mm512_castps512_ps256(a);
            out[m + 4] = upper(a);
            out[m + 8] = _mm512_castps512_ps256(b);
            out[m + 12] = upper(b);
        }
        out
    }

    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    unsafe fn upper(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::EpilogueOp;
    use super::{in_registers, TileEpi, PANEL};
    use crate::activation::Activation;
    use core::arch::x86_64::*;

    /// `R <= 6` pixels (tile rows) by one 16-channel panel (two registers) over depth `k`, as the
    /// AVX-512 tile: pixel `i`'s patch element `p` at `a + offs[p] + i`, panel row `p` at
    /// `b + 16 p` (32-byte aligned); the result, with `epi`, stored transposed: channel `j < rows`
    /// to `c + j * ldc .. + R`, or `.. + 8` when `room` (lanes past `R` then hold junk that the
    /// caller's next tile overwrites).
    ///
    /// # Safety
    /// AVX2 and FMA present; those reads are in bounds, those writes valid and the caller's
    /// alone, and `epi`'s operands cover channels `row0 .. + rows` and pixels `col0 .. + R` (`..
    /// + 8` when `room`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        offs: *const u32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        room: bool,
        epi: TileEpi,
    ) {
        // SAFETY (whole body): the function's contract bounds every pointer used.
        unsafe {
            let mut lo = [_mm256_setzero_ps(); 6];
            let mut hi = [_mm256_setzero_ps(); 6];
            for p in 0..k {
                let b0 = _mm256_load_ps(b.add(p * PANEL));
                let b1 = _mm256_load_ps(b.add(p * PANEL + 8));
                let ap = a.add(*offs.add(p) as usize);
                for i in 0..R {
                    let x = _mm256_broadcast_ss(&*ap.add(i));
                    lo[i] = _mm256_fmadd_ps(x, b0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(x, b1, hi[i]);
                }
            }
            let chans = [transpose(lo), transpose(hi)];
            let simple = epi.ops.iter().all(in_registers);
            let wide = room && simple;
            for (j, v) in chans.iter().flatten().enumerate().take(rows) {
                let cp = c.add(j * ldc);
                let mut v = *v;
                if simple {
                    let n = if wide { 8 } else { R };
                    v = epilogue(epi, j, v, |r: &[f32]| load_first(r, n));
                }
                if wide {
                    _mm256_storeu_ps(cp, v);
                } else {
                    let mut t = [0f32; 8];
                    _mm256_storeu_ps(t.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(t.as_ptr(), cp, R);
                }
            }
            if !simple {
                // The tile's channel rows of R pixels are ours and the operands cover them.
                super::super::epilogue::apply_tile(epi.ops, c, ldc, epi.row0, rows, epi.col0, R);
            }
        }
    }

    /// Pixel rows `r[i]` (lane j = channel j; rows past 6 zero) as 8 vectors: `out[j]` lane `i` =
    /// `r[i][j]`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn transpose(r: [__m256; 6]) -> [__m256; 8] {
        let z = _mm256_setzero_ps();
        transpose8([r[0], r[1], r[2], r[3], r[4], r[5], z, z])
    }

    /// An 8x8 block in registers transposed: `out[j]` lane `i` = `r[i]` lane `j`. Also the
    /// channels-last layout moves' block ([`crate::conv::channels_last::layout`]).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved per 128-bit half, then quads of one column per half.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        // u[m] half h: column 4h + m, rows 0-3; u[m + 4]: the same column, rows 4-7.
        let u = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xEE>(t4, t6),
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xEE>(t5, t7),
        ];
        let mut out = [_mm256_setzero_ps(); 8];
        for m in 0..4 {
            out[m] = _mm256_permute2f128_ps::<0x20>(u[m], u[m + 4]);
            out[m + 4] = _mm256_permute2f128_ps::<0x31>(u[m], u[m + 4]);
        }
        out
    }

    /// `epi` on channel `j` of a tile (lanes = pixels; every op passes [`in_registers`]), in the
    /// order and with the operand order of the scalar epilogue (so NaN propagates alike);
    /// `residual` loads the tile's pixels from the residual row starting at its argument. The
    /// AVX-512 tile shares it (its masked residual load is the only difference).
    ///
    /// # Safety
    /// AVX2 present; the residual covers channel `row0 + j` at the pixels `residual` reads.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn epilogue(
        epi: TileEpi,
        j: usize,
        mut v: __m256,
        residual: impl Fn(&[f32]) -> __m256,
    ) -> __m256 {
        use Activation as A;
        let clamp = |v: __m256, lo: f32, hi: Option<f32>| {
            let v = _mm256_max_ps(_mm256_set1_ps(lo), v);
            match hi {
                Some(hi) => _mm256_min_ps(_mm256_set1_ps(hi), v),
                None => v,
            }
        };
        let row = epi.row0 + j;
        for op in epi.ops {
            match *op {
                EpilogueOp::BiasPerRow(b) => v = _mm256_add_ps(v, _mm256_set1_ps(b[row])),
                EpilogueOp::Add(m) => {
                    v = _mm256_add_ps(v, residual(&m.data[row * m.row_stride + epi.col0..]))
                }
                EpilogueOp::Act(A::Relu) => v = clamp(v, 0.0, None),
                EpilogueOp::Act(A::Relu6) => v = clamp(v, 0.0, Some(6.0)),
                EpilogueOp::Act(A::Clamp { lo, hi }) => v = clamp(v, lo, Some(hi)),
                _ => {}
            }
        }
        v
    }

    /// The first `n <= 8` floats of `r` as a vector, the rest zero.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_first(r: &[f32], n: usize) -> __m256 {
        if n == 8 {
            // SAFETY: the slice holds 8 floats (indexed first).
            unsafe { _mm256_loadu_ps(r[..8].as_ptr()) }
        } else {
            let mut t = [0f32; 8];
            t[..n].copy_from_slice(&r[..n]);
            // SAFETY: `t` holds 8 floats.
            unsafe { _mm256_loadu_ps(t.as_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::even_tiles;

    #[test]
    fn even_tiles_cover_the_pixels_in_near_equal_runs() {
        for width in [6, 8] {
            for pixels in 1..100 {
                let tiles: Vec<_> = even_tiles(pixels, width).collect();
                assert_eq!(tiles.len(), pixels.div_ceil(width));
                let mut next = 0;
                for &(start, len) in &tiles {
                    assert_eq!(start, next, "{pixels} px in {width}: contiguous");
                    assert!(len >= 1 && len <= width);
                    next += len;
                }
                assert_eq!(next, pixels);
                let (lo, hi) = tiles
                    .iter()
                    .fold((usize::MAX, 0), |(lo, hi), t| (lo.min(t.1), hi.max(t.1)));
                assert!(hi - lo <= 1, "{pixels} px in {width}: {tiles:?}");
            }
        }
        assert_eq!(even_tiles(7, 6).collect::<Vec<_>>(), [(0, 4), (4, 3)]);
    }
}
