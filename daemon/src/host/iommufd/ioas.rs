//! IOASes, the I/O address spaces guest RAM is mapped into (Linux `iommufd/ioas.c`): the
//! typed calls. The backend's IOASes are the blocked one, the stage-2 one and one per guest MAP
//! domain (held with their paging HWPT as a `hwpt::Space`).

use std::os::fd::{AsFd, BorrowedFd};

use iommufd_sys as sys;

use super::ids::{IoasId, Iommufd, Owned};

/// IOMMU_IOAS_ALLOC: a new, empty IOAS.
pub fn alloc(fd: &Iommufd) -> Result<Owned<IoasId>, sys::SysError> {
    let id = sys::ioas_alloc(fd.as_fd())?;
    Ok(Owned::new(fd, IoasId(id)))
}

/// IOMMU_IOAS_IOVA_RANGES: the IOVA ranges `(first, last)` every device attached to `ioas`
/// can use, and the IOVA alignment.
pub fn iova_ranges(fd: &Iommufd, ioas: IoasId) -> Result<(Vec<(u64, u64)>, u64), sys::SysError> {
    let (ranges, align) = sys::ioas_iova_ranges(fd.as_fd(), ioas.0)?;
    Ok((ranges.iter().map(|r| (r.start, r.last)).collect(), align))
}

/// IOMMU_IOAS_MAP of the process's `[host, host + len)` at `iova`.
pub fn map(
    fd: BorrowedFd<'_>,
    ioas: IoasId,
    iova: u64,
    host: u64,
    len: u64,
    prot: u32,
) -> Result<(), sys::SysError> {
    sys::ioas_map(fd, ioas.0, iova, host, len, prot)
}

/// IOMMU_IOAS_MAP_FILE of `file`'s `[start, start + len)` at `iova`.
pub fn map_file(
    fd: BorrowedFd<'_>,
    ioas: IoasId,
    iova: u64,
    file: BorrowedFd<'_>,
    start: u64,
    len: u64,
    prot: u32,
) -> Result<(), sys::SysError> {
    sys::ioas_map_file(fd, ioas.0, iova, file, start, len, prot)
}

/// IOMMU_IOAS_UNMAP of `[iova, iova + len)` ((0, u64::MAX): everything); returns the length
/// unmapped.
pub fn unmap(fd: BorrowedFd<'_>, ioas: IoasId, iova: u64, len: u64) -> Result<u64, sys::SysError> {
    sys::ioas_unmap(fd, ioas.0, iova, len)
}
