//! Debugging aid: prints the regions and chunks of an image, checking each
//! chunk. `cargo run -p stasis-restore --example dump -- IMAGE`
fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: dump IMAGE"));
    let image = stasis_image::ImageReader::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let m = image.meta();
    for (i, r) in m.regions.iter().enumerate() {
        let saved: u64 = m
            .chunks
            .iter()
            .filter(|c| matches!(c.kind, stasis_image::ChunkKind::Memory { region, .. } if region as usize == i))
            .map(|c| c.len)
            .sum();
        println!("{i:3} {:#x}-{:#x} prot {} {:?} {} saved {saved}", r.start, r.end, r.prot, r.kind, r.name);
    }
    for (i, c) in m.chunks.iter().enumerate() {
        let check = image.chunk_data(c).err().map_or("ok".to_string(), |e| e.to_string());
        println!("chunk {i} {:?} len {} {check}", c.kind, c.len);
    }
}
