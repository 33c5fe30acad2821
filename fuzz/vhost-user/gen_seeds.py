#!/usr/bin/env python3
"""Seed corpus of the vhost_user_messages target (format: fuzz_targets/vhost_user_messages.rs).

A valid session that attaches an endpoint through the request queue, and variants a hostile VMM
would send: a region past the end of its file, an unsealed memfd, rings outside memory, config
out of range, unknown codes, lying sizes. Rewrites corpus/vhost_user_messages/seed-*.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "vhost_user_messages")
UA = 0x7F00_0000_0000  # the "VMM address" of the region
SEALED, UNSEALED, SMALL, EVENTFD = 1, 2, 3, 4


def fds(kind, n=1):
    return kind | (n << 3)


def msg(code, payload=b"", spec=0, mode=1):
    return struct.pack("<BBBH", code, mode, spec, len(payload)) + payload


def image():
    img = bytearray(0x4000)
    # Descriptors at 0x0: a 20-byte ATTACH (domain 1, endpoint 1) and its 4-byte status.
    struct.pack_into("<QIHH", img, 0, 0x2000, 20, 1, 1)
    struct.pack_into("<QIHH", img, 16, 0x3000, 4, 2, 0)
    struct.pack_into("<HHH", img, 0x1000, 0, 1, 0)  # avail: flags, idx 1, ring[0] = 0
    struct.pack_into("<BxxxIII", img, 0x2000, 1, 1, 1, 0)
    return bytes(img)


def session(region_kind=SEALED, size=0x10000, desc=0x0, config=(0, 40), extra=b""):
    m = b""
    m += msg(3)  # SET_OWNER
    m += msg(1)  # GET_FEATURES
    m += msg(2, struct.pack("<Q", (1 << 32) | (1 << 30)))
    m += msg(15)  # GET_PROTOCOL_FEATURES
    m += msg(16, struct.pack("<Q", (1 << 3) | (1 << 9)))  # REPLY_ACK | CONFIG
    m += msg(5, struct.pack("<IIQQQQ", 1, 0, 0, size, UA, 0), fds(region_kind))
    for q in (0, 1):
        m += msg(8, struct.pack("<II", q, 8))
        base = UA + q * 0x8000
        m += msg(9, struct.pack("<IIQQQQ", q, 0, base + desc, base + 0x1800, base + 0x1000, 0))
        m += msg(10, struct.pack("<II", q, 0))
        m += msg(12, struct.pack("<Q", q), fds(EVENTFD))
        m += msg(13, struct.pack("<Q", q), fds(EVENTFD))
        m += msg(18, struct.pack("<II", q, 1))
    off, sz = config
    m += msg(24, struct.pack("<III", off, sz, 0) + bytes(sz))
    m += extra
    img = image()
    return struct.pack("<H", len(img)) + img + m


SEEDS = {
    "valid": session(),
    "region-past-eof": session(region_kind=SMALL),
    "unsealed": session(region_kind=UNSEALED),
    "rings-outside-memory": session(desc=0x20_0000),
    "config-out-of-range": session(config=(36, 40)),
    "unknown-code": session(extra=msg(200, b"\x00" * 8)),
    "lying-size": session(extra=msg(8, struct.pack("<II", 0, 8), spec=0x20, mode=0x41)),
    "mem-table-two-overlapping": struct.pack("<H", 0)
    + msg(3)
    + msg(5, struct.pack("<IIQQQQQQQQ", 2, 0, 0, 0x10000, UA, 0, 0x8000, 0x10000, UA, 0), fds(SEALED, 2)),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
