//! Debugging aid: restores one image and prints what its agent says.
//! `cargo run -p stasis-restore --example restore_one -- IMAGE`
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;

fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: restore_one IMAGE"));
    let image = stasis_image::ImageReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let spawned = stasis_restore::spawn_restored(&path, &image, theirs.into()).unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for line in BufReader::new(ours).lines() {
            eprintln!("agent says: {}", line.unwrap_or_default().trim_end());
        }
    });
    eprintln!("restored: {:?}", spawned.wait());
}
