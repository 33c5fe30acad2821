//! Requests: `{"cmd":"...", ...}`, one per line.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A control-socket request. The variant is the `cmd` field; the fields are the request's.
///
/// The declaration order of the variants and of their fields is part of the protocol: the
/// daemon's `bad request: ...` messages list them in this order. Unit requests ignore extra
/// fields; the others refuse unknown ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Connection, features, configuration and totals: [`StatusInfo`](crate::StatusInfo).
    Status,
    /// Endpoints the device has seen (probed or attached): [`EndpointInfo`](crate::EndpointInfo).
    Endpoints,
    /// Domains: [`DomainInfo`](crate::DomainInfo).
    Domains,
    /// One page of a domain's mappings: [`MappingPage`](crate::MappingPage).
    Mappings {
        domain: u32,
        /// The page holds mappings whose `virt_start` is at least this (absent: 0).
        #[serde(
            default,
            deserialize_with = "present_u64",
            skip_serializing_if = "Option::is_none"
        )]
        start: Option<u64>,
        /// At most this many mappings (absent: 1000; the daemon clamps it to 1..=100000).
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Requests per type and status, fault delivery: [`Counters`](crate::Counters).
    Counters,
    /// The most recent faults: [`FaultInfo`](crate::FaultInfo).
    Faults,
    /// Translate one access as the device would: [`Translation`](crate::Translation). A miss is
    /// a fault (or a page request) the daemon also reports on the eventq.
    Translate {
        endpoint: u32,
        iova: u64,
        access: Access,
        /// PASID of the access (PASID extension); absent: traffic without PASID.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pasid: Option<u32>,
        /// Privileged (supervisor) access.
        #[serde(default, skip_serializing_if = "is_false")]
        privileged: bool,
    },
    /// Page requests waiting for PAGE_RESP: [`PageRequestInfo`](crate::PageRequestInfo).
    PageRequests,
    /// ATTACH_PASID bindings: [`PasidBinding`](crate::PasidBinding).
    Pasids,
    /// Turn the connection into a stream of invalidation lines:
    /// [`Subscribed`](crate::Subscribed), then [`InvalidationEvent`](crate::InvalidationEvent)s.
    Subscribe,
    /// The host backend's objects: [`BackendInfo`](crate::BackendInfo).
    Backend,
}

impl Request {
    /// `mappings` of `domain` from its first mapping, a page of the default size.
    pub fn mappings(domain: u32) -> Request {
        Request::Mappings {
            domain,
            start: None,
            limit: None,
        }
    }

    /// `translate` without PASID, unprivileged.
    pub fn translate(endpoint: u32, iova: u64, access: Access) -> Request {
        Request::Translate {
            endpoint,
            iova,
            access,
            pasid: None,
            privileged: false,
        }
    }

    /// The `cmd` of this request.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Endpoints => "endpoints",
            Request::Domains => "domains",
            Request::Mappings { .. } => "mappings",
            Request::Counters => "counters",
            Request::Faults => "faults",
            Request::Translate { .. } => "translate",
            Request::PageRequests => "page_requests",
            Request::Pasids => "pasids",
            Request::Subscribe => "subscribe",
            Request::Backend => "backend",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `start`: optional, but a number when present (`null` is refused, as it always was).
fn present_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

/// The access of a `translate` request. On the wire: `"r"`, `"w"`, `"rw"` or `"x"` (the daemon
/// also accepts `"read"`, `"write"`, `"readwrite"` and `"exec"`).
///
/// Any string parses: the daemon refuses an access it does not know when it executes the
/// request (`access "z": use r, w, rw or x`), not as a malformed request, so [`Access::Other`]
/// carries such a string through unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Exec,
    /// A spelling the daemon does not know (it refuses the request).
    Other(String),
}

impl Access {
    /// Parse a spelling; unknown ones become [`Access::Other`].
    pub fn parse(s: &str) -> Access {
        match s {
            "r" | "read" => Access::Read,
            "w" | "write" => Access::Write,
            "rw" | "readwrite" => Access::ReadWrite,
            "x" | "exec" => Access::Exec,
            other => Access::Other(other.to_owned()),
        }
    }

    /// The spelling sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
            Access::ReadWrite => "rw",
            Access::Exec => "x",
            Access::Other(s) => s,
        }
    }
}

impl FromStr for Access {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Access, Infallible> {
        Ok(Access::parse(s))
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Access, D::Error> {
        String::deserialize(d).map(|s| Access::parse(&s))
    }
}
