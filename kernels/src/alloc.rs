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
