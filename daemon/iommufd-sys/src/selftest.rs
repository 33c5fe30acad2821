//! The iommufd selftest (`drivers/iommu/iommufd/iommufd_test.h`, CONFIG_IOMMUFD_TEST): the
//! `IOMMU_TEST_CMD` ioctl on /dev/iommu and the mock driver's data types.
//!
//! The daemon uses the mock devices (MOCK_DOMAIN, MOCK_DOMAIN_REPLACE, the PASID ops) and the
//! mock's nesting types; the test tools also use the checks (MD_CHECK_MAP, MD_CHECK_REFS,
//! MD_CHECK_IOTLB, DEV_CHECK_CACHE, PASID_CHECK_HWPT), ADD_RESERVED and the event triggers
//! (TRIGGER_IOPF, TRIGGER_VEVENT). Everything here is re-exported at the crate root.
//!
//! Checked against Linux 7.3 (`iommufd_test.h`, and `iommufd_test()` in `selftest.c` for which
//! fields each op reads).

use std::os::fd::BorrowedFd;

use crate::{io, ioctl, SysError};

/// `IOMMU_TEST_CMD` = `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)`.
pub const IOMMU_TEST_CMD: u64 = io(0x80 + 32);

/// The ops (the anonymous enum of `iommufd_test.h`, counted from ADD_RESERVED = 1) this crate
/// issues.
pub const IOMMU_TEST_OP_ADD_RESERVED: u32 = 1;
pub const IOMMU_TEST_OP_MOCK_DOMAIN: u32 = 2;
pub const IOMMU_TEST_OP_MD_CHECK_MAP: u32 = 3;
pub const IOMMU_TEST_OP_MD_CHECK_REFS: u32 = 4;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
pub const IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
pub const IOMMU_TEST_OP_MD_CHECK_IOTLB: u32 = 14;
pub const IOMMU_TEST_OP_TRIGGER_IOPF: u32 = 15;
pub const IOMMU_TEST_OP_DEV_CHECK_CACHE: u32 = 16;
pub const IOMMU_TEST_OP_TRIGGER_VEVENT: u32 = 17;
pub const IOMMU_TEST_OP_PASID_ATTACH: u32 = 18;
pub const IOMMU_TEST_OP_PASID_REPLACE: u32 = 19;
pub const IOMMU_TEST_OP_PASID_DETACH: u32 = 20;
pub const IOMMU_TEST_OP_PASID_CHECK_HWPT: u32 = 21;

/// The mock domain's IOVA aperture (MOCK_IOMMUPT_DEFAULT): `[16 MiB, 2 GiB)`.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// Mock device flag: the device has PASIDs (MOCK_PASID_WIDTH = 20 bits).
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// Entries of a mock nested HWPT's IOTLB (MD_CHECK_IOTLB ids `0..4`).
pub const MOCK_NESTED_DOMAIN_IOTLB_NUM: u32 = 4;
/// Entries of a mock device's cache (DEV_CHECK_CACHE ids `0..4`).
pub const MOCK_DEV_CACHE_NUM: u32 = 4;
/// What a new mock nested HWPT's IOTLB entries hold.
pub const IOMMU_TEST_IOTLB_DEFAULT: u32 = 0xbad_beef;
/// What a new mock device's cache entries hold.
pub const IOMMU_TEST_DEV_CACHE_DEFAULT: u32 = 0xba_ddad;

/// The selftest mock's nested data, `struct iommu_hwpt_selftest {u32 iotlb}` (Linux 7.3 adds
/// `u32 pagetable_type`; passing only `iotlb` leaves it 0, MOCK_IOMMUPT_DEFAULT).
pub const IOMMU_HWPT_DATA_SELFTEST: u32 = 0xdead;
/// GET_HW_INFO type of a mock device.
pub const IOMMU_HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// HWPT_INVALIDATE data types of a mock nested HWPT and of a mock vIOMMU.
pub const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
pub const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// VIOMMU_ALLOC type of the mock vIOMMU.
pub const IOMMU_VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// VEVENTQ_ALLOC type of the mock vIOMMU's event queue.
pub const IOMMU_VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;

/// `struct iommu_test_cmd`: 16 bytes of header, a 48-byte union (its largest member, `dirty`,
/// is a u32 and five u64), `last`, padding to 8: 72 bytes. The union is kept as raw u64 words;
/// the accessors below place each op's fields where the C layout puts them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuTestCmd {
    pub size: u32,
    pub op: u32,
    pub id: u32,
    pub reserved: u32,
    pub union: [u64; 6],
    pub last: u32,
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<IommuTestCmd>() == 72);
const _: () = assert!(std::mem::offset_of!(IommuTestCmd, union) == 16);
const _: () = assert!(std::mem::offset_of!(IommuTestCmd, last) == 64);

impl IommuTestCmd {
    pub fn new(op: u32, id: u32) -> Self {
        IommuTestCmd {
            size: std::mem::size_of::<Self>() as u32,
            op,
            id,
            ..Default::default()
        }
    }
    /// The union's 32-bit words, in memory order (little-endian halves of the u64 words).
    pub fn u32_at(&self, i: usize) -> u32 {
        let w = self.union[i / 2];
        if i.is_multiple_of(2) {
            w as u32
        } else {
            (w >> 32) as u32
        }
    }
    pub fn set_u32_at(&mut self, i: usize, v: u32) {
        let w = &mut self.union[i / 2];
        if i.is_multiple_of(2) {
            *w = (*w & !0xffff_ffff) | u64::from(v);
        } else {
            *w = (*w & 0xffff_ffff) | (u64::from(v) << 32);
        }
    }
}

/// The ops [`test_cmd`] issues: those of this module, none of which makes the kernel write
/// through a user pointer (MD_CHECK_MAP and MD_CHECK_REFS only look up the pages at `uptr`).
/// ACCESS_RW and DIRTY, which write to user memory, are refused.
const SAFE_OPS: [u32; 14] = [
    IOMMU_TEST_OP_ADD_RESERVED,
    IOMMU_TEST_OP_MOCK_DOMAIN,
    IOMMU_TEST_OP_MD_CHECK_MAP,
    IOMMU_TEST_OP_MD_CHECK_REFS,
    IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
    IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS,
    IOMMU_TEST_OP_MD_CHECK_IOTLB,
    IOMMU_TEST_OP_TRIGGER_IOPF,
    IOMMU_TEST_OP_DEV_CHECK_CACHE,
    IOMMU_TEST_OP_TRIGGER_VEVENT,
    IOMMU_TEST_OP_PASID_ATTACH,
    IOMMU_TEST_OP_PASID_REPLACE,
    IOMMU_TEST_OP_PASID_DETACH,
    IOMMU_TEST_OP_PASID_CHECK_HWPT,
];

/// One selftest command (one of the ops of this module; any other is refused with EINVAL
/// without a call).
pub fn test_cmd(fd: BorrowedFd<'_>, cmd: &mut IommuTestCmd) -> Result<(), SysError> {
    run(fd, cmd, "IOMMU_TEST_CMD")
}

/// [`test_cmd`], with `call` naming the op in the error.
fn run(fd: BorrowedFd<'_>, cmd: &mut IommuTestCmd, call: &'static str) -> Result<(), SysError> {
    if !SAFE_OPS.contains(&cmd.op) {
        return Err(SysError {
            call,
            errno: libc::EINVAL,
        });
    }
    // SAFETY: IOMMU_TEST_CMD takes struct iommu_test_cmd, which IommuTestCmd mirrors (72 bytes);
    // the ops allowed above carry no pointer the kernel writes through: MD_CHECK_MAP and
    // MD_CHECK_REFS only look up the pages at `uptr` (get_user_pages, EFAULT when unmapped).
    unsafe { ioctl(fd, IOMMU_TEST_CMD, call, cmd) }
}

/// MOCK_DOMAIN: create a mock device, bind it and attach it to `pt_id`. Returns
/// (stdev_id, hwpt_id, idev_id).
pub fn mock_domain(fd: BorrowedFd<'_>, pt_id: u32) -> Result<(u32, u32, u32), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MOCK_DOMAIN, pt_id);
    test_cmd(fd, &mut c)?;
    Ok((c.u32_at(0), c.u32_at(1), c.u32_at(2)))
}

/// MOCK_DOMAIN_FLAGS: a mock device with `dev_flags` (e.g. MOCK_FLAGS_DEVICE_PASID) attached
/// to `pt_id`. Returns (stdev_id, hwpt_id, idev_id).
pub fn mock_domain_flags(
    fd: BorrowedFd<'_>,
    pt_id: u32,
    dev_flags: u32,
) -> Result<(u32, u32, u32), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, pt_id);
    c.set_u32_at(3, dev_flags);
    test_cmd(fd, &mut c)?;
    Ok((c.u32_at(0), c.u32_at(1), c.u32_at(2)))
}

/// MOCK_DOMAIN_REPLACE: move the mock device `stdev_id` to `pt_id`; returns the HWPT.
pub fn mock_replace(fd: BorrowedFd<'_>, stdev_id: u32, pt_id: u32) -> Result<u32, SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev_id);
    c.set_u32_at(0, pt_id);
    test_cmd(fd, &mut c)?;
    Ok(c.u32_at(0))
}

/// PASID_ATTACH / PASID_REPLACE of mock device `stdev_id`'s `pasid` to `pt_id`.
pub fn mock_pasid_attach(
    fd: BorrowedFd<'_>,
    stdev_id: u32,
    pasid: u32,
    pt_id: u32,
    replace: bool,
) -> Result<(), SysError> {
    let op = if replace {
        IOMMU_TEST_OP_PASID_REPLACE
    } else {
        IOMMU_TEST_OP_PASID_ATTACH
    };
    let mut c = IommuTestCmd::new(op, stdev_id);
    c.set_u32_at(0, pasid);
    c.set_u32_at(1, pt_id);
    test_cmd(fd, &mut c)
}

/// PASID_DETACH of mock device `stdev_id`'s `pasid`.
pub fn mock_pasid_detach(fd: BorrowedFd<'_>, stdev_id: u32, pasid: u32) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_PASID_DETACH, stdev_id);
    c.set_u32_at(0, pasid);
    test_cmd(fd, &mut c)
}

/// ADD_RESERVED: reserve `[start, start + length)` in IOAS `ioas` (its MAPs there then fail).
pub fn add_reserved(
    fd: BorrowedFd<'_>,
    ioas: u32,
    start: u64,
    length: u64,
) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_ADD_RESERVED, ioas);
    c.union[0] = start;
    c.union[1] = length;
    run(fd, &mut c, "IOMMU_TEST_OP_ADD_RESERVED")
}

/// MD_CHECK_MAP: every page of `[iova, iova + length)` in mock paging HWPT `hwpt` maps the
/// page of this process at the same offset from `uptr`. ENOENT (or EINVAL) when `hwpt` is not a
/// mock paging HWPT, EINVAL when a page is not mapped there; with `length` 0 it only asks
/// whether `hwpt` is one.
pub fn md_check_map(
    fd: BorrowedFd<'_>,
    hwpt: u32,
    iova: u64,
    length: u64,
    uptr: u64,
) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MD_CHECK_MAP, hwpt);
    c.union[0] = iova;
    c.union[1] = length;
    c.union[2] = uptr;
    run(fd, &mut c, "IOMMU_TEST_OP_MD_CHECK_MAP")
}

/// MD_CHECK_REFS: every page of this process in `[uptr, uptr + length)` is pinned `refs`
/// times (by iommufd).
pub fn md_check_refs(
    fd: BorrowedFd<'_>,
    uptr: u64,
    length: u64,
    refs: u32,
) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MD_CHECK_REFS, 0);
    c.union[0] = length;
    c.union[1] = uptr;
    c.set_u32_at(4, refs);
    run(fd, &mut c, "IOMMU_TEST_OP_MD_CHECK_REFS")
}

/// MD_CHECK_IOTLB: entry `id` (`< MOCK_NESTED_DOMAIN_IOTLB_NUM`) of mock nested HWPT `hwpt`'s
/// IOTLB holds `iotlb`.
pub fn md_check_iotlb(fd: BorrowedFd<'_>, hwpt: u32, id: u32, iotlb: u32) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt);
    c.set_u32_at(0, id);
    c.set_u32_at(1, iotlb);
    run(fd, &mut c, "IOMMU_TEST_OP_MD_CHECK_IOTLB")
}

/// DEV_CHECK_CACHE: entry `id` (`< MOCK_DEV_CACHE_NUM`) of the cache of mock device `idev`
/// (its iommufd device id) holds `cache`.
pub fn dev_check_cache(fd: BorrowedFd<'_>, idev: u32, id: u32, cache: u32) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_DEV_CHECK_CACHE, idev);
    c.set_u32_at(0, id);
    c.set_u32_at(1, cache);
    run(fd, &mut c, "IOMMU_TEST_OP_DEV_CHECK_CACHE")
}

/// PASID_CHECK_HWPT: mock device `stdev_id`'s `pasid` is attached to `hwpt` (0: to nothing).
pub fn pasid_check_hwpt(
    fd: BorrowedFd<'_>,
    stdev_id: u32,
    pasid: u32,
    hwpt: u32,
) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_PASID_CHECK_HWPT, stdev_id);
    c.set_u32_at(0, pasid);
    c.set_u32_at(1, hwpt);
    run(fd, &mut c, "IOMMU_TEST_OP_PASID_CHECK_HWPT")
}

/// TRIGGER_IOPF: mock device `dev_id` (its iommufd device id) issues a page request for `addr`
/// with `pasid` (0: none), group `grpid` and permissions `perm` (IOMMU_PGFAULT_PERM_*), the
/// last of its group.
pub fn trigger_iopf(
    fd: BorrowedFd<'_>,
    dev_id: u32,
    pasid: u32,
    grpid: u32,
    perm: u32,
    addr: u64,
) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_TRIGGER_IOPF, 0);
    c.set_u32_at(0, dev_id);
    c.set_u32_at(1, pasid);
    c.set_u32_at(2, grpid);
    c.set_u32_at(3, perm);
    c.union[2] = addr;
    run(fd, &mut c, "IOMMU_TEST_OP_TRIGGER_IOPF")
}

/// TRIGGER_VEVENT: mock device `dev_id` (its iommufd device id) reports a vIOMMU event (its
/// virtual id) on its vIOMMU's event queue.
pub fn trigger_vevent(fd: BorrowedFd<'_>, dev_id: u32) -> Result<(), SysError> {
    let mut c = IommuTestCmd::new(IOMMU_TEST_OP_TRIGGER_VEVENT, 0);
    c.set_u32_at(0, dev_id);
    run(fd, &mut c, "IOMMU_TEST_OP_TRIGGER_VEVENT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn test_cmd_union_words() {
        let mut c = IommuTestCmd::new(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, 7);
        c.set_u32_at(0, 0x1234);
        c.set_u32_at(1, 0xabcd);
        c.set_u32_at(2, 9);
        assert_eq!(c.union[0], 0xabcd_0000_1234);
        assert_eq!((c.u32_at(0), c.u32_at(1), c.u32_at(2)), (0x1234, 0xabcd, 9));
        assert_eq!(c.size, 72);
    }

    #[test]
    fn ops_that_write_user_memory_are_refused_without_a_call() {
        let f = std::fs::File::open("/dev/null").unwrap();
        // IOMMU_TEST_OP_ACCESS_RW (8) and IOMMU_TEST_OP_DIRTY (13).
        for op in [8, 13] {
            let e = test_cmd(f.as_fd(), &mut IommuTestCmd::new(op, 1)).unwrap_err();
            assert_eq!((e.call, e.errno), ("IOMMU_TEST_CMD", libc::EINVAL));
        }
        // An allowed op reaches the ioctl (which /dev/null does not know).
        let e = md_check_refs(f.as_fd(), 0, 0, 0).unwrap_err();
        assert_eq!(
            (e.call, e.errno),
            ("IOMMU_TEST_OP_MD_CHECK_REFS", libc::ENOTTY)
        );
        let e = mock_domain(f.as_fd(), 1).unwrap_err();
        assert_eq!((e.call, e.errno), ("IOMMU_TEST_CMD", libc::ENOTTY));
    }
}
