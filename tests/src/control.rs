//! Client for the daemon's control socket (docs/CONTROL.md), on the protocol crate's client.
//! Results stay JSON (`Value`), as the daemon wrote them, so tests check the wire.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vhost_user_iommu_control::{self as api, Access, Client, Request};

pub use vhost_user_iommu_control::MappingInfo as Mapping;

/// A connection to the control socket.
#[derive(Debug)]
pub struct Control {
    client: Client,
}

impl Control {
    /// Connect, retrying (bounded) while the socket does not accept yet.
    pub fn connect(path: &Path) -> Result<Control, api::Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(path) {
                Ok(client) => return Ok(Control { client }),
                Err(api::Error::Connect { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send one request; `Ok(result)` or `Err(error message)`.
    pub fn request(&mut self, req: &Request) -> Result<Value, String> {
        self.client.request_value(req).map_err(message)
    }

    /// Like `request` but panics on an error response.
    pub fn must(&mut self, req: &Request) -> Value {
        self.request(req)
            .unwrap_or_else(|e| panic!("control request {req:?} failed: {e}"))
    }

    /// `status`.
    pub fn status(&mut self) -> Value {
        self.must(&Request::Status)
    }

    /// Wait (at most `timeout`) until the daemon reports no frontend, which it does once it
    /// has released the connection's state. False if it still reports one.
    pub fn wait_disconnected(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.status()["connected"].as_bool() != Some(false) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `endpoints`.
    pub fn endpoints(&mut self) -> Vec<Value> {
        as_array(self.must(&Request::Endpoints))
    }

    /// The domain an endpoint is attached to, if the daemon lists it as attached.
    pub fn endpoint_domain(&mut self, endpoint: u32) -> Option<u32> {
        self.client
            .endpoints()
            .expect("endpoints")
            .into_iter()
            .find(|e| e.id == endpoint)
            .and_then(|e| e.domain)
    }

    /// `domains`.
    pub fn domains(&mut self) -> Vec<Value> {
        as_array(self.must(&Request::Domains))
    }

    /// Everything a guest can observe of the device (not counters): the config bypass byte,
    /// endpoints, domains with every mapping, PASID bindings and outstanding page requests.
    /// Table-cache counters are left out: they describe the process, not the guest. For
    /// comparing two daemons (migration) or one daemon before and after a restart.
    pub fn guest_state(&mut self) -> Value {
        let mut domains = Vec::new();
        for mut d in self.domains() {
            let id = d["id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .expect("domain id fits u32");
            let maps: Vec<String> = self
                .mappings(id)
                .expect("mappings of a listed domain")
                .iter()
                .map(|m| format!("{m:?}"))
                .collect();
            if let Some(t) = d["table"].as_object_mut() {
                for k in ["cached", "hits", "misses"] {
                    t.remove(k);
                }
            }
            domains.push(json!({"domain": d, "mappings": maps}));
        }
        json!({
            "bypass": self.status()["config"]["bypass"],
            "endpoints": self.endpoints(),
            "domains": domains,
            "pasids": self.must(&Request::Pasids),
            "page_requests": self.must(&Request::PageRequests),
        })
    }

    /// The `domains` entry for `id`, if it exists.
    pub fn domain(&mut self, id: u32) -> Option<Value> {
        self.domains()
            .into_iter()
            .find(|d| d["id"].as_u64() == Some(u64::from(id)))
    }

    /// Every mapping of `domain`, following `next` across pages. `Err` if the daemon rejects
    /// the query (no such domain).
    pub fn mappings(&mut self, domain: u32) -> Result<Vec<Mapping>, String> {
        let mut out = Vec::new();
        let mut start: Option<u64> = None;
        loop {
            let page = self.client.mappings(domain, start, None).map_err(message)?;
            out.extend(page.mappings);
            match page.next {
                Some(n) => start = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// `counters`.
    pub fn counters(&mut self) -> Value {
        self.must(&Request::Counters)
    }

    /// `faults`.
    pub fn faults(&mut self) -> Vec<Value> {
        as_array(self.must(&Request::Faults))
    }

    /// `translate`; `access` is "r", "w" or "rw".
    pub fn translate(&mut self, endpoint: u32, iova: u64, access: &str) -> Value {
        self.must(&Request::translate(endpoint, iova, Access::parse(access)))
    }
}

/// The daemon's own message for a refusal, else what went wrong.
fn message(e: api::Error) -> String {
    match e {
        api::Error::Refused(m) => m,
        e => e.to_string(),
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    }
}
