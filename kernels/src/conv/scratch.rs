//! Per-thread scratch buffers (patch tiles, padded planes), reused across calls so steady-state
//! convolution allocates nothing.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on a zero-initialised-once scratch slice of `len` floats (contents unspecified).
///
/// The buffer is taken out of the thread-local while `f` runs: if rayon runs another convolution
/// task on this thread meanwhile (work stealing inside a nested join), that task finds the slot
/// empty and uses a fresh buffer instead of aliasing this one.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut slot = s.borrow_mut();
        if slot.len() < buf.len() {
            *slot = buf;
        }
    });
    r
}
