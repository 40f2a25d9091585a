//! Pure decisions about the restored address space: where the restorer
//! can live, and the signal frames that return each thread to its code.

use stasis_image::Thread;
use stasis_plan::{UC_FPSTATE_OFFSET, UC_SIGMASK_OFFSET, UCONTEXT_LEN};

pub const PAGE: u64 = 4096;
/// Lowest address we place anything at (above any mmap_min_addr).
pub const LOW: u64 = 0x1_0000_0000;
/// Top of the user address space with 4-level paging.
pub const HIGH: u64 = 0x7fff_ffff_f000;

/// Candidate start addresses for `size` bytes that overlap none of
/// `occupied` (half-open ranges), keeping a page of space on both sides;
/// highest first.
pub fn gaps(occupied: &[(u64, u64)], size: u64) -> Vec<u64> {
    let mut ranges: Vec<(u64, u64)> = occupied.to_vec();
    ranges.sort_unstable();
    let mut out = Vec::new();
    let mut prev_end = LOW;
    let mut push_gap = |lo: u64, hi: u64| {
        let lo = lo.max(LOW).saturating_add(PAGE);
        let hi = hi.min(HIGH).saturating_sub(PAGE);
        if hi > lo && hi - lo >= size {
            // Both ends of the gap: one of them is usually far from
            // anything the current process has mapped.
            out.push((hi - size) & !(PAGE - 1));
            out.push(lo.next_multiple_of(PAGE));
        }
    };
    for &(s, e) in &ranges {
        if s > prev_end {
            push_gap(prev_end, s);
        }
        prev_end = prev_end.max(e);
    }
    push_gap(prev_end, HIGH);
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.dedup();
    out
}

/// Size of an rt_sigframe before its FPU state: return address (8),
/// ucontext, siginfo (128).
pub const FRAME_HEAD: usize = 8 + UCONTEXT_LEN + 128;

/// Bytes a thread's frame needs, FPU state included (64-byte aligned).
pub fn frame_len(t: &Thread) -> u64 {
    (FRAME_HEAD.next_multiple_of(64) + t.fpstate.len()).next_multiple_of(64) as u64
}

/// Builds the rt_sigframe for `t` as it will lie at `addr` (64-aligned):
/// the saved ucontext, its FPU state pointer aimed at the copy right after
/// it, and the checkpoint signal removed from the mask it restores.
pub fn build_frame(t: &Thread, addr: u64, ckpt_signal: i32) -> Vec<u8> {
    let mut f = vec![0u8; frame_len(t) as usize];
    let uc = &mut f[8..8 + UCONTEXT_LEN];
    uc.copy_from_slice(&t.ucontext);
    let fp_off = FRAME_HEAD.next_multiple_of(64);
    let fp_addr = if t.fpstate.is_empty() { 0 } else { addr + fp_off as u64 };
    uc[UC_FPSTATE_OFFSET..UC_FPSTATE_OFFSET + 8].copy_from_slice(&fp_addr.to_le_bytes());
    let mut mask = u64::from_le_bytes(uc[UC_SIGMASK_OFFSET..UC_SIGMASK_OFFSET + 8].try_into().unwrap_or_default());
    if (1..=64).contains(&ckpt_signal) {
        mask &= !(1u64 << (ckpt_signal - 1));
    }
    uc[UC_SIGMASK_OFFSET..UC_SIGMASK_OFFSET + 8].copy_from_slice(&mask.to_le_bytes());
    f[fp_off..fp_off + t.fpstate.len()].copy_from_slice(&t.fpstate);
    f
}

/// Ranges overlap (half-open).
#[cfg(test)]
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_avoid_everything_with_guard_pages() {
        let occ = [(LOW + 0x10000, LOW + 0x20000), (0x7f00_0000_0000, 0x7f00_0010_0000)];
        let size = 0x8000;
        let g = gaps(&occ, size);
        assert!(!g.is_empty());
        for start in g {
            assert_eq!(start % PAGE, 0);
            for &(s, e) in &occ {
                assert!(!overlaps((start - PAGE, start + size + PAGE), (s, e)), "{start:#x}");
            }
            assert!(start >= LOW && start + size <= HIGH);
        }
    }

    #[test]
    fn no_gap_when_full() {
        assert!(gaps(&[(0, u64::MAX)], PAGE).is_empty());
    }

    #[test]
    fn frame_points_at_its_fpstate_and_unblocks_our_signal() {
        let mut uc = vec![0u8; UCONTEXT_LEN];
        uc[UC_SIGMASK_OFFSET..UC_SIGMASK_OFFSET + 8].copy_from_slice(&(u64::MAX).to_le_bytes());
        let t = Thread { ucontext: uc, fpstate: vec![7u8; 832], ..Default::default() };
        let addr = 0x7000_0000_0040;
        let f = build_frame(&t, addr, 62);
        assert_eq!(f.len() as u64, frame_len(&t));
        let uc = &f[8..8 + UCONTEXT_LEN];
        let fp = u64::from_le_bytes(uc[UC_FPSTATE_OFFSET..UC_FPSTATE_OFFSET + 8].try_into().unwrap());
        assert_eq!(fp % 64, 0);
        assert_eq!(&f[(fp - addr) as usize..(fp - addr) as usize + 832], &[7u8; 832][..]);
        let mask = u64::from_le_bytes(uc[UC_SIGMASK_OFFSET..UC_SIGMASK_OFFSET + 8].try_into().unwrap());
        assert_eq!(mask, !(1u64 << 61));
    }
}
