//! The encryption envelope and key derivation. Pure: no I/O.
//!
//! Every encrypted thing in a repository is a *sealed box*:
//! `nonce (24 bytes) || XChaCha20-Poly1305(key, nonce, plaintext, aad)`,
//! i.e. 40 bytes longer than its plaintext. The AAD is a fixed label per
//! object type ([`Domain`]), so a blob can never be passed off as a
//! snapshot or an index, even by someone who can write to the bucket.
//! Random 192-bit nonces are safe for any number of messages under one key.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed box adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What a sealed box holds; bound into the AEAD as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Blob,
    PackHeader,
    Index,
    Snapshot,
    Config,
    Lock,
    MasterKey,
    /// Prune's record of condemned packs (`condemned/<id>`).
    Condemned,
    /// The local cache (never stored in a repository).
    Cache,
    /// One archived WAL file (`wal/<timeline>/<name>-<sha256>`).
    Wal,
    /// The WAL archive's cluster record (`wal/system-id`).
    WalSystemId,
    /// The unlocked master key cached for `wal-push` in the state
    /// directory (never stored in a repository).
    KeyCache,
    /// A restore drill's record (`drills/<id>`).
    Drill,
}

impl Domain {
    pub fn aad(self) -> &'static [u8] {
        match self {
            Domain::Blob => b"usdcop-dr/v1/blob",
            Domain::PackHeader => b"usdcop-dr/v1/pack-header",
            Domain::Index => b"usdcop-dr/v1/index",
            Domain::Snapshot => b"usdcop-dr/v1/snapshot",
            Domain::Config => b"usdcop-dr/v1/config",
            Domain::Lock => b"usdcop-dr/v1/lock",
            Domain::MasterKey => b"usdcop-dr/v1/master-key",
            Domain::Condemned => b"usdcop-dr/v1/condemned",
            Domain::Cache => b"usdcop-dr/v1/local-cache",
            Domain::Wal => b"usdcop-dr/v1/wal",
            Domain::WalSystemId => b"usdcop-dr/v1/wal-system-id",
            Domain::KeyCache => b"usdcop-dr/v1/wal-key-cache",
            Domain::Drill => b"usdcop-dr/v1/drill",
        }
    }
}

/// A 256-bit symmetric key, wiped from memory when dropped.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn random() -> Key {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Key(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Key> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::format("key", "key must be 32 bytes"))?;
        Ok(Key(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }

    /// Encrypt `plaintext` into a fresh sealed box (encrypted in place in
    /// the output buffer: one copy of the plaintext, one allocation).
    pub fn seal(&self, domain: Domain, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.resize(NONCE_LEN, 0);
        rand::rngs::OsRng.fill_bytes(&mut out[..NONCE_LEN]);
        out.extend_from_slice(plaintext);
        let (nonce, msg) = out.split_at_mut(NONCE_LEN);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(nonce), domain.aad(), msg)
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypt and authenticate a sealed box. Any change to a single bit, or
    /// a box made for another domain, fails here.
    pub fn open(&self, domain: Domain, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(Error::integrity(format!(
                "encrypted {domain:?} is {} bytes, shorter than the {OVERHEAD}-byte envelope",
                sealed.len()
            )));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: domain.aad(),
                },
            )
            .map_err(|_| {
                Error::integrity(format!(
                    "{domain:?} failed authentication (damaged or not ours)"
                ))
            })
    }
}

/// Argon2id cost parameters, stored next to the salt in each key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 32 MiB, 3 passes: above OWASP's Argon2id floor while keeping the
    /// process under its 64 MiB memory budget.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 32 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Upper bounds accepted when reading a key object, so a hostile key
    /// file cannot make us allocate gigabytes or spin for hours.
    pub fn check(&self) -> Result<()> {
        let ok = (8..=4 * 1024 * 1024).contains(&self.m_cost_kib)
            && (1..=64).contains(&self.t_cost)
            && (1..=16).contains(&self.p_cost);
        if ok {
            Ok(())
        } else {
            Err(Error::format(
                "key object",
                format!("KDF parameters out of range: {self:?}"),
            ))
        }
    }
}

/// Derive the key-encryption key from a passphrase with Argon2id.
pub fn derive_key(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<Key> {
    params.check()?;
    let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| Error::format("key object", e))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| Error::format("key object", e))?;
    Ok(Key(out))
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = Key::random();
        let sealed = k.seal(Domain::Blob, b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(k.open(Domain::Blob, &sealed).unwrap(), b"hello");
        // wrong domain
        assert!(k.open(Domain::Snapshot, &sealed).is_err());
        // wrong key
        assert!(Key::random().open(Domain::Blob, &sealed).is_err());
        // any flipped bit
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                k.open(Domain::Blob, &bad).is_err(),
                "flip at {i} undetected"
            );
        }
        assert!(k.open(Domain::Blob, &sealed[..10]).is_err());
    }

    #[test]
    fn kdf_is_deterministic_and_salted() {
        let p = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let a = derive_key(b"pw", b"saltsaltsaltsalt", p).unwrap();
        let b = derive_key(b"pw", b"saltsaltsaltsalt", p).unwrap();
        let c = derive_key(b"pw", b"othersaltothersa", p).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert!(derive_key(
            b"pw",
            b"saltsaltsaltsalt",
            KdfParams {
                m_cost_kib: u32::MAX,
                ..p
            }
        )
        .is_err());
    }
}
