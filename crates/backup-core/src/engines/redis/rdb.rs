//! RDB stream checks while it flows: the `REDISnnnn` header at the start and the CRC-64
//! (Jones) trailer at the end, without holding more than the trailer in memory.

/// CRC-64/Jones as Redis computes it (reflected, polynomial 0xad93d23594c935a9, init 0).
#[derive(Debug, Clone)]
pub struct Crc64 {
    table: [u64; 256],
    value: u64,
}

impl Default for Crc64 {
    fn default() -> Self {
        const REFLECTED_POLY: u64 = 0x95ac_9329_ac4b_c9b5;
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ REFLECTED_POLY
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc64 { table, value: 0 }
    }
}

impl Crc64 {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.value;
        for &b in data {
            c = self.table[((c ^ u64::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.value = c;
    }

    /// The checksum so far.
    pub fn value(&self) -> u64 {
        self.value
    }
}

/// Checks an RDB stream fed in pieces. Everything but the last 8 bytes goes into the CRC; the
/// last 8 are the stored checksum (zero when the server runs with `rdbchecksum no`).
#[derive(Debug, Default)]
pub struct RdbCheck {
    crc: Crc64,
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

/// What a finished check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdbSummary {
    pub version: u32,
    pub bytes: u64,
    /// False when the file carries no checksum (`rdbchecksum no`).
    pub checksum_verified: bool,
}

impl RdbCheck {
    /// Feeds the next piece of the stream.
    pub fn update(&mut self, data: &[u8]) -> Result<(), String> {
        if self.head.len() < 9 {
            let take = (9 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            if self.head.len() >= 5 && &self.head[..5] != b"REDIS" {
                return Err(format!(
                    "not an RDB stream: starts with {:?}",
                    String::from_utf8_lossy(&self.head)
                ));
            }
        }
        self.total += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > 8 {
            let cut = self.tail.len() - 8;
            self.crc.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
        Ok(())
    }

    /// Bytes fed so far (what arrived, whether or not it turns out complete).
    pub fn bytes_seen(&self) -> u64 {
        self.total
    }

    /// Checks header and trailer once the stream is complete.
    pub fn finish(&self) -> Result<RdbSummary, String> {
        if self.head.len() < 9 || self.tail.len() < 8 {
            return Err(format!("RDB stream truncated after {} bytes", self.total));
        }
        let version = std::str::from_utf8(&self.head[5..9])
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| {
                format!(
                    "bad RDB version {:?}",
                    String::from_utf8_lossy(&self.head[5..9])
                )
            })?;
        let stored = u64::from_le_bytes(self.tail[..8].try_into().expect("8 bytes"));
        if stored != 0 && stored != self.crc.value() {
            return Err(format!(
                "RDB checksum mismatch: stored {stored:016x}, computed {:016x} (corrupted or truncated in transit)",
                self.crc.value()
            ));
        }
        Ok(RdbSummary {
            version,
            bytes: self.total,
            checksum_verified: stored != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_jones_check_value() {
        let mut c = Crc64::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xe9c6_d914_c4b8_d9ca);
    }

    fn rdb(body: &[u8]) -> Vec<u8> {
        let mut v = b"REDIS0010".to_vec();
        v.extend_from_slice(body);
        v.push(0xff);
        let mut c = Crc64::default();
        c.update(&v);
        v.extend_from_slice(&c.value().to_le_bytes());
        v
    }

    #[test]
    fn accepts_good_streams_in_any_pieces_and_rejects_damage() {
        let good = rdb(b"some key value data");
        for split in [1, 3, 9, 17, good.len()] {
            let mut chk = RdbCheck::default();
            for piece in good.chunks(split) {
                chk.update(piece).unwrap();
            }
            let s = chk.finish().unwrap();
            assert_eq!(
                (s.version, s.bytes, s.checksum_verified),
                (10, good.len() as u64, true)
            );
        }
        let mut bad = good.clone();
        bad[12] ^= 1;
        let mut chk = RdbCheck::default();
        chk.update(&bad).unwrap();
        assert!(chk.finish().unwrap_err().contains("checksum mismatch"));
        let mut chk = RdbCheck::default();
        chk.update(&good[..good.len() - 3]).unwrap();
        assert!(chk.finish().is_err(), "truncated stream");
        assert!(RdbCheck::default().update(b"HELLO1234").is_err());
    }
}
