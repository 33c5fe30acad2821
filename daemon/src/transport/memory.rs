//! The frontend's memory table, checked before the device touches it.
//!
//! A region is a window of a file the frontend sent (SET_MEM_TABLE, ADD_MEM_REG). Reading a
//! mapping past the end of its file raises SIGBUS, which would end the daemon, so a region is
//! refused unless it lies inside its file and the file cannot shrink underneath it later: the
//! file must be a memfd sealed with F_SEAL_SHRINK (QEMU's `memory-backend-memfd` seals it so by
//! default, `seal=on`). A file that cannot be sealed (a plain file, hugetlbfs through
//! `memory-backend-file`) is refused: the daemon cannot prove it will stay backed. docs/VMM-TRUST.md
//! has the reasoning.
//!
//! A table has at most [`MAX_REGIONS`] regions: each keeps its file open in the daemon, and
//! ADD_MEM_REG adds them one at a time without a bound of its own.

use std::os::fd::AsRawFd;

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The most regions a table may have: what one SET_MEM_TABLE can carry (one fd per region, at
/// most 32 fds per message). Only ADD_MEM_REG adds more, and that needs CONFIGURE_MEM_SLOTS,
/// which the daemon does not offer: a frontend that acks it anyway could otherwise make one
/// session hold every file the daemon may open.
pub const MAX_REGIONS: usize = 32;

/// Why a memory table is refused. The frontend's request fails; the previous table stays.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryTableError {
    #[error("memory region {index} (guest {gpa:#x}, {size:#x} bytes) has no file behind it")]
    NoFile { index: usize, gpa: u64, size: u64 },
    #[error(
        "memory region {index} (guest {gpa:#x}): offset {offset:#x} + size {size:#x} wraps around"
    )]
    Wraps {
        index: usize,
        gpa: u64,
        offset: u64,
        size: u64,
    },
    #[error(
        "memory region {index} (guest {gpa:#x}) needs bytes up to {needed:#x} of its file, which \
         holds {file_size:#x}: the region would fault past the end of the file"
    )]
    BeyondFile {
        index: usize,
        gpa: u64,
        needed: u64,
        file_size: u64,
    },
    #[error(
        "memory region {index} (guest {gpa:#x}): its file is not sealed against shrinking \
         (F_SEAL_SHRINK); give guest RAM as a sealed memfd (QEMU: memory-backend-memfd with \
         seal=on, its default)"
    )]
    Unsealed { index: usize, gpa: u64 },
    #[error("memory region {index} (guest {gpa:#x}): cannot inspect its file: {errno}")]
    Inspect { index: usize, gpa: u64, errno: i32 },
    #[error("a memory table of {count} regions: at most {MAX_REGIONS}")]
    TooManyRegions { count: usize },
}

/// Check every region of `mem` against its file: inside it, and sealed against shrinking; and
/// that there are at most [`MAX_REGIONS`].
pub fn check_table(mem: &GuestMemoryMmap) -> Result<(), MemoryTableError> {
    let count = mem.iter().count();
    if count > MAX_REGIONS {
        return Err(MemoryTableError::TooManyRegions { count });
    }
    for (index, r) in mem.iter().enumerate() {
        let gpa = r.start_addr().raw_value();
        let size = r.len();
        let Some(fo) = r.file_offset() else {
            return Err(MemoryTableError::NoFile { index, gpa, size });
        };
        let offset = fo.start();
        let needed = offset.checked_add(size).ok_or(MemoryTableError::Wraps {
            index,
            gpa,
            offset,
            size,
        })?;
        let fd = fo.file().as_raw_fd();
        let inspect = |errno| MemoryTableError::Inspect { index, gpa, errno };
        // SAFETY: F_GET_SEALS on a descriptor the region owns; no memory is passed.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        if seals < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // EINVAL: a file that does not support seals at all.
            if errno == libc::EINVAL {
                return Err(MemoryTableError::Unsealed { index, gpa });
            }
            return Err(inspect(errno));
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(MemoryTableError::Unsealed { index, gpa });
        }
        let file_size = fo
            .file()
            .metadata()
            .map_err(|e| inspect(e.raw_os_error().unwrap_or(0)))?
            .len();
        if needed > file_size {
            return Err(MemoryTableError::BeyondFile {
                index,
                gpa,
                needed,
                file_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    fn memfd(size: u64, seals: libc::c_int) -> File {
        let name = CString::new("vui-memory-test").unwrap();
        // SAFETY: a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        if seals != 0 {
            // SAFETY: F_ADD_SEALS on our own memfd.
            assert_eq!(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }, 0);
        }
        f
    }

    fn table(file: File, offset: u64, size: usize) -> GuestMemoryMmap {
        let region = MmapRegion::from_file(FileOffset::new(file, offset), size).unwrap();
        GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(
            region,
            GuestAddress(0x1000_0000),
        )
        .unwrap()])
        .unwrap()
    }

    #[test]
    fn a_sealed_region_inside_its_file_is_accepted() {
        let f = memfd(0x20_0000, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
        assert_eq!(check_table(&table(f, 0x1000, 0x10_0000)), Ok(()));
    }

    #[test]
    fn a_table_of_more_regions_than_one_message_carries_is_refused() {
        let regions = |n: u64| {
            let regions = (0..n)
                .map(|i| {
                    let f = memfd(0x1000, libc::F_SEAL_SHRINK);
                    let region = MmapRegion::from_file(FileOffset::new(f, 0), 0x1000).unwrap();
                    GuestRegionMmap::new(region, GuestAddress(i * 0x10000)).unwrap()
                })
                .collect();
            GuestMemoryMmap::from_regions(regions).unwrap()
        };
        assert_eq!(check_table(&regions(MAX_REGIONS as u64)), Ok(()));
        assert_eq!(
            check_table(&regions(MAX_REGIONS as u64 + 1)),
            Err(MemoryTableError::TooManyRegions {
                count: MAX_REGIONS + 1
            })
        );
    }

    #[test]
    fn a_region_past_the_end_of_its_file_is_refused() {
        let f = memfd(0x10_0000, libc::F_SEAL_SHRINK);
        assert_eq!(
            check_table(&table(f, 0x1000, 0x10_0000)),
            Err(MemoryTableError::BeyondFile {
                index: 0,
                gpa: 0x1000_0000,
                needed: 0x10_1000,
                file_size: 0x10_0000
            })
        );
    }

    #[test]
    fn a_file_that_may_shrink_is_refused() {
        let f = memfd(0x10_0000, 0);
        assert_eq!(
            check_table(&table(f, 0, 0x1000)),
            Err(MemoryTableError::Unsealed {
                index: 0,
                gpa: 0x1000_0000
            })
        );
        // A plain file cannot be sealed at all.
        let dir = std::env::temp_dir().join(format!("vui-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(0x1000).unwrap();
        assert!(matches!(
            check_table(&table(f, 0, 0x1000)),
            Err(MemoryTableError::Unsealed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
