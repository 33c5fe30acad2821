#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/*). Rerun after changing an
input format; the formats are described at the top of each fuzz_targets/<target>.rs."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(v): return struct.pack("<B", v & 0xff)
def u16(v): return struct.pack("<H", v & 0xffff)
def u32(v): return struct.pack("<I", v & 0xffffffff)
def u64(v): return struct.pack("<Q", v & 0xffffffffffffffff)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- requests (docs/DEVICE.md, docs/PASID.md) -------------------------------------------------
def head(t): return bytes([t, 0, 0, 0])
def attach(dom, ep, flags=0): return head(1) + u32(dom) + u32(ep) + u32(flags) + bytes(4)
def detach(dom, ep): return head(2) + u32(dom) + u32(ep) + bytes(8)
def map_(dom, vs, ve, ps, flags=3): return head(3) + u32(dom) + u64(vs) + u64(ve) + u64(ps) + u32(flags)
def unmap(dom, vs, ve): return head(4) + u32(dom) + u64(vs) + u64(ve) + bytes(4)
def probe(ep): return head(5) + u32(ep) + bytes(64)
def attach_table(dom, fmt, desc):
    return head(6) + u32(dom) + u16(fmt) + u16(0) + bytes(4) + desc.ljust(48, b"\0")
def smmuv3_desc(s1fmt, s1dss, cdmax, ptr): return bytes([s1fmt, s1dss, 0, 0]) + u32(cdmax) + u64(ptr)
def vmsa_desc(asid, ttbr, tcr, mair): return u16(asid) + bytes(6) + u64(ttbr) + u64(tcr) + u64(mair)
def vtd_desc(aw, pgd, flags): return u32(aw) + bytes(4) + u64(pgd) + u64(flags)
def detach_table(dom): return head(9) + u32(dom) + bytes(8)
def attach_pasid(dom, ep, pasid): return head(10) + u32(dom) + u32(ep) + u32(pasid) + bytes(8)
def detach_pasid(dom, ep, pasid): return head(11) + u32(dom) + u32(ep) + u32(pasid) + bytes(8)
def invalidate(scope, caches, flags, dom, pasid=0, archid=0, vs=0, nr=0, granule=0):
    return (head(7) + u16(scope) + u16(caches) + u16(flags) + bytes(2) + u32(dom) + u32(pasid)
            + bytes(4) + u64(archid) + u64(vs) + u64(nr) + u8(granule) + bytes(15))
def page_resp(ep, pasid, grpid, code, flags=0):
    return head(8) + u32(ep) + u32(pasid) + u32(grpid) + u16(code) + u16(flags) + bytes(12)

# Guest tables (4 KiB granule / 4-level). VMSA: table descriptor = addr | 0b11; page = addr |
# AF | AP=01 (EL0 RW) | 0b11. VT-d: entry = addr | P | RW | US (| A).
VMSA_TABLE = 0b11
VMSA_PAGE = 0b11 | (1 << 10) | (1 << 6)
VTD_NL = 0b111
VTD_LEAF = 0b111 | (1 << 5)
LINUX_CD_W0 = (16 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 30) | (1 << 31) | (5 << 32)
               | (1 << 41) | (1 << 45) | (1 << 46) | (1 << 47) | (0x1234 << 48))
MAIR = 0x0044ff04
TCR = 16 | (5 << 32)  # T0SZ 16, TG0 4K, IPS 48 bits


def vmsa_tables(base, out):
    """4-level 4K table at base..base+0x4000 mapping IOVA 0 -> out; (addr, word) pairs."""
    return [(base, (base + 0x1000) | VMSA_TABLE), (base + 0x1000, (base + 0x2000) | VMSA_TABLE),
            (base + 0x2000, (base + 0x3000) | VMSA_TABLE), (base + 0x3000, out | VMSA_PAGE)]


def vtd_tables(base, out):
    return [(base, (base + 0x1000) | VTD_NL), (base + 0x1000, (base + 0x2000) | VTD_NL),
            (base + 0x2000, (base + 0x3000) | VTD_NL), (base + 0x3000, out | VTD_LEAF)]


# --- device_requests -----------------------------------------------------------------------
ALL = u64(0xffffffffffffffff)


def req(r, props_sel=0): return bytes([props_sel << 3, len(r)]) + r
def translate(ep, iova, pasid=0xff, access=0): return bytes([1, ep, pasid]) + u64(iova) + bytes([access])
def wmem(off, val): return bytes([2]) + u16(off) + u64(val)
def wconfig(off, val): return bytes([3, off, val])


def device_seeds():
    t = "device_requests"
    # Every standard request, OK path.
    write(t, "standard", bytes([0]) + ALL + req(attach(1, 1)) + req(map_(1, 0x1000, 0x1fff, 0x100000))
          + req(probe(1), 1) + translate(1, 0x1234) + translate(1, 0x9000, access=1)
          + req(unmap(1, 0, 0xffff)) + req(detach(1, 1)))
    # The failures of DEVICE.md's table: overlap, split, misalignment, unknown domain and
    # endpoint, bypass domain, reserved bytes, MSI window, wrap, probe area too small.
    write(t, "invalid", bytes([0]) + ALL + req(attach(1, 1)) + req(map_(1, 0x0, 0x3fff, 0x0))
          + req(map_(1, 0x2000, 0x2fff, 0x0)) + req(unmap(1, 0x1000, 0x1fff))
          + req(map_(1, 0x10800, 0x10fff, 0x0)) + req(map_(2, 0x0, 0xfff, 0x0))
          + req(attach(3, 2, 1)) + req(map_(3, 0, 0xfff, 0)) + req(attach(3, 4, 0))
          + req(attach(1, 5) [:16] + b"\x01\0\0\0") + req(unmap(1, 0, 0xfff)[:24] + b"\x01\0\0\0")
          + req(map_(1, 0xfee00000, 0xfee00fff, 0)) + req(map_(1, 0x100000, 0x100fff, 0xfffffffffffff000 ))
          + req(probe(1), 2) + req(detach(9, 1)) + req(head(3) + bytes(8)) + req(head(42) + bytes(32)))
    # Restricted config: NOENT endpoints, RANGE domains/IOVAs, NOMEM at 8 mappings, 64K granule.
    body = b"".join(req(map_(1, i * 0x10000 + 0x10000, i * 0x10000 + 0x1ffff, 0)) for i in range(10))
    write(t, "restricted", bytes([0xff]) + ALL + req(attach(1, 1)) + req(attach(1, 99))
          + req(attach(100, 2)) + body + req(map_(1, 0x80000000, 0x8000ffff, 0)) + wconfig(36, 1)
          + req(probe(1), 1) + bytes([4 | 8]))
    # PASID table (SMMUv3 linear CD table, 4 CDs) at 0x5000 over a VMSA table at 0x1000.
    mem = b"".join(wmem(a, v) for a, v in vmsa_tables(0x1000, 0x8000))
    for i in range(2):
        mem += wmem(0x5000 + 64 * i, LINUX_CD_W0) + wmem(0x5008 + 64 * i, 0x1000) + wmem(0x5018 + 64 * i, MAIR)
    write(t, "cd_table", bytes([0]) + ALL + mem + req(attach(1, 1))
          + req(attach_table(1, 2, smmuv3_desc(0, 2, 2, 0x5000))) + translate(1, 0x10, 1)
          + translate(1, 0x10) + translate(1, 0x200000, 1, 1)
          + req(invalidate(2, 7, 1, 1, pasid=1)) + req(invalidate(4, 1, 3, 1, pasid=1, archid=0x1234, vs=0, nr=1, granule=12))
          + wmem(0x5040, 0) + req(invalidate(1, 7, 0, 1)) + translate(1, 0x10, 1)
          + bytes([5 | 8]) + req(attach_pasid(1, 2, 3)) + req(detach_table(1)) + req(detach(1, 1)))
    # Single tables: VT-d 4-level at 0x6000, VMSA regime at 0x1000; ATTACH_PASID to them.
    mem = b"".join(wmem(a, v) for a, v in vmsa_tables(0x1000, 0x8000) + vtd_tables(0x9000, 0x8000))
    write(t, "page_tables", bytes([0]) + ALL + mem + req(attach(1, 1)) + req(attach(2, 2))
          + req(attach_table(1, 4, vtd_desc(48, 0x9000, 0))) + translate(1, 0x123)
          + req(attach_table(2, 1, vmsa_desc(7, 0x1000, TCR, MAIR))) + translate(2, 0x456, access=2)
          + req(attach_pasid(1, 3, 5)) + translate(3, 0x10, 5) + req(detach_pasid(1, 3, 5))
          + req(attach_table(1, 4, vtd_desc(57, 0x9000, 1))) + req(page_resp(1, 0, 0, 0))
          + req(detach_table(2)) + req(map_(2, 0, 0xfff, 0)) + bytes([4]))


# --- virtqueue -------------------------------------------------------------------------------
def desc(addr, length, flags=0, nxt=0): return u64(addr) + u32(length) + u16(flags) + u16(nxt)
NEXT, WRITE, INDIRECT = 1, 2, 4


def vq_image(descs, heads, data):
    img = bytearray(0x400)
    for i, d in enumerate(descs):
        img[16 * i:16 * i + 16] = d
    avail = u16(0) + u16(len(heads)) + b"".join(u16(h) for h in heads)
    img[0x100:0x100 + len(avail)] = avail
    out = bytes(img)
    for off, blob in data:
        out = out.ljust(off, b"\0")
        out = out[:off] + blob + out[off + len(blob):]
    return out


def virtqueue_seeds():
    t = "virtqueue"
    size_flags = 3 << 4  # 8 descriptors
    reqs = [attach(1, 1), map_(1, 0x1000, 0x1fff, 0x2000), probe(1), unmap(1, 0, 0xffff)]
    descs, heads, data, at = [], [], [], 0x400
    for r in reqs:
        wl = 512 + 4 if r[0] == 5 else 4
        heads.append(len(descs))
        descs.append(desc(at, len(r), NEXT, len(descs) + 1))
        descs.append(desc(at + 0x100, wl, WRITE))
        data.append((at, r))
        at += 0x400
    write(t, "requests", bytes([0, size_flags]) + vq_image(descs, heads, data))
    # One request through an indirect table (at 0x300), one split over three descriptors.
    r = map_(1, 0x3000, 0x3fff, 0x3000)
    ind = desc(0x400, 20, NEXT, 1) + desc(0x500, 4, WRITE)
    descs = [desc(0x300, 32, INDIRECT), desc(0x600, 10, NEXT, 2), desc(0x60a, 26, NEXT, 3),
             desc(0x700, 4, WRITE)]
    write(t, "indirect", bytes([0, size_flags | 1]) + vq_image(descs, [0, 1], [(0x300, ind), (0x400, attach(1, 1)), (0x600, r)]))
    # Hostile: a descriptor loop, a buffer in the RAM hole, writable before readable, a huge
    # length, a head index beyond the queue, a short head.
    descs = [desc(0x400, 20, NEXT, 0), desc(0x9000, 20, NEXT, 2), desc(0x400, 4, WRITE),
             desc(0x500, 4, WRITE | NEXT, 4), desc(0x400, 20), desc(0x400, 0xffffffff, 0),
             desc(0x400, 2, NEXT, 7), desc(0x17ffc, 8, WRITE)]
    write(t, "hostile", bytes([0, size_flags]) + vq_image(descs, [0, 1, 3, 5, 9, 6], [(0x400, attach(1, 1))]))


# --- pasid_decode ----------------------------------------------------------------------------
def pasid_header(s1fmt, s1dss, ptr, cdmax, pasid_bits, caps, ssids, vtd, cd, tcr, ttbr0, ste):
    vp, pgd, vf, aw, vcaps, haw = vtd
    return (bytes([s1fmt, s1dss]) + u64(ptr) + u32(cdmax) + bytes([pasid_bits, caps])
            + b"".join(u32(s) for s in ssids) + u32(vp) + u64(pgd) + u64(vf) + u32(aw)
            + bytes([vcaps, haw]) + b"".join(u64(w) for w in cd) + u64(tcr) + u64(ttbr0) + u64(MAIR)
            + u64(ste[0]) + u64(ste[1]))


def image(words, size=0x4000, base=0x10000):
    img = bytearray(size)
    for a, v in words:
        img[a - base:a - base + 8] = u64(v)
    return bytes(img).rstrip(b"\0")


def linux_cd(ttb0): return [LINUX_CD_W0, ttb0, 0, MAIR, 0, 0, 0, 0]


def pasid_seeds():
    t = "pasid_decode"
    cd = linux_cd(0x11000)
    ste = [1 | (5 << 1) | 0x10000 | (2 << 59), 2]
    vtd = (1, 0x12000, 0, 48, 0x70, 16)
    # Linear CD table at 0x10000 (4 CDs), VMSA tables at 0x11000.. (only 3 pages: L0..L2 +
    # the L3 in the second RAM range).
    words = [(0x10000 + 64 * i + 8 * j, w) for i in range(4) for j, w in enumerate(cd)]
    words += [(0x11000, 0x12000 | VMSA_TABLE), (0x12000, 0x13000 | VMSA_TABLE),
              (0x13000, 0x100000 | VMSA_TABLE)]
    write(t, "linear", pasid_header(0, 0, 0x10000, 2, 20, 0, [0, 1, 3, 4], vtd, cd, TCR, 0x11000, ste)
          + image(words))
    # 2-level (4KL2: 64 CDs per leaf table), cdmax 8: L1 at 0x10000, leaf at 0x11000.
    words = [(0x10000, 0x11000 | 1), (0x10008, 0x100000 | 1), (0x10010, 0x12000)]
    words += [(0x11000 + 64 * 5 + 8 * j, w) for j, w in enumerate(linux_cd(0x13000))]
    write(t, "two_level", pasid_header(1, 2, 0x10000, 8, 10, 0x20, [5, 64, 0, 200], (0, 0x13000, 5, 57, 0x8f, 20),
                                      cd, TCR | (1 << 39), 0x13000, ste) + image(words))


# --- walkers ---------------------------------------------------------------------------------
def walker_header(granule, t0sz, ips, ttb0, vf, oas, pgtbl, aw, tf, haw, iovas, acc):
    return (bytes([granule, t0sz, ips]) + u64(ttb0) + bytes([vf, oas]) + u64(pgtbl)
            + bytes([aw, tf, haw]) + b"".join(u64(i) for i in iovas) + bytes([acc]))


def walker_seeds():
    t = "walkers"
    iovas = [0, 0x1234, 0x200000, 0x40000000, 0x8000000000, 0x7ffffffff000, 0xffff800000000000, 0x1000]
    # Both formats map IOVA 0 (4 levels); pointers into the second RAM range and out of RAM.
    words = vmsa_tables(0x10000, 0x100000)
    words += [(0x11008, 0x40000000 | 1 | (1 << 10)), (0x12008, 0x200000 | 1 | (1 << 10))]
    write(t, "vmsa_4level", walker_header(0, 16, 5, 0x10000, 0, 5, 0x10000, 0, 0, 16, iovas, 0) + image(words))
    words = vtd_tables(0x10000, 0x100000) + [(0x11008, 0x40000000 | VTD_LEAF | (1 << 7)),
                                             (0x12008, 0xdead000 | VTD_NL)]
    write(t, "vtd_4level", walker_header(0, 0, 5, 0x20000, 0, 5, 0x10000, 0, 8, 16, iovas, 1) + image(words))
    # Loops: every table's entry 0 points at itself (both formats read the same image).
    words = [(0x10000, 0x10000 | VMSA_TABLE | VTD_NL), (0x10008, 0x10000 | VMSA_TABLE | (1 << 51))]
    write(t, "self_loop", walker_header(0, 16, 5, 0x10000, 0, 5, 0x10000, 2, 0, 16, iovas, 2) + image(words))
    # 64K granule, 52-bit output, big-endian tables, reserved bits in a leaf.
    words = [(0x10000, 0x100000 | VMSA_TABLE), (0x10008, (0x10000 | VMSA_PAGE | (1 << 50)))]
    write(t, "vmsa_64k", walker_header(1 | 4, 12, 6, 0x10000, 0x8 | 0x20, 6 | 8, 0x10000, 1, 7, 20, iovas, 4) + image(words))


# --- device state streams (docs/STATE.md) ------------------------------------------------------
STD_FEATURES = (1 << 32) | 0x77  # VERSION_1, INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO, BYPASS_CONFIG


def state_header(acked=None, bypass=0, domain_end=64):
    flags = 0 if acked is None else 1
    return (b"VUIOMMUS" + u32(1) + u32(flags) + u64(acked or 0) + u64(0) + u64(~0xfff)
            + u64(0) + u64(~0) + u32(1) + u32(domain_end) + bytes([20, bypass]) + bytes(6))


def rec(kind, payload): return bytes([kind, 0]) + u16(len(payload)) + payload


def state(recs, **kw):
    import zlib
    body = state_header(**kw) + b"".join(rec(k, p) for k, p in recs)
    return body + rec(0xff, u32(len(recs)) + u32(zlib.crc32(body)))


def state_seeds():
    t = "device_state"
    write(t, "empty", state([]))
    write(t, "standard", state([
        (1, attach(1, 0)), (1, attach(1, 1)), (1, map_(1, 0x1000, 0x1fff, 0x8000, 1)),
        (1, map_(1, 0x100000, 0x2fffff, 0x400000, 3)), (1, attach(2, 2, 1)),
        (1, attach(3, 3)), (1, map_(3, 0x5000, 0x5fff, 0x6000, 2)), (2, u32(5)),
        (4, bytes([2, 0, 0, 0]) + u32(2) + u32(0) + bytes(4) + u64(0x1000)),
    ], acked=STD_FEATURES, bypass=1))
    write(t, "pasid_only_domain", state([
        (1, attach(4, 4)), (1, map_(4, 0x7000, 0x7fff, 0xa000, 1)), (1, attach_pasid(4, 4, 7)),
        (1, detach(4, 4)), (1, unmap(4, 0x7000, 0x7fff)), (5, bytes([1])), (6, u64(STD_FEATURES)),
    ], acked=STD_FEATURES))
    write(t, "refused_overlap", state([
        (1, attach(1, 0)), (1, map_(1, 0, 0x1fff, 0)), (1, map_(1, 0x1000, 0x1fff, 0)),
    ], acked=STD_FEATURES))


if __name__ == "__main__":
    device_seeds()
    virtqueue_seeds()
    pasid_seeds()
    walker_seeds()
    state_seeds()
