//! The control socket: inspection and software-backend queries, one JSON object per line.
//! The protocol is documented in docs/CONTROL.md.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, info, warn};
use vhost_user_iommu_control::{self as api, Access, Reply, Request, Response};

use model::device::{FaultReason, Translation};
pub mod subscribers;

use crate::transport::Shared;
use model::protocol::Status;
use subscribers::Subscribers;

/// Default and largest page of mappings returned by one `mappings` request.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 100_000;
/// Clients served at once (a thread each; `watch` subscribers are counted apart, by
/// [`subscribers::MAX_SUBSCRIBERS`]). One more is answered with an error line and closed.
pub const MAX_CLIENTS: usize = 16;
/// A client that sends no request for this long is disconnected, so idle connections cannot
/// hold every slot.
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {err}")]
    Bind { path: PathBuf, err: io::Error },
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
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for stream in listener.incoming() {
        match stream {
            Ok(mut s) => {
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let busy = Reply::<Response>::Err(format!(
                        "too many control clients (at most {MAX_CLIENTS} at once); try again"
                    ));
                    if let Err(e) = write_reply(&mut s, &busy) {
                        debug!("control client refused: {e}");
                    }
                    continue;
                }
                let (shared, conn, slot) = (shared.clone(), conn.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        if let Err(e) = s.set_read_timeout(Some(CLIENT_IDLE)) {
                            debug!("control client: {e}");
                        } else if let Err(e) = serve_client(s, &shared, &conn) {
                            debug!("control client: {e}");
                        }
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::AcqRel);
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
        let n = (&mut reader)
            .take(api::MAX_REQUEST_LINE)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= api::MAX_REQUEST_LINE {
            write_reply(
                &mut out,
                &Reply::<Response>::Err("request line too long".into()),
            )?;
            return Ok(());
        }
        let reply = match api::decode::<Request>(&line) {
            Ok(Request::Subscribe) => {
                // The reply is written by `add`, under the subscribers' lock, so it precedes
                // every invalidation line. Nothing is read from this connection any more.
                return match conn.subscribers.add(out) {
                    Ok(_) => Ok(()),
                    Err(e) => write_reply(
                        &mut reader.into_inner(),
                        &Reply::<Response>::Err(e.to_string()),
                    ),
                };
            }
            Ok(req) => execute(req, shared, conn).into(),
            Err(e) => Reply::Err(format!("bad request: {e}")),
        };
        write_reply(&mut out, &reply)?;
    }
}

/// Write one reply line, in one write.
pub(crate) fn write_reply<T: serde::Serialize>(
    out: &mut impl Write,
    reply: &Reply<T>,
) -> io::Result<()> {
    let mut line = api::encode(reply).unwrap_or_else(|e| {
        let error = serde_json::Value::String(format!("cannot encode the reply: {e}"));
        format!(r#"{{"error":{error},"ok":false}}"#)
    });
    line.push('\n');
    out.write_all(line.as_bytes())
}

fn parse_access(a: &Access) -> Result<model::device::Access, String> {
    use model::device::Access as A;
    match a {
        Access::Read => Ok(A::Read),
        Access::Write => Ok(A::Write),
        Access::ReadWrite => Ok(A::ReadWrite),
        Access::Exec => Ok(A::Exec),
        Access::Other(other) => Err(format!("access {other:?}: use r, w, rw or x")),
    }
}

fn fault_reason(r: FaultReason) -> api::FaultReason {
    match r {
        FaultReason::Domain => api::FaultReason::Domain,
        FaultReason::Mapping => api::FaultReason::Mapping,
    }
}

/// One request type's row of the request counters, by status.
fn status_counts(row: &[u64]) -> api::StatusCounts {
    let n = |st: Status| row.get(st as usize).copied().unwrap_or(0);
    api::StatusCounts {
        ok: n(Status::Ok),
        ioerr: n(Status::IoErr),
        unsupp: n(Status::Unsupp),
        deverr: n(Status::DevErr),
        inval: n(Status::Inval),
        range: n(Status::Range),
        noent: n(Status::NoEnt),
        fault: n(Status::Fault),
        nomem: n(Status::NoMem),
    }
}

fn execute(req: Request, shared: &Shared, conn: &ConnectionInfo) -> Result<Response, String> {
    match req {
        Request::Subscribe => Err("subscribe is handled by the connection".into()),
        Request::Backend => Ok(Response::Backend(api::BackendInfo(
            shared.device().backend_info(),
        ))),
        Request::Status => {
            let worker = shared.worker();
            let dev = shared.device();
            let c = dev.config();
            Ok(Response::Status(api::StatusInfo {
                connected: conn.connected.load(Ordering::Relaxed),
                connections: conn.connections.load(Ordering::Relaxed),
                features_offered: dev.features(),
                features_acked: dev.acked_features(),
                config: api::ConfigInfo {
                    page_size_mask: c.page_size_mask,
                    input_start: c.input_start,
                    input_end: c.input_end,
                    domain_start: c.domain_start,
                    domain_end: c.domain_end,
                    probe_size: c.probe_size,
                    bypass: dev.bypass(),
                    endpoints: c.endpoints.to_string(),
                },
                endpoints: dev.endpoint_list().count() as u64,
                domains: dev.domain_list().count() as u64,
                mappings: dev.total_mappings(),
                worker: api::WorkerInfo {
                    sched: conn.worker_sched.to_string(),
                    poll_us: conn.poll_us,
                    tid: worker.as_ref().map(|w| w.tid),
                    sched_error: worker.and_then(|w| w.sched_error),
                },
            }))
        }
        Request::Endpoints => {
            let dev = shared.device();
            Ok(Response::Endpoints(
                dev.endpoint_list()
                    .map(|(id, domain)| api::EndpointInfo { id, domain })
                    .collect(),
            ))
        }
        Request::Domains => {
            let dev = shared.device();
            Ok(Response::Domains(
                dev.domain_list()
                    .map(|(id, bypass, endpoints, n)| api::DomainInfo {
                        id,
                        bypass,
                        endpoints,
                        mappings: n as u64,
                        table: dev.domain_table(id).map(|(format, cached, hits, misses)| {
                            api::TableInfo {
                                format,
                                cached: cached as u64,
                                hits,
                                misses,
                            }
                        }),
                    })
                    .collect(),
            ))
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
            let mut page = table.page(start.unwrap_or(0), limit + 1);
            let mappings = page
                .by_ref()
                .take(limit)
                .map(|m| api::MappingInfo {
                    virt_start: m.virt_start,
                    virt_end: m.virt_end,
                    phys_start: m.phys_start,
                    read: m.readable(),
                    write: m.writable(),
                    mmio: m.mmio(),
                })
                .collect();
            let next = page.next().map(|m| m.virt_start);
            Ok(Response::Mappings(api::MappingPage { mappings, next }))
        }
        Request::Counters => {
            let dev = shared.device();
            let s = dev.stats();
            let row = |type_: u8| status_counts(&s.requests[usize::from(type_)]);
            Ok(Response::Counters(Box::new(api::Counters {
                requests: api::RequestCounters {
                    attach: row(model::protocol::T_ATTACH),
                    detach: row(model::protocol::T_DETACH),
                    map: row(model::protocol::T_MAP),
                    unmap: row(model::protocol::T_UNMAP),
                    probe: row(model::protocol::T_PROBE),
                    attach_table: row(model::protocol::T_ATTACH_TABLE),
                    detach_table: row(model::protocol::T_DETACH_TABLE),
                    invalidate: row(model::protocol::T_INVALIDATE),
                    attach_pasid: row(model::protocol::T_ATTACH_PASID),
                    detach_pasid: row(model::protocol::T_DETACH_PASID),
                    page_resp: row(model::protocol::T_PAGE_RESP),
                },
                bad_buffers: s.ignored,
                faults: api::FaultCounters {
                    delivered: s.faults_delivered,
                    dropped: s.faults_dropped,
                },
            })))
        }
        Request::Faults => {
            let dev = shared.device();
            Ok(Response::Faults(
                dev.fault_log()
                    .map(|(f, delivered)| api::FaultInfo {
                        reason: fault_reason(f.reason),
                        endpoint: f.endpoint,
                        address: f.address,
                        read: f.read,
                        write: f.write,
                        delivered,
                    })
                    .collect(),
            ))
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
            let (t, guest_ram) = {
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
            Ok(Response::Translate(match t {
                Translation::Translated { phys, mapping } => api::Translation::Translated {
                    phys,
                    guest_ram,
                    mapping: mapping.map(|m| api::TranslatedMapping {
                        virt_start: m.virt_start,
                        virt_end: m.virt_end,
                        phys_start: m.phys_start,
                        read: m.readable(),
                        write: m.writable(),
                    }),
                },
                Translation::Bypass { phys } => api::Translation::Bypass { phys, guest_ram },
                Translation::Fault { reason } => {
                    shared.wake();
                    api::Translation::Fault {
                        reason: fault_reason(reason),
                    }
                }
                Translation::PageRequest { grpid } => {
                    shared.wake();
                    api::Translation::PageRequest { grpid }
                }
            }))
        }
        Request::PageRequests => {
            let dev = shared.device();
            Ok(Response::PageRequests(
                dev.page_request_list()
                    .map(|(endpoint, grpid, pr)| api::PageRequestInfo {
                        endpoint,
                        grpid,
                        pasid: pr.pasid,
                        address: pr.address,
                    })
                    .collect(),
            ))
        }
        Request::Pasids => {
            let dev = shared.device();
            Ok(Response::Pasids(
                dev.pasid_attach_list()
                    .map(|(endpoint, pasid, domain)| api::PasidBinding {
                        endpoint,
                        pasid,
                        domain,
                    })
                    .collect(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters name every status the model has, by the model's own names.
    #[test]
    fn status_counts_cover_every_status() {
        let row: Vec<u64> = (1..=Status::ALL.len() as u64).collect();
        let v = serde_json::to_value(status_counts(&row)).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), Status::ALL.len());
        for st in Status::ALL {
            assert_eq!(obj[st.name()], row[st as usize], "{}", st.name());
        }
    }
}
