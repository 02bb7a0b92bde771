//! Per-thread packing buffers, reused across calls so steady-state GEMMs allocate nothing.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Floats of slack so a buffer can start on a 64-byte (cache line) boundary.
const ALIGN_FLOATS: usize = 16;

thread_local! {
    /// Packed A blocks (each thread packs its own).
    pub(crate) static A_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed B blocks (owned by the calling thread, shared read-only with the workers).
    pub(crate) static B_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The cache-line-aligned window of `len` floats inside `v`, growing `v` if needed.
pub(crate) fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + ALIGN_FLOATS {
        v.resize(len + ALIGN_FLOATS, 0.0);
    }
    let off = v.as_ptr().align_offset(64).min(ALIGN_FLOATS);
    &mut v[off..off + len]
}

/// Run `f` on an aligned scratch slice of `len` floats from `key`. A re-entrant call on the same
/// thread (a rayon worker running another GEMM while it waits) gets a fresh allocation instead.
pub(crate) fn with<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(aligned(&mut v, len)),
        Err(_) => f(aligned(&mut Vec::new(), len)),
    })
}
