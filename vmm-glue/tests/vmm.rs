//! What a Rust VMM does with vmm-glue: attach the daemon with the library frontend (features and
//! config passed through, memory table, vrings), let the guest driver program the IOMMU, and let
//! an emulated device of its own DMA through IOVAs with the translation client. When the guest
//! unmaps, detaches or resets, the client's cache is invalidated before the guest sees the
//! request complete, and the next access faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::BorrowedFd;
use std::time::Duration;

use vhost_user_iommu_glue::frontend::{feature, IommuFrontend, MemoryRegion, Vring};
use vhost_user_iommu_glue::translate::{
    Access, DmaError, GuestMemoryAccess, Outcome, TranslationClient,
};
use vhost_user_iommu_tests::proto::{self, FaultRecord, MAP_F_READ, MAP_F_WRITE};
use vhost_user_iommu_tests::{Daemon, GuestMemory, SplitQueue};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The emulated device's view of guest RAM.
struct Ram<'a>(&'a GuestMemory);

impl GuestMemoryAccess for Ram<'_> {
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if !self.0.contains(gpa, buf.len() as u64) {
            return false;
        }
        buf.copy_from_slice(&self.0.read(gpa, buf.len()));
        true
    }
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> bool {
        if !self.0.contains(gpa, data.len() as u64) {
            return false;
        }
        self.0.write(gpa, data);
        true
    }
}

/// The VMM: guest RAM, the daemon connection and the guest driver's two queues.
struct Vmm {
    mem: GuestMemory,
    fe: IommuFrontend,
    reqq: SplitQueue,
    evq: SplitQueue,
}

impl Vmm {
    fn attach(socket: &std::path::Path) -> Vmm {
        let mem = GuestMemory::new(&[(0, 16 << 20)], 1 << 20).expect("guest RAM");
        let mut fe = IommuFrontend::connect(socket, TIMEOUT).expect("connect");

        // Feature pass-through: the guest sees the device bits, never the vhost-user bit.
        let offered = fe.device_features();
        for bit in [
            feature::VERSION_1,
            feature::MAP_UNMAP,
            feature::INPUT_RANGE,
            feature::DOMAIN_RANGE,
            feature::PROBE,
            feature::BYPASS_CONFIG,
        ] {
            assert_ne!(
                offered & bit,
                0,
                "device feature {bit:#x} not passed through"
            );
        }
        assert_eq!(offered & feature::VHOST_USER_PROTOCOL_FEATURES, 0);
        // The guest driver acks what Linux acks (and a bit the device never offered).
        let acked = fe
            .set_driver_features(
                feature::VERSION_1
                    | feature::MAP_UNMAP
                    | feature::INPUT_RANGE
                    | feature::DOMAIN_RANGE
                    | feature::PROBE
                    | feature::BYPASS_CONFIG
                    | (1 << 40),
            )
            .expect("SET_FEATURES");
        assert_eq!(acked & (1 << 40), 0);

        let regions: Vec<_> = mem.region_infos();
        let regions: Vec<MemoryRegion<'_>> = regions
            .iter()
            .map(|r| MemoryRegion {
                guest_phys_addr: r.guest_phys_addr,
                size: r.memory_size,
                host_addr: r.userspace_addr,
                // SAFETY: the memfd stays open as long as `mem`, which outlives this call.
                fd: unsafe { BorrowedFd::borrow_raw(r.mmap_handle) },
                fd_offset: r.mmap_offset,
            })
            .collect();
        fe.set_memory(&regions).expect("SET_MEM_TABLE");

        let reqq = SplitQueue::new(&mem, 0, 64);
        let evq = SplitQueue::new(&mem, 1, 16);
        for q in [&reqq, &evq] {
            let c = q.config(&mem);
            let v = Vring {
                size: q.size,
                desc_table: c.desc_table_addr,
                avail_ring: c.avail_ring_addr,
                used_ring: c.used_ring_addr,
                base: 0,
                kick: &q.kick,
                call: &q.call,
            };
            fe.start_vring(q.index, &v).expect("vring");
        }
        Vmm { mem, fe, reqq, evq }
    }

    /// The guest driver sends one request and waits for it (as Linux does, spinning).
    fn request(&mut self, readable: &[u8]) -> u8 {
        let r = self.mem.alloc(readable.len() as u64);
        self.mem.write(r, readable);
        let w = self.mem.alloc(4);
        self.mem.fill(w, 4, 0xff);
        self.reqq.add_chain(
            &self.mem,
            &[(r, readable.len() as u32, false), (w, 4, true)],
        );
        self.reqq.publish_and_kick(&self.mem);
        let used = self
            .reqq
            .wait_used(&self.mem, TIMEOUT)
            .expect("request completed");
        assert_eq!(used.len, 4);
        self.mem.read(w, 1)[0]
    }

    fn post_event_buffer(&mut self) -> u64 {
        let b = self.mem.alloc(24);
        self.evq.add_chain(&self.mem, &[(b, 24, true)]);
        self.evq.publish_and_kick(&self.mem);
        b
    }

    fn wait_fault(&mut self, buf: u64) -> FaultRecord {
        let used = self.evq.wait_used(&self.mem, TIMEOUT).expect("fault event");
        assert_eq!(used.len, 24);
        FaultRecord::parse(&self.mem.read(buf, 24))
    }
}

const EP: u32 = 5; // the VMM's emulated device
const IOVA: u64 = 0x1000_0000;
const GPA: u64 = 0x20_0000;
const GPA2: u64 = 0x40_0000;

#[test]
fn emulated_device_dma_through_the_daemon_with_invalidation() {
    let d = Daemon::start(&["--endpoints", "0-15"]);
    let mut vmm = Vmm::attach(&d.socket);

    // Config pass-through: reads come from the daemon, the guest may write `bypass`.
    let cfg = vmm.fe.read_config(0, 40).expect("config");
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        0xffff_ffff_ffff_f000
    );
    assert_eq!(cfg[36], 0);
    assert!(
        vmm.fe.read_config(36, 8).is_err(),
        "reads past the config space are refused"
    );

    let mut client = TranslationClient::connect(&d.control).expect("translation client");

    // Guest: domain 1 with the device, two adjacent 64 KiB mappings to different RAM.
    assert_eq!(vmm.request(&proto::attach(1, EP, 0)), 0);
    let rw = MAP_F_READ | MAP_F_WRITE;
    assert_eq!(vmm.request(&proto::map(1, IOVA, IOVA + 0xffff, GPA, rw)), 0);
    assert_eq!(
        vmm.request(&proto::map(
            1,
            IOVA + 0x1_0000,
            IOVA + 0x1_ffff,
            GPA2,
            MAP_F_READ
        )),
        0
    );
    vmm.mem.write(GPA + 0xfff8, b"ABCDEFGH");
    vmm.mem.write(GPA2, b"IJKLMNOP");

    // The emulated device reads across both mappings, then again from its cache.
    let mut buf = [0u8; 16];
    client
        .dma_read(&Ram(&vmm.mem), EP, IOVA + 0xfff8, &mut buf)
        .expect("DMA read");
    assert_eq!(&buf, b"ABCDEFGHIJKLMNOP");
    let misses = client.stats().misses;
    assert_eq!(misses, 2);
    client
        .dma_read(&Ram(&vmm.mem), EP, IOVA + 0xfff8, &mut buf)
        .expect("DMA read");
    assert_eq!(
        client.stats().misses,
        misses,
        "second read served from the cache"
    );
    assert_eq!(client.stats().hits, 2);
    // DMA write lands in guest RAM; a write to the read-only mapping faults.
    client
        .dma_write(&Ram(&vmm.mem), EP, IOVA + 0x100, b"dma!")
        .expect("DMA write");
    assert_eq!(vmm.mem.read(GPA + 0x100, 4), b"dma!");
    assert!(matches!(
        client.dma_write(&Ram(&vmm.mem), EP, IOVA + 0x1_0000, b"x"),
        Err(DmaError::Fault { .. })
    ));
    // No event buffer is posted: the daemon's worker drops that fault record (asynchronously,
    // right after the fault). Wait for it, so the buffer posted below cannot receive it.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while d.ctl().counters()["faults"]["dropped"].as_u64() != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fault record was neither delivered nor dropped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Guest UNMAPs the first mapping. By the time the guest sees the request complete the
    // invalidation is already waiting on the subscription.
    let before = client.stats().invalidations;
    assert_eq!(vmm.request(&proto::unmap(1, IOVA, IOVA + 0xffff)), 0);
    assert!(client.poll_invalidations().expect("drain") >= 1);
    assert!(client.stats().invalidations > before);
    // The next access faults (and is not answered from the stale cache); the guest gets the
    // fault record on its eventq.
    let ev = vmm.post_event_buffer();
    let hits = client.stats().hits;
    let err = client
        .dma_read(&Ram(&vmm.mem), EP, IOVA + 0x10, &mut buf[..4])
        .expect_err("unmapped IOVA must fault");
    assert!(matches!(err, DmaError::Fault { iova } if iova == IOVA + 0x10));
    assert_eq!(client.stats().hits, hits);
    let rec = vmm.wait_fault(ev);
    assert_eq!(rec.reason, 2, "MAPPING");
    assert_eq!(rec.endpoint, EP);
    assert_eq!(rec.address, IOVA + 0x10);
    // The second mapping is untouched and still cached.
    client
        .dma_read(&Ram(&vmm.mem), EP, IOVA + 0x1_0000, &mut buf[..8])
        .expect("still mapped");
    assert_eq!(&buf[..8], b"IJKLMNOP");
    assert_eq!(client.stats().hits, hits + 1);

    // DETACH: the endpoint's whole cache goes; with bypass off, access faults (DOMAIN).
    assert_eq!(vmm.request(&proto::detach(1, EP)), 0);
    assert!(matches!(
        client
            .translate(EP, IOVA + 0x1_0000, Access::Read)
            .expect("translate"),
        Outcome::Fault
    ));

    // Bypass through the config space: unattached endpoints go straight to RAM, until the
    // guest turns it off again.
    vmm.fe.write_config(36, &[1]).expect("bypass on");
    assert_eq!(vmm.fe.read_config(36, 1).expect("config")[0], 1);
    client
        .dma_read(&Ram(&vmm.mem), 7, GPA2, &mut buf[..8])
        .expect("bypass DMA");
    assert_eq!(&buf[..8], b"IJKLMNOP");
    vmm.fe.write_config(36, &[0]).expect("bypass off");
    assert!(matches!(
        client.translate(7, GPA2, Access::Read).expect("translate"),
        Outcome::Fault
    ));

    // Device reset drops everything, cached translations included.
    assert_eq!(vmm.request(&proto::attach(2, EP, 0)), 0);
    assert_eq!(vmm.request(&proto::map(2, IOVA, IOVA + 0xfff, GPA, rw)), 0);
    assert!(matches!(
        client
            .translate(EP, IOVA, Access::Write)
            .expect("translate"),
        Outcome::Translated {
            phys: GPA,
            len: 0x1000
        }
    ));
    vmm.fe.reset().expect("reset");
    assert!(matches!(
        client
            .translate(EP, IOVA, Access::Write)
            .expect("translate"),
        Outcome::Fault
    ));

    // The guest driver probes again: features, fresh rings, and the device serves as before.
    vmm.fe
        .set_driver_features(feature::VERSION_1 | feature::MAP_UNMAP | feature::BYPASS_CONFIG)
        .expect("SET_FEATURES after reset");
    vmm.reqq = SplitQueue::new(&vmm.mem, 0, 64);
    vmm.evq = SplitQueue::new(&vmm.mem, 1, 16);
    for q in [&vmm.reqq, &vmm.evq] {
        let c = q.config(&vmm.mem);
        let v = Vring {
            size: q.size,
            desc_table: c.desc_table_addr,
            avail_ring: c.avail_ring_addr,
            used_ring: c.used_ring_addr,
            base: 0,
            kick: &q.kick,
            call: &q.call,
        };
        vmm.fe.start_vring(q.index, &v).expect("vring after reset");
    }
    // Domain 2 did not survive the reset: MAP into it is NOENT until it is attached again.
    assert_eq!(vmm.request(&proto::map(2, IOVA, IOVA + 0xfff, GPA, rw)), 6);
    assert_eq!(vmm.request(&proto::attach(2, EP, 0)), 0);
    assert_eq!(vmm.request(&proto::map(2, IOVA, IOVA + 0xffff, GPA, rw)), 0);
    client
        .dma_read(&Ram(&vmm.mem), EP, IOVA + 0xfff8, &mut buf[..8])
        .expect("DMA after reset");
    assert_eq!(&buf[..8], b"ABCDEFGH");
}

#[test]
fn a_lost_subscription_drops_the_cache_and_resubscribes() {
    let d = Daemon::start(&["--endpoints", "0-15"]);
    let mut vmm = Vmm::attach(&d.socket);
    let mut client = TranslationClient::connect(&d.control).expect("client");
    assert_eq!(vmm.request(&proto::attach(1, EP, 0)), 0);
    assert_eq!(
        vmm.request(&proto::map(1, IOVA, IOVA + 0xfff, GPA, MAP_F_READ)),
        0
    );
    assert!(matches!(
        client.translate(EP, IOVA, Access::Read).expect("translate"),
        Outcome::Translated { phys: GPA, .. }
    ));
    // Simulate the daemon cutting the subscriber off: shut the connection down from our side.
    let fd = client.events_fd().expect("subscribed");
    // SAFETY: shutdown(2) on the client's own open socket; the client still owns and closes it.
    assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
    let resubs = client.stats().resubscriptions;
    let misses = client.stats().misses;
    // The cache is gone (a miss), the answer is still right, and a new subscription is live.
    assert!(matches!(
        client.translate(EP, IOVA, Access::Read).expect("translate"),
        Outcome::Translated { phys: GPA, .. }
    ));
    assert_eq!(client.stats().resubscriptions, resubs + 1);
    assert_eq!(client.stats().misses, misses + 1);
    assert_eq!(vmm.request(&proto::unmap(1, IOVA, IOVA + 0xfff)), 0);
    assert!(matches!(
        client.translate(EP, IOVA, Access::Read).expect("translate"),
        Outcome::Fault
    ));
}
