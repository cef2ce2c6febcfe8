//! Key slots: the random master secret wrapped under a passphrase (Argon2id) or a key file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Keys, hmac};
use crate::error::{Error, Result};
use crate::id::SlotId;
use crate::secret::Secret;

/// Bounds on a slot's Argon2 memory (KiB), far above any default (see [`KdfParams`]).
pub const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
/// Bounds on a slot's Argon2 passes.
pub const MAX_KDF_ITERATIONS: u32 = 64;

/// Argon2id cost parameters, recorded in each passphrase slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.2 s here; OWASP's second recommended set is weaker.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// How a slot's key-encryption key is derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SlotKdf {
    /// KEK = Argon2id(passphrase, salt).
    Passphrase {
        algorithm: String,
        version: u32,
        #[serde(flatten)]
        params: KdfParams,
        salt: String,
    },
    /// KEK = HMAC-SHA256(key file bytes, "lifeboat keyfile v1" || salt).
    KeyFile { salt: String },
}

/// One key slot object (`keys/<slot id>`), stored as plaintext JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub version: u32,
    pub id: SlotId,
    pub created: DateTime<Utc>,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub kdf: SlotKdf,
    pub nonce: String,
    /// AES-256-GCM(KEK, master secret), AAD = "lifeboat-keyslot v1" || slot id.
    pub wrapped: String,
    /// Hex SHA-256 of the slot's JSON without this field: tells a damaged slot from a wrong
    /// passphrase (both fail to unwrap). Slots written before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl KeySlot {
    /// "passphrase" or "key-file".
    pub fn kind(&self) -> &'static str {
        match self.kdf {
            SlotKdf::Passphrase { .. } => "passphrase",
            SlotKdf::KeyFile { .. } => "key-file",
        }
    }

    /// Wraps `master` for `secret` in a new slot.
    pub fn create(
        master: &[u8; 64],
        secret: &Secret,
        params: KdfParams,
        label: Option<String>,
    ) -> Result<KeySlot> {
        let id = SlotId::random();
        let salt: [u8; 16] = rand::random();
        let kdf = match secret {
            Secret::Passphrase(_) => SlotKdf::Passphrase {
                algorithm: "argon2id".into(),
                version: 0x13,
                params,
                salt: B64.encode(salt),
            },
            Secret::KeyFile(_) => SlotKdf::KeyFile {
                salt: B64.encode(salt),
            },
        };
        let kek = derive_kek(&kdf, secret)?.ok_or_else(|| Error::KeySlot {
            detail: "secret kind does not match slot kind".into(),
        })?;
        let nonce: [u8; 12] = rand::random();
        let wrapped = Keys::wrap(&kek, &nonce, &slot_aad(&id), master);
        Ok(KeySlot {
            version: 1,
            id,
            created: Utc::now(),
            host: crate::hostname(),
            label,
            kdf,
            nonce: B64.encode(nonce),
            wrapped: B64.encode(wrapped),
            digest: None,
        }
        .sealed())
    }

    fn computed_digest(&self) -> String {
        use sha2::Digest;
        let mut bare = self.clone();
        bare.digest = None;
        hex::encode(sha2::Sha256::digest(
            serde_json::to_vec(&bare).expect("slot serialises"),
        ))
    }

    fn sealed(mut self) -> KeySlot {
        self.digest = Some(self.computed_digest());
        self
    }

    /// Why this slot is damaged, if its digest says it is.
    pub fn damage(&self) -> Option<String> {
        let want = self.digest.as_ref()?;
        (*want != self.computed_digest())
            .then(|| "its digest does not match its content: the object was altered".to_string())
    }

    /// Unwraps the master secret; `Ok(None)` when this slot is not opened by `secret`.
    pub fn unlock(&self, secret: &Secret) -> Result<Option<Zeroizing<[u8; 64]>>> {
        let Some(kek) = derive_kek(&self.kdf, secret)? else {
            return Ok(None);
        };
        let nonce: [u8; 12] = decode_fixed(&self.nonce, "nonce", &self.id)?;
        let ct = B64
            .decode(&self.wrapped)
            .map_err(|e| bad_slot(&self.id, e))?;
        let Some(plain) = Keys::unwrap(&kek, &nonce, &slot_aad(&self.id), &ct) else {
            return Ok(None);
        };
        if plain.len() != 64 {
            return Err(bad_slot(&self.id, "wrapped secret is not 64 bytes"));
        }
        let mut out = Zeroizing::new([0u8; 64]);
        out.copy_from_slice(&plain);
        Ok(Some(out))
    }
}

fn slot_aad(id: &SlotId) -> Vec<u8> {
    let mut aad = b"lifeboat-keyslot v1".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

fn bad_slot(id: &SlotId, e: impl std::fmt::Display) -> Error {
    Error::Format {
        object: format!("key slot {id}"),
        detail: e.to_string(),
    }
}

fn decode_fixed<const N: usize>(s: &str, what: &str, id: &SlotId) -> Result<[u8; N]> {
    let v = B64
        .decode(s)
        .map_err(|e| bad_slot(id, format!("{what}: {e}")))?;
    v.try_into()
        .map_err(|_| bad_slot(id, format!("{what} is not {N} bytes")))
}

/// Derives the key-encryption key, or `None` when secret and slot are of different kinds.
fn derive_kek(kdf: &SlotKdf, secret: &Secret) -> Result<Option<Zeroizing<[u8; 32]>>> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match (kdf, secret) {
        (
            SlotKdf::Passphrase {
                algorithm,
                params,
                salt,
                ..
            },
            Secret::Passphrase(pw),
        ) => {
            if algorithm != "argon2id" {
                return Err(Error::KeySlot {
                    detail: format!("unsupported KDF {algorithm}"),
                });
            }
            let salt = B64.decode(salt).map_err(|e| Error::KeySlot {
                detail: format!("salt: {e}"),
            })?;
            // A damaged slot must not make opening allocate terabytes or run for days.
            if params.memory_kib > MAX_KDF_MEMORY_KIB
                || params.iterations > MAX_KDF_ITERATIONS
                || params.parallelism > 64
            {
                return Err(Error::KeySlot {
                    detail: format!(
                        "argon2 parameters {params:?} are beyond what Lifeboat writes (at most {} MiB, {MAX_KDF_ITERATIONS} passes, 64 lanes)",
                        MAX_KDF_MEMORY_KIB / 1024
                    ),
                });
            }
            let p = argon2::Params::new(
                params.memory_kib,
                params.iterations,
                params.parallelism,
                Some(32),
            )
            .map_err(|e| Error::KeySlot {
                detail: format!("argon2 parameters: {e}"),
            })?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p)
                .hash_password_into(pw, &salt, kek.as_mut())
                .map_err(|e| Error::KeySlot {
                    detail: format!("argon2: {e}"),
                })?;
        }
        (SlotKdf::KeyFile { salt }, Secret::KeyFile(material)) => {
            let salt = B64.decode(salt).map_err(|e| Error::KeySlot {
                detail: format!("salt: {e}"),
            })?;
            kek.copy_from_slice(&hmac(material, &[b"lifeboat keyfile v1", &salt]));
        }
        _ => return Ok(None),
    }
    Ok(Some(kek))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn passphrase_slot_opens_only_with_its_passphrase() {
        let master = [5u8; 64];
        let good = Secret::Passphrase(Zeroizing::new(b"correct horse".to_vec()));
        let bad = Secret::Passphrase(Zeroizing::new(b"wrong".to_vec()));
        let slot = KeySlot::create(&master, &good, FAST, None).unwrap();
        assert_eq!(*slot.unlock(&good).unwrap().unwrap(), master);
        assert!(slot.unlock(&bad).unwrap().is_none());
        let kf = Secret::KeyFile(Zeroizing::new(vec![1u8; 32]));
        assert!(
            slot.unlock(&kf).unwrap().is_none(),
            "a key file never opens a passphrase slot"
        );
    }

    #[test]
    fn key_file_slot_and_serialisation() {
        let master = [9u8; 64];
        let kf = Secret::KeyFile(Zeroizing::new(vec![3u8; 48]));
        let slot = KeySlot::create(&master, &kf, FAST, Some("ops".into())).unwrap();
        let json = serde_json::to_string(&slot).unwrap();
        let back: KeySlot = serde_json::from_str(&json).unwrap();
        assert_eq!(*back.unlock(&kf).unwrap().unwrap(), master);
        let other = Secret::KeyFile(Zeroizing::new(vec![4u8; 48]));
        assert!(back.unlock(&other).unwrap().is_none());
    }
}
