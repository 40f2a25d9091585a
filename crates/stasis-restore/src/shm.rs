//! Shared memory that no file brings back (MAP_SHARED|MAP_ANONYMOUS shared
//! across fork, deleted /dev/shm files, memfds, SysV segments): one memfd
//! per object, made by restart before the processes, filled from the
//! images, inherited by every process and mapped by each one that had the
//! object mapped, so that what one writes the others see again.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use stasis_image::{ChunkKind, ImageReader, RegionKind};

/// (dev, inode) of an object at checkpoint time.
type Name = (u64, u64);

pub struct SharedMemory {
    objects: HashMap<Name, i32>,
}

impl SharedMemory {
    /// Makes and fills every object the images map, at descriptors >= `min_fd`.
    pub fn create(images: &[&ImageReader], min_fd: i32) -> Result<SharedMemory, String> {
        let mut shm = SharedMemory { objects: HashMap::new() };
        let result = shm.fill(images, min_fd);
        if result.is_err() {
            shm.close();
        }
        result.map(|()| shm)
    }

    fn fill(&mut self, images: &[&ImageReader], min_fd: i32) -> Result<(), String> {
        // Each object's size: the furthest any process mapped it.
        let mut sizes: Vec<(Name, u64)> = Vec::new();
        for image in images {
            for r in &image.meta().regions {
                let RegionKind::SharedMemory { dev, inode, offset } = r.kind else { continue };
                let end = offset + (r.end - r.start);
                match sizes.iter_mut().find(|(n, _)| *n == (dev, inode)) {
                    Some((_, size)) => *size = (*size).max(end),
                    None => sizes.push(((dev, inode), end)),
                }
            }
        }
        for (name, size) in sizes {
            let fd = memfd(min_fd)?;
            self.objects.insert(name, fd);
            borrowed(fd).set_len(size).map_err(|e| format!("size shared memory: {e}"))?;
        }
        // Every copy of an object's pages is of one instant: the first image
        // that saved a range of an object gives it, the others are skipped.
        let mut covered: HashMap<Name, Vec<(u64, u64)>> = HashMap::new();
        for image in images {
            let meta = image.meta();
            let mut mine: Vec<(Name, (u64, u64))> = Vec::new();
            for c in &meta.chunks {
                let ChunkKind::Memory { region, offset } = c.kind else { continue };
                let r = &meta.regions[region as usize];
                let RegionKind::SharedMemory { dev, inode, offset: base } = r.kind else { continue };
                let at = base + offset;
                let range = (at, at + c.data_len);
                let done =
                    covered.get(&(dev, inode)).is_some_and(|v| v.iter().any(|&(s, e)| s <= range.0 && range.1 <= e));
                if done {
                    continue;
                }
                let data = image.chunk_data(c).map_err(|e| e.to_string())?;
                borrowed(self.objects[&(dev, inode)])
                    .write_all_at(&data, at)
                    .map_err(|e| format!("fill shared memory: {e}"))?;
            }
            for r in &meta.regions {
                if let RegionKind::SharedMemory { dev, inode, offset } = r.kind {
                    mine.push(((dev, inode), (offset, offset + (r.end - r.start))));
                }
            }
            for (name, range) in mine {
                covered.entry(name).or_default().push(range);
            }
        }
        Ok(())
    }

    /// The descriptor of object (dev, inode), in this process.
    pub fn get(&self, dev: u64, inode: u64) -> Option<i32> {
        self.objects.get(&(dev, inode)).copied()
    }

    pub fn fds(&self) -> Vec<i32> {
        self.objects.values().copied().collect()
    }

    /// Closes this process's copies (mappings made from them stay).
    pub fn close(&self) {
        for &fd in self.objects.values() {
            // SAFETY: closing descriptors this table owns.
            unsafe { libc::close(fd) };
        }
    }
}

/// A new memfd at a descriptor >= `min_fd`.
fn memfd(min_fd: i32) -> Result<i32, String> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"stasis-shm".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: F_DUPFD_CLOEXEC on the descriptor just made.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min_fd) };
    // SAFETY: closing the original.
    unsafe { libc::close(fd) };
    if moved < 0 {
        return Err(format!("move a memfd: {}", std::io::Error::last_os_error()));
    }
    Ok(moved)
}

/// `fd` as a File that never closes it.
fn borrowed(fd: i32) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is open and owned by the table; ManuallyDrop keeps the
    // File from closing it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}
