//! Local cache of the decoded master index, so that a nightly backup of an
//! unchanged repository does not download and decrypt every index object.
//!
//! `<base>/<repository id>/index`, where `<base>` is `--cache-dir`, else
//! `$USDCOP_DR_CACHE_DIR`, else `$XDG_CACHE_HOME/usdcop-dr`, else
//! `$HOME/.cache/usdcop-dr`. Directories are mode 0700, the file 0600,
//! written to a temporary name and renamed into place (atomic).
//!
//! The file is the serialised [`MasterIndex`] plus the ids of the index
//! objects it covers, sealed with the repository's key in frames of at
//! most 4 MiB (domain `cache`; each frame's plaintext starts with its
//! number and a last-frame flag, so frames cannot be reordered, dropped or
//! truncated unnoticed): nothing readable sits on disk, memory stays
//! bounded, and a damaged or foreign file fails authentication. A cache
//! that cannot be read is ignored with a warning and rebuilt.
//!
//! Loading with a cache (`Repository::load_index_reporting`): list
//! `index/`; if every covered object is still listed, start from the cache
//! and fetch only the objects not covered; otherwise (a compaction replaced
//! some) rebuild from the store. If a new object supersedes a covered one
//! the cached records cannot be told apart, so the index is rebuilt too.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::index::MasterIndex;
use crate::crypto::{Domain, Key};
use crate::error::{Error, Result};
use crate::format::Id;

const FRAME: usize = 4 << 20;
const COVER_MAGIC: &[u8; 8] = b"UDRCOVR1";

/// Where the cache lives, from the environment.
pub fn default_base() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("USDCOP_DR_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("usdcop-dr")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("usdcop-dr")))
}

/// One repository's cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache of repository `repo_id` under `base` (created, 0700).
    pub fn open(base: &Path, repo_id: &str) -> Result<Cache> {
        if repo_id.is_empty() || !repo_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::integrity(format!(
                "repository id {repo_id:?} is not hex"
            )));
        }
        let dir = base.join(repo_id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("cache directory {}: {e}", dir.display())))?;
        // A directory that existed before keeps its mode: make it private.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("cache directory {}: {e}", dir.display())))?;
        Ok(Cache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index")
    }

    /// The cached index and the ids of the index objects it covers, if a
    /// cache file exists. An unreadable one is an error (the caller warns).
    pub fn load_index(&self, key: &Key) -> Result<Option<(MasterIndex, Vec<Id>)>> {
        let path = self.index_path();
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("{}: {e}", path.display()))),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("{}: {e}", path.display())))?
            .len();
        let mut r = SealedReader::new(key.clone(), BufReader::new(file));
        let read = (|| {
            let mut magic = [0u8; 8];
            r.read_exact(&mut magic)?;
            if &magic != COVER_MAGIC {
                return Err(std::io::Error::other("bad magic"));
            }
            let mut n = [0u8; 8];
            r.read_exact(&mut n)?;
            let n = u64::from_le_bytes(n);
            if n.checked_mul(32).is_none_or(|b| b > len) {
                return Err(std::io::Error::other("object count out of range"));
            }
            let mut covered = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let mut id = [0u8; 32];
                r.read_exact(&mut id)?;
                covered.push(Id(id));
            }
            Ok(covered)
        })();
        let covered = read.map_err(|e| Error::integrity(format!("index cache: {e}")))?;
        let index = MasterIndex::read_from(&mut r, len)?;
        r.finish()
            .map_err(|e| Error::integrity(format!("index cache: {e}")))?;
        Ok(Some((index, covered)))
    }

    /// Store `index`, covering the index objects `covered`, atomically.
    pub fn save_index(&self, key: &Key, index: &MasterIndex, covered: &[Id]) -> Result<()> {
        let path = self.index_path();
        let tmp = self.dir.join(format!(
            "index.{}.tmp",
            hex::encode(crate::crypto::random_bytes::<8>())
        ));
        let write = || -> std::io::Result<()> {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut w = SealedWriter::new(key.clone(), BufWriter::new(file));
            w.write_all(COVER_MAGIC)?;
            w.write_all(&(covered.len() as u64).to_le_bytes())?;
            for id in covered {
                w.write_all(&id.0)?;
            }
            index.write_to(&mut w)?;
            let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("writing index cache {}: {e}", path.display()))
        })
    }

    /// Remove the cached index (after it was found unreadable).
    pub fn clear_index(&self) {
        let _ = fs::remove_file(self.index_path());
    }

    /// Where a copy of the immutable, content-named object `name` (a
    /// snapshot summary) is kept: its stored (sealed) bytes, never
    /// plaintext. `None` for names that are not `<dir>/<64 hex>`.
    fn object_path(&self, name: &str) -> Option<PathBuf> {
        let (dir, hex) = name.split_once('/')?;
        let ok = !dir.is_empty()
            && dir.bytes().all(|b| b.is_ascii_lowercase())
            && hex.len() == 64
            && hex.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| self.dir.join(dir).join(hex))
    }

    /// The cached stored bytes of `name`, if any. The caller checks them
    /// against the name (and authenticates them) before use.
    pub fn load_object(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.object_path(name)?).ok()
    }

    /// Keep the stored bytes of `name` (atomically, 0600).
    pub fn save_object(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(path) = self.object_path(name) else {
            return Ok(());
        };
        let dir = path.parent().expect("object path has a parent");
        let write = || -> std::io::Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = dir.join(format!(
                ".{}.tmp",
                hex::encode(crate::crypto::random_bytes::<8>())
            ));
            let result = (|| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(bytes)?;
                fs::rename(&tmp, &path)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        };
        write().map_err(|e| Error::io(format!("caching {}: {e}", path.display())))
    }

    /// Forget a cached object (found damaged).
    pub fn remove_object(&self, name: &str) {
        if let Some(p) = self.object_path(name) {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes a stream as sealed frames: `len:u32le || seal(n:u64le || last:u8 || data)`.
struct SealedWriter<W: Write> {
    key: Key,
    out: W,
    buf: Vec<u8>,
    n: u64,
}

impl<W: Write> SealedWriter<W> {
    fn new(key: Key, out: W) -> Self {
        SealedWriter {
            key,
            out,
            buf: Vec::with_capacity(FRAME),
            n: 0,
        }
    }
    fn frame(&mut self, last: bool) -> std::io::Result<()> {
        let mut plain = Vec::with_capacity(9 + self.buf.len());
        plain.extend_from_slice(&self.n.to_le_bytes());
        plain.push(last as u8);
        plain.append(&mut self.buf);
        let sealed = self.key.seal(Domain::Cache, &plain);
        self.out.write_all(&(sealed.len() as u32).to_le_bytes())?;
        self.out.write_all(&sealed)?;
        self.n += 1;
        Ok(())
    }
    fn finish(mut self) -> std::io::Result<W> {
        self.frame(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME {
            self.frame(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads what [`SealedWriter`] wrote; any damage is an error.
struct SealedReader<R: Read> {
    key: Key,
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    n: u64,
    last: bool,
}

impl<R: Read> SealedReader<R> {
    fn new(key: Key, inner: R) -> Self {
        SealedReader {
            key,
            inner,
            buf: vec![],
            pos: 0,
            n: 0,
            last: false,
        }
    }
    fn next_frame(&mut self) -> std::io::Result<()> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > FRAME + 9 + crate::crypto::OVERHEAD {
            return Err(std::io::Error::other("frame too long"));
        }
        let mut sealed = vec![0u8; len];
        self.inner.read_exact(&mut sealed)?;
        let plain = self
            .key
            .open(Domain::Cache, &sealed)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if plain.len() < 9 || plain[..8] != self.n.to_le_bytes() || plain[8] > 1 {
            return Err(std::io::Error::other("frames out of order"));
        }
        self.last = plain[8] == 1;
        self.n += 1;
        self.buf = plain;
        self.pos = 9;
        Ok(())
    }
    /// Everything was read, up to the last frame and nothing after it.
    fn finish(mut self) -> std::io::Result<()> {
        let mut rest = [0u8; 1];
        if self.pos != self.buf.len() || !self.last || self.inner.read(&mut rest)? != 0 {
            return Err(std::io::Error::other("trailing data"));
        }
        Ok(())
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.last {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::{self as index_fmt, IndexBlob, IndexFile, IndexPack};
    use crate::format::pack::{BlobKind, Compression};
    use crate::repository::index::MasterIndexBuilder;

    fn index(n: u32) -> MasterIndex {
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: Id([1; 32]),
                blobs: (0..n)
                    .map(|i| IndexBlob {
                        kind: BlobKind::Data,
                        compression: Compression::Zstd,
                        offset: i,
                        stored_len: 1,
                        raw_len: 2,
                        id: Id::hash(&i.to_le_bytes()),
                    })
                    .collect(),
            }],
        };
        let mut b = MasterIndexBuilder::default();
        b.add_plain(Id([2; 32]), &index_fmt::encode(&f)).unwrap();
        b.finish()
    }

    /// Saved and loaded back (several frames), private, and refused when
    /// damaged, truncated or sealed with another key.
    #[test]
    fn round_trip_and_damage() {
        let base = tempfile::tempdir().unwrap();
        let key = Key::random();
        let cache = Cache::open(&base.path().join("a/b"), "00ff").unwrap();
        assert!(cache.load_index(&key).unwrap().is_none());
        let m = index(200_000);
        let covered = vec![Id([2; 32]), Id([3; 32])];
        cache.save_index(&key, &m, &covered).unwrap();
        let (back, cov) = cache.load_index(&key).unwrap().unwrap();
        assert_eq!(cov, covered);
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            m.iter().collect::<Vec<_>>()
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cache.dir()), 0o700);
        assert_eq!(mode(&cache.index_path()), 0o600);
        let files: Vec<_> = fs::read_dir(cache.dir()).unwrap().collect();
        assert_eq!(files.len(), 1, "temporary file left: {files:?}");
        let bytes = fs::read(cache.index_path()).unwrap();
        assert!(bytes.len() > FRAME * 2);
        assert!(cache.load_index(&Key::random()).is_err());
        for cut in [bytes.len() - 1, FRAME + 100, 10] {
            fs::write(cache.index_path(), &bytes[..cut]).unwrap();
            assert!(cache.load_index(&key).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[FRAME + 50] ^= 1;
        fs::write(cache.index_path(), &bad).unwrap();
        assert!(cache.load_index(&key).is_err());
        // A frame dropped from the middle.
        let first = 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        fs::write(cache.index_path(), &bytes[first..]).unwrap();
        assert!(cache.load_index(&key).is_err());
        assert!(Cache::open(base.path(), "../x").is_err());
    }
}
