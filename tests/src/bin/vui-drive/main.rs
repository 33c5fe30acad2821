//! `vui-drive`: drives the daemon's iommufd backend from inside a test guest whose kernel has
//! CONFIG_IOMMUFD_TEST, and checks every effect with the kernel's own selftest ops.
//!
//! It plays the launcher: it opens /dev/iommu, hands it to the daemon over the fd hand-over
//! socket (docs/IOMMUFD.md), so both share one iommufd and the object ids the daemon reports on its
//! control socket (`backend`) can be checked here with IOMMU_TEST_OP_MD_CHECK_MAP (the mock
//! domain's page table), MD_CHECK_REFS (page pins), IOMMU_IOAS_IOVA_RANGES (object census).
//! Then it is the vhost-user frontend (the integration-test harness of this crate). The kernel
//! ABI is the daemon's own: the `iommufd_sys` crate.
//!
//! Usage: `vui-drive mock`, or `vui-drive vfio BDF` with QEMU's edu device bound to vfio-pci
//! (its DMA engine checks the translations); the daemon binary comes from
//! $VHOST_USER_IOMMU_BIN. Prints
//! `VUI-RESULT <name> PASS|FAIL <detail>` lines; exits 1 if any check failed.
//! `vui-drive batch-child SOCKET ENDPOINT DOMAIN` is the frontend that `mock` (and the host
//! test tests/tests/memory_table.rs) kill with SIGKILL in the middle of a batch of MAPs.
//!
//! Modules:
//! - [`launch`]: the launcher: daemon configs, the fd hand-over, /dev/iommu.
//! - [`report`]: the `VUI-RESULT` lines.
//! - [`backend`]: what the daemon says about its host objects (control socket `backend`).
//! - [`census`]: which IOASes and HWPTs exist in the shared iommufd.
//! - [`ram`]: views of guest RAM (its memfds) of this process.
//! - [`mock`]: `vui-drive mock`: MAP, UNMAP, replace, DETACH, bypass, disconnect on mock devices;
//!   then [`memtable`] (memory-table changes, vring resets), [`batch`] (a frontend killed
//!   mid-batch, and the batch child), [`nested`] (the PASID extension) and [`restart`] (a daemon
//!   restart keeping the VM's DMA).
//! - [`vfio`]: `vui-drive vfio BDF`: the same through QEMU's edu device ([`edu`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backend;
mod batch;
mod census;
mod edu;
mod launch;
mod memtable;
mod mock;
mod nested;
mod ram;
mod report;
mod restart;
mod vfio;

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use iommufd_sys::MOCK_APERTURE_START;
use vhost_user_iommu_tests::proto;
use vhost_user_iommu_tests::Options;

/// Guest RAM in the mock aperture, added with a new memory table.
const RAM_GPA: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 2 << 20;
/// The IOVA the mock checks map: the start of the mock aperture (16 MiB).
const IOVA: u64 = MOCK_APERTURE_START;
const LEN: u64 = 0x1_0000;
/// A second and a third RAM region in the mock aperture.
const HOT_GPA: u64 = 0x5000_0000;
const EXTRA_GPA: u64 = 0x6000_0000;
const RW: u32 = proto::MAP_F_READ | proto::MAP_F_WRITE;
/// How long the daemon may take to report a frontend gone (it has released the connection's
/// state by then).
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One low region (rings and buffers, GPA 0, inside the mock's IOVA hole); the region in the
/// aperture is added with a new memory table (regions stay sorted, as vhost-user wants).
fn opts() -> Options {
    Options {
        high_size: 0,
        ..Options::default()
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "batch-child" {
        let arg = |i: usize| std::env::args().nth(i).unwrap_or_default();
        let (Ok(ep), Ok(domain)) = (arg(3).parse(), arg(4).parse()) else {
            eprintln!("usage: vui-drive batch-child SOCKET ENDPOINT DOMAIN");
            std::process::exit(2);
        };
        batch::batch_child(Path::new(&arg(2)), ep, domain);
    }
    let iommufd = match launch::open_iommufd() {
        Ok(fd) => fd,
        Err(e) => {
            println!("VUI-RESULT open-iommufd FAIL /dev/iommu: {e}");
            std::process::exit(1);
        }
    };
    let failed = match mode.as_str() {
        "mock" => mock::mock(iommufd.as_fd()),
        "vfio" => vfio::vfio(
            iommufd.as_fd(),
            &std::env::args().nth(2).unwrap_or_default(),
        ),
        other => {
            eprintln!("usage: vui-drive mock | vui-drive vfio BDF | vui-drive batch-child SOCKET ENDPOINT DOMAIN (got {other:?})");
            std::process::exit(2);
        }
    };
    std::process::exit(i32::from(failed > 0));
}
