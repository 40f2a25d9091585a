//! Computation ids: random, never zero (zero means "none" on the wire).

use std::io::{self, Read};

/// A fresh random computation id.
pub(crate) fn computation_id() -> io::Result<u64> {
    loop {
        let mut buf = [0u8; 8];
        fill(&mut buf)?;
        let id = u64::from_ne_bytes(buf);
        if id != 0 {
            return Ok(id);
        }
    }
}

/// Fills `buf` with random bytes from the kernel.
pub(crate) fn fill(buf: &mut [u8]) -> io::Result<()> {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).is_ok_and(|n| n == buf.len()) {
        return Ok(());
    }
    // An old kernel, or a seccomp filter that refuses getrandom.
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_differ() {
        let a = super::computation_id().unwrap();
        let b = super::computation_id().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
