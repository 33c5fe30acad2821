//! Client for the daemon's control socket (docs/CONTROL.md): one JSON object per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A connection to the control socket.
#[derive(Debug)]
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Connect, retrying (bounded) while the socket does not accept yet.
    pub fn connect(path: &Path) -> std::io::Result<Control> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        Ok(Control {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Send one request; `Ok(result)` or `Err(error message)`.
    pub fn request(&mut self, req: Value) -> Result<Value, String> {
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("control write: {e}"))?;
        let mut resp = String::new();
        let n = self
            .reader
            .read_line(&mut resp)
            .map_err(|e| format!("control read: {e}"))?;
        if n == 0 {
            return Err("control socket closed".into());
        }
        let v: Value = serde_json::from_str(&resp)
            .map_err(|e| format!("bad control response {resp:?}: {e}"))?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            Some(false) => Err(v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string()),
            None => Err(format!("control response without \"ok\": {resp}")),
        }
    }

    /// Like `request` but panics on an error response.
    pub fn must(&mut self, req: Value) -> Value {
        let shown = req.to_string();
        self.request(req)
            .unwrap_or_else(|e| panic!("control request {shown} failed: {e}"))
    }

    /// `status`.
    pub fn status(&mut self) -> Value {
        self.must(json!({"cmd": "status"}))
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
        as_array(self.must(json!({"cmd": "endpoints"})))
    }

    /// The domain an endpoint is attached to, if the daemon lists it as attached.
    pub fn endpoint_domain(&mut self, endpoint: u32) -> Option<u32> {
        self.endpoints()
            .iter()
            .find(|e| e["id"].as_u64() == Some(u64::from(endpoint)))
            .and_then(|e| e["domain"].as_u64())
            .map(|d| u32::try_from(d).expect("domain id fits u32"))
    }

    /// `domains`.
    pub fn domains(&mut self) -> Vec<Value> {
        as_array(self.must(json!({"cmd": "domains"})))
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
            "bypass": self.status()["bypass"],
            "endpoints": self.endpoints(),
            "domains": domains,
            "pasids": self.must(json!({"cmd": "pasids"})),
            "page_requests": self.must(json!({"cmd": "page_requests"})),
        })
    }

    /// The `domains` entry for `id`, if it exists.
    pub fn domain(&mut self, id: u32) -> Option<Value> {
        self.domains()
            .into_iter()
            .find(|d| d["id"].as_u64() == Some(u64::from(id)))
    }

    /// Every mapping of `domain` as `(virt_start, virt_end, phys_start, read, write, mmio)`,
    /// following `next` across pages. `Err` if the daemon rejects the query (no such domain).
    pub fn mappings(&mut self, domain: u32) -> Result<Vec<Mapping>, String> {
        let mut out = Vec::new();
        let mut start: Option<u64> = None;
        loop {
            let mut req = json!({"cmd": "mappings", "domain": domain});
            if let Some(s) = start {
                req["start"] = json!(s);
            }
            let r = self.request(req)?;
            for m in r["mappings"].as_array().cloned().unwrap_or_default() {
                out.push(Mapping {
                    virt_start: m["virt_start"].as_u64().expect("virt_start"),
                    virt_end: m["virt_end"].as_u64().expect("virt_end"),
                    phys_start: m["phys_start"].as_u64().expect("phys_start"),
                    read: m["read"].as_bool().expect("read"),
                    write: m["write"].as_bool().expect("write"),
                    mmio: m["mmio"].as_bool().unwrap_or(false),
                });
            }
            match r["next"].as_u64() {
                Some(n) => start = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// `counters`.
    pub fn counters(&mut self) -> Value {
        self.must(json!({"cmd": "counters"}))
    }

    /// `faults`.
    pub fn faults(&mut self) -> Vec<Value> {
        as_array(self.must(json!({"cmd": "faults"})))
    }

    /// `translate`; `access` is "r", "w" or "rw".
    pub fn translate(&mut self, endpoint: u32, iova: u64, access: &str) -> Value {
        self.must(json!({"cmd": "translate", "endpoint": endpoint, "iova": iova, "access": access}))
    }
}

/// One mapping as the control socket reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA.
    pub virt_start: u64,
    /// Last IOVA (inclusive).
    pub virt_end: u64,
    /// Physical address of `virt_start`.
    pub phys_start: u64,
    /// READ permission.
    pub read: bool,
    /// WRITE permission.
    pub write: bool,
    /// MMIO flag.
    pub mmio: bool,
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    }
}
