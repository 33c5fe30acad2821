//! Memory tables that cannot be guest RAM: regions past the end of their file or on a file that
//! may shrink, files that cannot be mapped, overlapping or wrapping regions, fd counts that do
//! not match, and the same through ADD_MEM_REG / REM_MEM_REG.

use vhost_user_iommu_tests::raw::{self, code, mem_table, single_region, NEED_REPLY, VERSION};

use super::*;

/// Guest-physical address of the regions these tests add.
const HOT: u64 = 0x4000_0000;
/// The frontend virtual address of the regions these tests add.
const VA: u64 = 0x7e00_0000_0000;
const MIB: u64 = 1 << 20;

/// The table of `r`'s device plus `extra` (sorted by guest address, as frontends send it).
fn extended(r: &mut Raw, extra: &[(Region, RawFd)]) -> (Vec<u8>, Vec<RawFd>) {
    let (regions, fds) = device_table(r.dev());
    let mut all: Vec<(Region, RawFd)> = regions.into_iter().zip(fds).collect();
    all.extend_from_slice(extra);
    all.sort_by_key(|(r, _)| r.gpa);
    let (regions, fds): (Vec<Region>, Vec<RawFd>) = all.into_iter().unzip();
    (mem_table(&regions, None), fds)
}

/// A working device's table plus `extra` is refused.
fn extension_refused(env: &mut Env, extra: &[(Region, RawFd)], what: &str) -> Raw {
    let mut r = env.ready();
    let (table, fds) = extended(&mut r, extra);
    refused(r.request(code::SET_MEM_TABLE, &table, &fds), what);
    r
}

/// A 2 MiB region on a 1 MiB memfd (sealed, so only the size is wrong); then a ring placed in
/// the part past the end of the file.
pub fn region_past_the_end_of_its_file(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let region = Region::new(HOT, 2 * MIB, VA);
    let r = extension_refused(
        env,
        &[(region, fd(&f))],
        "a region past the end of its file",
    );
    // Whatever the connection's state now, a ring there is refused too (or the connection is
    // already gone).
    let past = region.va(HOT + MIB + 0x1000);
    let reply = r.request(
        code::SET_VRING_ADDR,
        &payload_addr(0, past, past + 0x2000, past + 0x1000),
        &[],
    );
    assert_ne!(reply.value(), Some(0), "a ring past the end of a file");
}

fn payload_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    raw::payload::vring_addr(index, desc, used, avail)
}

/// A one-page region at an offset beyond the end of its file.
pub fn region_offset_past_the_end_of_its_file(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let mut region = Region::new(HOT, 0x1000, VA);
    region.offset = 2 * MIB;
    extension_refused(
        env,
        &[(region, fd(&f))],
        "an offset past the end of the file",
    );
}

/// A memfd without seals: the frontend could shrink it under the mapping at any time, so it is
/// refused; shrinking it afterwards then changes nothing for the daemon.
pub fn unsealed_memfd_shrunk_later(env: &mut Env) {
    let f = raw::memfd(2 * MIB, 0).unwrap();
    let region = Region::new(HOT, 2 * MIB, VA);
    let r = extension_refused(env, &[(region, fd(&f))], "an unsealed memfd");
    f.set_len(0).unwrap();
    let at = region.va(HOT + 0x1000);
    let reply = r.request(
        code::SET_VRING_ADDR,
        &payload_addr(0, at, at + 0x2000, at + 0x1000),
        &[],
    );
    assert_ne!(reply.value(), Some(0), "a ring in a shrunk memfd");
}

/// A regular file (it cannot be sealed, so nothing stops it from shrinking).
pub fn plain_file_as_guest_ram(env: &mut Env) {
    let path = env.daemon.dir().join("guest-ram");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(MIB).unwrap();
    extension_refused(env, &[(Region::new(HOT, MIB, VA), fd(&f))], "a plain file");
}

/// /dev/zero, which maps but is no file of the guest's.
pub fn dev_zero_as_guest_ram(env: &mut Env) {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    extension_refused(env, &[(Region::new(HOT, MIB, VA), fd(&f))], "/dev/zero");
}

/// The read end of a pipe, which cannot be mapped at all.
pub fn pipe_as_guest_ram(env: &mut Env) {
    let (rd, _wr) = raw::pipe().unwrap();
    extension_refused(env, &[(Region::new(HOT, MIB, VA), fd(&rd))], "a pipe");
}

/// A read-only descriptor of a sealed memfd (a shared writable mapping of it fails).
pub fn read_only_descriptor_of_guest_ram(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", fd(&f))).unwrap();
    extension_refused(
        env,
        &[(Region::new(HOT, MIB, VA), fd(&ro))],
        "a read-only fd",
    );
}

/// A memfd sealed against writes.
pub fn write_sealed_memfd(env: &mut Env) {
    let f = raw::memfd(
        MIB,
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE,
    )
    .unwrap();
    extension_refused(
        env,
        &[(Region::new(HOT, MIB, VA), fd(&f))],
        "a write-sealed memfd",
    );
}

/// A region overlapping the device's low region.
pub fn overlapping_regions(env: &mut Env) {
    let f = raw::sealed_memfd(16 * MIB).unwrap();
    extension_refused(
        env,
        &[(Region::new(8 * MIB, 16 * MIB, VA), fd(&f))],
        "overlapping regions",
    );
}

/// A region whose guest-physical range wraps past 2^64.
pub fn region_wrapping_the_guest_physical_space(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let region = Region::new(u64::MAX - 0xfff, 0x2000, VA);
    let r = env.negotiated();
    let reply = r.request(code::SET_MEM_TABLE, &mem_table(&[region], None), &[fd(&f)]);
    assert_ne!(reply.value(), Some(0), "a wrapping region: {reply:?}");
    dropped(&r, "a wrapping region");
}

/// A region whose file offset wraps past 2^64.
pub fn region_wrapping_the_file_offset(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let mut region = Region::new(HOT, 0x2000, VA);
    region.offset = u64::MAX - 0xfff;
    let r = env.negotiated();
    let reply = r.request(code::SET_MEM_TABLE, &mem_table(&[region], None), &[fd(&f)]);
    assert_ne!(reply.value(), Some(0), "a wrapping offset: {reply:?}");
    dropped(&r, "a wrapping offset");
}

/// A 2^62-byte region on a 1 MiB memfd.
pub fn region_larger_than_the_address_space(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    extension_refused(
        env,
        &[(Region::new(1 << 63, 1 << 62, VA), fd(&f))],
        "a 2^62-byte region",
    );
}

/// A file offset that is not page-aligned.
pub fn unaligned_file_offset(env: &mut Env) {
    let f = raw::sealed_memfd(2 * MIB).unwrap();
    let mut region = Region::new(HOT, MIB, VA);
    region.offset = 0x123;
    extension_refused(env, &[(region, fd(&f))], "an unaligned offset");
}

/// Two regions, one descriptor.
pub fn fewer_fds_than_regions(env: &mut Env) {
    let f = raw::sealed_memfd(2 * MIB).unwrap();
    let table = mem_table(
        &[
            Region::new(0, MIB, VA),
            Region::new(HOT, MIB, VA + 0x1000_0000),
        ],
        None,
    );
    let r = env.negotiated();
    r.send(code::SET_MEM_TABLE, VERSION | NEED_REPLY, &table, &[fd(&f)])
        .unwrap();
    dropped(&r, "two regions, one fd");
}

/// A region and no descriptor at all.
pub fn table_without_fds(env: &mut Env) {
    let r = env.negotiated();
    let table = mem_table(&[Region::new(0, MIB, VA)], None);
    r.send(code::SET_MEM_TABLE, VERSION | NEED_REPLY, &table, &[])
        .unwrap();
    dropped(&r, "a table without fds");
}

/// A table of no regions (with a descriptor anyway).
pub fn table_with_zero_regions(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let r = env.negotiated();
    r.send(
        code::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &mem_table(&[], None),
        &[fd(&f)],
    )
    .unwrap();
    dropped(&r, "zero regions");
}

/// 33 regions with 33 descriptors: more than one message may carry.
pub fn table_with_more_regions_than_allowed(env: &mut Env) {
    let files: Vec<_> = (0..33)
        .map(|_| raw::sealed_memfd(0x1000).unwrap())
        .collect();
    let regions: Vec<_> = (0..33u64)
        .map(|i| Region::new(i * 0x10_0000, 0x1000, VA + i * 0x10_0000))
        .collect();
    let r = env.negotiated();
    let fds: Vec<_> = files.iter().map(fd).collect();
    let _ = r.send(
        code::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &mem_table(&regions, None),
        &fds,
    );
    dropped(&r, "33 regions");
}

/// `num_regions` says 2, the message holds one region.
pub fn table_whose_count_disagrees_with_its_size(env: &mut Env) {
    let f = raw::sealed_memfd(MIB).unwrap();
    let g = raw::sealed_memfd(MIB).unwrap();
    let r = env.negotiated();
    let table = mem_table(&[Region::new(0, MIB, VA)], Some(2));
    r.send(
        code::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &table,
        &[fd(&f), fd(&g)],
    )
    .unwrap();
    dropped(&r, "a count that disagrees with the size");
}

/// Ack CONFIGURE_MEM_SLOTS (never offered) on a working device.
fn with_mem_slots(env: &mut Env) -> Raw {
    let r = env.ready();
    accepted(
        r.request(
            code::SET_PROTOCOL_FEATURES,
            &raw::payload::u64(raw::PROTOCOL_NORMAL | raw::PROTOCOL_CONFIGURE_MEM_SLOTS),
            &[],
        ),
        "SET_PROTOCOL_FEATURES",
    );
    r
}

/// ADD_MEM_REG (after acking CONFIGURE_MEM_SLOTS, which is not offered) of a region past the
/// end of its file.
pub fn add_mem_reg_past_the_end_of_its_file(env: &mut Env) {
    let r = with_mem_slots(env);
    let f = raw::sealed_memfd(MIB).unwrap();
    let region = Region::new(HOT, 4 * MIB, VA);
    let reply = r.request(code::ADD_MEM_REG, &single_region(&region), &[fd(&f)]);
    refused(reply, "ADD_MEM_REG past the end of its file");
}

/// ADD_MEM_REG without its descriptor.
pub fn add_mem_reg_without_an_fd(env: &mut Env) {
    let r = with_mem_slots(env);
    let region = Region::new(HOT, MIB, VA);
    r.send(
        code::ADD_MEM_REG,
        VERSION | NEED_REPLY,
        &single_region(&region),
        &[],
    )
    .unwrap();
    dropped(&r, "ADD_MEM_REG without an fd");
}

/// REM_MEM_REG of the region the rings live in: the queue stalls, nothing else happens.
pub fn rem_mem_reg_of_the_rings(env: &mut Env) {
    let mut r = with_mem_slots(env);
    let (regions, _) = device_table(r.dev());
    let low = regions[0];
    let reply = r.request(code::REM_MEM_REG, &single_region(&low), &[]);
    accepted(reply, "REM_MEM_REG of the ring region");
    let d = r.dev();
    d.submit(&vhost_user_iommu_tests::Request::attach(1, 3, 0));
    d.kick();
    assert!(
        d.wait_response(QUIET).is_none(),
        "a request answered in RAM the device no longer has"
    );
}

/// ADD_MEM_REG of a region overlapping the device's low region.
pub fn add_mem_reg_overlapping_a_region(env: &mut Env) {
    let r = with_mem_slots(env);
    let f = raw::sealed_memfd(MIB).unwrap();
    let region = Region::new(0x1000, MIB, VA);
    refused(
        r.request(code::ADD_MEM_REG, &single_region(&region), &[fd(&f)]),
        "ADD_MEM_REG overlapping RAM",
    );
}

/// REM_MEM_REG of a region that is not in the table.
pub fn rem_mem_reg_of_a_missing_region(env: &mut Env) {
    let r = with_mem_slots(env);
    let region = Region::new(HOT, MIB, VA);
    refused(
        r.request(code::REM_MEM_REG, &single_region(&region), &[]),
        "REM_MEM_REG of a missing region",
    );
}

/// 100 MAPs in flight while the memory table loses the region of the rings and gets it back,
/// 50 times: every request is answered once the table is whole again.
pub fn memory_table_replaced_under_a_batch(env: &mut Env) {
    let mut r = env.ready();
    let (regions, fds) = device_table(r.dev());
    let whole = mem_table(&regions, None);
    let without_rings = mem_table(&regions[1..], None);
    {
        let d = r.dev();
        assert_eq!(d.attach(1, 3), OK);
        for i in 0..100u64 {
            d.submit(&vhost_user_iommu_tests::Request::map(
                1,
                i << 12,
                (i << 12) | 0xfff,
                i << 12,
                RW,
            ));
        }
        d.kick();
    }
    for i in 0..50 {
        accepted(
            r.request(code::SET_MEM_TABLE, &without_rings, &fds[1..]),
            &format!("table {i} without the rings"),
        );
        accepted(
            r.request(code::SET_MEM_TABLE, &whole, &fds),
            &format!("table {i} whole"),
        );
    }
    let d = r.dev();
    d.reqq.kick();
    for resp in d.wait_responses(100) {
        resp.expect(OK, "MAP under changing memory tables");
    }
}

/// Event buffers in a region the frontend then takes out of the table, and a fault to report.
pub fn event_buffers_in_removed_memory(env: &mut Env) {
    let mut r = env.ready();
    let (regions, fds) = device_table(r.dev());
    {
        let d = r.dev();
        assert_eq!(d.attach(1, 3), OK);
        d.buf_region = 1;
        d.post_event_buffers(4, vhost_user_iommu_tests::proto::FAULT_RECORD_LEN);
        d.buf_region = 0;
    }
    accepted(
        r.request(
            code::SET_MEM_TABLE,
            &mem_table(&regions[..1], None),
            &fds[..1],
        ),
        "the table without the event buffers' region",
    );
    let t = env.ctl.translate(3, 0xdead_0000, "r");
    assert_eq!(t["outcome"], "fault", "{t}");
    std::thread::sleep(QUIET);
    device_works(&mut r, "after a fault with nowhere to go");
}
