//! Debugging aid: restores one image and prints what its agent says.
//! With DIR and SECONDS, checkpoints the restored process into DIR after
//! SECONDS, then kills it (to test restart of a restart).
//! `cargo run -p stasis-restore --example restore_one -- IMAGE [DIR SECONDS]`
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = std::path::PathBuf::from(args.next().expect("usage: restore_one IMAGE [DIR SECONDS]"));
    let again: Option<(String, f64)> =
        args.next().map(|d| (d, args.next().and_then(|s| s.parse().ok()).unwrap_or(0.5)));
    let image = stasis_image::ImageReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let generation = image.meta().generation + 1;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let spawned = stasis_restore::spawn_computation(&[&image], vec![theirs.into()], None, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let init = spawned.pid();
    std::thread::spawn(move || {
        let mut w = ours.try_clone().expect("clone");
        for line in BufReader::new(ours).lines() {
            let line = line.unwrap_or_default();
            eprintln!("agent says: {}", line.trim_end());
            if let Some((dir, secs)) = &again {
                if line.starts_with("HELLO") {
                    std::thread::sleep(std::time::Duration::from_secs_f64(*secs));
                    std::fs::create_dir_all(dir).expect("mkdir");
                    let _ = writeln!(w, "CHECKPOINT generation={generation} dir={dir}");
                } else if line.starts_with("WRITTEN") || line.starts_with("FAILED") {
                    // SAFETY: killing the namespace's init ends the restored process too.
                    unsafe { libc::kill(init, libc::SIGKILL) };
                }
            }
        }
    });
    eprintln!("restored: {:?}", spawned.wait());
}
