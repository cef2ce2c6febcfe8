//! What the binary's integration tests share.

use std::path::Path;

/// `len` incompressible bytes (xorshift from `seed`) written to `path`.
pub fn random_file(path: &Path, seed: u64, len: usize) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &buf[..len]).unwrap();
}
