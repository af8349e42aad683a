//! A hint that large, randomly probed tables be backed by transparent huge
//! pages. With 1 M rate-limit keys the bucket table (~64 MiB) is far beyond
//! the TLB's reach on 4 KiB pages, and on a VM each TLB miss is a
//! two-level page walk: `cargo bench -p asgi-gate-benches --bench ratelimit
//! -- 1M_keys_random` went from ~220 ns to under 200 ns with huge pages.
//! Only a hint: where THP is off (or not Linux) nothing changes.
#![allow(unsafe_code)]

/// Below this a table gains little and would round RSS up to 2 MiB.
const MIN_BYTES: usize = 4 << 20;

/// Advises the kernel to back the allocation of `v` (its whole capacity)
/// with huge pages. Call it before the memory is first written, so that the
/// first touches fault in huge pages rather than 4 KiB ones.
pub(crate) fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_BYTES {
        return;
    }
    advise_range(v.as_ptr() as usize, bytes);
}

#[cfg(target_os = "linux")]
fn advise_range(start: usize, len: usize) {
    const PAGE: usize = 4096;
    let first = start.next_multiple_of(PAGE);
    let end = (start + len) / PAGE * PAGE;
    if end <= first {
        return;
    }
    // SAFETY: [first, end) lies inside one live allocation owned by the
    // caller (page-aligned inwards), and MADV_HUGEPAGE only changes how the
    // kernel backs those pages, never their contents. A failure (THP
    // disabled, old kernel) is ignored: the hint is optional.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_start: usize, _len: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping holding `addr` in /proc/self/smaps.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn large_tables_are_advised_small_ones_not() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("kernel without transparent huge pages: nothing to check");
            return;
        }
        let mut big: Vec<u64> = Vec::with_capacity(MIN_BYTES / 8 * 2);
        advise(&big);
        big.resize(big.capacity(), 7);
        assert!(big.iter().all(|&v| v == 7));
        let mid = big.as_ptr() as usize + MIN_BYTES;
        assert!(vm_flags(mid).contains(" hg"), "{}", vm_flags(mid));

        let mut small: Vec<u64> = Vec::with_capacity(1024);
        advise(&small);
        small.resize(1024, 1);
        let at = small.as_ptr() as usize;
        assert!(!vm_flags(at).contains(" hg"), "{}", vm_flags(at));
    }
}
