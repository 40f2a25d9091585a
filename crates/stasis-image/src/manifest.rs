/// The record that commits a generation: it is written last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub generation: u64,
    pub computation_id: u64,
    pub created_unix: u64,
    pub interval_s: u32,
    pub processes: Vec<ManifestProcess>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestProcess {
    pub pid: i32,
    pub name: String,
    /// Image file name, relative to the generation directory.
    pub image: String,
}
