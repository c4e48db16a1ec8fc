//! Addresses as the kernel's context structures hold them, turned into the 16-byte form the
//! maps use (IPv4 as `::ffff:a.b.c.d`).

/// `u32` fields hold the address bytes in network order; `to_ne_bytes` gives them back.
pub fn v4_mapped(ip: u32) -> [u8; 16] {
    let b = ip.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
    ]
}

pub fn v6_bytes(ip: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = ip[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}
