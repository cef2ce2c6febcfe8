//! Password authentication for the replication connection: cleartext, MD5 and
//! SCRAM-SHA-256 (RFC 5802/7677, without channel binding, as libpq does without TLS).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), the MD5 method's answer.
pub fn md5_password(user: &str, password: &str, salt: &[u8; 4]) -> String {
    use md5::Md5;
    let inner = hex::encode(Md5::digest(format!("{password}{user}").as_bytes()));
    let mut outer = Md5::new();
    outer.update(inner.as_bytes());
    outer.update(salt);
    format!("md5{}", hex::encode(outer.finalize()))
}

/// One SCRAM-SHA-256 exchange, client side.
pub struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl Scram {
    pub const MECHANISM: &'static str = "SCRAM-SHA-256";

    pub fn new(password: &str) -> Scram {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        Scram::with_nonce(password, nonce)
    }

    fn with_nonce(password: &str, nonce: String) -> Scram {
        Scram {
            password: password.to_string(),
            // PostgreSQL takes the user from the startup message and ignores this one.
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            server_signature: None,
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client-final message answering `server_first`.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(k))
                .ok_or_else(|| format!("the server's SCRAM message lacks {k}"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err("the server's SCRAM nonce does not extend ours".into());
        }
        let salt = B64
            .decode(field("s=")?)
            .map_err(|_| "the server's SCRAM salt is not base64".to_string())?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| "the server's SCRAM iteration count is not a number".to_string())?;
        let salted = hi(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message: the server proves it knew the password too.
    pub fn verify_final(&self, server_final: &str) -> Result<(), String> {
        let v = server_final
            .strip_prefix("v=")
            .ok_or_else(|| format!("the server's SCRAM final message is {server_final:?}"))?;
        let expected = self.server_signature.ok_or("SCRAM out of order")?;
        if B64.decode(v).ok().as_deref() == Some(&expected[..]) {
            Ok(())
        } else {
            Err("the server's SCRAM signature is wrong: it does not know the password".into())
        }
    }
}

/// PBKDF2-HMAC-SHA-256 with one output block (SCRAM's `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_matches_rfc7677_example() {
        // RFC 7677 §3: user "user", password "pencil".
        let mut s = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO".into());
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(s.verify_final("v=AAAA").is_err());
    }

    #[test]
    fn md5_matches_postgres() {
        // 'md5' || md5(md5('secret' || 'postgres') || 'abcd'), as the server computes it.
        assert_eq!(
            md5_password("postgres", "secret", b"abcd"),
            "md568a34aeb823f3662497ea0b9fb65e46a"
        );
    }
}
