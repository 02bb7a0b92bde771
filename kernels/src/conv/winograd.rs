//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(m x m, 3x3), m = 2 or 4: each
//! m x m block of output pixels ("tile") comes from an a x a block of input (a = m + 2) through
//! a² products instead of 9 m².
//!
//! With `d` a tile's input, `g` a 3x3 kernel and the fixed matrices `B` (a x a), `G` (a x 3) and
//! `A` (a x m), the tile's output is `A^T [(G g G^T) ⊙ (B^T d B)] A`. Summed over input channels,
//! the elementwise product becomes, for each of the a² positions of the transform domain, one
//! GEMM: `M_pos [Cout x tiles] = U_pos [Cout x Cin] * V_pos [Cin x tiles]`. So a call
//! 1. transforms the input tiles (`V = B^T d B`, vectorised across a row of tiles),
//! 2. runs the a² GEMMs on the channel-major tiles, `U` packed once by [`pack`] (`G g G^T`),
//! 3. transforms the products back (`Y = A^T m A`), clips the ragged last row and column of tiles
//!    and applies the conv epilogue on each finished output row.
//!
//! F(2x2, 3x3) needs 16/36 of the direct convolution's multiply-adds, F(4x4, 3x3) 36/144 (a
//! little more when the tiles overhang the output: the overhang is computed and dropped). The
//! price is precision: F(2, 3)'s coefficients are 0, ±1 and ±1/2, F(4, 3)'s reach 8 and 1/24.
//! Against the direct convolution, the largest difference over the output's largest magnitude
//! measured 1-2e-6 for F2 and 0.4-1.4e-5 for F4 (growing with the input channels); the tests
//! bound every case by 1e-4, and whole networks' logits stay within ~1e-6 of ONNX Runtime's
//! (`benches/peers/latency_vs_ort.py`).
//!
//! Work is cut into blocks of whole tile rows (at least one per thread, unless the transformed
//! weights far outweigh the tiles) and, for deep layers with few tiles, into blocks of output
//! channels: a task transforms its tile rows, runs the GEMMs for its channels and writes their
//! outputs.

use super::{check_epilogue, epilogue_row, Conv2dShape, ConvEpilogueOp};
use crate::gemm::{gemm_prepacked_serial_raw, MatMut, MatPtr, MatRef, PackedRows};
use crate::isa::Isa;
use crate::parallel::{self, CONV_PAR_MIN_MACS};
use crate::scratch::with_scratch;
use crate::simd::{self, Simd, SimdFn};
use std::marker::PhantomData;

/// Widest SIMD vector any instance uses (f32 lanes): the scratch rows' slack.
const MAX_LANES: usize = 16;

/// Output pixels per tile side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileSize {
    /// F(2x2, 3x3): 4x4 input tiles, 16 GEMMs.
    F2,
    /// F(4x4, 3x3): 6x6 input tiles, 36 GEMMs.
    F4,
}

impl TileSize {
    /// Output pixels per tile side (m).
    pub fn m(self) -> usize {
        match self {
            TileSize::F2 => 2,
            TileSize::F4 => 4,
        }
    }

    /// Input pixels per tile side (a = m + 2).
    fn alpha(self) -> usize {
        self.m() + 2
    }

    /// Positions of the transform domain (a²): GEMMs per block.
    fn positions(self) -> usize {
        self.alpha() * self.alpha()
    }
}

/// Whether [`forward`] runs `s`: one group, a 3x3 kernel, stride 1, no dilation.
pub fn supports(s: &Conv2dShape) -> bool {
    let p = &s.params;
    p.groups == 1
        && (s.kernel_h, s.kernel_w) == (3, 3)
        && p.stride == (1, 1)
        && p.dilation == (1, 1)
}

/// The tile size the plan should pack `s` for, or `None` where the direct paths are faster:
/// [`supports`], at least 32 input and output channels, and
/// - F4 where the output has at least 32 tiles of 4x4 and the conv at least 4 M multiply-adds,
/// - else F2 where it has at least 16 tiles of 2x2 and at least 16 M multiply-adds.
///
/// Measured on the Zen 3, 2 threads, against the direct paths: F4 ran 1.2-1.9x faster from 32
/// channels at 28x28 up (64 at 56x56, 128 at 28x28: 1.5-1.9x); F2 1.2-1.7x on ResNet-18's 128
/// at 16x16, 256 at 8x8 and 14x14, and 1.1-1.3x on 512 at 7x7 (its transformed weights, 16/9
/// the kernel's bytes, are streamed once per call). They lost where the GEMMs are thin or the
/// transforms a large share: 16 channels at 28x28 and 56x56 (0.55-1.0x), 7 M-MAC layers at 14x14
/// and 7x7 (0.9-1.0x), 1.8 M-MAC ones (0.6-1.0x), F4 on 7x7 outputs (4 tiles, 0.6-0.7x) and both
/// on 4x4 outputs (0.3-0.6x).
pub fn preferred(s: &Conv2dShape) -> Option<TileSize> {
    if !supports(s) || s.in_channels < 32 || s.out_channels < 32 {
        return None;
    }
    let (oh, ow) = s.out_hw();
    let tiles = |m: usize| oh.div_ceil(m) * ow.div_ceil(m);
    let macs = s.macs();
    if tiles(4) >= 32 && macs >= 1 << 22 {
        Some(TileSize::F4)
    } else if tiles(2) >= 16 && macs >= 1 << 24 {
        Some(TileSize::F2)
    } else {
        None
    }
}

/// The weights transformed (`G g G^T` per output and input channel) and packed as the
/// channel-major tiles' A panels, one `[Cout x Cin]` matrix per transform position.
pub struct WinogradWeights {
    tile: TileSize,
    u: Vec<PackedRows>,
    cin: usize,
    cout: usize,
}

impl WinogradWeights {
    /// Bytes held (a²/9 of the kernel's f32 weights).
    pub fn bytes(&self) -> usize {
        self.u.iter().map(|u| 4 * u.rows() * u.depth()).sum()
    }
}

impl std::fmt::Debug for WinogradWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WinogradWeights({:?}, {} -> {})",
            self.tile, self.cin, self.cout
        )
    }
}

/// `G` of F(2x2, 3x3) (4x3).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `G` of F(4x4, 3x3) (6x3), interpolation points 0, ±1, ±2.
const G4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G g G^T` for one 3x3 kernel `g` (row-major), computed in f64 and rounded once; row-major
/// a x a.
fn transform_kernel(tile: TileSize, g: &[f32]) -> Vec<f32> {
    let gm: &[[f64; 3]] = match tile {
        TileSize::F2 => &G2,
        TileSize::F4 => &G4,
    };
    let a = gm.len();
    let mut u = Vec::with_capacity(a * a);
    for gi in gm {
        for gj in gm {
            let mut acc = 0.0;
            for (r, &gir) in gi.iter().enumerate() {
                for (c, &gjc) in gj.iter().enumerate() {
                    acc += gir * f64::from(g[3 * r + c]) * gjc;
                }
            }
            u.push(acc as f32);
        }
    }
    u
}

/// The weights (`[Cout x Cin x 3 x 3]`, row-major) transformed and packed for [`forward`] with
/// `tile`.
pub fn pack(s: &Conv2dShape, w: &[f32], tile: TileSize) -> WinogradWeights {
    assert!(supports(s), "conv2d: no Winograd path for this shape");
    assert_eq!(w.len(), s.weight_len(), "conv2d: weight length");
    let (cin, cout) = (s.in_channels, s.out_channels);
    let mut planes = vec![vec![0.0f32; cout * cin]; tile.positions()];
    for (k, g) in w.chunks_exact(9).enumerate() {
        for (pos, v) in transform_kernel(tile, g).into_iter().enumerate() {
            planes[pos][k] = v;
        }
    }
    let u = planes
        .iter()
        .map(|p| PackedRows::new(MatRef::row_major(p, cout, cin)))
        .collect();
    WinogradWeights { tile, u, cin, cout }
}

/// Floats of the transformed input a block aims at (768 KB: with its products past L2, in L3).
/// Fewer, larger blocks stream the transformed weights fewer times and balance better: on
/// ResNet-18 224 (interleaved `tlc bench`, against the unchanged steps) its F4 layers ran
/// 6-15 % and its 14x14 F2 layers ~5 % faster than with 48 K floats (7 blocks of 2 tile rows on
/// 2 threads became 2 of 7); the CIFAR form's Winograd layers 4-10 %.
const BLOCK_FLOATS: usize = 192 * 1024;

/// How the work is cut: tile rows per block, blocks per image, output channels per task.
#[derive(Clone, Copy, Debug)]
struct Split {
    rows_per_block: usize,
    blocks: usize,
    channels: usize,
    channel_blocks: usize,
}

fn split(s: &Conv2dShape, tile: TileSize, row_quantum: usize, par: bool) -> Split {
    let (oh, ow) = s.out_hw();
    let (ty, tx) = (oh.div_ceil(tile.m()), ow.div_ceil(tile.m()));
    // At least 16 tiles (one row of the GEMM's widest tiles) and about BLOCK_FLOATS.
    let want = (BLOCK_FLOATS / (tile.positions() * s.in_channels)).max(16);
    let mut rows_per_block = want.div_ceil(tx).clamp(1, ty);
    let threads = parallel::num_threads();
    if par && s.batch < threads && s.out_channels <= 8 * ty * tx {
        // Unless the transformed weights far outweigh the image's tiles (then output channel
        // blocks share them out, each task repeating the input transform), a block per thread
        // at least.
        rows_per_block = rows_per_block.min(ty.div_ceil(threads));
    }
    let mut blocks = ty.div_ceil(rows_per_block);
    if par && blocks > 1 && blocks * s.batch < 4 * threads {
        // Whole rounds of blocks for the pool (3 blocks on 2 threads take as long as 4).
        blocks = blocks.next_multiple_of(threads);
        rows_per_block = ty.div_ceil(blocks);
        blocks = ty.div_ceil(rows_per_block);
    }
    let units = blocks * s.batch;
    let channel_blocks = if par && units < threads {
        threads.div_ceil(units)
    } else {
        1
    };
    let channels = s
        .out_channels
        .div_ceil(channel_blocks)
        .next_multiple_of(row_quantum)
        .min(s.out_channels);
    Split {
        rows_per_block,
        blocks,
        channels,
        channel_blocks: s.out_channels.div_ceil(channels),
    }
}

/// `out = conv2d(x, w)` then `epi`, with weights from [`pack`]; [`supports`] must hold.
pub fn forward(
    s: &Conv2dShape,
    x: &[f32],
    w: &WinogradWeights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    forward_on(crate::isa::current(), s, x, w, out, epi)
}

/// Lengths of the scratch rows of one block.
#[derive(Clone, Copy)]
struct RowLens {
    /// A padded input row (columns `-pw..`), with slack for whole vectors past the last tile.
    padded: usize,
    /// One column phase of a padded row: elements `M k + q` for phase `q`, with slack.
    phase: usize,
    /// The last, ragged vector of tiles of an output row.
    out: usize,
    /// Input rows the block reads (`M rows + 2`).
    in_rows: usize,
}

impl RowLens {
    fn new(tile: TileSize, tx: usize, rows: usize) -> RowLens {
        // Tiles t0..t0 + LANES read up to element t0 + 1 + LANES of a phase (F4's column 5).
        let phase = tx + MAX_LANES + 2;
        RowLens {
            padded: tile.m() * phase + 2,
            phase,
            out: 4 * MAX_LANES,
            in_rows: tile.m() * rows + 2,
        }
    }

    /// One padded row and two more for splitting it (F4), the block's rows split into phases,
    /// and the output's ragged tail.
    fn total(&self, tile: TileSize) -> usize {
        3 * self.padded + self.in_rows * tile.m() * self.phase + self.out
    }
}

/// [`forward`] with the transforms on `isa` (tests run the scalar reference too).
pub(crate) fn forward_on(
    isa: Isa,
    s: &Conv2dShape,
    x: &[f32],
    w: &WinogradWeights,
    out: &mut [f32],
    epi: &[ConvEpilogueOp],
) {
    assert!(supports(s), "conv2d: no Winograd path for this shape");
    assert!(
        w.cin == s.in_channels && w.cout == s.out_channels,
        "conv2d: Winograd weights of another shape"
    );
    assert_eq!(x.len(), s.input_len(), "conv2d: input length");
    assert_eq!(out.len(), s.output_len(), "conv2d: output length");
    check_epilogue(s, epi);
    if out.is_empty() {
        return;
    }
    let tile = w.tile;
    let (mt, positions) = (tile.m(), tile.positions());
    let (cin, cout) = (s.in_channels, s.out_channels);
    let (oh, ow) = s.out_hw();
    let (ty, tx) = (oh.div_ceil(mt), ow.div_ceil(mt));
    // A third of the direct multiply-adds: F2 does 4/9 of them, F4 1/4.
    let par = parallel::worth_splitting(s.macs() / 3, CONV_PAR_MIN_MACS);
    let sp = split(s, tile, w.u[0].row_quantum(), par);
    let in_plane = s.in_h * s.in_w;
    // The output as rows of `ow` pixels; tasks write disjoint rows (images, tile rows, channels).
    let out_view = MatPtr::from(MatMut::row_major(out, s.batch * cout * oh, ow));
    let block_tiles = sp.rows_per_block * tx;
    let lens = RowLens::new(tile, tx, sp.rows_per_block);
    // Each position's part of V has room past its last row for a whole vector, so the
    // transform stores whole vectors whatever the tile count.
    let v_len = positions * (cin * block_tiles + MAX_LANES);
    let m_len = positions * sp.channels * block_tiles + MAX_LANES;
    let tasks = s.batch * sp.blocks * sp.channel_blocks;
    parallel::for_each_index(tasks, par && tasks > 1, |t| {
        let per_image = sp.blocks * sp.channel_blocks;
        let (n, b, cb) = (
            t / per_image,
            t % per_image / sp.channel_blocks,
            t % sp.channel_blocks,
        );
        let ty0 = b * sp.rows_per_block;
        let rows = sp.rows_per_block.min(ty - ty0);
        let c0 = cb * sp.channels;
        let channels = sp.channels.min(cout - c0);
        let cols = rows * tx;
        // Each position's [cin x cols] matrix is dense: its last row's stores may run past it.
        let pos_stride = cin * cols + MAX_LANES;
        with_scratch(v_len + m_len + lens.total(tile), |buf| {
            let (v, rest) = buf.split_at_mut(v_len);
            let (m, rows_buf) = rest.split_at_mut(m_len);
            let v = &mut v[..positions * pos_stride];
            let input = InputTransform {
                s,
                x: &x[n * cin * in_plane..(n + 1) * cin * in_plane],
                ty0,
                rows,
                tx,
                lens,
                v,
                pos_stride,
                rows_buf: &mut *rows_buf,
            };
            match tile {
                TileSize::F2 => simd::dispatch_on(isa, (input, PhantomData::<F2>)),
                TileSize::F4 => simd::dispatch_on(isa, (input, PhantomData::<F4>)),
            }
            for (pos, u) in w.u.iter().enumerate() {
                let vp = MatRef {
                    data: &v[pos * pos_stride..],
                    rows: cin,
                    cols,
                    row_stride: cols,
                    col_stride: 1,
                };
                let dst = MatPtr {
                    ptr: m[pos * cols..].as_mut_ptr(),
                    rows: channels,
                    cols,
                    row_stride: positions * cols,
                };
                // SAFETY: `dst` lies in this task's `m` (channels rows of `positions * cols`),
                // borrowed mutably for the loop.
                unsafe { gemm_prepacked_serial_raw(u, c0, channels, vp, 0.0, dst, &[]) };
            }
            let output = OutputTransform {
                m: &m[..positions * channels * cols + MAX_LANES],
                channels,
                cols,
                rows,
                tx,
                tail: &mut rows_buf[..lens.out],
                out: out_view,
                s,
                n,
                c0,
                ty0,
                epi,
            };
            match tile {
                TileSize::F2 => simd::dispatch_on(isa, (output, PhantomData::<F2>)),
                TileSize::F4 => simd::dispatch_on(isa, (output, PhantomData::<F4>)),
            }
        });
    });
}

/// One tile size's transforms on vectors of tiles (lanes: consecutive tiles of a tile row).
/// Arrays are sized for the largest tile; F2 uses their first entries.
trait Transforms: Copy {
    const M: usize;
    const ALPHA: usize;
    /// `B^T d` for one column `d` of a (`d[..ALPHA]`).
    fn input<S: Simd>(s: S, d: &[S::V; 6]) -> [S::V; 6];
    /// `A^T m` for one column `m` of a (`m[..ALPHA]`), `M` outputs.
    fn output<S: Simd>(s: S, m: &[S::V; 6]) -> [S::V; 4];
    /// Split a padded row `p` into its `M` column phases (`phases[q * phase + k] = p[M k + q]`),
    /// `scratch` holding two more rows as long as `p`.
    fn split_phases<S: Simd>(s: S, p: &[f32], phases: &mut [f32], scratch: &mut [f32]);
    /// Store one output row of the tiles `t0..t0 + LANES`: `y[k]` at element `M t + k` of `row`.
    fn store<S: Simd>(s: S, row: &mut [f32], t0: usize, y: &[S::V; 4]);
}

/// `even[k] = src[2 k]`, `odd[k] = src[2 k + 1]` for `k < even.len()` (as long as `odd`; `src`
/// holds at least `2 even.len()` floats).
#[inline(always)]
fn deinterleave<S: Simd>(s: S, src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let (n, l) = (even.len(), S::LANES);
    let mut k = 0;
    while k + l <= n && 2 * (k + l) < src.len() {
        s.store(&mut even[k..], s.load_even(&src[2 * k..]));
        s.store(&mut odd[k..], s.load_even(&src[2 * k + 1..]));
        k += l;
    }
    for k in k..n {
        even[k] = src[2 * k];
        odd[k] = src[2 * k + 1];
    }
}

#[derive(Clone, Copy)]
struct F2;

impl Transforms for F2 {
    const M: usize = 2;
    const ALPHA: usize = 4;

    #[inline(always)]
    fn input<S: Simd>(s: S, d: &[S::V; 6]) -> [S::V; 6] {
        let z = s.zero();
        [
            s.sub(d[0], d[2]),
            s.add(d[1], d[2]),
            s.sub(d[2], d[1]),
            s.sub(d[1], d[3]),
            z,
            z,
        ]
    }

    #[inline(always)]
    fn output<S: Simd>(s: S, m: &[S::V; 6]) -> [S::V; 4] {
        let z = s.zero();
        [
            s.add(s.add(m[0], m[1]), m[2]),
            s.sub(s.sub(m[1], m[2]), m[3]),
            z,
            z,
        ]
    }

    #[inline(always)]
    fn split_phases<S: Simd>(s: S, p: &[f32], phases: &mut [f32], _: &mut [f32]) {
        let (even, odd) = phases.split_at_mut(phases.len() / 2);
        deinterleave(s, p, even, odd);
    }

    #[inline(always)]
    fn store<S: Simd>(s: S, row: &mut [f32], t0: usize, y: &[S::V; 4]) {
        s.store_interleaved(&mut row[2 * t0..], y[0], y[1]);
    }
}

#[derive(Clone, Copy)]
struct F4;

impl Transforms for F4 {
    const M: usize = 4;
    const ALPHA: usize = 6;

    #[inline(always)]
    fn input<S: Simd>(s: S, d: &[S::V; 6]) -> [S::V; 6] {
        // B^T rows: [4 0 -5 0 1 0], [0 -4 -4 1 1 0], [0 4 -4 -1 1 0], [0 -2 -1 2 1 0],
        // [0 2 -1 -2 1 0], [0 4 0 -5 0 1].
        let (two, four, five) = (s.splat(2.0), s.splat(4.0), s.splat(5.0));
        let a = s.neg_mul_add(four, d[2], d[4]);
        let b = s.neg_mul_add(four, d[1], d[3]);
        let c = s.sub(d[4], d[2]);
        let e = s.mul(two, s.sub(d[3], d[1]));
        [
            s.mul_add(four, d[0], s.neg_mul_add(five, d[2], d[4])),
            s.add(a, b),
            s.sub(a, b),
            s.add(c, e),
            s.sub(c, e),
            s.mul_add(four, d[1], s.neg_mul_add(five, d[3], d[5])),
        ]
    }

    #[inline(always)]
    fn output<S: Simd>(s: S, m: &[S::V; 6]) -> [S::V; 4] {
        // A^T rows: [1 1 1 1 1 0], [0 1 -1 2 -2 0], [0 1 1 4 4 0], [0 1 -1 8 -8 1].
        let (p, q) = (s.add(m[1], m[2]), s.sub(m[1], m[2]));
        let (r, t) = (s.add(m[3], m[4]), s.sub(m[3], m[4]));
        [
            s.add(s.add(m[0], p), r),
            s.mul_add(s.splat(2.0), t, q),
            s.mul_add(s.splat(4.0), r, p),
            s.add(s.mul_add(s.splat(8.0), t, q), m[5]),
        ]
    }

    #[inline(always)]
    fn split_phases<S: Simd>(s: S, p: &[f32], phases: &mut [f32], scratch: &mut [f32]) {
        // Even and odd halves, then each split again: p[4k] = even[2k], p[4k + 2] = even[2k + 1],
        // p[4k + 1] = odd[2k], p[4k + 3] = odd[2k + 1].
        let half = phases.len() / 2;
        let (even, odd) = scratch.split_at_mut(scratch.len() / 2);
        let (even, odd) = (&mut even[..half], &mut odd[..half]);
        deinterleave(s, p, even, odd);
        let (q01, q23) = phases.split_at_mut(half);
        let (q0, q1) = q01.split_at_mut(half / 2);
        let (q2, q3) = q23.split_at_mut(half / 2);
        deinterleave(s, even, q0, q2);
        deinterleave(s, odd, q1, q3);
    }

    #[inline(always)]
    fn store<S: Simd>(s: S, row: &mut [f32], t0: usize, y: &[S::V; 4]) {
        // Interleave (y0, y2) and (y1, y3), then the two results: y0 y1 y2 y3 per tile.
        let mut p = [0.0f32; 2 * MAX_LANES];
        let mut q = [0.0f32; 2 * MAX_LANES];
        s.store_interleaved(&mut p, y[0], y[2]);
        s.store_interleaved(&mut q, y[1], y[3]);
        let l = S::LANES;
        for h in 0..2 {
            let (a, b) = (s.load(&p[h * l..]), s.load(&q[h * l..]));
            s.store_interleaved(&mut row[4 * t0 + 2 * h * l..], a, b);
        }
    }
}

/// `V = B^T d B` for every input channel and tile of the tile rows `ty0..ty0 + rows` of one
/// image, into `v[pos][channel][tile]` (tile = local row * `tx` + column).
struct InputTransform<'a> {
    s: &'a Conv2dShape,
    /// One image.
    x: &'a [f32],
    ty0: usize,
    rows: usize,
    tx: usize,
    lens: RowLens,
    /// `v[pos * pos_stride + channel * cols + tile]` (`cols = rows * tx`): each GEMM reads one
    /// dense matrix. (Channel-major V, a channel's a² positions side by side, kept the
    /// transform's stores within a few KB but had the GEMMs read rows a² rows apart, a power-of-
    /// two multiple of 64 B for ResNet-18's layer4 (2 KB): a few cache sets held all of them, and
    /// the Winograd steps ran 5-12 % slower.)
    v: &'a mut [f32],
    pos_stride: usize,
    /// A padded row, two rows to split it, then the block's rows in phases.
    rows_buf: &'a mut [f32],
}

impl<T: Transforms> SimdFn for (InputTransform<'_>, PhantomData<T>) {
    type Output = ();

    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let InputTransform {
            s: shape,
            x,
            ty0,
            rows,
            tx,
            lens,
            v,
            pos_stride,
            rows_buf,
        } = self.0;
        let (h, w) = (shape.in_h, shape.in_w);
        let (ph, pw) = shape.params.padding;
        let cin = shape.in_channels;
        let (l, phase) = (S::LANES, lens.phase);
        let (padded, rest) = rows_buf.split_at_mut(lens.padded);
        let (split, phases) = rest.split_at_mut(2 * lens.padded);
        let in_rows = T::M * rows + 2;
        let row_phases = T::M * phase;
        // The padded row's borders stay zero: only the image's columns are copied in below.
        let (lo, hi) = (pw.min(padded.len()), (pw + w).min(padded.len()));
        padded[..lo].fill(0.0);
        padded[hi..].fill(0.0);
        // Kept across iterations: zeroing them in the loop cost a memset per vector of tiles.
        let mut t = [[s.zero(); 6]; 6];
        let mut d = [s.zero(); 6];
        for ci in 0..cin {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            // The block's input rows M ty0 - ph.., zero outside the image, each split into its
            // M column phases: column M t + c of a padded row (input column M t + c - pw) is
            // element t + c / M of phase c % M, so the tiles' columns are plain vector loads.
            for r in 0..in_rows {
                let dst = &mut phases[r * row_phases..(r + 1) * row_phases];
                let iy = (T::M * ty0 + r).wrapping_sub(ph);
                if iy >= h {
                    dst.fill(0.0);
                    continue;
                }
                padded[lo..hi].copy_from_slice(&plane[iy * w..iy * w + hi - lo]);
                T::split_phases(s, padded, dst, split);
            }
            for tr in 0..rows {
                let at = (ci * rows + tr) * tx;
                let mut t0 = 0;
                while t0 < tx {
                    // B^T down each column, kept; then B along each row. (No closures in here:
                    // they would compile without the ISA's features.)
                    for c in 0..T::ALPHA {
                        for (r, dr) in d.iter_mut().enumerate().take(T::ALPHA) {
                            let row = T::M * tr + r;
                            let o = row * row_phases + (c % T::M) * phase + t0 + c / T::M;
                            *dr = s.load(&phases[o..]);
                        }
                        let col = T::input(s, &d);
                        for (i, ti) in t.iter_mut().enumerate().take(T::ALPHA) {
                            ti[c] = col[i];
                        }
                    }
                    for (i, ti) in t.iter().enumerate().take(T::ALPHA) {
                        let vals = T::input(s, ti);
                        for (j, &val) in vals.iter().enumerate().take(T::ALPHA) {
                            // Past the last tile this lands in the next tile row or channel
                            // (both written after it) or the position's slack.
                            s.store(&mut v[(T::ALPHA * i + j) * pos_stride + at + t0..], val);
                        }
                    }
                    t0 += l;
                }
            }
        }
    }
}

/// `Y = A^T m A` for every channel and tile of a block, written into the output rows it covers,
/// then the conv epilogue on them.
struct OutputTransform<'a> {
    /// The GEMMs' products `m[(channel * ALPHA² + pos) * cols + tile]`, with `MAX_LANES` floats
    /// of slack.
    m: &'a [f32],
    channels: usize,
    cols: usize,
    rows: usize,
    tx: usize,
    /// Room for one vector of tiles' output row (a ragged last one is clipped from here).
    tail: &'a mut [f32],
    /// The whole output as rows of `ow` pixels.
    out: MatPtr,
    s: &'a Conv2dShape,
    n: usize,
    c0: usize,
    ty0: usize,
    epi: &'a [ConvEpilogueOp<'a>],
}

impl<T: Transforms> SimdFn for (OutputTransform<'_>, PhantomData<T>) {
    type Output = ();

    #[inline(always)]
    fn call<S: Simd>(self, s: S) {
        let OutputTransform {
            m,
            channels,
            cols,
            rows,
            tx,
            tail,
            out,
            s: shape,
            n,
            c0,
            ty0,
            epi,
        } = self.0;
        let (oh, ow) = shape.out_hw();
        let cout = shape.out_channels;
        let l = S::LANES;
        let positions = T::ALPHA * T::ALPHA;
        // Kept across iterations (zeroing them in the loop cost a memset per vector of tiles).
        let mut sm = [[s.zero(); 6]; 4];
        let mut col = [s.zero(); 6];
        for c in 0..channels {
            let co = c0 + c;
            for tr in 0..rows {
                let oy0 = T::M * (ty0 + tr);
                let out_rows = T::M.min(oh - oy0);
                let row0 = (n * cout + co) * oh + oy0;
                let span = out.block(row0, 0, out_rows, ow);
                // SAFETY: `block` checked the rows lie in the output, which holds them
                // contiguously (row stride `ow`), and only this task writes them: tasks split
                // images, tile rows and channels.
                let span = unsafe { std::slice::from_raw_parts_mut(span.get(), out_rows * ow) };
                let at = row0 * ow;
                let at_m = c * positions * cols + tr * tx;
                let mut t0 = 0;
                while t0 < tx {
                    // A^T down each column, then A along each of the M rows.
                    for j in 0..T::ALPHA {
                        for (r, cr) in col.iter_mut().enumerate().take(T::ALPHA) {
                            *cr = s.load(&m[(T::ALPHA * r + j) * cols + at_m + t0..]);
                        }
                        let y = T::output(s, &col);
                        for (i, si) in sm.iter_mut().enumerate().take(T::M) {
                            si[j] = y[i];
                        }
                    }
                    let x0 = T::M * t0;
                    for (i, si) in sm.iter().enumerate().take(out_rows) {
                        let y = T::output(s, si);
                        let row = &mut span[i * ow..(i + 1) * ow];
                        if x0 + T::M * l <= ow {
                            T::store(s, row, t0, &y);
                        } else {
                            T::store(s, tail, 0, &y);
                            // Element by element: a memcpy call per row cost more than this.
                            for (o, &v) in row[x0..].iter_mut().zip(tail.iter()) {
                                *o = v;
                            }
                        }
                    }
                    t0 += l;
                }
                epilogue_row(epi, span, co, at);
            }
        }
    }
}
