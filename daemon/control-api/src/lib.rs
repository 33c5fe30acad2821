//! The control-socket protocol of vhost-user-iommu (docs/CONTROL.md), as types.
//!
//! The daemon serves a unix socket on which a client writes one JSON request per line and reads
//! one JSON reply per line; a `subscribe` request turns the connection into a stream of
//! invalidation lines. This crate is that protocol, shared by everyone who speaks it: the
//! daemon's server and its `ctl` subcommand, vmm-glue's translation client and the tests.
//!
//! - [`Request`]: every request the daemon accepts (`{"cmd":...}`);
//! - [`Reply`]: the envelope of every answer, `{"ok":true,"result":...}` or
//!   `{"ok":false,"error":"..."}`; [`Response`] is the result of each request, one type per
//!   request ([`StatusInfo`], [`MappingPage`], [`Translation`], ...);
//! - [`InvalidationEvent`]: one line of a subscription;
//! - [`Client`], [`Subscription`], [`watch`]: a small blocking client.
//!
//! The wire format is exactly what the daemon has always written: [`encode`] writes objects
//! with their keys in sorted order (serde_json's map order), which is how the daemon's replies
//! and invalidation lines have always been laid out, and every number is a JSON integer. The
//! unit tests pin each request and reply to a literal line.
//!
//! Dependencies are serde, serde_json and thiserror only, so a VMM can speak the protocol
//! without pulling in the daemon.

mod client;
mod invalidation;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use client::{watch, Client, Error, Notification, Subscription, DEFAULT_TIMEOUT};
pub use invalidation::{EventKind, Invalidation, InvalidationEvent};
pub use request::{Access, Request};
pub use response::{
    BackendInfo, ConfigInfo, Counters, DomainInfo, EndpointInfo, FaultCounters, FaultInfo,
    FaultReason, MappingInfo, MappingPage, PageRequestInfo, PasidBinding, Reply, RequestCounters,
    Response, StatusCounts, StatusInfo, Subscribed, TableInfo, TranslatedMapping, Translation,
    WorkerInfo,
};

use serde::{de::DeserializeOwned, Serialize};

/// Longest request line the daemon reads (without its newline); a longer one is refused with
/// `request line too long` and the connection closed.
pub const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// Longest reply or invalidation line the client reads. The daemon's largest reply is a page of
/// 100 000 mappings (about 12 MiB).
pub const MAX_REPLY_LINE: u64 = 64 << 20;

/// One protocol line (without its newline): `value` as compact JSON with every object's keys in
/// sorted order, the layout the daemon has always written.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    // Through a `Value`: its maps are ordered by key (serde_json without `preserve_order`), so
    // the line does not depend on the order fields are declared in.
    Ok(serde_json::to_value(value)?.to_string())
}

/// Parse one protocol line (surrounding whitespace, the newline included, is ignored).
pub fn decode<T: DeserializeOwned>(line: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(line.trim())
}
