//! Process-wide allocator policy, for applications to opt into (a library must not change it
//! behind its caller's back).

/// Keep freed large buffers in the process. A training step frees and reallocates the same
/// activation-sized buffers (megabytes each) every step; by default glibc returns them to the
/// kernel (`mmap` above its adaptive threshold, heap trimming past twice that), so each step
/// page-faults them back in and the kernel zeroes every page: about 22,000 faults and 5-10 % of a
/// ResNet-18 CIFAR training step at batch 128. Fixing the mmap threshold at 32 MiB and trimming
/// only past 256 MiB of free heap keeps them. Idempotent; a no-op off glibc or when
/// `TLC_KEEP_MALLOC_DEFAULTS` is set.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("TLC_KEEP_MALLOC_DEFAULTS").is_some() {
                return;
            }
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt is glibc's documented, thread-safe tuning call (this cfg is glibc
            // only); it takes two ints and changes allocation policy, never live blocks.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 256 << 20);
            }
        });
    }
}

/// A zeroed `Vec<f32>` of `n` values, zeroed in parallel when large. `vec![0.0; n]` zeroes on the
/// calling thread: with freed buffers kept in the process (see [`keep_freed_memory`]) `calloc`
/// must `memset` the reused block, a serial pass over every activation-sized output that two
/// threads then wait for (ReLU's forward did not speed up at all with a second thread).
pub fn zeroed_f32(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if !crate::parallel::worth_splitting(n, crate::parallel::ELEMWISE_PAR_MIN_ELEMS) {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_is_all_zero_at_every_size() {
        for n in [0, 1, 1000, 1 << 17, (1 << 20) + 3] {
            let v = super::zeroed_f32(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "n = {n}");
        }
    }
}
