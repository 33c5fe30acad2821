//! Hostile guest memory for the decoder and walker targets.

use pagetables::TestMemory;

/// Guest RAM: 16 KiB at 0x1_0000 (filled from the input), 4 KiB at 0x10_0000 (zeros); every
/// other address is outside RAM.
pub const RAM: [std::ops::Range<u64>; 2] = [0x1_0000..0x1_4000, 0x10_0000..0x10_1000];

/// Fills the first RAM range with `image` (little-endian words; a short tail is zero-padded).
pub fn memory(image: &[u8]) -> TestMemory {
    let mut mem = TestMemory::new(RAM);
    for (i, chunk) in image.chunks(8).take(0x4000 / 8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let v = u64::from_le_bytes(w);
        if v != 0 {
            mem.write_u64(RAM[0].start + 8 * i as u64, v)
                .expect("inside the first RAM range");
        }
    }
    mem
}

pub fn in_ram(gpa: u64, len: u64) -> bool {
    gpa.checked_add(len)
        .is_some_and(|end| RAM.iter().any(|r| r.start <= gpa && end <= r.end))
}
