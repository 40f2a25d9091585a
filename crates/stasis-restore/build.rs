//! Builds the freestanding restorer (crates/stasis-restorer) in its own
//! target directory and embeds its loadable segments as a flat blob.
//!
//! The blob is copied to an arbitrary address at restart and run without
//! any loader. The only relocations it may have are R_X86_64_RELATIVE ones
//! (GOT slots holding the addresses of its own functions): they are listed
//! here and applied by restart after it places the blob. Any other kind
//! fails the build.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use object::{Object, ObjectSegment, RelocationFlags};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let restorer = manifest.join("../stasis-restorer");
    for p in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", restorer.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("../stasis-plan/src").display());

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("restorer-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline first: the outer build has already fetched everything the
    // restorer uses (its lock file pins the same versions). Online if not.
    let build = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["rustc", "--release", "--quiet", "--manifest-path"]);
        if offline {
            cmd.arg("--offline");
        }
        cmd.arg(restorer.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .args([
                "--",
                "-C",
                "relocation-model=pie",
                "-C",
                "link-arg=-nostartfiles",
                "-C",
                "link-arg=-nostdlib",
                "-C",
                "link-arg=-static-pie",
                "-C",
                "link-arg=-Wl,--entry=restorer_main",
                "-C",
                "link-arg=-Wl,-z,max-page-size=4096",
            ])
            // The outer build's flags and wrappers (clippy, coverage) are not
            // meant for freestanding code.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("run cargo to build the restorer")
    };
    let status = match build(true) {
        s if s.success() => s,
        _ => build(false),
    };
    assert!(status.success(), "building crates/stasis-restorer failed");

    let elf_path = target_dir.join("release/stasis-restorer");
    let data = fs::read(&elf_path).expect("read the restorer binary");
    let file = object::File::parse(&*data).expect("parse the restorer binary");
    let mut relocs: Vec<(u64, i64)> = Vec::new();
    for (offset, r) in file.dynamic_relocations().into_iter().flatten() {
        match r.flags() {
            RelocationFlags::Elf { r_type: object::elf::R_X86_64_RELATIVE } => relocs.push((offset, r.addend())),
            other => panic!("the restorer has a relocation restart cannot apply: {other:?} at {offset:#x}"),
        }
    }
    let mut image: Vec<u8> = Vec::new();
    for seg in file.segments() {
        let (addr, size) = (seg.address() as usize, seg.size() as usize);
        if size == 0 {
            continue;
        }
        if image.len() < addr + size {
            image.resize(addr + size, 0);
        }
        let bytes = seg.data().expect("segment data");
        image[addr..addr + bytes.len()].copy_from_slice(bytes);
    }
    image.resize(image.len().next_multiple_of(4096), 0);
    fs::write(out.join("restorer.bin"), &image).expect("write restorer.bin");
    fs::write(out.join("restorer_entry.rs"), format!("{}\n", file.entry())).expect("write restorer_entry.rs");
    let table: String = relocs.iter().map(|(o, a)| format!("({o:#x}, {a:#x}), ")).collect();
    fs::write(out.join("restorer_relocs.rs"), format!("[{table}]\n")).expect("write restorer_relocs.rs");
}
