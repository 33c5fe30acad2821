//! The lines of a subscription (`subscribe`, docs/CONTROL.md).

use serde::{Deserialize, Serialize};

/// What a translation cache must forget, by `scope`. A consumer must treat a line it does not
/// understand (an unknown `scope`) as [`Invalidation::All`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum Invalidation {
    /// An UNMAP removed mappings: translations of `endpoints` (the domain's at that time) for
    /// IOVAs in `[start, end]`.
    Range {
        domain: u32,
        endpoints: Vec<u32>,
        start: u64,
        end: u64,
    },
    /// Every translation of the endpoint (bypass included): it joined or left a domain.
    Endpoint { endpoint: u32 },
    /// Everything: device reset, new connection, features negotiated, bypass changed.
    All,
}

/// The `event` of a subscription line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    #[default]
    Invalidate,
}

/// One subscription line:
/// `{"event":"invalidate","seq":7,"scope":"range","domain":1,"endpoints":[3],"start":4096,"end":8191}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationEvent {
    pub event: EventKind,
    /// Counts invalidations sent while at least one subscriber existed.
    pub seq: u64,
    #[serde(flatten)]
    pub invalidation: Invalidation,
}

impl InvalidationEvent {
    pub fn new(seq: u64, invalidation: Invalidation) -> Self {
        InvalidationEvent {
            event: EventKind::Invalidate,
            seq,
            invalidation,
        }
    }
}
