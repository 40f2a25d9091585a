//! Regions the program marked MADV_DONTFORK or MADV_WIPEONFORK (V8 marks
//! its heap and code so). The image writer is a fork of the process: it
//! would not have the first kind at all and would see the second as zeros.
//! While every thread is stopped, the checkpoint lifts those advices just
//! for the fork and puts them back in the program at once, so the program
//! never runs changed. The image records them; restart applies them again.

use stasis_image::{ADVICE_DONTFORK, ADVICE_WIPEONFORK, Region};

use crate::sys;

/// The advices lifted for one fork; `restore` puts them back.
pub struct Lifted<'a> {
    regions: &'a [Region],
    /// How many (region, advice) pairs were lifted, in `pairs` order.
    done: usize,
}

/// Each region's advices, with the madvise that lifts and the one that
/// sets it: (region, lift, set).
fn pairs(regions: &[Region]) -> impl Iterator<Item = (&Region, i32, i32)> {
    regions.iter().flat_map(|r| {
        let dd = (r.fork_advice & ADVICE_DONTFORK != 0).then_some((r, libc::MADV_DOFORK, libc::MADV_DONTFORK));
        let wf = (r.fork_advice & ADVICE_WIPEONFORK != 0).then_some((r, libc::MADV_KEEPONFORK, libc::MADV_WIPEONFORK));
        dd.into_iter().chain(wf)
    })
}

fn advice_name(advice: i32) -> &'static str {
    match advice {
        libc::MADV_DONTFORK => "MADV_DONTFORK",
        libc::MADV_DOFORK => "MADV_DOFORK",
        libc::MADV_WIPEONFORK => "MADV_WIPEONFORK",
        _ => "MADV_KEEPONFORK",
    }
}

/// Names a region in a message: its range and what maps it.
pub fn describe(r: &Region) -> String {
    let name = if r.name.is_empty() { "anonymous memory" } else { r.name.as_str() };
    format!("{:#x}-{:#x} ({name})", r.start, r.end)
}

/// Lifts every region's fork advice. On failure nothing stays lifted and
/// the error names the region.
pub fn lift(regions: &[Region]) -> Result<Lifted<'_>, String> {
    let mut lifted = Lifted { regions, done: 0 };
    for (r, lift, _) in pairs(regions) {
        if let Err(e) = sys::madvise_fork(r.start, r.end - r.start, lift) {
            let undo = lifted.restore();
            let mut msg = format!(
                "region {}: {} failed (errno {e}); the image writer could not read it, so it would be lost",
                describe(r),
                advice_name(lift)
            );
            if let Err(u) = undo {
                msg.push_str("; and ");
                msg.push_str(&u);
            }
            return Err(msg);
        }
        lifted.done += 1;
    }
    Ok(lifted)
}

impl Lifted<'_> {
    /// Puts every lifted advice back; an error names each region left
    /// without its advice (the program runs on, changed in that respect).
    pub fn restore(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (r, _, set) in pairs(self.regions).take(self.done) {
            if let Err(e) = sys::madvise_fork(r.start, r.end - r.start, set) {
                failed.push(format!("{} of region {} (errno {e})", advice_name(set), describe(r)));
            }
        }
        self.done = 0;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("could not set again {}; the program now runs without it", failed.join(", ")))
        }
    }
}
