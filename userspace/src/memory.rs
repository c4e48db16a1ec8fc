//! Giving back the memory that starting up used.
//!
//! Start-up needs far more memory than serving: loading the eBPF object parses the kernel's
//! BTF (several MiB), and the configuration and certificates are parsed more than once.
//! glibc keeps freed pages resident in its heap, so without this they would stay in
//! postern's resident size for its whole life, and connections made later would reuse them
//! (which hides what a connection costs). Once serving, postern hands them back.

/// Returns the heap's free pages to the kernel.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own heap, under its own locks; it has no
    // preconditions and invalidates no allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
