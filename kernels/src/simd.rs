//! A small portable SIMD layer: one trait, [`Simd`], implemented for 8-lane AVX2+FMA, 4-lane NEON
//! and 1-lane scalar, so each vector algorithm (exp, erf, softmax, reductions, normalisation,
//! pooling, ...) is written once and its scalar instance is the reference the SIMD instances are
//! tested against. Beside the trait: the loops most kernels are made of ([`map`],
//! [`map_inplace`], [`sums`]), written once for every ISA.
//!
//! Safety model: a token of an ISA type ([`Avx2`], [`Neon`]) is only created by [`dispatch_on`]
//! after checking the CPU supports that ISA, so the token's methods may use its instructions. A
//! kernel is a [`SimdFn`]; `dispatch_on` calls it inside a `#[target_feature]` function of the
//! chosen ISA, into which the `#[inline(always)]` generic code and the token's methods inline, so
//! they compile to the vector instructions themselves.
//!
//! Lane semantics every implementation follows exactly (the tests compare them bit for bit where
//! the arithmetic allows): `max(a, b)` is `if a > b { a } else { b }` and `min(a, b)` is
//! `if a < b { a } else { b }`, so a NaN in `b` always propagates (write the data operand second)
//! and a NaN in `a` never does (write it first to skip NaNs); `max_nan` propagates a NaN from
//! either side; `mul_add` is fused where the ISA has FMA and rounds twice in the scalar instance.

use crate::isa::{self, Isa};

/// A SIMD instruction set seen as `LANES` f32 lanes (and as many u32 lanes).
pub trait Simd: Copy + Send + Sync + 'static {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// A lane mask, the result of a comparison.
    type M: Copy;
    /// A vector of `LANES` u32 (indices that travel with the f32 lanes).
    type U: Copy;
    /// Lanes per vector.
    const LANES: usize;

    /// Every lane `v`.
    fn splat(self, v: f32) -> Self::V;
    /// The first `LANES` elements of `s` (panics if `s` is shorter).
    fn load(self, s: &[f32]) -> Self::V;
    /// The even-indexed elements `s[0], s[2], .., s[2 LANES - 2]` (panics if `s` is shorter than
    /// `2 LANES`).
    fn load_even(self, s: &[f32]) -> Self::V;
    /// Write `v` to the first `LANES` elements of `s` (panics if `s` is shorter).
    fn store(self, s: &mut [f32], v: Self::V);
    /// Write `a` to the even-indexed and `b` to the odd-indexed elements of `s[..2 LANES]`
    /// (panics if `s` is shorter): `s[2 i] = a[i]`, `s[2 i + 1] = b[i]`.
    fn store_interleaved(self, s: &mut [f32], a: Self::V, b: Self::V);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c - a * b`.
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a * b - p` exactly, where `p` is `a * b` rounded (the product's rounding error); needs
    /// |a|, |b| < 2^100.
    fn mul_error(self, a: Self::V, b: Self::V, p: Self::V) -> Self::V;
    /// `if a > b { a } else { b }`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// `if a < b { a } else { b }`.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// The larger of `a` and `b`, NaN if either is NaN (PyTorch's rule for max-pooling).
    #[inline(always)]
    fn max_nan(self, a: Self::V, b: Self::V) -> Self::V {
        self.select(self.is_nan(a), a, self.max(a, b))
    }
    /// `|a|` (clears the sign bit; NaN stays NaN).
    fn abs(self, a: Self::V) -> Self::V;
    /// The magnitude of `mag` with the sign bit of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// Round to the nearest integer, ties to even (valid for |a| < 2^22 and NaN).
    fn round(self, a: Self::V) -> Self::V;
    /// `a * 2^n` for integral `n` in [-252, 254] (two exact power-of-two factors, so results in
    /// the subnormal range and overflow to infinity come out right).
    fn mul_pow2(self, a: Self::V, n: Self::V) -> Self::V;
    /// 2^n for integral `n` in [-126, 127] (a normal float, built from its exponent bits).
    fn pow2(self, n: Self::V) -> Self::V;
    /// Lanes where `a < b`.
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a > b`.
    fn gt(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a == b` (never for NaN).
    fn eq(self, a: Self::V, b: Self::V) -> Self::M;
    /// Lanes where `a` is NaN.
    fn is_nan(self, a: Self::V) -> Self::M;
    /// Whether any lane of `m` is set.
    fn any(self, m: Self::M) -> bool;
    /// `if m { a } else { b }` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn reduce_add(self, v: Self::V) -> f32;
    /// The largest lane, folding lanes with [`Simd::max`] (NaN-propagation as `max` gives it).
    fn reduce_max(self, v: Self::V) -> f32;

    /// Every u32 lane `v`.
    fn splat_u32(self, v: u32) -> Self::U;
    /// The first `LANES` elements of `s` (panics if `s` is shorter).
    fn load_u32(self, s: &[u32]) -> Self::U;
    /// Write `v` to the first `LANES` elements of `s` (panics if `s` is shorter).
    fn store_u32(self, s: &mut [u32], v: Self::U);
    /// `a + b`, wrapping.
    fn add_u32(self, a: Self::U, b: Self::U) -> Self::U;
    /// `if m { a } else { b }` per u32 lane.
    fn select_u32(self, m: Self::M, a: Self::U, b: Self::U) -> Self::U;

    /// 0 in every lane.
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
}

/// A kernel body generic over the ISA: `dispatch_on` instantiates `call` for the chosen one.
pub trait SimdFn {
    /// What the kernel returns.
    type Output;
    /// Run with the ISA token `s`.
    fn call<S: Simd>(self, s: S) -> Self::Output;
}

/// Run `f` with the ISA `isa::current()` picked.
#[inline]
pub fn dispatch<F: SimdFn>(f: F) -> F::Output {
    // current() is the detected ISA or scalar: supported either way.
    run_supported(isa::current(), f)
}

/// Run `f` with `isa`, falling back to scalar if this CPU lacks it (so tests and benches may ask
/// for any ISA).
#[inline]
pub fn dispatch_on<F: SimdFn>(isa: Isa, f: F) -> F::Output {
    // current() (usually what is asked for) is supported; anything else is checked.
    let isa = if isa == isa::current() || isa == isa::detect() {
        isa
    } else {
        Isa::Scalar
    };
    run_supported(isa, f)
}

/// Run `f` with `isa`, which this CPU must support (both callers check).
#[inline(always)]
fn run_supported<F: SimdFn>(isa: Isa, f: F) -> F::Output {
    // One call site for every ISA, so the kernel's arguments are built once, in place (a copy
    // per branch costs store-forwarding stalls that show on short rows).
    let run: unsafe fn(F) -> F::Output = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => run_avx2::<F>,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => run_neon::<F>,
        _ => run_scalar::<F>,
    };
    // SAFETY: the callers pass Avx2Fma (Neon) only when isa::detect() found AVX2 and FMA
    // (NEON), the one requirement of run_avx2 (run_neon); run_scalar has none.
    unsafe { run(f) }
}

/// The scalar instance, out of line so that the dispatch inlines into its callers as a call.
#[inline(never)]
fn run_scalar<F: SimdFn>(f: F) -> F::Output {
    f.call(Scalar)
}

/// A function applied lane by lane to one vector. Kernels pass these, not closures: a closure
/// body is compiled on its own, without the ISA's target features, and then cannot inline the
/// intrinsics, while these `#[inline(always)]` methods land inside the `#[target_feature]` caller.
pub trait UnaryLanes: Copy {
    /// f(x) per lane.
    fn apply<S: Simd>(self, s: S, x: S::V) -> S::V;
}

/// A function applied lane by lane to two vectors (see [`UnaryLanes`]).
pub trait BinaryLanes: Copy {
    /// f(a, b) per lane.
    fn apply<S: Simd>(self, s: S, a: S::V, b: S::V) -> S::V;
}

/// A function applied lane by lane to `N` vectors: what [`map`] runs. Every [`UnaryLanes`] is one
/// with `N = 1` and every [`BinaryLanes`] one with `N = 2`; kernels of more operands implement it.
pub trait LanesN<const N: usize>: Copy {
    /// f(x[0], .., x[N - 1]) per lane.
    fn apply_n<S: Simd>(self, s: S, x: [S::V; N]) -> S::V;
}

impl<F: UnaryLanes> LanesN<1> for F {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [x]: [S::V; 1]) -> S::V {
        UnaryLanes::apply(self, s, x)
    }
}

impl<F: BinaryLanes> LanesN<2> for F {
    #[inline(always)]
    fn apply_n<S: Simd>(self, s: S, [a, b]: [S::V; 2]) -> S::V {
        BinaryLanes::apply(self, s, a, b)
    }
}

/// Running sums fed lane by lane from `N` inputs: what [`sums`] runs. `K` accumulators; each step
/// adds one position's terms to them (fusing the add into a multiply is the implementor's call).
pub trait SumLanes<const N: usize, const K: usize>: Copy {
    /// `acc[k] + term_k(x)` for each `k`.
    fn accumulate<S: Simd>(self, s: S, acc: [S::V; K], x: [S::V; N]) -> [S::V; K];
}

/// `x[i..i + S::LANES]` without a bounds check, for loops that check their lengths once up front
/// (a check per vector, and the spills its panic path causes, cost memory-bound loops a third).
///
/// # Safety
/// `i + S::LANES <= x.len()`.
#[inline(always)]
pub(crate) unsafe fn lanes<S: Simd, T>(x: &[T], i: usize) -> &[T] {
    debug_assert!(i + S::LANES <= x.len());
    // SAFETY: the caller's contract.
    unsafe { x.get_unchecked(i..i + S::LANES) }
}

/// The vectors at `i` of each input.
///
/// # Safety
/// `i + S::LANES` is at most every input's length.
#[inline(always)]
unsafe fn load_at<S: Simd, const N: usize>(s: S, x: [&[f32]; N], i: usize) -> [S::V; N] {
    let mut v = [s.zero(); N];
    for (v, x) in v.iter_mut().zip(x) {
        // SAFETY: the caller's contract.
        *v = s.load(unsafe { lanes::<S, _>(x, i) });
    }
    v
}

/// The vectors at `at` of each input, the first given as its chunk `x0` (`x[0][at..]`).
///
/// # Safety
/// `at + S::LANES` is at most every input's length.
#[inline(always)]
unsafe fn load_with<S: Simd, const N: usize>(
    s: S,
    x0: &[f32],
    x: [&[f32]; N],
    at: usize,
) -> [S::V; N] {
    let mut v = [s.load(x0); N];
    #[allow(clippy::needless_range_loop)] // an iterator here costs spills
    for q in 1..N {
        // SAFETY: the caller's contract.
        v[q] = s.load(unsafe { lanes::<S, _>(x[q], at) });
    }
    v
}

/// `y = f(x[0], .., x[N - 1])` vector by vector, returning the sum of `y` (free when unused: the
/// compiler drops it). The tail goes through padded buffers so every element takes the same
/// vector path (short rows, such as GEMM tile rows, stay vectorised).
#[inline(always)]
pub fn map<S: Simd, F: LanesN<N>, const N: usize>(
    s: S,
    f: F,
    x: [&[f32]; N],
    y: &mut [f32],
) -> f32 {
    let n = y.len();
    assert!(N > 0, "simd::map: no input");
    assert!(x.iter().all(|x| x.len() == n), "simd::map: lengths differ");
    let mut acc = s.zero();
    // Counted loops (not `while i + LANES <= n`): the compiler then knows the trip count and
    // unrolls.
    let i = n - n % S::LANES;
    // The output and first input step through chunk iterators: the compiler schedules the long,
    // latency-bound lane functions of vmath better in that loop than in an indexed one (GELU
    // runs 8% faster). The other inputs are indexed alongside.
    for (k, (x0, yc)) in x[0][..i]
        .chunks_exact(S::LANES)
        .zip(y[..i].chunks_exact_mut(S::LANES))
        .enumerate()
    {
        // SAFETY: (k + 1) LANES <= n, the length of every input (asserted above).
        let v = f.apply_n(s, unsafe { load_with(s, x0, x, k * S::LANES) });
        s.store(yc, v);
        acc = s.add(acc, v);
    }
    let mut sum = s.reduce_add(acc);
    if i < n {
        let mut buf = [[0.0f32; MAX_LANES]; N];
        let mut xs = [&[][..]; N];
        for ((b, x), xs) in buf.iter_mut().zip(x).zip(&mut xs) {
            b[..n - i].copy_from_slice(&x[i..]);
            *xs = &b[..];
        }
        let mut out = [0.0f32; MAX_LANES];
        // SAFETY: the buffers hold MAX_LANES >= LANES elements.
        s.store(&mut out, f.apply_n(s, unsafe { load_at(s, xs, 0) }));
        y[i..].copy_from_slice(&out[..n - i]);
        sum += out[..n - i].iter().sum::<f32>();
    }
    sum
}

/// `x = f(x)` vector by vector, returning the sum of the new `x` (tail as in [`map`]).
#[inline(always)]
pub fn map_inplace<S: Simd, F: LanesN<1>>(s: S, f: F, x: &mut [f32]) -> f32 {
    let n = x.len();
    let body = n - n % S::LANES;
    let mut acc = s.zero();
    for c in x[..body].chunks_exact_mut(S::LANES) {
        let v = f.apply_n(s, [s.load(c)]);
        s.store(c, v);
        acc = s.add(acc, v);
    }
    let mut buf = [0.0f32; MAX_LANES];
    buf[..n - body].copy_from_slice(&x[body..]);
    s.reduce_add(acc) + map(s, f, [&buf[..n - body]], &mut x[body..])
}

/// The `K` sums of `f`'s terms over equally long inputs: four accumulator sets in flight, so the
/// adds' latencies overlap, then single vectors; the last `< LANES` elements go through the
/// scalar instance of `f`.
#[inline(always)]
pub fn sums<S: Simd, F: SumLanes<N, K>, const N: usize, const K: usize>(
    s: S,
    f: F,
    x: [&[f32]; N],
) -> [f32; K] {
    let n = x.first().map_or(0, |x| x.len());
    assert!(x.iter().all(|x| x.len() == n), "simd::sums: lengths differ");
    let mut acc = [[s.zero(); K]; 4];
    // Counted loops, as in `map`.
    let quads = n / (4 * S::LANES);
    for q in 0..quads {
        for (u, a) in acc.iter_mut().enumerate() {
            // SAFETY: the vector ends at 4 LANES (q + 1) <= n, the length of every input
            // (asserted above).
            *a = f.accumulate(s, *a, unsafe { load_at(s, x, (4 * q + u) * S::LANES) });
        }
    }
    for v in 4 * quads..n / S::LANES {
        // SAFETY: (v + 1) LANES <= n, the length of every input (asserted above).
        acc[0] = f.accumulate(s, acc[0], unsafe { load_at(s, x, v * S::LANES) });
    }
    let mut tail = [0.0f32; K];
    for j in n - n % S::LANES..n {
        let mut v = [0.0f32; N];
        for (v, x) in v.iter_mut().zip(x) {
            *v = x[j];
        }
        tail = f.accumulate(Scalar, tail, v);
    }
    let mut out = [0.0f32; K];
    for (k, o) in out.iter_mut().enumerate() {
        let v = s.add(s.add(acc[0][k], acc[1][k]), s.add(acc[2][k], acc[3][k]));
        *o = s.reduce_add(v) + tail[k];
    }
    out
}

/// `Σ x`, as [`SumLanes`].
#[derive(Clone, Copy, Debug)]
pub struct Sum;

impl SumLanes<1, 1> for Sum {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, [acc]: [S::V; 1], [x]: [S::V; 1]) -> [S::V; 1] {
        [s.add(acc, x)]
    }
}

/// `Σ a b`, as [`SumLanes`].
#[derive(Clone, Copy, Debug)]
pub struct Dot;

impl SumLanes<2, 1> for Dot {
    #[inline(always)]
    fn accumulate<S: Simd>(self, s: S, [acc]: [S::V; 1], [a, b]: [S::V; 2]) -> [S::V; 1] {
        [s.mul_add(a, b, acc)]
    }
}

/// [`sums`] of `f` over `x` with `isa` (scalar if this CPU lacks it).
#[inline]
pub fn sums_on<F: SumLanes<N, K>, const N: usize, const K: usize>(
    isa: Isa,
    f: F,
    x: [&[f32]; N],
) -> [f32; K] {
    struct Run<'a, F, const N: usize, const K: usize>(F, [&'a [f32]; N]);
    impl<F: SumLanes<N, K>, const N: usize, const K: usize> SimdFn for Run<'_, F, N, K> {
        type Output = [f32; K];
        #[inline(always)]
        fn call<S: Simd>(self, s: S) -> [f32; K] {
            sums(s, self.0, self.1)
        }
    }
    dispatch_on(isa, Run(f, x))
}

/// [`map`] of `f` over `x` into `y` with `isa` (scalar if this CPU lacks it).
#[inline]
pub fn map_on<F: LanesN<N>, const N: usize>(isa: Isa, f: F, x: [&[f32]; N], y: &mut [f32]) {
    struct Run<'a, F, const N: usize>(F, [&'a [f32]; N], &'a mut [f32]);
    impl<F: LanesN<N>, const N: usize> SimdFn for Run<'_, F, N> {
        type Output = ();
        #[inline(always)]
        fn call<S: Simd>(self, s: S) {
            map(s, self.0, self.1, self.2);
        }
    }
    dispatch_on(isa, Run(f, x, y))
}

/// The widest vector any implementation has (the tail buffers' size).
pub const MAX_LANES: usize = 8;

/// Trait methods of the ISA impls below that are one unsafe intrinsic expression each:
/// `name(arg: Type, ..) -> Ret => expression;`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! intrinsic_methods {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $body:expr;)*) => {$(
        #[inline(always)]
        fn $name(self, $($arg: $ty),*) -> $ret {
            // SAFETY: a token of this impl's ISA exists only on a CPU that has it (see the impl
            // comment); the intrinsics here take and return values and touch no memory.
            unsafe { $body }
        }
    )*};
}

// ----- scalar ------------------------------------------------------------------------------------

/// One f32 lane: the portable reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to an integer, ties to even.
const ROUND_MAGIC: f32 = 12_582_912.0;

impl Simd for Scalar {
    type V = f32;
    type M = bool;
    type U = u32;
    const LANES: usize = 1;

    #[inline(always)]
    fn splat(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn load_even(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: f32) {
        s[0] = v;
    }
    #[inline(always)]
    fn store_interleaved(self, s: &mut [f32], a: f32, b: f32) {
        s[..2].copy_from_slice(&[a, b]);
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        // Unfused: without FMA hardware `f32::mul_add` is a slow libm call.
        a * b + c
    }
    #[inline(always)]
    fn neg_mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        c - a * b
    }
    #[inline(always)]
    fn mul_error(self, a: f32, b: f32, p: f32) -> f32 {
        // Dekker's exact product: split each factor into 12-bit halves whose products are exact.
        #[inline(always)]
        fn split(x: f32) -> (f32, f32) {
            let c = 4097.0 * x;
            let hi = c - (c - x);
            (hi, x - hi)
        }
        let ((ah, al), (bh, bl)) = (split(a), split(b));
        ((ah * bh - p) + ah * bl + al * bh) + al * bl
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        if a > b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    fn copysign(self, mag: f32, sign: f32) -> f32 {
        mag.copysign(sign)
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        // `round_ties_even` is a libm call on baseline x86_64; the magic constant is exact here.
        let r = (a.abs() + ROUND_MAGIC) - ROUND_MAGIC;
        r.copysign(a)
    }
    #[inline(always)]
    fn mul_pow2(self, a: f32, n: f32) -> f32 {
        let n = n as i32;
        let h = n >> 1;
        a * f32::from_bits(((h + 127) as u32) << 23) * f32::from_bits(((n - h + 127) as u32) << 23)
    }
    #[inline(always)]
    fn pow2(self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    fn lt(self, a: f32, b: f32) -> bool {
        a < b
    }
    #[inline(always)]
    fn gt(self, a: f32, b: f32) -> bool {
        a > b
    }
    #[inline(always)]
    fn eq(self, a: f32, b: f32) -> bool {
        a == b
    }
    #[inline(always)]
    fn is_nan(self, a: f32) -> bool {
        a.is_nan()
    }
    #[inline(always)]
    fn any(self, m: bool) -> bool {
        m
    }
    #[inline(always)]
    fn select(self, m: bool, a: f32, b: f32) -> f32 {
        if m {
            a
        } else {
            b
        }
    }
    #[inline(always)]
    fn reduce_add(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn reduce_max(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn splat_u32(self, v: u32) -> u32 {
        v
    }
    #[inline(always)]
    fn load_u32(self, s: &[u32]) -> u32 {
        s[0]
    }
    #[inline(always)]
    fn store_u32(self, s: &mut [u32], v: u32) {
        s[0] = v;
    }
    #[inline(always)]
    fn add_u32(self, a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }
    #[inline(always)]
    fn select_u32(self, m: bool, a: u32, b: u32) -> u32 {
        if m {
            a
        } else {
            b
        }
    }
}

// ----- 16-bit floats ----------------------------------------------------------------------------

/// `dst[i]` = the IEEE binary16 number with bits `src[i]`, exactly (subnormals, infinities and
/// NaN payloads included): F16C's `vcvtph2ps` on an AVX2 CPU that has it, the scalar definition
/// otherwise (branch-free, so the compiler vectorises it, with NEON on aarch64).
pub fn widen_f16(src: &[u16], dst: &mut [f32]) {
    widen_f16_on(isa::current(), src, dst)
}

/// [`widen_f16`] with the path of `isa` (tests compare them); scalar when the CPU lacks it.
pub fn widen_f16_on(isa: Isa, src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma && isa::detect() == Isa::Avx2Fma && has_f16c() {
        // SAFETY: F16C (and the AVX it implies) was detected just above.
        unsafe { avx2::widen_f16_f16c(src, dst) };
        return;
    }
    let _ = isa;
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(h);
    }
}

/// `dst[i]` = the bfloat16 number with bits `src[i]` (the upper half of an f32: exact).
pub fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_bf16: lengths differ");
    // A shift per element: vectorised by the compiler on every target.
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((h as u32) << 16);
    }
}

/// One binary16 value: exponent and mantissa moved into an f32's fields, then rebiased by a
/// multiplication by 2^112 (exact, and right for subnormals, which come out normal); infinities
/// and NaNs get the all-ones exponent instead.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let bits = if em >= 0x7c00 {
        (em << 13) | 0x7f80_0000
    } else {
        finite.to_bits()
    };
    f32::from_bits(bits | sign)
}

/// Whether this x86 CPU converts halves in hardware (F16C; every AVX2 CPU so far has it, but it
/// is a separate CPUID bit).
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("f16c")
}

// ----- x86_64 AVX2 + FMA -------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<F: SimdFn>(f: F) -> F::Output {
    f.call(Avx2::assume_supported())
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// 8 f32 lanes of AVX2 with FMA. Only [`super::dispatch_on`] creates one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2(());

    impl Avx2 {
        /// The token, on a CPU the caller knows has AVX2 and FMA.
        #[inline(always)]
        pub(super) fn assume_supported() -> Self {
            Avx2(())
        }
    }

    // SAFETY (every `unsafe` block below): an `Avx2` value exists only once AVX2 and FMA were
    // detected (see `assume_supported`'s single caller), so the intrinsics are available; loads
    // and stores are unaligned and in bounds by the length asserts before them.
    impl Simd for Avx2 {
        type V = __m256;
        type M = __m256;
        type U = __m256i;
        const LANES: usize = 8;

        #[inline(always)]
        fn load(self, s: &[f32]) -> __m256 {
            assert!(s.len() >= 8);
            // SAFETY: 8 readable elements checked above; see the impl comment.
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn load_even(self, s: &[f32]) -> __m256 {
            assert!(s.len() >= 16);
            // SAFETY: 16 readable elements checked above; see the impl comment.
            unsafe {
                let (a, b) = (
                    _mm256_loadu_ps(s.as_ptr()),
                    _mm256_loadu_ps(s.as_ptr().add(8)),
                );
                // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then reorder the 64-bit pairs.
                let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
            }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: __m256) {
            assert!(s.len() >= 8);
            // SAFETY: 8 writable elements checked above; see the impl comment.
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn store_interleaved(self, s: &mut [f32], a: __m256, b: __m256) {
            assert!(s.len() >= 16);
            // SAFETY: 16 writable elements checked above; see the impl comment.
            unsafe {
                // Per 128-bit half: lo = [a0 b0 a1 b1 | a4 b4 a5 b5], hi = [a2 b2 a3 b3 | a6 ..].
                let (lo, hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                _mm256_storeu_ps(s.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(lo, hi));
                _mm256_storeu_ps(
                    s.as_mut_ptr().add(8),
                    _mm256_permute2f128_ps::<0x31>(lo, hi),
                );
            }
        }
        #[inline(always)]
        fn load_u32(self, s: &[u32]) -> __m256i {
            assert!(s.len() >= 8);
            // SAFETY: 8 readable elements checked above; see the impl comment.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        }
        #[inline(always)]
        fn store_u32(self, s: &mut [u32], v: __m256i) {
            assert!(s.len() >= 8);
            // SAFETY: 8 writable elements checked above; see the impl comment.
            unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
        }

        intrinsic_methods! {
            splat(v: f32) -> __m256 => _mm256_set1_ps(v);
            add(a: __m256, b: __m256) -> __m256 => _mm256_add_ps(a, b);
            sub(a: __m256, b: __m256) -> __m256 => _mm256_sub_ps(a, b);
            mul(a: __m256, b: __m256) -> __m256 => _mm256_mul_ps(a, b);
            div(a: __m256, b: __m256) -> __m256 => _mm256_div_ps(a, b);
            mul_add(a: __m256, b: __m256, c: __m256) -> __m256 => _mm256_fmadd_ps(a, b, c);
            neg_mul_add(a: __m256, b: __m256, c: __m256) -> __m256 => _mm256_fnmadd_ps(a, b, c);
            mul_error(a: __m256, b: __m256, p: __m256) -> __m256 => _mm256_fmsub_ps(a, b, p);
            // vmaxps/vminps return their second operand unless a > b (a < b): the contract.
            max(a: __m256, b: __m256) -> __m256 => _mm256_max_ps(a, b);
            min(a: __m256, b: __m256) -> __m256 => _mm256_min_ps(a, b);
            // vmaxps(b, a) keeps a NaN in `a`; OR-ing in `b`'s NaN bits keeps one in `b`
            // (exponent all ones, mantissa non-zero). No blend: LLVM turns a blend that keeps
            // the old value of a slice into a masked store, microcoded and slow on AMD.
            max_nan(a: __m256, b: __m256) -> __m256 => {
                let nan_b = _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(b, b), b);
                _mm256_or_ps(_mm256_max_ps(b, a), nan_b)
            };
            abs(a: __m256) -> __m256 => _mm256_andnot_ps(_mm256_set1_ps(-0.0), a);
            copysign(mag: __m256, sign: __m256) -> __m256 => {
                let bit = _mm256_set1_ps(-0.0);
                _mm256_or_ps(_mm256_andnot_ps(bit, mag), _mm256_and_ps(bit, sign))
            };
            round(a: __m256) -> __m256 =>
                _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a);
            mul_pow2(a: __m256, n: __m256) -> __m256 => {
                let n = _mm256_cvtps_epi32(n);
                let h = _mm256_srai_epi32::<1>(n);
                let bias = _mm256_set1_epi32(127);
                let p1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(h, bias));
                let p2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(n, h), bias));
                _mm256_mul_ps(
                    _mm256_mul_ps(a, _mm256_castsi256_ps(p1)),
                    _mm256_castsi256_ps(p2),
                )
            };
            pow2(n: __m256) -> __m256 => {
                let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
            };
            lt(a: __m256, b: __m256) -> __m256 => _mm256_cmp_ps::<_CMP_LT_OQ>(a, b);
            gt(a: __m256, b: __m256) -> __m256 => _mm256_cmp_ps::<_CMP_GT_OQ>(a, b);
            eq(a: __m256, b: __m256) -> __m256 => _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b);
            is_nan(a: __m256) -> __m256 => _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a);
            any(m: __m256) -> bool => _mm256_movemask_ps(m) != 0;
            // blendv takes its second operand where the mask is set.
            select(m: __m256, a: __m256, b: __m256) -> __m256 => _mm256_blendv_ps(b, a, m);
            reduce_add(v: __m256) -> f32 => {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            };
            reduce_max(v: __m256) -> f32 => {
                let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            };
            splat_u32(v: u32) -> __m256i => _mm256_set1_epi32(v as i32);
            add_u32(a: __m256i, b: __m256i) -> __m256i => _mm256_add_epi32(a, b);
            select_u32(m: __m256, a: __m256i, b: __m256i) -> __m256i =>
                _mm256_blendv_epi8(b, a, _mm256_castps_si256(m));
        }
    }

    /// [`super::widen_f16`] with `vcvtph2ps`, 8 at a time.
    ///
    /// # Safety
    /// The CPU has F16C (and AVX).
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16_f16c(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let body = n - n % 8;
        for i in (0..body).step_by(8) {
            // SAFETY: i + 8 <= n, inside both slices; unaligned load and store.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for (d, &h) in dst[body..n].iter_mut().zip(&src[body..n]) {
            *d = super::f16_to_f32(h);
        }
    }
}

// ----- aarch64 NEON ------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
pub use neon::Neon;

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn run_neon<F: SimdFn>(f: F) -> F::Output {
    f.call(Neon::assume_supported())
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::Simd;
    use std::arch::aarch64::*;

    /// 4 f32 lanes of NEON. Only [`super::dispatch_on`] creates one, after detection.
    #[derive(Clone, Copy, Debug)]
    pub struct Neon(());

    impl Neon {
        /// The token, on a CPU the caller knows has NEON.
        #[inline(always)]
        pub(super) fn assume_supported() -> Self {
            Neon(())
        }
    }

    // SAFETY (every `unsafe` block below): a `Neon` value exists only once NEON was detected
    // (see `assume_supported`'s single caller), so the intrinsics are available; loads and stores
    // are in bounds by the length asserts before them.
    impl Simd for Neon {
        type V = float32x4_t;
        type M = uint32x4_t;
        type U = uint32x4_t;
        const LANES: usize = 4;

        #[inline(always)]
        fn load(self, s: &[f32]) -> float32x4_t {
            assert!(s.len() >= 4);
            // SAFETY: 4 readable elements checked above; see the impl comment.
            unsafe { vld1q_f32(s.as_ptr()) }
        }
        #[inline(always)]
        fn load_even(self, s: &[f32]) -> float32x4_t {
            assert!(s.len() >= 8);
            // vld2q de-interleaves 8 floats: .0 holds the even-indexed four.
            // SAFETY: 8 readable elements checked above; see the impl comment.
            unsafe { vld2q_f32(s.as_ptr()).0 }
        }
        #[inline(always)]
        fn store(self, s: &mut [f32], v: float32x4_t) {
            assert!(s.len() >= 4);
            // SAFETY: 4 writable elements checked above; see the impl comment.
            unsafe { vst1q_f32(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn store_interleaved(self, s: &mut [f32], a: float32x4_t, b: float32x4_t) {
            assert!(s.len() >= 8);
            // SAFETY: 8 writable elements checked above; see the impl comment.
            unsafe { vst2q_f32(s.as_mut_ptr(), float32x4x2_t(a, b)) }
        }
        #[inline(always)]
        fn load_u32(self, s: &[u32]) -> uint32x4_t {
            assert!(s.len() >= 4);
            // SAFETY: 4 readable elements checked above; see the impl comment.
            unsafe { vld1q_u32(s.as_ptr()) }
        }
        #[inline(always)]
        fn store_u32(self, s: &mut [u32], v: uint32x4_t) {
            assert!(s.len() >= 4);
            // SAFETY: 4 writable elements checked above; see the impl comment.
            unsafe { vst1q_u32(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn reduce_max(self, v: float32x4_t) -> f32 {
            // Fold with the contract's max (vmaxvq would treat NaN differently from x86).
            // SAFETY: see the impl comment.
            unsafe {
                let hi = vcombine_f32(vget_high_f32(v), vget_low_f32(v));
                let m = self.max(v, hi);
                let m2 = vrev64q_f32(m);
                vgetq_lane_f32::<0>(self.max(m, m2))
            }
        }

        intrinsic_methods! {
            splat(v: f32) -> float32x4_t => vdupq_n_f32(v);
            add(a: float32x4_t, b: float32x4_t) -> float32x4_t => vaddq_f32(a, b);
            sub(a: float32x4_t, b: float32x4_t) -> float32x4_t => vsubq_f32(a, b);
            mul(a: float32x4_t, b: float32x4_t) -> float32x4_t => vmulq_f32(a, b);
            div(a: float32x4_t, b: float32x4_t) -> float32x4_t => vdivq_f32(a, b);
            mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t =>
                vfmaq_f32(c, a, b);
            neg_mul_add(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t =>
                vfmsq_f32(c, a, b);
            mul_error(a: float32x4_t, b: float32x4_t, p: float32x4_t) -> float32x4_t =>
                vfmaq_f32(vnegq_f32(p), a, b);
            // fmax would propagate a NaN from either side; compare-and-select keeps the contract.
            max(a: float32x4_t, b: float32x4_t) -> float32x4_t => vbslq_f32(vcgtq_f32(a, b), a, b);
            min(a: float32x4_t, b: float32x4_t) -> float32x4_t => vbslq_f32(vcltq_f32(a, b), a, b);
            // FMAX returns NaN when either operand is NaN: exactly max_nan.
            max_nan(a: float32x4_t, b: float32x4_t) -> float32x4_t => vmaxq_f32(a, b);
            abs(a: float32x4_t) -> float32x4_t => vabsq_f32(a);
            copysign(mag: float32x4_t, sign: float32x4_t) -> float32x4_t =>
                vbslq_f32(vdupq_n_u32(0x8000_0000), sign, mag);
            round(a: float32x4_t) -> float32x4_t => vrndnq_f32(a);
            mul_pow2(a: float32x4_t, n: float32x4_t) -> float32x4_t => {
                let n = vcvtq_s32_f32(n);
                let h = vshrq_n_s32::<1>(n);
                let bias = vdupq_n_s32(127);
                let p1 = vshlq_n_s32::<23>(vaddq_s32(h, bias));
                let p2 = vshlq_n_s32::<23>(vaddq_s32(vsubq_s32(n, h), bias));
                vmulq_f32(
                    vmulq_f32(a, vreinterpretq_f32_s32(p1)),
                    vreinterpretq_f32_s32(p2),
                )
            };
            pow2(n: float32x4_t) -> float32x4_t => {
                let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
                vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
            };
            lt(a: float32x4_t, b: float32x4_t) -> uint32x4_t => vcltq_f32(a, b);
            gt(a: float32x4_t, b: float32x4_t) -> uint32x4_t => vcgtq_f32(a, b);
            eq(a: float32x4_t, b: float32x4_t) -> uint32x4_t => vceqq_f32(a, b);
            is_nan(a: float32x4_t) -> uint32x4_t => vmvnq_u32(vceqq_f32(a, a));
            any(m: uint32x4_t) -> bool => vmaxvq_u32(m) != 0;
            select(m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t =>
                vbslq_f32(m, a, b);
            reduce_add(v: float32x4_t) -> f32 => vaddvq_f32(v);
            splat_u32(v: u32) -> uint32x4_t => vdupq_n_u32(v);
            add_u32(a: uint32x4_t, b: uint32x4_t) -> uint32x4_t => vaddq_u32(a, b);
            select_u32(m: uint32x4_t, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t =>
                vbslq_u32(m, a, b);
        }
    }
}

/// Deterministic bits for the kernels' tests to make inputs from: xorshift64 from `seed`.
#[cfg(test)]
pub(crate) fn test_bits(seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane operations under test, as one binary function each.
    #[derive(Clone, Copy)]
    struct Op(usize);
    const OPS: usize = 12;

    impl BinaryLanes for Op {
        fn apply<S: Simd>(self, s: S, a: S::V, b: S::V) -> S::V {
            match self.0 {
                0 => s.mul_error(a, b, s.mul(a, b)),
                1 => s.max(a, b),
                2 => s.min(a, b),
                3 => s.abs(a),
                4 => s.copysign(a, b),
                5 => s.round(a),
                6 => s.mul_pow2(a, s.round(b)),
                7 => s.select(s.lt(a, b), a, b),
                8 => s.select(s.is_nan(a), b, a),
                9 => s.max_nan(a, b),
                10 => {
                    // The data first in min/max: NaN skipped, n integral in [-126, 127].
                    let n = s.max(s.min(s.round(b), s.splat(127.0)), s.splat(-126.0));
                    s.mul(a, s.pow2(n))
                }
                _ => s.neg_mul_add(a, b, a),
            }
        }
    }

    /// Every op over two slices, concatenated; then the lane sums and maxima of `a`'s vectors.
    struct Probe<'a>(&'a [f32], &'a [f32]);

    impl SimdFn for Probe<'_> {
        type Output = (Vec<f32>, Vec<f32>);
        fn call<S: Simd>(self, s: S) -> Self::Output {
            let mut out = Vec::new();
            let mut y = vec![0.0; self.0.len()];
            for op in 0..OPS {
                map(s, Op(op), [self.0, self.1], &mut y);
                out.extend_from_slice(&y);
            }
            let reduced = self
                .0
                .chunks_exact(S::LANES)
                .flat_map(|c| [s.reduce_add(s.load(c)), s.reduce_max(s.load(c))])
                .collect();
            (out, reduced)
        }
    }

    #[test]
    fn lane_ops_agree_with_scalar() {
        let a = [
            1.5,
            -2.5,
            0.5,
            f32::NAN,
            -0.0,
            3.0,
            2.5,
            -7.25,
            1e30,
            -1e-30,
            100.0,
            f32::INFINITY,
            -3.5,
            0.0,
            6.0,
            4.0,
        ];
        let b = [
            2.0,
            -3.0,
            f32::NAN,
            1.0,
            2.0,
            -1.0,
            100.0,
            -120.0,
            4.0,
            5.0,
            -0.0,
            3.0,
            -1.0,
            8.0,
            -200.0,
            127.0,
        ];
        let (simd, _) = dispatch(Probe(&a, &b));
        let (scalar, _) = dispatch_on(Isa::Scalar, Probe(&a, &b));
        for (i, (x, y)) in simd.iter().zip(&scalar).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "op {} element {}: {x} vs {y}",
                i / a.len(),
                i % a.len()
            );
        }
        // max_nan: NaN from either side.
        let nan_either = &simd[9 * a.len()..10 * a.len()];
        assert!(nan_either[2].is_nan() && nan_either[3].is_nan());
        // Lane folds over NaN-free vectors.
        let c = [1.0f32, -2.0, 3.5, 0.25, 8.0, -1.0, 2.0, 4.0];
        let (_, r) = dispatch(Probe(&c, &c));
        let lanes = 2 * c.len() / r.len();
        for (k, v) in c.chunks_exact(lanes).enumerate() {
            assert_eq!(r[2 * k], v.iter().sum::<f32>());
            assert_eq!(r[2 * k + 1], v.iter().cloned().fold(f32::MIN, f32::max));
        }
    }

    /// Even-indexed loads and the u32 lanes: `code = select(x == t, base + index, code)` over
    /// the even elements of `x`, as the indexed max-pool uses them.
    struct Gather<'a>(&'a [f32], f32);

    impl SimdFn for Gather<'_> {
        type Output = (Vec<f32>, Vec<u32>);
        fn call<S: Simd>(self, s: S) -> Self::Output {
            let n = self.0.len() / 2 / S::LANES * S::LANES;
            let (mut even, mut code) = (vec![0.0; n], vec![7u32; n]);
            let steps: [u32; MAX_LANES] = std::array::from_fn(|i| 2 * i as u32);
            let lane = s.load_u32(&steps);
            for o in (0..n).step_by(S::LANES) {
                let v = s.load_even(&self.0[2 * o..]);
                s.store(&mut even[o..], v);
                let cand = s.add_u32(s.splat_u32((u32::MAX - 3).wrapping_add(2 * o as u32)), lane);
                let hit = s.eq(v, s.splat(self.1));
                let c = s.select_u32(hit, cand, s.load_u32(&code[o..]));
                s.store_u32(&mut code[o..], c);
            }
            (even, code)
        }
    }

    /// Interleaved stores: the even and odd elements of `x` loaded apart, written back together.
    struct Interleave<'a>(&'a [f32]);

    impl SimdFn for Interleave<'_> {
        type Output = Vec<f32>;
        fn call<S: Simd>(self, s: S) -> Vec<f32> {
            let n = self.0.len() / (2 * S::LANES) * (2 * S::LANES);
            let mut out = vec![0.0; n + 1];
            for o in (0..n).step_by(2 * S::LANES) {
                let (even, odd) = (s.load_even(&self.0[o..]), s.load_even(&self.0[o + 1..]));
                // Odd first: a swapped pair shows up as a mismatch.
                s.store_interleaved(&mut out[o..], odd, even);
            }
            out.truncate(n);
            out
        }
    }

    #[test]
    fn interleaved_stores_place_each_lane() {
        let x: Vec<f32> = (0..65).map(|i| i as f32 * 0.5 - 3.0).collect();
        let want: Vec<f32> = (0..64).map(|i| x[i ^ 1]).collect();
        assert_eq!(dispatch(Interleave(&x)), want);
        assert_eq!(dispatch_on(Isa::Scalar, Interleave(&x)), want);
    }

    #[test]
    fn even_loads_and_index_lanes_agree_with_scalar() {
        let x: Vec<f32> = (0..48).map(|i| ((i * 7) % 5) as f32).collect();
        let (even, code) = dispatch(Gather(&x, 2.0));
        assert_eq!(
            (even.clone(), code.clone()),
            dispatch_on(Isa::Scalar, Gather(&x, 2.0))
        );
        assert_eq!(even.len(), 24);
        for (o, (&e, &c)) in even.iter().zip(&code).enumerate() {
            assert_eq!(e, x[2 * o]);
            let want = if e == 2.0 {
                (u32::MAX - 3).wrapping_add(2 * o as u32)
            } else {
                7
            };
            assert_eq!(c, want, "output {o}");
        }
    }

    /// Σ x and Σ (x - 1) y.
    #[derive(Clone, Copy)]
    struct Moments;

    impl SumLanes<2, 2> for Moments {
        fn accumulate<S: Simd>(self, s: S, [a, b]: [S::V; 2], [x, y]: [S::V; 2]) -> [S::V; 2] {
            [s.add(a, x), s.mul_add(s.sub(x, s.splat(1.0)), y, b)]
        }
    }

    /// `x / 4 + y`.
    #[derive(Clone, Copy)]
    struct Quarter;

    impl BinaryLanes for Quarter {
        fn apply<S: Simd>(self, s: S, x: S::V, y: S::V) -> S::V {
            s.mul_add(x, s.splat(0.25), y)
        }
    }

    impl UnaryLanes for Quarter {
        fn apply<S: Simd>(self, s: S, x: S::V) -> S::V {
            s.mul(x, s.splat(0.25))
        }
    }

    /// The loops on every length, against plain Rust (values exact in f32 so sums are too).
    #[test]
    fn loops_cover_every_length() {
        for isa in [Isa::Scalar, isa::detect()] {
            for n in (0..=40).chain([67, 131]) {
                let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
                let y: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
                let want = [
                    x.iter().sum::<f32>(),
                    x.iter().zip(&y).map(|(a, b)| (a - 1.0) * b).sum(),
                ];
                assert_eq!(sums_on(isa, Moments, [&x, &y]), want, "sums n={n}");
                let mut out = vec![f32::NAN; n];
                map_on(isa, Quarter, [&x, &y], &mut out);
                let expect: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a / 4.0 + b).collect();
                assert_eq!(out, expect, "map n={n}");
                struct InPlace<'a>(&'a mut [f32]);
                impl SimdFn for InPlace<'_> {
                    type Output = f32;
                    fn call<S: Simd>(self, s: S) -> f32 {
                        map_inplace(s, Quarter, self.0)
                    }
                }
                let mut z = x.clone();
                let total = dispatch_on(isa, InPlace(&mut z));
                assert!(
                    z.iter().zip(&x).all(|(z, x)| *z == x / 4.0),
                    "in place n={n}"
                );
                assert_eq!(total, z.iter().sum::<f32>(), "map_inplace sum n={n}");
            }
        }
    }

    #[test]
    fn mul_pow2_reaches_subnormals_and_infinity() {
        let s = Scalar;
        assert_eq!(s.mul_pow2(1.0, -149.0), f32::from_bits(1));
        assert_eq!(s.mul_pow2(1.5, 127.0), 1.5 * 2f32.powi(127));
        assert_eq!(s.mul_pow2(1.0, 128.0), f32::INFINITY);
        assert_eq!(s.round(2.5), 2.0);
        assert_eq!(s.round(-3.5), -4.0);
        assert_eq!(s.round(-0.4), -0.0);
    }
}

#[cfg(test)]
mod half_tests {
    use super::*;

    #[test]
    fn every_f16_widens_exactly() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut got = vec![0.0f32; all.len()];
        for isa in [Isa::Scalar, isa::detect()] {
            widen_f16_on(isa, &all, &mut got);
            for (&h, &v) in all.iter().zip(&got) {
                let want = half::f16::from_bits(h).to_f32();
                if want.is_nan() {
                    assert!(v.is_nan(), "{isa:?}: {h:#06x} gave {v}");
                } else {
                    assert_eq!(v.to_bits(), want.to_bits(), "{isa:?}: {h:#06x}");
                }
            }
        }
        // Odd lengths: the vector body and the scalar tail agree.
        let mut tail = vec![0.0f32; 13];
        widen_f16(&all[1000..1013], &mut tail);
        assert_eq!(tail, got[1000..1013]);
    }

    #[test]
    fn bf16_widens_to_its_upper_half() {
        let vals = [
            0.0f32,
            -1.5,
            3.140625,
            f32::INFINITY,
            -f32::MIN_POSITIVE,
            1e-40,
        ];
        let bits: Vec<u16> = vals.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let mut got = vec![0.0; vals.len()];
        widen_bf16(&bits, &mut got);
        for (v, g) in vals.iter().zip(&got) {
            assert_eq!(g.to_bits(), v.to_bits() & 0xffff_0000);
        }
    }
}
