//! The control socket: inspection and software-backend queries, one JSON object per line.
//! The protocol is documented in docs/CONTROL.md.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use serde::Deserialize;
use serde_json::{json, Value};

use model::device::{Access, Translation};
pub mod subscribers;

use crate::transport::Shared;
use model::protocol::Status;
use subscribers::Subscribers;

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Default and largest page of mappings returned by one `mappings` request.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {err}")]
    Bind { path: PathBuf, err: io::Error },
    #[error("cannot connect to the control socket {path}: {err}")]
    Connect { path: PathBuf, err: io::Error },
    #[error("control socket {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("the daemon answered with invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("the daemon refused the request: {0}")]
    Refused(String),
}

/// Connection-level facts the control socket reports.
#[derive(Debug, Default)]
pub struct ConnectionInfo {
    pub connected: AtomicBool,
    pub connections: AtomicU64,
    /// The configured request-queue worker policy and polling window (for `status`).
    pub worker_sched: crate::os::sched::WorkerSched,
    pub poll_us: u64,
    /// Clients of `subscribe` (the server makes this the device's invalidation sink).
    pub subscribers: Arc<Subscribers>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Status,
    Endpoints,
    Domains,
    Mappings {
        domain: u32,
        #[serde(default)]
        start: u64,
        limit: Option<usize>,
    },
    Counters,
    Faults,
    Translate {
        endpoint: u32,
        iova: u64,
        access: String,
        /// PASID of the access (PASID extension); absent: traffic without PASID.
        #[serde(default)]
        pasid: Option<u32>,
        /// Privileged (supervisor) access.
        #[serde(default)]
        privileged: bool,
    },
    /// Outstanding page requests.
    #[serde(rename = "page_requests")]
    PageRequests,
    /// ATTACH_PASID bindings.
    Pasids,
    /// Turn this connection into a stream of invalidation lines (docs/CONTROL.md).
    Subscribe,
    /// The host backend's objects (docs/IOMMUFD.md).
    Backend,
}

/// Bind the control socket (mode 0600: inspection can provoke faults, so only the daemon's
/// user may connect).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |err| ControlError::Bind {
        path: path.to_owned(),
        err,
    };
    let listener = crate::os::socket::bind_unix(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    info!("control socket listening on {}", path.display());
    Ok(listener)
}

/// Serve a bound control socket on a background thread. `on_start` runs first on that thread
/// (the server installs the thread's seccomp filter there); an error from it stops the thread.
pub fn spawn(
    listener: UnixListener,
    shared: Arc<Shared>,
    conn: Arc<ConnectionInfo>,
    on_start: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || match on_start() {
            Ok(()) => accept_loop(listener, shared, conn),
            Err(e) => log::error!("control socket thread not started: {e}"),
        })?;
    Ok(())
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, conn: Arc<ConnectionInfo>) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let (shared, conn) = (shared.clone(), conn.clone());
                let spawned = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        if let Err(e) = serve_client(s, &shared, &conn) {
                            debug!("control client: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    warn!("cannot start a control client thread: {e}");
                }
            }
            Err(e) => warn!("control socket accept: {e}"),
        }
    }
}

fn serve_client(stream: UnixStream, shared: &Shared, conn: &ConnectionInfo) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE {
            writeln!(
                out,
                "{}",
                json!({"ok": false, "error": "request line too long"})
            )?;
            return Ok(());
        }
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Subscribe) => {
                // The reply is written by `add`, under the subscribers' lock, so it precedes
                // every invalidation line. Nothing is read from this connection any more.
                return match conn.subscribers.add(out) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let mut s = reader.into_inner();
                        writeln!(s, "{}", json!({"ok": false, "error": e.to_string()}))
                    }
                };
            }
            Ok(req) => match execute(req, shared, conn) {
                Ok(v) => json!({"ok": true, "result": v}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        writeln!(out, "{reply}")?;
    }
}

fn parse_access(s: &str) -> Result<Access, String> {
    match s {
        "r" | "read" => Ok(Access::Read),
        "w" | "write" => Ok(Access::Write),
        "rw" | "readwrite" => Ok(Access::ReadWrite),
        "x" | "exec" => Ok(Access::Exec),
        other => Err(format!("access {other:?}: use r, w, rw or x")),
    }
}

fn execute(req: Request, shared: &Shared, conn: &ConnectionInfo) -> Result<Value, String> {
    match req {
        Request::Subscribe => Err("subscribe is handled by the connection".into()),
        Request::Backend => Ok(shared.device().backend_info()),
        Request::Status => {
            let worker = shared.worker();
            let dev = shared.device();
            let c = dev.config();
            Ok(json!({
                "connected": conn.connected.load(Ordering::Relaxed),
                "connections": conn.connections.load(Ordering::Relaxed),
                "features_offered": dev.features(),
                "features_acked": dev.acked_features(),
                "config": {
                    "page_size_mask": c.page_size_mask,
                    "input_start": c.input_start,
                    "input_end": c.input_end,
                    "domain_start": c.domain_start,
                    "domain_end": c.domain_end,
                    "probe_size": c.probe_size,
                    "bypass": dev.bypass(),
                    "endpoints": c.endpoints.to_string(),
                },
                "endpoints": dev.endpoint_list().count(),
                "domains": dev.domain_list().count(),
                "mappings": dev.total_mappings(),
                "worker": {
                    "sched": conn.worker_sched.to_string(),
                    "poll_us": conn.poll_us,
                    "tid": worker.as_ref().map(|w| w.tid),
                    "sched_error": worker.and_then(|w| w.sched_error),
                },
            }))
        }
        Request::Endpoints => {
            let dev = shared.device();
            let list: Vec<Value> = dev
                .endpoint_list()
                .map(|(id, domain)| json!({"id": id, "domain": domain}))
                .collect();
            Ok(Value::Array(list))
        }
        Request::Domains => {
            let dev = shared.device();
            let list: Vec<Value> = dev
                .domain_list()
                .map(|(id, bypass, eps, n)| {
                    let table = dev.domain_table(id).map(|(format, cached, hits, misses)| {
                        json!({"format": format, "cached": cached, "hits": hits,
                               "misses": misses})
                    });
                    json!({"id": id, "bypass": bypass, "endpoints": eps, "mappings": n,
                           "table": table})
                })
                .collect();
            Ok(Value::Array(list))
        }
        Request::Mappings {
            domain,
            start,
            limit,
        } => {
            let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
            let dev = shared.device();
            let table = dev
                .domain_mappings(domain)
                .ok_or_else(|| format!("domain {domain} does not exist"))?;
            let mut page = table.page(start, limit + 1);
            let items: Vec<Value> = page
                .by_ref()
                .take(limit)
                .map(|m| {
                    json!({
                        "virt_start": m.virt_start, "virt_end": m.virt_end,
                        "phys_start": m.phys_start, "read": m.readable(),
                        "write": m.writable(), "mmio": m.mmio(),
                    })
                })
                .collect();
            let next = page.next().map(|m| m.virt_start);
            Ok(json!({"mappings": items, "next": next}))
        }
        Request::Counters => {
            let dev = shared.device();
            let s = dev.stats();
            let mut requests = serde_json::Map::new();
            for (type_, name) in [
                (model::protocol::T_ATTACH, "attach"),
                (model::protocol::T_DETACH, "detach"),
                (model::protocol::T_MAP, "map"),
                (model::protocol::T_UNMAP, "unmap"),
                (model::protocol::T_PROBE, "probe"),
            ] {
                let row = &s.requests[usize::from(type_)];
                let per_status: serde_json::Map<String, Value> = Status::ALL
                    .iter()
                    .map(|st| (st.name().to_string(), json!(row[*st as usize])))
                    .collect();
                requests.insert(name.to_string(), Value::Object(per_status));
            }
            Ok(json!({
                "requests": requests,
                "bad_buffers": s.ignored,
                "faults": {"delivered": s.faults_delivered, "dropped": s.faults_dropped},
            }))
        }
        Request::Faults => {
            let dev = shared.device();
            let list: Vec<Value> = dev
                .fault_log()
                .map(|(f, delivered)| {
                    json!({
                        "reason": f.reason, "endpoint": f.endpoint, "address": f.address,
                        "read": f.read, "write": f.write, "delivered": delivered,
                    })
                })
                .collect();
            Ok(Value::Array(list))
        }
        Request::Translate {
            endpoint,
            iova,
            access,
            pasid,
            privileged,
        } => {
            let access = parse_access(&access)?;
            // `guest_ram`: whether the address is in the current memory table (a mapping
            // outlives the RAM it was made to when the VMM removes a region; null before the
            // first table, or when the backend does not know).
            let (t, ram) = {
                let mut dev = shared.device();
                let t = dev
                    .translate_pasid(endpoint, pasid, iova, access, privileged)
                    .map_err(|e| e.to_string())?;
                let ram = match t {
                    Translation::Translated { phys, .. } | Translation::Bypass { phys } => {
                        dev.guest_ram_at(phys)
                    }
                    _ => None,
                };
                (t, ram)
            };
            Ok(match t {
                Translation::Translated { phys, mapping } => json!({
                    "outcome": "translated", "phys": phys, "guest_ram": ram,
                    "mapping": mapping.map(|m| json!({
                        "virt_start": m.virt_start, "virt_end": m.virt_end,
                        "phys_start": m.phys_start,
                        "read": m.readable(), "write": m.writable(),
                    })),
                }),
                Translation::Bypass { phys } => {
                    json!({"outcome": "bypass", "phys": phys, "guest_ram": ram})
                }
                Translation::Fault { reason } => {
                    shared.wake();
                    json!({"outcome": "fault", "reason": reason})
                }
                Translation::PageRequest { grpid } => {
                    shared.wake();
                    json!({"outcome": "page_request", "grpid": grpid})
                }
            })
        }
        Request::PageRequests => {
            let dev = shared.device();
            let list: Vec<Value> = dev
                .page_request_list()
                .map(|(endpoint, grpid, pr)| {
                    json!({"endpoint": endpoint, "grpid": grpid, "pasid": pr.pasid,
                           "address": pr.address})
                })
                .collect();
            Ok(Value::Array(list))
        }
        Request::Pasids => {
            let dev = shared.device();
            let list: Vec<Value> = dev
                .pasid_attach_list()
                .map(|(endpoint, pasid, domain)| {
                    json!({"endpoint": endpoint, "pasid": pasid, "domain": domain})
                })
                .collect();
            Ok(Value::Array(list))
        }
    }
}

fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    UnixStream::connect(path).map_err(|err| ControlError::Connect {
        path: path.to_owned(),
        err,
    })
}

/// Client side of `subscribe`, used by `vhost-user-iommu ctl watch`: call `each` with every
/// invalidation line until it returns false or the daemon closes the connection.
pub fn watch(path: &Path, mut each: impl FnMut(&Value) -> bool) -> Result<(), ControlError> {
    let io_err = |err| ControlError::Io {
        path: path.to_owned(),
        err,
    };
    let mut s = connect(path)?;
    s.write_all(format!("{}\n", json!({"cmd": "subscribe"})).as_bytes())
        .map_err(io_err)?;
    let mut reader = BufReader::new(s);
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(io_err)?;
        if n == 0 {
            return Ok(());
        }
        let v: Value = serde_json::from_str(&line).map_err(ControlError::Json)?;
        if first {
            first = false;
            if v.get("ok") != Some(&Value::Bool(true)) {
                return Err(ControlError::Refused(
                    v.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                ));
            }
            continue;
        }
        if !each(&v) {
            return Ok(());
        }
    }
}

/// Client side, used by `vhost-user-iommu ctl`: send one request, return its result.
pub fn request(path: &Path, req: &Value) -> Result<Value, ControlError> {
    let io_err = |err| ControlError::Io {
        path: path.to_owned(),
        err,
    };
    let mut s = connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err)?;
    writeln!(s, "{req}").map_err(io_err)?;
    let mut line = String::new();
    BufReader::new(s)
        .take(64 * MAX_LINE * 1024)
        .read_line(&mut line)
        .map_err(io_err)?;
    let v: Value = serde_json::from_str(&line).map_err(ControlError::Json)?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    } else {
        Err(ControlError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        ))
    }
}
