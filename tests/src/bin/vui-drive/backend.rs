//! What the daemon says about its host objects: the control socket's `backend` description
//! (docs/CONTROL.md), whose object ids the checks look up in the shared iommufd.

use serde_json::Value;
use vhost_user_iommu_control::Request;
use vhost_user_iommu_tests::Control;

pub fn u32_of(v: &Value, k: &str) -> Option<u32> {
    v.get(k)?.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// The `backend` description (null if the request failed).
pub fn backend(ctl: &mut Control) -> Value {
    ctl.request(&Request::Backend).unwrap_or(Value::Null)
}

fn endpoint_of(b: &Value, ep: u32) -> Option<&Value> {
    b["endpoints"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "endpoint") == Some(ep))
}

fn domain_of(b: &Value, d: u32) -> Option<&Value> {
    b["domains"]
        .as_array()?
        .iter()
        .find(|e| u32_of(e, "domain") == Some(d))
}

/// The backend's record of `ep`: (domain, hwpt).
pub fn ep_state(b: &Value, ep: u32) -> Option<(Option<u32>, u32)> {
    let e = endpoint_of(b, ep)?;
    Some((u32_of(e, "domain"), u32_of(e, "hwpt")?))
}

/// The backend's record of `ep`'s mock device: (stdev_id, idev_id).
pub fn mock_ids(b: &Value, ep: u32) -> Option<(u32, u32)> {
    let e = endpoint_of(b, ep)?;
    Some((
        u32_of(&e["device"], "stdev_id")?,
        u32_of(&e["device"], "dev_id")?,
    ))
}

/// The IOAS of domain `d`.
pub fn domain_ioas(b: &Value, d: u32) -> Option<u32> {
    u32_of(domain_of(b, d)?, "ioas")
}

/// The nested HWPT of domain `d` (bound to a guest table).
pub fn nested_of(b: &Value, d: u32) -> Option<u32> {
    u32_of(domain_of(b, d)?, "nested_hwpt")
}

/// The ids of the domains the backend holds.
pub fn domain_ids(b: &Value) -> Vec<u32> {
    b["domains"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| u32_of(d, "domain")).collect())
        .unwrap_or_default()
}

/// The domain's `mappings` object in the backend's description.
pub fn domain_maps(b: &Value, d: u32) -> Value {
    domain_of(b, d)
        .map(|e| e["mappings"].clone())
        .unwrap_or(Value::Null)
}

/// The (iova, length) ranges of a domain's unbacked mappings.
pub fn unbacked(b: &Value, d: u32) -> Vec<(u64, u64)> {
    domain_maps(b, d)["unbacked"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| Some((u["iova"].as_u64()?, u["length"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Does the stage-2 IOAS map a piece at `gpa`?
pub fn has_stage2(b: &Value, gpa: u64) -> bool {
    b["stage2"]
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["iova"].as_u64() == Some(gpa)))
}

/// Is `b[key]` an empty list (no domains, no stage-2 pieces...)?
pub fn empty(b: &Value, key: &str) -> bool {
    b[key].as_array().is_some_and(Vec::is_empty)
}
