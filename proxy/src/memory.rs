//! Giving freed memory back to the OS. glibc keeps large freed blocks in the
//! heap once its dynamic mmap threshold has risen, so after rate-limit
//! housekeeping drops a million idle buckets the process stayed at 42 MiB
//! instead of 2 MiB (`ratelimit_soak`, 1 M keys); `malloc_trim` returns it.
#![allow(unsafe_code)]

/// Slots (32 bytes each) a housekeeping pass must free before trimming is
/// worth a syscall-heavy heap walk: about 8 MiB.
pub const TRIM_AFTER_FREED_SLOTS: usize = 256 * 1024;

/// Returns free heap memory to the OS.
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own heap;
    // it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
