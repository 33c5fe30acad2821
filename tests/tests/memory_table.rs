//! Guest memory changing under live mappings, and a frontend killed in the middle of a batch
//! (software backend; the iommufd backend's side is the VM test `iommufd_mock`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vhost_user_iommu_control::Request as Ctl;
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::proto::{MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::{Control, Daemon, Request};

const RW: u32 = MAP_F_READ | MAP_F_WRITE;
const HOT: u64 = 0x4000_0000;
const EXTRA: u64 = 0x8000_0000;

fn wait_disconnected(ctl: &mut Control) {
    assert!(
        ctl.wait_disconnected(Duration::from_secs(10)),
        "daemon still reports a connection"
    );
}

fn guest_ram(ctl: &mut Control) -> Vec<(u64, u64)> {
    let b = ctl.must(&Ctl::Backend);
    b["guest_ram"]
        .as_array()
        .unwrap_or_else(|| panic!("{b}"))
        .iter()
        .map(|r| (r["gpa"].as_u64().unwrap(), r["size"].as_u64().unwrap()))
        .collect()
}

fn translated(t: &Value, phys: u64, ram: bool) {
    assert_eq!(t["outcome"], "translated", "{t}");
    assert_eq!(t["phys"].as_u64(), Some(phys), "{t}");
    assert_eq!(t["guest_ram"].as_bool(), Some(ram), "{t}");
}

#[test]
fn mappings_outlive_the_ram_they_point_at_and_translate_says_so() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    let mut d = daemon.connect();
    d.hotplug_region(HOT, 1 << 20).unwrap();
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x1ffff, HOT, RW), OK);
    assert_eq!(d.map(1, 0x20000, 0x20fff, 0x1000, RW), OK);
    translated(&ctl.translate(3, 0x10010, "r"), HOT + 0x10, true);
    assert!(guest_ram(&mut ctl).contains(&(HOT, 1 << 20)));

    // A region added elsewhere changes nothing.
    d.hotplug_region(EXTRA, 1 << 20).unwrap();
    translated(&ctl.translate(3, 0x10010, "r"), HOT + 0x10, true);
    assert_eq!(ctl.mappings(1).unwrap().len(), 2);

    // The region goes: the mapping stays guest-visible, the translation says where it points
    // and that there is no RAM there now.
    d.unplug_region(HOT).unwrap();
    assert!(!guest_ram(&mut ctl).iter().any(|r| r.0 == HOT));
    assert_eq!(ctl.mappings(1).unwrap().len(), 2);
    translated(&ctl.translate(3, 0x10010, "r"), HOT + 0x10, false);
    translated(&ctl.translate(3, 0x20010, "w"), 0x1010, true);
    // No fault for the guest: its mapping exists.
    assert!(ctl.faults().is_empty());
    // MAP and UNMAP still answer (the software backend does not require RAM behind a MAP:
    // MMIO, or RAM the VMM adds later).
    assert_eq!(d.map(1, 0x30000, 0x30fff, HOT + 0x8000, RW), OK);
    assert_eq!(d.unmap(1, 0x10000, 0x1ffff), OK);
    let t = ctl.translate(3, 0x10010, "r");
    assert_eq!(t["outcome"], "fault", "{t}");
    assert_eq!(ctl.mappings(1).unwrap().len(), 2);

    // The region comes back: the remaining mapping into it reaches RAM again.
    d.replug_region(HOT).unwrap();
    translated(&ctl.translate(3, 0x30010, "r"), HOT + 0x8010, true);
    // The rings and buffers (region 0) were never touched: requests still flow.
    assert_eq!(d.attach(2, 4), OK);
    daemon.assert_alive();

    // Disconnect: the backend forgets the memory table too.
    drop(d);
    wait_disconnected(&mut ctl);
    assert!(guest_ram(&mut ctl).is_empty());
    let t = ctl.translate(3, 0x30010, "r");
    assert_eq!(t["outcome"], "fault", "{t}");
}

#[test]
fn a_memory_table_without_the_rings_does_not_kill_the_daemon() {
    // A hostile or broken VMM takes away the RAM the rings live in. The daemon cannot serve
    // that queue any more, but it must stay up, keep answering on the control socket and
    // serve the next frontend.
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    {
        let mut d = daemon.connect();
        assert_eq!(d.attach(1, 3), OK);
        assert_eq!(d.map(1, 0x10000, 0x10fff, 0x100000, RW), OK);
        d.unplug_region(0).unwrap();
        d.submit(&Request::attach(2, 4, 0));
        d.kick();
        assert!(d.wait_response(Duration::from_millis(300)).is_none());
        daemon.assert_alive();
        assert_eq!(ctl.mappings(1).unwrap().len(), 1);
        assert!(!guest_ram(&mut ctl).iter().any(|r| r.0 == 0));
        // The RAM comes back: the queue is served again.
        d.replug_region(0).unwrap();
        d.kick();
        let r = d
            .wait_response(Duration::from_secs(5))
            .expect("the request made while the rings had no RAM, once they have it again");
        r.expect(OK, "ATTACH");
        assert_eq!(d.map(1, 0x20000, 0x20fff, 0x100000, RW), OK);
    }
    wait_disconnected(&mut ctl);
    daemon.assert_alive();
    let mut d = daemon.connect();
    assert_eq!(ctl.status()["mappings"].as_u64(), Some(0));
    assert_eq!(d.attach(1, 3), OK);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x100000, RW), OK);
}

/// A `vui-drive batch-child`: a frontend that keeps its request queue full of MAPs.
struct Child {
    child: std::process::Child,
    line: String,
}

impl Child {
    fn start(socket: &std::path::Path, endpoint: u32, domain: u32) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vui-drive"))
            .arg("batch-child")
            .arg(socket)
            .arg(endpoint.to_string())
            .arg(domain.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn vui-drive batch-child");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert!(line.starts_with("VUI-CHILD"), "batch child said {line:?}");
        Child { child, line }
    }

    fn field(&self, k: &str) -> u64 {
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {:?}", self.line))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_frontend_killed_mid_batch_leaves_nothing_behind() {
    let mut daemon = Daemon::start(&[]);
    let mut ctl = daemon.ctl();
    let maps_ok = |ctl: &mut Control| ctl.counters()["requests"]["map"]["ok"].as_u64().unwrap();
    for round in 0..3 {
        let before = maps_ok(&mut ctl);
        let mut child = Child::start(&daemon.socket, 3, 7);
        let (done, in_flight) = (child.field("completed="), child.field("in_flight="));
        assert!(in_flight > 0, "{}", child.line);
        // SIGKILL while the queue is full of MAPs.
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        wait_disconnected(&mut ctl);
        daemon.assert_alive();
        let processed = maps_ok(&mut ctl) - before;
        eprintln!(
            "round {round}: killed with {done} MAP(s) completed, {in_flight} in flight; the daemon completed {processed} for that connection"
        );
        assert!(processed >= done);
        // Nothing of the dead connection is left.
        let st = ctl.status();
        assert_eq!(st["connected"].as_bool(), Some(false), "{st}");
        assert_eq!(st["domains"].as_u64(), Some(0), "{st}");
        assert_eq!(st["mappings"].as_u64(), Some(0), "{st}");
        assert_eq!(st["endpoints"].as_u64(), Some(0), "{st}");
        assert!(ctl.domains().is_empty());
        assert!(ctl.endpoints().is_empty());
        assert!(guest_ram(&mut ctl).is_empty());
        assert_eq!(
            ctl.must(&Ctl::PageRequests),
            json!([]),
            "page requests of a dead connection"
        );
        let t = ctl.translate(3, 0x100_0000, "r");
        assert_eq!(t["outcome"], "fault", "{t}");

        // The next frontend is served normally: the same domain and IOVAs are free again.
        let mut d = daemon.connect();
        assert_eq!(d.attach(7, 3), OK, "round {round}");
        assert_eq!(d.map(7, 0x100_0000, 0x100_0fff, 0x1000, RW), OK);
        translated(&ctl.translate(3, 0x100_0010, "r"), 0x1010, true);
        assert_eq!(ctl.mappings(7).unwrap().len(), 1);
        drop(d);
        wait_disconnected(&mut ctl);
    }
    daemon.assert_alive();
}
