//! Which IOASes and HWPTs exist in the iommufd the daemon shares with us, asked of the kernel
//! (the object census), and what the daemon's `backend` description accounts for.

use std::os::fd::BorrowedFd;

use iommufd_sys::{ioas_iova_ranges, md_check_map};
use serde_json::Value;

use crate::backend::{ep_state, u32_of};
use crate::report::ensure;

/// IOAS ids and (mock paging) HWPT ids, ascending.
pub type Census = (Vec<u32>, Vec<u32>);

/// Is `id` an IOAS? (IOAS_IOVA_RANGES answers ENOENT for anything else.)
pub fn is_ioas(fd: BorrowedFd<'_>, id: u32) -> bool {
    ioas_iova_ranges(fd, id).is_ok()
}

/// Is `id` a mock paging HWPT? (MD_CHECK_MAP of nothing succeeds only on one.)
pub fn is_hwpt(fd: BorrowedFd<'_>, id: u32) -> bool {
    md_check_map(fd, id, 0, 0, 0).is_ok()
}

/// The IOAS and HWPT ids alive in the iommufd (ids are small and allocated lowest-first).
pub fn census(fd: BorrowedFd<'_>) -> Census {
    let ids = 1..256u32;
    (
        ids.clone().filter(|&i| is_ioas(fd, i)).collect(),
        ids.filter(|&i| is_hwpt(fd, i)).collect(),
    )
}

/// The IOAS and HWPT ids a backend description accounts for: blocked, stage-2 and domain
/// IOASes; the endpoints' HWPTs, explicit paging HWPTs and the nesting parent.
pub fn expected_census(b: &Value) -> Census {
    let mut ioas: Vec<u32> = [u32_of(b, "blocked_ioas"), u32_of(b, "stage2_ioas")]
        .into_iter()
        .flatten()
        .collect();
    for d in b["domains"].as_array().into_iter().flatten() {
        if d["bypass"].as_bool() != Some(true) {
            ioas.extend(u32_of(d, "ioas"));
        }
    }
    let mut hwpt = endpoint_hwpts(b);
    for p in b["paging_hwpts"].as_array().into_iter().flatten() {
        hwpt.extend(u32_of(p, "hwpt"));
    }
    hwpt.extend(u32_of(&b["nesting"], "parent_hwpt"));
    ioas.sort_unstable();
    ioas.dedup();
    hwpt.sort_unstable();
    hwpt.dedup();
    (ioas, hwpt)
}

/// The HWPTs the mock devices (endpoints 1 and 2) sit on.
pub fn endpoint_hwpts(b: &Value) -> Vec<u32> {
    [1, 2]
        .iter()
        .filter_map(|&e| ep_state(b, e).map(|s| s.1))
        .collect()
}

/// The census after a disconnect is the census at `before`: the same IOASes, as many HWPTs, and
/// the HWPTs that differ are the ones the devices sit on now (an automatic domain of the blocked
/// IOAS may be re-created with a new id).
pub fn census_as_before(fd: BorrowedFd<'_>, before: &Census, b: &Value) -> Result<Census, String> {
    let after = census(fd);
    let ep_hwpts = endpoint_hwpts(b);
    let same = after.0 == before.0
        && after.1.len() == before.1.len()
        && after
            .1
            .iter()
            .all(|h| before.1.contains(h) || ep_hwpts.contains(h));
    ensure(same, || {
        format!("objects before {before:?}, after {after:?}, endpoint hwpts {ep_hwpts:?}")
    })?;
    Ok(after)
}
