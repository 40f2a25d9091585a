//! `stasis inspect`: what an image holds, for people.

use std::path::PathBuf;

use anyhow::Result;
use stasis_image::{Compression, ImageReader};

use crate::exit::Exit;
use crate::output::print;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOpts {
    pub image: PathBuf,
    /// Also check every checksum of the payload, so that a damaged image
    /// is an error here too, not only at restart.
    pub verify: bool,
}

pub fn run(opts: InspectOpts) -> Result<Exit> {
    let reader = ImageReader::open(&opts.image)?;
    let mut text = stasis_image::render(reader.meta());
    if !text.ends_with('\n') {
        text.push('\n');
    }
    print(&text)?;
    if opts.verify {
        reader.verify_payload()?;
        // A compressed chunk must also decompress to its length.
        for c in reader.meta().chunks.iter().filter(|c| c.compression != Compression::None) {
            reader.chunk_data(c)?;
        }
        print("payload: every checksum matches\n")?;
    }
    Ok(Exit::Code(0))
}
