//! Typed identifiers: chunk ids, snapshot ids and key ids, with their text forms.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A malformed id (not hex of the right length); an [`crate::Error::Format`] once it is
/// known where the id came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId {
    /// What was parsed, e.g. `SnapshotId "xyz"`.
    pub object: String,
    pub detail: String,
}

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.detail)
    }
}

impl std::error::Error for BadId {}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// Lower-case hex form.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// First 8 hex digits, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|e| BadId {
                    object: format!("{} {s:?}", stringify!($name)),
                    detail: e.to_string(),
                })?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// HMAC-SHA256 of a chunk's plaintext under the repository's id key.
    ChunkId,
    32
);
hex_id!(
    /// Random id of one snapshot (one backup run).
    SnapshotId,
    16
);
hex_id!(
    /// Random id of a pack (many small chunk objects in one store object).
    PackId,
    16
);
hex_id!(
    /// Identifies the data key that sealed an object (room for key rotation).
    KeyId,
    8
);
hex_id!(
    /// Random id of a key slot.
    SlotId,
    8
);

impl ChunkId {
    /// Store key of the chunk object: `chunks/<first two hex digits>/<hex id>`.
    pub fn object_key(&self) -> String {
        let h = self.to_hex();
        format!("chunks/{}/{}", &h[..2], h)
    }
}

/// The id an object key ends in (`chunks/ab/<id>`, `packs/ab/<id>`), if it parses as `T`.
pub fn id_in_key<T: FromStr>(key: &str) -> Option<T> {
    key.rsplit('/').next()?.parse().ok()
}

impl PackId {
    /// A fresh random pack id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Store key of the pack: `packs/<first two hex digits>/<hex id>`.
    pub fn object_key(&self) -> String {
        let h = self.to_hex();
        format!("packs/{}/{}", &h[..2], h)
    }

    /// Store key of the pack's index object.
    pub fn index_key(&self) -> String {
        format!("index/{self}")
    }
}

impl SnapshotId {
    /// A fresh random snapshot id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Store key of the snapshot manifest.
    pub fn object_key(&self) -> String {
        format!("snapshots/{self}")
    }
}

impl SlotId {
    /// A fresh random slot id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Store key of the key slot.
    pub fn object_key(&self) -> String {
        format!("keys/{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_key_fans_out_by_first_byte() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(id.object_key(), format!("chunks/ab/{}", "ab".repeat(32)));
        assert_eq!(id.short(), "abababab");
    }

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        let id = SnapshotId::random();
        assert_eq!(id.to_hex().parse::<SnapshotId>().unwrap(), id);
        assert!("xyz".parse::<SnapshotId>().is_err());
        assert!("abcd".parse::<SnapshotId>().is_err());
    }
}
