//! End-to-end test harness for the `vhost-user-iommu` daemon.
//!
//! Everything here is written from the virtio-iommu specification, independently of the
//! daemon's own code: a memfd-backed guest memory, the driver side of a split virtqueue, a
//! vhost-user frontend session built on `vhost::vhost_user::Frontend`, encoders and decoders
//! for every virtio-iommu request and the fault record, a control-socket client, and a
//! spawner that runs the real daemon binary.
//!
//! ```no_run
//! use vhost_user_iommu_tests::{proto::status, Daemon, Request};
//! let daemon = Daemon::start(&["--endpoints", "0-15"]); // real binary, temp sockets
//! let mut dev = daemon.connect(); // negotiate, memfd memory, requestq + eventq
//! dev.run(&Request::attach(1, 3, 0)).expect(status::OK, "ATTACH");
//! assert_eq!(daemon.ctl().endpoint_domain(3), Some(1)); // control socket
//! ```
//!
//! Modules:
//! - [`mem`]: memfd-backed guest memory (one or more regions, hot-plug), volatile accessors.
//! - [`virtq`]: the driver side of a split virtqueue, including raw (hostile) descriptors and
//!   EVENT_IDX kick suppression.
//! - [`device`]: the vhost-user frontend session (`vhost::vhost_user::Frontend`) and request
//!   helpers; every completion is checked for writes into readable parts or past the end.
//! - [`proto`]: virtio-iommu requests, config space, PROBE properties and fault records.
//! - [`control`]: the control-socket client (docs/CONTROL.md).
//! - [`daemon`]: finds, starts, signals, kills and reaps the daemon binary
//!   (`$VHOST_USER_IOMMU_BIN`, else `<target>/<profile>/vhost-user-iommu`, rebuilt whenever a
//!   source of it is newer).
//!
//! - [`launcher`]: the fd hand-over of a launcher (iommufd and device fds over SCM_RIGHTS).
//! - [`raw`]: raw vhost-user messages of a hostile frontend (any header, payload and fds), on
//!   a socket that may also carry a well-behaved frontend or device.
//!
//! Integration tests live in `tests/tests/` (one file per area: negotiation, requests, batch,
//! faults, hostile, reconnect, process, control, memory_table, migration, restart, pasid,
//! iommufd, sched; the hostile-VMM suite, malformed vhost-user sessions, in `hostile_vmm/`);
//! the binaries `vui-drive` (run inside the test VM against real iommufd) and
//! `vui-bench` (benchmarks) in `tests/src/bin/`. docs/ARCHITECTURE.md says which test goes where.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod control;
pub mod daemon;
pub mod device;
pub mod launcher;
pub mod mem;
pub mod proto;
pub mod raw;
pub mod virtq;

pub use control::Control;
pub use daemon::Daemon;
pub use device::{Device, Options, Request, Response};
pub use mem::GuestMemory;
pub use virtq::{Desc, SplitQueue};
