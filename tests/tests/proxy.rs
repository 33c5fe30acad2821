//! `vhost-user-iommu proxy` (docs/STATE.md, "Restarting under a running VM"): a frontend
//! attached through the proxy carries on, with nothing to do on its side, while the daemon
//! behind it is killed and started again on the same journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vhost_user_iommu_tests::daemon::{point_at, Proxy, TempDir};
use vhost_user_iommu_tests::device::Options;
use vhost_user_iommu_tests::proto::status::OK;
use vhost_user_iommu_tests::{Daemon, Device};

const R: u32 = 1;

#[test]
fn a_frontend_behind_the_proxy_carries_on_through_daemon_restarts() {
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let link = dir.path().join("daemon.sock");
    let vm = dir.path().join("vm.sock");
    let mut current = Daemon::start(&["--state-dir", state]);
    point_at(&link, &current).unwrap();
    let proxy = Proxy::start(&vm, &link, dir.path().join("proxy.log"));
    let mut d = Device::connect(&vm, &Options::default()).unwrap();
    assert_eq!(d.attach(1, 0), OK);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x8000, R), OK);
    for round in 1..=3u64 {
        // A crash (SIGKILL, on drop), and a new daemon on the same journal.
        drop(current);
        current = Daemon::start(&["--state-dir", state]);
        point_at(&link, &current).unwrap();
        // The frontend just goes on: the proxy has replayed its set-up into the new daemon,
        // which resumed the journal.
        let iova = 0x10_0000 * round;
        assert_eq!(d.map(1, iova, iova + 0xfff, 0x9000, R), OK, "round {round}");
        assert_eq!(
            current.ctl().mappings(1).unwrap().len(),
            1 + round as usize,
            "round {round}: daemon stderr:\n{}",
            current.stderr()
        );
    }
    let log = proxy.log();
    assert_eq!(
        log.matches("daemon connection restored").count(),
        3,
        "{log}"
    );
    // The VMM goes away: the daemon behind the proxy sees its frontend go and resets.
    drop(d);
    assert!(current.ctl().wait_disconnected(Duration::from_secs(10)));
    assert!(current.ctl().mappings(1).is_err() || current.ctl().mappings(1).unwrap().is_empty());
}
