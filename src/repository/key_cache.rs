//! The unlocked master key, cached for `wal-push` / `wal-fetch` in the
//! state directory (docs/SECURITY.md, "WAL key cache").
//!
//! PostgreSQL starts one process per WAL file; the passphrase's Argon2id
//! (32 MiB, 3 passes) would cost each of them most of its time. The file
//! `wal-key-<16 hex of SHA-256 of the repository as given>.json` (mode
//! 0600) holds the master key sealed ([`Domain::KeyCache`]) under a key
//! derived from the passphrase with Argon2id at minimal cost (8 KiB, one
//! pass), salted with the repository id and 16 random bytes. A cached key
//! is used only after it opened the repository's `config` object (its
//! AEAD proves the key is this repository's); anything else (no file, a
//! changed passphrase, another repository, a damaged file) falls back to
//! the full key derivation and rewrites the file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::DynBackend;
use crate::crypto::{self, Domain, KdfParams, Key};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// The fast KDF's cost: the passphrase file is as readable as this file.
const FAST_KDF: KdfParams = KdfParams {
    m_cost_kib: 8,
    t_cost: 1,
    p_cost: 1,
};
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    repository_id: String,
    salt: String,
    sealed_key: String,
}

/// How the repository was unlocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unlock {
    /// The cached key opened the config.
    Cached,
    /// Full key derivation (cache written for the next process).
    Passphrase,
}

/// The cache file for the repository given as `repository` under `dir`.
pub fn path(dir: &Path, repository: &str) -> PathBuf {
    let digest = Sha256::digest(repository.as_bytes());
    dir.join(format!("wal-key-{}.json", &hex::encode(digest)[..16]))
}

fn wrapping_key(passphrase: &[u8], repository_id: &str, salt: &[u8]) -> Result<Key> {
    let mut s = repository_id.as_bytes().to_vec();
    s.extend_from_slice(salt);
    crypto::derive_key(passphrase, &s, FAST_KDF)
}

/// The repository id the cache file at `file` was written for, without
/// the passphrase: what the local WAL spools bind their records to (the
/// repository last opened under this URL). `None` when there is no
/// readable cache file.
pub fn cached_repository_id(file: &Path) -> Option<String> {
    let c: CacheFile = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    (c.version == VERSION).then_some(c.repository_id)
}

fn load(file: &Path, passphrase: &[u8]) -> Result<(String, Key)> {
    let bytes = std::fs::read(file)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", file.display())))?;
    let c: CacheFile =
        serde_json::from_slice(&bytes).map_err(|e| Error::format("WAL key cache", e))?;
    if c.version != VERSION {
        return Err(Error::format("WAL key cache", "unknown version"));
    }
    let salt = hex::decode(&c.salt).map_err(|e| Error::format("WAL key cache", e))?;
    let sealed = hex::decode(&c.sealed_key).map_err(|e| Error::format("WAL key cache", e))?;
    let k = wrapping_key(passphrase, &c.repository_id, &salt)?;
    let master = k.open(Domain::KeyCache, &sealed)?;
    Ok((c.repository_id, Key::from_bytes(&master)?))
}

fn store(file: &Path, passphrase: &[u8], repo: &Repository) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let salt: [u8; 16] = crypto::random_bytes();
    let id = &repo.config().id;
    let k = wrapping_key(passphrase, id, &salt)?;
    let c = CacheFile {
        version: VERSION,
        repository_id: id.clone(),
        salt: hex::encode(salt),
        sealed_key: hex::encode(k.seal(Domain::KeyCache, repo.key().as_bytes())),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&c).expect("serializable"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("cannot write {}: {e}", file.display())));
    }
    Ok(())
}

/// Open the repository for `wal-push`/`wal-fetch`: with the cached key
/// when it opens this repository's config, else with the passphrase
/// (then the cache is written; failing to write it is only a warning).
pub async fn open(
    backend: DynBackend,
    passphrase: &[u8],
    cache_file: &Path,
) -> Result<(Repository, Unlock)> {
    if passphrase.is_empty() {
        return Err(Error::usage("refusing an empty passphrase"));
    }
    if let Ok((id, key)) = load(cache_file, passphrase) {
        match Repository::open_with_key(backend.clone(), key).await {
            Ok(repo) if repo.config().id == id => return Ok((repo, Unlock::Cached)),
            Ok(_) => tracing::warn!(
                "{}: cached key is for another repository; unlocking with the passphrase",
                cache_file.display()
            ),
            // The store could not be read: no point in the slow path.
            Err(e) if e.kind() != crate::ErrorKind::Integrity => return Err(e),
            Err(_) => tracing::warn!(
                "{}: cached key does not open {}; unlocking with the passphrase",
                cache_file.display(),
                backend.location()
            ),
        }
    }
    let repo = Repository::open(backend, passphrase).await?;
    if let Err(e) = store(cache_file, passphrase, &repo) {
        tracing::warn!("WAL key cache not written (each push pays the full key derivation): {e}");
    }
    Ok((repo, Unlock::Passphrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_kdf_is_in_range_and_salted_by_repository() {
        FAST_KDF.check().unwrap();
        let a = wrapping_key(b"pw", "repo-a", b"0123456789abcdef").unwrap();
        let b = wrapping_key(b"pw", "repo-b", b"0123456789abcdef").unwrap();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(path(Path::new("/s"), "/r1"), path(Path::new("/s"), "/r2"));
    }

    async fn repo(dir: &Path) -> DynBackend {
        let b: DynBackend =
            std::sync::Arc::new(crate::backend::local::LocalBackend::new(dir.to_owned()).unwrap());
        let opts = crate::repository::InitOptions {
            kdf: KdfParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default()
        };
        Repository::init(b.clone(), b"pw", &opts).await.unwrap();
        b
    }

    #[tokio::test]
    async fn cached_key_is_used_only_when_it_opens_this_repository() {
        let t = tempfile::tempdir().unwrap();
        let a = repo(&t.path().join("a")).await;
        let b = repo(&t.path().join("b")).await;
        let file = path(&t.path().join("state"), "a");
        let (r, how) = open(a.clone(), b"pw", &file).await.unwrap();
        assert_eq!(how, Unlock::Passphrase);
        let mode = std::fs::metadata(&file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let (r2, how) = open(a.clone(), b"pw", &file).await.unwrap();
        assert_eq!(how, Unlock::Cached);
        assert_eq!(r.key().as_bytes(), r2.key().as_bytes());
        // A wrong passphrase does not get through the cache.
        let e = open(a.clone(), b"wrong", &file).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Usage, "{e}");
        // Another repository's cache file: checked against its config, not used.
        let (rb, how) = open(b.clone(), b"pw", &file).await.unwrap();
        assert_eq!(how, Unlock::Passphrase);
        assert_ne!(rb.config().id, r.config().id);
        // A damaged cache file: the full derivation, then rewritten.
        let mut c: CacheFile = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        c.sealed_key.replace_range(
            0..2,
            if c.sealed_key.starts_with("00") {
                "11"
            } else {
                "00"
            },
        );
        std::fs::write(&file, serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(
            open(b.clone(), b"pw", &file).await.unwrap().1,
            Unlock::Passphrase
        );
        assert_eq!(open(b, b"pw", &file).await.unwrap().1, Unlock::Cached);
    }
}
