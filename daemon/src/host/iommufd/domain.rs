//! A guest domain on the host: a MAP domain is an IOAS of its own holding the guest's
//! mappings (ram.rs), a bypass domain the stage-2 IOAS; a domain with a guest table has a
//! nested HWPT (nest.rs), which its endpoints and PASIDs attach to instead.

use model::host::BackendError;
use serde_json::{json, Value};

use super::hwpt::Space;
use super::ids::{DevId, DomainId, IoasId, Pt};
use super::nest::Nested;
use super::ram::{GuestRam, Mappings};

/// A guest domain's host objects. Fields in the order they go: the nested HWPT, then the
/// IOAS (after its paging HWPT).
#[derive(Debug)]
pub struct Domain {
    /// The nested HWPT of the guest table bound to it.
    pub nested: Option<Nested>,
    /// Its IOAS; None for a bypass domain, which is the stage-2 IOAS.
    pub space: Option<Space>,
    /// Guest mappings with access, as the IOAS holds them.
    pub maps: Mappings,
}

impl Domain {
    /// A domain on its own IOAS (`space`), or a bypass domain (None).
    pub fn new(space: Option<Space>) -> Domain {
        Domain {
            nested: None,
            space,
            maps: Mappings::default(),
        }
    }

    pub fn bypass(&self) -> bool {
        self.space.is_none()
    }

    /// Its IOAS (`stage2` for a bypass domain).
    pub fn ioas(&self, stage2: IoasId) -> IoasId {
        self.space.as_ref().map_or(stage2, Space::id)
    }

    /// Where its endpoints and PASIDs attach: the nested HWPT, else the IOAS (`stage2`'s
    /// target for a bypass domain); see [`Space::target`] for `pasid_dev`.
    pub fn pt(&mut self, stage2: &mut Space, pasid_dev: Option<DevId>) -> Result<Pt, BackendError> {
        if let Some(n) = &self.nested {
            return Ok(Pt::Hwpt(n.id()));
        }
        self.space.as_mut().unwrap_or(stage2).target(pasid_dev)
    }

    /// The control socket's view.
    pub fn describe(&self, id: DomainId, stage2: IoasId, ram: &GuestRam) -> Value {
        json!({"domain": id, "ioas": self.ioas(stage2), "bypass": self.bypass(),
               "nested_hwpt": self.nested.as_ref().map(Nested::id),
               "mappings": ram.describe_maps(&self.maps)})
    }
}
