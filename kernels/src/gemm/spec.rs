//! Which micro-kernel and which cache blocking a GEMM runs with, per ISA.
//!
//! A micro-kernel computes an `r x NR` tile of C (`r <= MR`) from a packed A micro-panel (`MR`
//! floats per k step) and `k` rows of B (`NR` floats each, `ldb` apart: a packed panel has
//! `ldb == NR`, the direct small-m path points into B itself). The blocking follows BLIS: a
//! `KC x NR` B micro-panel stays in L1, an `MC x KC` A block in L2, a `KC x NC` B block in L3.

use super::EpilogueOp;
use crate::isa::Isa;

/// `tile(k, a, rsa, csa, b, ldb, c, ldc, cols, beta, epi)`: C[0..r, 0..cols] = beta * C +
/// A * B_rows, then `epi`'s steps, with A(i, p) at `a + i * rsa + p * csa`, where `r` is fixed by
/// the kernel's position in its table. `beta == 0` never reads C.
///
/// Contract: A(i, p) is readable for `i < r`, `p < k` (a kernel from [`Spec::rows`] assumes
/// `csa == 1`, one from [`Spec::cols`] assumes `rsa == 1`); `b + p * ldb` holds `NR` readable
/// floats for every `p < k`; the `r` rows of `cols <= NR` floats at `c + i * ldc` are writable
/// and owned by the caller; `epi`'s operands cover the tile's global rows and columns.
pub(crate) type TileKernel = unsafe fn(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
);

/// `tile(k, a, rsa, b, offs, c, ldc, cols, beta, epi)`: a [`TileKernel`] whose A has unit
/// column stride and whose B row `p` starts at `b + offs[p]` (`offs` holds `k` offsets, each with
/// `NR` readable floats behind it): the implicit-GEMM convolution's tile.
pub(crate) type IndirectKernel = unsafe fn(
    k: usize,
    a: *const f32,
    rsa: usize,
    b: *const f32,
    offs: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    beta: f32,
    epi: TileEpi,
);

/// `pair(k, a, rsa, csa, b, ldb, second, c, ldc, beta, epi)`: a [`TileKernel`] over two B panels
/// side by side, `r x 2 NR` with every column stored: the first panel's row `p` at `b + p * ldb`,
/// the second's `second` floats further (the next packed panel, or the next `NR` columns of B
/// read in place), `NR` readable floats at each. A has unit row stride (packed panels, `csa`
/// floats a step). Each A value broadcast then feeds two multiply-adds.
pub(crate) type PairKernel = unsafe fn(
    k: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    ldb: usize,
    second: usize,
    c: *mut f32,
    ldc: usize,
    beta: f32,
    epi: TileEpi,
);

/// The store epilogue a tile applies once its last K block is in: `ops` (none when empty) on the
/// tile whose top-left element is output element (`row0`, `col0`). Kernels apply the cheap steps
/// in registers before the one store where they can (a separate pass re-reads a tile whose store
/// has just missed the cache: half the time of a short-K conv).
#[derive(Clone, Copy)]
pub(crate) struct TileEpi<'a> {
    pub ops: &'a [EpilogueOp<'a>],
    pub row0: usize,
    pub col0: usize,
}

/// A micro-kernel family with its register tile and cache blocking.
pub(crate) struct Spec {
    /// The family's name in reports ("avx512" beside the AVX2 element-wise kernels).
    pub name: &'static str,
    /// Rows of the register tile (A micro-panel height).
    pub mr: usize,
    /// Columns of the register tile (B micro-panel width).
    pub nr: usize,
    /// Largest K block (depth of the packed panels).
    pub kc: usize,
    /// Largest M block (rows of A packed at once, kept in L2).
    pub mc: usize,
    /// Largest N block (columns of B packed at once, kept in L3); a multiple of `nr`.
    pub nc: usize,
    /// `rows[r - 1]` computes an `r x nr` tile from A with unit column stride (row-major A).
    pub rows: &'static [TileKernel],
    /// `cols[r - 1]` computes an `r x nr` tile from A with unit row stride (packed or A^T).
    pub cols: &'static [TileKernel],
    /// Width of the narrow tiles, for ragged last panels of at most this many columns (0: the
    /// family has none).
    pub narrow_nr: usize,
    /// [`Spec::rows`] and [`Spec::cols`], `narrow_nr` columns wide (the contract's `NR`).
    pub narrow_rows: &'static [TileKernel],
    pub narrow_cols: &'static [TileKernel],
    /// `indirect[r - 1]` computes an `r x nr` tile with B rows at offsets (empty: the family
    /// has none, and convolutions take the im2col path instead).
    pub indirect: &'static [IndirectKernel],
    /// [`Spec::indirect`], `narrow_nr` columns wide.
    pub indirect_narrow: &'static [IndirectKernel],
    /// [`Spec::indirect`], `2 nr` columns wide (empty: the family has none), for runs of at
    /// least that many columns.
    pub indirect_wide: &'static [IndirectKernel],
    /// `pairs[r - 1]` computes an `r x 2 nr` tile over two B panels (empty: the family has
    /// none), for A with unit row stride.
    pub pairs: &'static [PairKernel],
    /// The m = 1 path.
    pub gemv: super::gemv::GemvFn,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}-{}", self.mr, self.nr, self.name)
    }
}

impl Spec {
    /// The kernel for an `r`-row tile of `a` (unit column stride first, then unit row stride)
    /// storing `cols` columns, or None when A must be packed first: a narrow one when `cols`
    /// fits it (half the multiply-adds of a full tile spent on a one-column panel).
    pub fn kernel_for(
        &self,
        a_row_stride: usize,
        a_col_stride: usize,
        r: usize,
        cols: usize,
    ) -> Option<TileKernel> {
        let narrow = cols <= self.narrow_nr;
        if a_col_stride == 1 {
            Some(if narrow { self.narrow_rows } else { self.rows }[r - 1])
        } else if a_row_stride == 1 {
            Some(self.packed_kernel(r, cols))
        } else {
            None
        }
    }

    /// The kernel for an `r`-row tile of packed A (unit row stride) storing `cols` columns.
    pub fn packed_kernel(&self, r: usize, cols: usize) -> TileKernel {
        if cols <= self.narrow_nr {
            self.narrow_cols[r - 1]
        } else {
            self.cols[r - 1]
        }
    }

    /// The indirect kernel for an `r`-row tile with `left` columns still to go, and the columns
    /// it stores: a wide tile while a whole one fits, else one of `nr` columns or fewer (the
    /// family has indirect kernels).
    pub fn indirect_step(&self, r: usize, left: usize) -> (IndirectKernel, usize) {
        if !self.indirect_wide.is_empty() && left >= 2 * self.nr {
            (self.indirect_wide[r - 1], 2 * self.nr)
        } else if left <= self.narrow_nr {
            (self.indirect_narrow[r - 1], left)
        } else {
            (self.indirect[r - 1], self.nr.min(left))
        }
    }

    /// The K blocking for depth `k`: `(block count, block length)` with blocks as even as
    /// possible, so a depth just over `kc` is not split into a full block and a sliver.
    pub fn k_blocks(&self, k: usize) -> (usize, usize) {
        let nb = k.div_ceil(self.kc).max(1);
        (nb, k.div_ceil(nb))
    }
}

static SCALAR: Spec = Spec {
    name: "scalar",
    mr: super::kernel_scalar::MR,
    nr: super::kernel_scalar::NR,
    kc: 256,
    mc: 64,
    nc: 2048,
    rows: super::kernel_scalar::ROWS,
    cols: super::kernel_scalar::COLS,
    narrow_nr: 0,
    narrow_rows: &[],
    narrow_cols: &[],
    indirect: &[],
    indirect_narrow: &[],
    indirect_wide: &[],
    pairs: &[],
    gemv: super::kernel_scalar::gemv,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Spec = Spec {
    name: "avx2",
    mr: super::kernel_avx2::MR,
    nr: super::kernel_avx2::NR,
    kc: 256,
    mc: 144,
    nc: 4080 - 4080 % super::kernel_avx2::NR,
    rows: super::kernel_avx2::ROWS,
    cols: super::kernel_avx2::COLS,
    narrow_nr: super::kernel_avx2::NARROW_NR,
    narrow_rows: super::kernel_avx2::NARROW_ROWS,
    narrow_cols: super::kernel_avx2::NARROW_COLS,
    indirect: super::kernel_avx2::INDIRECT,
    indirect_narrow: super::kernel_avx2::INDIRECT_NARROW,
    indirect_wide: &[],
    pairs: &[],
    gemv: super::kernel_avx2::gemv,
};

/// The AVX-512 tiles; everything else (packing, the m = 1 path) as the AVX2 family.
#[cfg(target_arch = "x86_64")]
static AVX512: Spec = Spec {
    name: "avx512",
    mr: super::kernel_avx512::MR,
    nr: super::kernel_avx512::NR,
    kc: 256,
    mc: 144,
    nc: 4080 - 4080 % super::kernel_avx512::NR,
    rows: super::kernel_avx512::ROWS,
    cols: super::kernel_avx512::COLS,
    narrow_nr: super::kernel_avx512::NARROW_NR,
    narrow_rows: super::kernel_avx512::NARROW_ROWS,
    narrow_cols: super::kernel_avx512::NARROW_COLS,
    indirect: super::kernel_avx512::INDIRECT,
    indirect_narrow: super::kernel_avx512::INDIRECT_NARROW,
    indirect_wide: super::kernel_avx512::INDIRECT_WIDE,
    pairs: super::kernel_avx512::PAIRS,
    gemv: super::kernel_avx2::gemv,
};

#[cfg(target_arch = "aarch64")]
static NEON: Spec = Spec {
    name: "neon",
    mr: super::kernel_neon::MR,
    nr: super::kernel_neon::NR,
    kc: 256,
    mc: 128,
    nc: 3072,
    rows: super::kernel_neon::ROWS,
    cols: super::kernel_neon::COLS,
    narrow_nr: 0,
    narrow_rows: &[],
    narrow_cols: &[],
    indirect: &[],
    indirect_narrow: &[],
    indirect_wide: &[],
    pairs: &[],
    gemv: super::kernel_neon::gemv,
};

/// The kernel family for `isa` (scalar when this build has no kernel for it).
pub(crate) fn for_isa(isa: Isa) -> &'static Spec {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => &AVX2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => &NEON,
        _ => &SCALAR,
    }
}

/// Every kernel family this CPU can run, the scalar reference first.
#[cfg(test)]
pub(crate) fn supported() -> Vec<&'static Spec> {
    let mut v = vec![&SCALAR];
    let isa = crate::isa::detect();
    if isa != Isa::Scalar {
        v.push(for_isa(isa));
    }
    #[cfg(target_arch = "x86_64")]
    if crate::isa::detect_avx512() {
        v.push(&AVX512);
    }
    v
}

/// The kernel family this process dispatches to: the AVX-512 tiles where [`crate::isa::avx512`]
/// allows, else the family of [`crate::isa::current`].
pub(crate) fn current() -> &'static Spec {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        return &AVX512;
    }
    for_isa(crate::isa::current())
}
