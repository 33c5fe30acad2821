//! `vhost-user-iommu ctl`: the control socket (docs/CONTROL.md) as a person uses it. Tables with
//! addresses, masks and features in hex by default; `--json` prints the daemon's result as it
//! is, for scripts. The socket is found from `--control-socket`, `--socket` (its `.ctl`), or
//! the VM's instance name (`--vm`, the systemd unit's path).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use model::config::{parse_u32, parse_u64};
use vhost_user_iommu_control::{
    self as control, Access, Client, Counters, DomainInfo, EndpointInfo, FaultInfo, FaultReason,
    InvalidationEvent, MappingInfo, Notification, PageRequestInfo, PasidBinding, Request, Response,
    StatusCounts, StatusInfo, Translation,
};

/// Where the systemd units put each VM's sockets (`%t/vhost-user-iommu/%i.sock`).
const RUNTIME_DIR: &str = "/run/vhost-user-iommu";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Path of the daemon's control socket.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["socket", "vm"])]
    control_socket: Option<PathBuf>,
    /// The daemon's vhost-user socket: its control socket is PATH.ctl (the daemon's default).
    #[arg(long, value_name = "PATH", conflicts_with = "vm")]
    socket: Option<PathBuf>,
    /// The VM's instance name under systemd: /run/vhost-user-iommu/VM.sock.ctl. Without any of
    /// these three options, the one control socket in /run/vhost-user-iommu.
    #[arg(long, value_name = "VM")]
    vm: Option<String>,
    /// Print the daemon's result as JSON (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    query: Query,
}

#[derive(Debug, Subcommand)]
enum Query {
    /// Connection, features, configuration and totals.
    Status,
    /// Endpoints the driver has probed or attached, with their domain.
    Endpoints,
    /// Domains with their endpoints and mapping counts.
    Domains,
    /// Mappings: of one domain, or of every domain.
    Mappings {
        /// Only this domain (default: every domain).
        #[arg(long, value_parser = parse_u32)]
        domain: Option<u32>,
        /// Only mappings that start at or after this IOVA.
        #[arg(long, value_parser = parse_u64, default_value = "0")]
        start: u64,
        /// At most this many mappings in all.
        #[arg(long, default_value = "1000")]
        limit: usize,
    },
    /// Requests per type and status (rows that are not zero), fault delivery counts.
    Counters,
    /// The most recent faults.
    Faults,
    /// The host backend's objects (iommufd: IOASes, HWPTs, devices); JSON.
    Backend,
    /// Translate an access as the device would (a miss raises a fault event or a page request).
    Translate {
        #[arg(long, value_parser = parse_u32)]
        endpoint: u32,
        #[arg(long, value_parser = parse_u64)]
        iova: u64,
        /// r, w, rw or x
        #[arg(long, default_value = "r")]
        access: String,
        /// PASID of the access (PASID extension).
        #[arg(long, value_parser = parse_u32)]
        pasid: Option<u32>,
        /// A privileged (supervisor) access.
        #[arg(long)]
        privileged: bool,
    },
    /// ATTACH_PASID bindings (PASID extension).
    Pasids,
    /// Page requests waiting for the guest's PAGE_RESP (PASID extension).
    PageRequests,
    /// Follow invalidations (`subscribe`): one line per UNMAP, ATTACH/DETACH, reset or bypass
    /// change until interrupted.
    Watch {
        /// Stop after this many lines.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Run one `ctl` command.
pub fn run(a: CtlArgs) -> Result<(), String> {
    let path = control_path(&a, Path::new(RUNTIME_DIR))?;
    if let Query::Watch { count } = a.query {
        return watch(&path, count, a.json);
    }
    let mut client = Client::connect(&path).map_err(|e| e.to_string())?;
    let mut ask = |req: &Request| client.request(req).map_err(|e| e.to_string());
    let text = match a.query {
        Query::Mappings {
            domain,
            start,
            limit,
        } => {
            let domains: Vec<u32> = match domain {
                Some(d) => vec![d],
                None => match ask(&Request::Domains)? {
                    Response::Domains(ds) => ds.iter().map(|d| d.id).collect(),
                    other => return Err(unexpected(&other)),
                },
            };
            let mut all = Vec::new();
            for d in domains {
                let mut from = Some(start);
                while let Some(at) = from.filter(|_| all.len() < limit) {
                    let page = match ask(&Request::Mappings {
                        domain: d,
                        start: Some(at),
                        limit: Some(limit - all.len()),
                    })? {
                        Response::Mappings(p) => p,
                        other => return Err(unexpected(&other)),
                    };
                    all.extend(page.mappings.into_iter().map(|m| (d, m)));
                    from = page.next;
                }
            }
            if a.json {
                json(
                    &all.iter()
                        .map(|(d, m)| serde_json::json!({"domain": d, "mapping": m}))
                        .collect::<Vec<_>>(),
                )?
            } else {
                mappings_table(&all)
            }
        }
        q => {
            let req = match q {
                Query::Status => Request::Status,
                Query::Endpoints => Request::Endpoints,
                Query::Domains => Request::Domains,
                Query::Counters => Request::Counters,
                Query::Faults => Request::Faults,
                Query::Backend => Request::Backend,
                Query::Pasids => Request::Pasids,
                Query::PageRequests => Request::PageRequests,
                Query::Translate {
                    endpoint,
                    iova,
                    access,
                    pasid,
                    privileged,
                } => Request::Translate {
                    endpoint,
                    iova,
                    access: Access::parse(&access),
                    pasid,
                    privileged,
                },
                Query::Mappings { .. } | Query::Watch { .. } => return Ok(()),
            };
            let r = ask(&req)?;
            if a.json {
                json(&r)?
            } else {
                render(&r)?
            }
        }
    };
    print!("{text}");
    Ok(())
}

/// The control socket `a` names, or the only one under `runtime`.
fn control_path(a: &CtlArgs, runtime: &Path) -> Result<PathBuf, String> {
    if let Some(p) = &a.control_socket {
        return Ok(p.clone());
    }
    if let Some(s) = &a.socket {
        let mut p = s.clone().into_os_string();
        p.push(".ctl");
        return Ok(p.into());
    }
    if let Some(vm) = &a.vm {
        return Ok(runtime.join(format!("{vm}.sock.ctl")));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(runtime)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ctl"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no control socket in {}: name one with --control-socket PATH, --socket PATH or \
             --vm NAME",
            runtime.display()
        )),
        many => Err(format!(
            "{} control sockets in {}: choose one with --vm ({})",
            many.len(),
            runtime.display(),
            many.iter()
                .filter_map(|p| p.file_name()?.to_str()?.strip_suffix(".sock.ctl"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn watch(path: &Path, count: Option<u64>, as_json: bool) -> Result<(), String> {
    let mut left = count;
    control::watch(path, |n| {
        match n {
            Notification::Invalidation(ev) if as_json => match control::encode(ev) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("vhost-user-iommu: {e}"),
            },
            Notification::Invalidation(ev) => println!("{}", event_line(ev)),
            Notification::NotUnderstood(line) => println!("{line}"),
        }
        if let Some(n) = left.as_mut() {
            *n = n.saturating_sub(1);
        }
        left != Some(0)
    })
    .map_err(|e| e.to_string())
}

fn event_line(ev: &InvalidationEvent) -> String {
    use control::Invalidation as I;
    match &ev.invalidation {
        I::Range {
            domain,
            endpoints,
            start,
            end,
        } => format!(
            "{:>6}  domain {domain}: {start:#x}-{end:#x} unmapped (endpoints {})",
            ev.seq,
            list(endpoints)
        ),
        I::Endpoint { endpoint } => {
            format!("{:>6}  endpoint {endpoint}: attachment changed", ev.seq)
        }
        I::All => format!("{:>6}  everything (reset or bypass change)", ev.seq),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    // Through a `Value`, so keys are printed in sorted order as they always were.
    let text = serde_json::to_value(v)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| e.to_string())?;
    Ok(text + "\n")
}

fn unexpected(r: &Response) -> String {
    format!("unexpected reply from the daemon: {r:?}")
}

fn render(r: &Response) -> Result<String, String> {
    Ok(match r {
        Response::Status(s) => status(s),
        Response::Endpoints(e) => endpoints(e),
        Response::Domains(d) => domains(d),
        Response::Counters(c) => counters(c),
        Response::Faults(f) => faults(f),
        Response::Translate(t) => translation(t),
        Response::Pasids(p) => pasids(p),
        Response::PageRequests(p) => page_requests(p),
        Response::Backend(b) => json(&b.0)?,
        other => json(other)?,
    })
}

fn list(v: &[u32]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn status(s: &StatusInfo) -> String {
    let c = &s.config;
    let w = &s.worker;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "connected          {} ({} connections so far)",
        yes(s.connected),
        s.connections
    );
    let _ = writeln!(o, "features offered   {:#x}", s.features_offered);
    let _ = writeln!(
        o,
        "features acked     {}",
        s.features_acked
            .map_or("- (not negotiated)".to_string(), |f| format!("{f:#x}"))
    );
    let _ = writeln!(o, "page size mask     {:#x}", c.page_size_mask);
    let _ = writeln!(
        o,
        "input range        {:#x}-{:#x}",
        c.input_start, c.input_end
    );
    let _ = writeln!(o, "domain range       {}-{}", c.domain_start, c.domain_end);
    let _ = writeln!(o, "endpoints served   {}", c.endpoints);
    let _ = writeln!(o, "probe size         {}", c.probe_size);
    let _ = writeln!(o, "config bypass      {}", c.bypass);
    let _ = writeln!(
        o,
        "guest state        {} endpoints, {} domains, {} mappings",
        s.endpoints, s.domains, s.mappings
    );
    let _ = writeln!(
        o,
        "request worker     {}, polling {} us, thread {}{}",
        w.sched,
        w.poll_us,
        w.tid.map_or("-".to_string(), |t| t.to_string()),
        w.sched_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (policy refused: {e})"))
    );
    o
}

fn endpoints(e: &[EndpointInfo]) -> String {
    let mut o = format!("{:>10}  {:>10}\n", "ENDPOINT", "DOMAIN");
    for x in e {
        let _ = writeln!(
            o,
            "{:>10}  {:>10}",
            x.id,
            x.domain.map_or("-".to_string(), |d| d.to_string())
        );
    }
    o
}

fn domains(d: &[DomainInfo]) -> String {
    let mut o = format!(
        "{:>10}  {:>6}  {:>10}  {:<20}  {}\n",
        "DOMAIN", "BYPASS", "MAPPINGS", "ENDPOINTS", "TABLE"
    );
    for x in d {
        let table = x.table.as_ref().map_or("-".to_string(), |t| {
            format!(
                "format {} ({} cached, {} hits, {} misses)",
                t.format, t.cached, t.hits, t.misses
            )
        });
        let _ = writeln!(
            o,
            "{:>10}  {:>6}  {:>10}  {:<20}  {table}",
            x.id,
            yes(x.bypass),
            x.mappings,
            list(&x.endpoints)
        );
    }
    o
}

fn perms(r: bool, w: bool) -> String {
    format!("{}{}", if r { "r" } else { "-" }, if w { "w" } else { "-" })
}

fn mappings_table(all: &[(u32, MappingInfo)]) -> String {
    let mut o = format!(
        "{:>10}  {:>18}  {:>18}  {:>18}  {}\n",
        "DOMAIN", "IOVA START", "IOVA END", "PHYS", "PERM"
    );
    for (d, m) in all {
        let _ = writeln!(
            o,
            "{d:>10}  {:>#18x}  {:>#18x}  {:>#18x}  {}{}",
            m.virt_start,
            m.virt_end,
            m.phys_start,
            perms(m.read, m.write),
            if m.mmio { " mmio" } else { "" }
        );
    }
    o
}

fn counters(c: &Counters) -> String {
    let mut o = format!("{:<8}  {:<8}  {:>12}\n", "REQUEST", "STATUS", "COUNT");
    let rows: [(&str, &StatusCounts); 11] = [
        ("attach", &c.requests.attach),
        ("detach", &c.requests.detach),
        ("map", &c.requests.map),
        ("unmap", &c.requests.unmap),
        ("probe", &c.requests.probe),
        ("attach_table", &c.requests.attach_table),
        ("detach_table", &c.requests.detach_table),
        ("invalidate", &c.requests.invalidate),
        ("attach_pasid", &c.requests.attach_pasid),
        ("detach_pasid", &c.requests.detach_pasid),
        ("page_resp", &c.requests.page_resp),
    ];
    for (name, s) in rows {
        for (status, n) in [
            ("ok", s.ok),
            ("ioerr", s.ioerr),
            ("unsupp", s.unsupp),
            ("deverr", s.deverr),
            ("inval", s.inval),
            ("range", s.range),
            ("noent", s.noent),
            ("fault", s.fault),
            ("nomem", s.nomem),
        ] {
            if n != 0 {
                let _ = writeln!(o, "{name:<8}  {status:<8}  {n:>12}");
            }
        }
    }
    for (what, n) in [
        ("bad request buffers", c.bad_buffers),
        ("faults delivered", c.faults.delivered),
        ("faults dropped", c.faults.dropped),
    ] {
        if n != 0 {
            let _ = writeln!(o, "{what:<18}  {n:>12}");
        }
    }
    o
}

fn reason(r: FaultReason) -> &'static str {
    match r {
        FaultReason::Domain => "no domain",
        FaultReason::Mapping => "no mapping",
    }
}

fn faults(f: &[FaultInfo]) -> String {
    let mut o = format!(
        "{:>10}  {:>18}  {:<6}  {:<10}  {}\n",
        "ENDPOINT", "ADDRESS", "ACCESS", "REASON", "DELIVERED"
    );
    for x in f {
        let _ = writeln!(
            o,
            "{:>10}  {:>#18x}  {:<6}  {:<10}  {}",
            x.endpoint,
            x.address,
            perms(x.read, x.write),
            reason(x.reason),
            yes(x.delivered)
        );
    }
    o
}

fn ram(g: Option<bool>) -> &'static str {
    match g {
        Some(true) => "guest RAM",
        Some(false) => "not guest RAM",
        None => "no memory table yet",
    }
}

fn translation(t: &Translation) -> String {
    match t {
        Translation::Translated {
            phys,
            guest_ram,
            mapping,
        } => {
            let by = mapping
                .as_ref()
                .map_or("the guest's table".to_string(), |m| {
                    format!(
                        "mapping {:#x}-{:#x} -> {:#x} {}",
                        m.virt_start,
                        m.virt_end,
                        m.phys_start,
                        perms(m.read, m.write)
                    )
                });
            format!("translated to {phys:#x} ({}) by {by}\n", ram(*guest_ram))
        }
        Translation::Bypass { phys, guest_ram } => {
            format!("bypass: {phys:#x} ({})\n", ram(*guest_ram))
        }
        Translation::Fault { reason: r } => {
            format!("fault ({}), reported on the event queue\n", reason(*r))
        }
        Translation::PageRequest { grpid } => {
            format!("page request, group {grpid}, sent to the guest\n")
        }
    }
}

fn pasids(p: &[PasidBinding]) -> String {
    let mut o = format!("{:>10}  {:>8}  {:>10}\n", "ENDPOINT", "PASID", "DOMAIN");
    for x in p {
        let _ = writeln!(o, "{:>10}  {:>8}  {:>10}", x.endpoint, x.pasid, x.domain);
    }
    o
}

fn page_requests(p: &[PageRequestInfo]) -> String {
    let mut o = format!(
        "{:>10}  {:>8}  {:>6}  {:>18}\n",
        "ENDPOINT", "PASID", "GROUP", "ADDRESS"
    );
    for x in p {
        let _ = writeln!(
            o,
            "{:>10}  {:>8}  {:>6}  {:>#18x}",
            x.endpoint,
            x.pasid.map_or("-".to_string(), |p| p.to_string()),
            x.grpid,
            x.address
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn args(a: &[&str]) -> CtlArgs {
        Cli::try_parse_from(std::iter::once("ctl").chain(a.iter().copied()))
            .unwrap()
            .ctl
    }

    #[test]
    fn the_control_socket_is_found_from_the_socket_or_the_vm() {
        let dir = std::env::temp_dir().join(format!("vui-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |a: &[&str]| control_path(&args(a), &dir);
        assert_eq!(
            p(&["--control-socket", "/x/c", "status"]).unwrap(),
            PathBuf::from("/x/c")
        );
        assert_eq!(
            p(&["--socket", "/run/vui/vm1.sock", "status"]).unwrap(),
            PathBuf::from("/run/vui/vm1.sock.ctl")
        );
        assert_eq!(
            p(&["--vm", "db", "status"]).unwrap(),
            dir.join("db.sock.ctl")
        );
        let e = p(&["status"]).unwrap_err();
        assert!(e.contains("no control socket"), "{e}");
        std::fs::write(dir.join("a.sock.ctl"), "").unwrap();
        assert_eq!(p(&["status"]).unwrap(), dir.join("a.sock.ctl"));
        std::fs::write(dir.join("b.sock.ctl"), "").unwrap();
        let e = p(&["status"]).unwrap_err();
        assert!(e.contains("choose one with --vm (a, b)"), "{e}");
        assert!(Cli::try_parse_from(["ctl", "--vm", "a", "--socket", "/s", "status"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tables_show_hex_and_skip_zero_counters() {
        let c: Counters = serde_json::from_value(serde_json::json!({
            "requests": {
                "attach": {"ok": 2, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0, "noent": 1, "fault": 0, "nomem": 0},
                "detach": {"ok": 0, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0, "noent": 0, "fault": 0, "nomem": 0},
                "map": {"ok": 0, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0, "noent": 0, "fault": 0, "nomem": 0},
                "unmap": {"ok": 0, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0, "noent": 0, "fault": 0, "nomem": 0},
                "probe": {"ok": 0, "ioerr": 0, "unsupp": 0, "deverr": 0, "inval": 0, "range": 0, "noent": 0, "fault": 0, "nomem": 0}
            },
            "bad_buffers": 0,
            "faults": {"delivered": 0, "dropped": 3}
        }))
        .unwrap();
        let t = counters(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[1].starts_with("attach    ok") && lines[1].ends_with(" 2"),
            "{t}"
        );
        assert!(lines[2].starts_with("attach    noent"), "{t}");
        assert!(lines[3].starts_with("faults dropped"), "{t}");
        let m = MappingInfo {
            virt_start: 0x1000,
            virt_end: 0x1fff,
            phys_start: 0x8000_0000,
            read: true,
            write: false,
            mmio: false,
        };
        let t = mappings_table(&[(7, m)]);
        assert!(
            t.contains("0x1000") && t.contains("0x1fff") && t.contains("0x80000000"),
            "{t}"
        );
        assert!(t.lines().nth(1).unwrap().trim_end().ends_with("r-"), "{t}");
    }
}
