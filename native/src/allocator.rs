//! The master's tuning of glibc's allocator.
//!
//! glibc keeps freed small blocks in fastbins and merges them all at once
//! when a large block is next asked for. In a master with thousands of
//! connections that merge took 0.3–1.2 ms at a time in the simulated crowd,
//! inside whichever scheduler call allocated next. Without fastbins the
//! merge has nothing to do, and glibc's per-thread cache still serves small
//! blocks.

/// Turns glibc's fastbins off for this process; returns whether glibc took
/// the setting (false on other C libraries, which have no fastbins).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn without_fastbins() -> bool {
    // SAFETY: mallopt only sets a tuning parameter; M_MXFAST 0 is in its range.
    unsafe { libc::mallopt(libc::M_MXFAST, 0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn without_fastbins() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_the_setting() {
        assert!(super::without_fastbins(), "mallopt(M_MXFAST, 0) was refused");
    }
}
