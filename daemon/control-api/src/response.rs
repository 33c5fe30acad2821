//! Replies: the `{"ok":...}` envelope and the result of each request.
//!
//! Field names are the wire's. Optional values are `null` on the wire, never left out.

use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Request;

/// The answer to one request: `{"ok":true,"result":T}` or `{"ok":false,"error":"message"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<T = Response> {
    Ok(T),
    /// The error response: why the daemon refused the request.
    Err(String),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, String> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, String>> for Reply<T> {
    fn from(r: Result<T, String>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        match self {
            Reply::Ok(v) => {
                m.serialize_entry("ok", &true)?;
                m.serialize_entry("result", v)?;
            }
            Reply::Err(e) => {
                m.serialize_entry("ok", &false)?;
                m.serialize_entry("error", e)?;
            }
        }
        m.end()
    }
}

/// The envelope as it may arrive: `ok` decides; an error without a message is "unknown error".
#[derive(Deserialize)]
struct Envelope<T> {
    ok: bool,
    result: Option<T>,
    #[serde(default)]
    error: Option<String>,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let e = Envelope::<T>::deserialize(d)?;
        match (e.ok, e.result) {
            (true, Some(v)) => Ok(Reply::Ok(v)),
            (true, None) => Err(serde::de::Error::missing_field("result")),
            (false, _) => Ok(Reply::Err(
                e.error.unwrap_or_else(|| "unknown error".to_string()),
            )),
        }
    }
}

/// The result of a request, one variant per [`Request`] (serialized as the bare result).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Status(StatusInfo),
    Endpoints(Vec<EndpointInfo>),
    Domains(Vec<DomainInfo>),
    Mappings(MappingPage),
    /// Boxed: a count per status of every request type is the largest result.
    Counters(Box<Counters>),
    Faults(Vec<FaultInfo>),
    Translate(Translation),
    PageRequests(Vec<PageRequestInfo>),
    Pasids(Vec<PasidBinding>),
    Subscribe(Subscribed),
    Backend(BackendInfo),
}

impl Response {
    /// The result of `req`, from its JSON.
    pub fn from_value(req: &Request, v: serde_json::Value) -> Result<Response, serde_json::Error> {
        use serde_json::from_value as de;
        Ok(match req {
            Request::Status => Response::Status(de(v)?),
            Request::Endpoints => Response::Endpoints(de(v)?),
            Request::Domains => Response::Domains(de(v)?),
            Request::Mappings { .. } => Response::Mappings(de(v)?),
            Request::Counters => Response::Counters(Box::new(de(v)?)),
            Request::Faults => Response::Faults(de(v)?),
            Request::Translate { .. } => Response::Translate(de(v)?),
            Request::PageRequests => Response::PageRequests(de(v)?),
            Request::Pasids => Response::Pasids(de(v)?),
            Request::Subscribe => Response::Subscribe(de(v)?),
            Request::Backend => Response::Backend(de(v)?),
        })
    }
}

/// `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// A vhost-user frontend is connected.
    pub connected: bool,
    /// Frontend connections accepted since the daemon started.
    pub connections: u64,
    pub features_offered: u64,
    /// `null` until the driver has negotiated features (after a reset too).
    pub features_acked: Option<u64>,
    pub config: ConfigInfo,
    /// Number of endpoints, domains and mappings.
    pub endpoints: u64,
    pub domains: u64,
    pub mappings: u64,
    pub worker: WorkerInfo,
}

/// `status.config`: the device's config space, and its endpoint set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInfo {
    pub page_size_mask: u64,
    pub input_start: u64,
    pub input_end: u64,
    pub domain_start: u32,
    pub domain_end: u32,
    pub probe_size: u32,
    /// The config `bypass` byte (0 or 1), as the driver sees it.
    pub bypass: u8,
    /// The endpoints that exist, as `--endpoints` takes them (`any`, `0-255,1024`).
    pub endpoints: String,
}

/// `status.worker`: the request-queue worker thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The configured policy, as `--worker-sched` takes it (`other:100`).
    pub sched: String,
    /// The configured polling window.
    pub poll_us: u64,
    /// The thread's id once it has served an event.
    pub tid: Option<i32>,
    /// Why the kernel refused the policy, if it did.
    pub sched_error: Option<String>,
}

/// One entry of `endpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub id: u32,
    /// The domain it is attached to.
    pub domain: Option<u32>,
}

/// One entry of `domains`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub id: u32,
    pub bypass: bool,
    pub endpoints: Vec<u32>,
    /// Number of mappings.
    pub mappings: u64,
    /// The guest table bound with ATTACH_TABLE (docs/PASID.md), if any.
    pub table: Option<TableInfo>,
}

/// `domains[].table`: a bound guest table and its IOTLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table format (1, 2 or 4).
    pub format: u16,
    /// Translations cached.
    pub cached: u64,
    pub hits: u64,
    pub misses: u64,
}

/// `mappings`: one page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingPage {
    /// Sorted by `virt_start`.
    pub mappings: Vec<MappingInfo>,
    /// `start` of the next page; `null` after the last one.
    pub next: Option<u64>,
}

/// One mapping of a `mappings` page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingInfo {
    /// First IOVA.
    pub virt_start: u64,
    /// Last IOVA (inclusive).
    pub virt_end: u64,
    /// Address `virt_start` maps to.
    pub phys_start: u64,
    pub read: bool,
    pub write: bool,
    pub mmio: bool,
}

/// `counters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Requests per type and status.
    pub requests: RequestCounters,
    /// Buffers returned unwritten: unknown request types, no room for a tail, unreadable
    /// chains.
    pub bad_buffers: u64,
    pub faults: FaultCounters,
}

/// `counters.requests`: per request type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounters {
    pub attach: StatusCounts,
    pub detach: StatusCounts,
    pub map: StatusCounts,
    pub unmap: StatusCounts,
    pub probe: StatusCounts,
    /// The PASID extension's requests (docs/PASID.md); zero unless the driver negotiated it.
    #[serde(default)]
    pub attach_table: StatusCounts,
    #[serde(default)]
    pub detach_table: StatusCounts,
    #[serde(default)]
    pub invalidate: StatusCounts,
    #[serde(default)]
    pub attach_pasid: StatusCounts,
    #[serde(default)]
    pub detach_pasid: StatusCounts,
    #[serde(default)]
    pub page_resp: StatusCounts,
}

/// Requests of one type per virtio-iommu status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub ok: u64,
    pub ioerr: u64,
    pub unsupp: u64,
    pub deverr: u64,
    pub inval: u64,
    pub range: u64,
    pub noent: u64,
    pub fault: u64,
    pub nomem: u64,
}

/// `counters.faults`: fault events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounters {
    /// Written to the eventq.
    pub delivered: u64,
    /// Lost for want of an eventq buffer.
    pub dropped: u64,
}

/// Why an access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultReason {
    /// The endpoint is not attached to a domain and does not bypass.
    Domain,
    /// No mapping covers the address, or the mapping lacks the permission.
    Mapping,
}

/// One entry of `faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultInfo {
    pub reason: FaultReason,
    pub endpoint: u32,
    pub address: u64,
    pub read: bool,
    pub write: bool,
    /// Written to the eventq (false: dropped).
    pub delivered: bool,
}

/// `translate`, by its `outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Translation {
    Translated {
        phys: u64,
        /// Whether `phys` is in the current memory table (false: a mapping to RAM the VMM has
        /// since removed, or to MMIO; `null` before the first table).
        guest_ram: Option<bool>,
        /// The mapping used; `null` for a walk of a guest table, which must not be cached.
        mapping: Option<TranslatedMapping>,
    },
    /// The endpoint bypasses the IOMMU.
    Bypass { phys: u64, guest_ram: Option<bool> },
    /// Also reported to the guest on the eventq.
    Fault { reason: FaultReason },
    /// The guest has been asked (on the eventq) to make the page present.
    PageRequest { grpid: u32 },
}

/// `translate`'s `mapping` (a [`MappingInfo`] without `mmio`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslatedMapping {
    pub virt_start: u64,
    pub virt_end: u64,
    pub phys_start: u64,
    pub read: bool,
    pub write: bool,
}

/// One entry of `page_requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequestInfo {
    pub endpoint: u32,
    pub grpid: u32,
    pub pasid: Option<u32>,
    pub address: u64,
}

/// One entry of `pasids`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasidBinding {
    pub endpoint: u32,
    pub pasid: u32,
    pub domain: u32,
}

/// `subscribe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub subscribed: bool,
    /// The `seq` of the last invalidation sent before this subscriber joined.
    pub seq: u64,
}

/// `backend`: the host backend's objects. Its layout is the backend's own
/// (`{"backend":"software","guest_ram":[{"gpa":..,"size":..}]}`, or the iommufd backend's
/// objects, docs/IOMMUFD.md), so it stays JSON here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendInfo(pub serde_json::Value);

impl BackendInfo {
    /// The backend's name (`software`, `iommufd`).
    pub fn kind(&self) -> Option<&str> {
        self.0.get("backend").and_then(serde_json::Value::as_str)
    }
}
