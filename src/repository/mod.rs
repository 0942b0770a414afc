//! A repository: a backend plus the keys to read it. Opens and creates
//! repositories, stores and loads sealed objects, snapshots and indexes,
//! and reads blobs back with end-to-end checks.

pub mod cache;
pub mod compact;
pub mod gc;
pub mod index;
pub mod key_cache;
pub mod lock;
pub mod tree;
pub mod wal_archive;

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::RwLock;

use crate::backend::{list_all, Backend, DynBackend, Payload, PutMode};
use crate::crypto::{self, Domain, KdfParams, Key};
use crate::error::{Error, ErrorKind, Result};
use crate::format::meta::{
    ChunkerParams, Config, KeyFile, FORMAT_VERSION, READ_FEATURES, WRITER_VERSION, WRITE_FEATURES,
};
use crate::format::pack::Compression;
use crate::format::snapshot::{self, Snapshot, SourceKind};
use crate::format::{codec, index as index_fmt, names, Id};
pub use index::{BlobLocation, MasterIndex, MasterIndexBuilder};

/// Parallel metadata loads (index and snapshot objects).
pub(crate) const LOAD_CONCURRENCY: usize = 16;
/// How often loading the index re-lists `index/` when listed objects
/// vanish before they are read (concurrent compactions).
pub const INDEX_RELIST_ROUNDS: usize = 3;
/// Key objects tried before giving up on a passphrase.
const MAX_KEYS: usize = 64;

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunk_avg_size: u32,
    pub compression_level: i32,
    pub pack_size: u32,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_avg_size: 1 << 20,
            compression_level: 3,
            pack_size: 32 << 20,
            kdf: KdfParams::default(),
        }
    }
}

#[derive(Debug)]
pub struct Repository {
    backend: DynBackend,
    key: Key,
    config: Config,
    index: RwLock<Arc<MasterIndex>>,
    /// The local cache of the master index, if enabled ([`Self::set_cache`]).
    cache: Option<cache::Cache>,
}

impl Repository {
    /// Create a new repository. Refuses if any config or key already exists.
    pub async fn init(
        backend: DynBackend,
        passphrase: &[u8],
        opts: &InitOptions,
    ) -> Result<Repository> {
        let location = backend.location();
        if !list_all(backend.as_ref(), names::KEYS).await?.is_empty()
            || backend.head(names::CONFIG).await.is_ok()
        {
            return Err(already_a_repo(&location));
        }
        let seed = u64::from_le_bytes(crypto::random_bytes::<8>());
        let config = Config {
            version: FORMAT_VERSION,
            id: hex::encode(crypto::random_bytes::<16>()),
            created: Utc::now(),
            chunker: ChunkerParams::with_avg(opts.chunk_avg_size, seed)?,
            compression_level: opts.compression_level,
            pack_size: opts.pack_size,
            write_features: WRITE_FEATURES.iter().map(|f| f.to_string()).collect(),
            read_features: READ_FEATURES.iter().map(|f| f.to_string()).collect(),
            min_writer_version: WRITER_VERSION.to_owned(),
        };
        config.check()?;
        let key = Key::random();
        let repo = Repository {
            backend,
            key,
            config,
            index: Default::default(),
            cache: None,
        };
        // The config is the repository's anchor: created atomically, first.
        let sealed = repo.key.seal(
            Domain::Config,
            &serde_json::to_vec(&repo.config).expect("config serializes"),
        );
        create_config(repo.backend.as_ref(), sealed, &location).await?;
        repo.add_key(passphrase, opts.kdf).await?;
        Ok(repo)
    }

    /// Store a new key object that opens this repository with `passphrase`.
    pub async fn add_key(&self, passphrase: &[u8], kdf: KdfParams) -> Result<Id> {
        self.check_writable()?;
        let salt = crypto::random_bytes::<16>();
        let kek = derive_key_blocking(passphrase.to_vec(), salt.to_vec(), kdf).await?;
        let file = KeyFile {
            version: FORMAT_VERSION,
            created: Utc::now(),
            host: hostname(),
            kdf: "argon2id".into(),
            kdf_params: kdf,
            salt: hex::encode(salt),
            sealed_master_key: hex::encode(kek.seal(Domain::MasterKey, self.key.as_bytes())),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("key file serializes");
        let id = Id::hash(&bytes);
        self.put_named_by_content(&names::in_dir(names::KEYS, &id), bytes.into())
            .await?;
        Ok(id)
    }

    /// Open an existing repository with a passphrase, for writing: as
    /// [`Self::open`], then [`Self::check_writable`]. Every command that
    /// writes (backup, repair, recovery, key changes, prune) opens this way
    /// or calls `check_writable` itself before its first write.
    pub async fn open_for_write(backend: DynBackend, passphrase: &[u8]) -> Result<Repository> {
        let repo = Self::open(backend, passphrase).await?;
        repo.check_writable()?;
        Ok(repo)
    }

    /// Whether this binary may write here: it must know every feature the
    /// config lists in `write_features` and be at least its
    /// `min_writer_version` (docs/FORMAT.md, "The writer gate"). A usage
    /// error naming the unknown features and the version to upgrade to
    /// otherwise; nothing has been written when it fails.
    pub fn check_writable(&self) -> Result<()> {
        self.config
            .check_writable()
            .map_err(|e| e.context(self.backend.location()))
    }

    /// Open an existing repository with a passphrase, for reading. Refuses
    /// a repository whose config lists a read feature this binary does not
    /// know; writers must also pass [`Self::check_writable`].
    pub async fn open(backend: DynBackend, passphrase: &[u8]) -> Result<Repository> {
        let location = backend.location();
        let keys = list_all(backend.as_ref(), names::KEYS).await?;
        if keys.is_empty() {
            return Err(Error::usage(format!(
                "{location} is not a usdcop-dr repository (no keys/)"
            ))
            .with_hint("check --repo / USDCOP_DR_REPO, or create one with `usdcop-dr init`"));
        }
        let mut key = None;
        let mut malformed = vec![];
        for obj in keys.iter().take(MAX_KEYS) {
            let bytes = backend.get(&obj.name).await?;
            // One malformed key object (truncated, garbage, a stray
            // `keys/` folder object) must not lock everyone out: skip it
            // with a warning and try the others. Transport errors above
            // still fail.
            let file = match parse_key_object(&obj.name, &bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("skipping malformed key object {}: {e}", obj.name);
                    malformed.push(obj.name.clone());
                    continue;
                }
            };
            let kek = derive_key_blocking(passphrase.to_vec(), file.salt, file.kdf_params).await?;
            if let Ok(master) = kek.open(Domain::MasterKey, &file.sealed) {
                key = Some(Key::from_bytes(&master)?);
                break;
            }
        }
        let key = key.ok_or_else(|| {
            let tried = keys.len().min(MAX_KEYS);
            if malformed.len() == tried {
                return Error::integrity(format!(
                    "{location}: every key object is malformed ({})",
                    malformed.join(", ")
                ))
                .with_hint("the repository's keys are damaged; restore `keys/` from a copy of the repository");
            }
            let note = match malformed.len() {
                0 => String::new(),
                n => format!(" ({n} malformed key object(s) skipped: {})", malformed.join(", ")),
            };
            Error::usage(format!(
                "wrong passphrase: it opens none of the {} keys of {location}{note}",
                keys.len()
            ))
            .with_hint("check USDCOP_DR_PASSWORD / USDCOP_DR_PASSWORD_FILE")
        })?;
        Self::with_key(backend, key).await
    }

    /// Open with an already unlocked master key (the `wal-push` key cache):
    /// the config object's AEAD is the check that the key is this
    /// repository's; a wrong key fails with an integrity error naming it.
    pub async fn open_with_key(backend: DynBackend, key: Key) -> Result<Repository> {
        Self::with_key(backend, key).await
    }

    async fn with_key(backend: DynBackend, key: Key) -> Result<Repository> {
        let location = backend.location();
        let sealed = backend.get(names::CONFIG).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::integrity(format!("{location}: the config object is missing")).with_hint(
                    "the repository is damaged; restore the `config` object from a copy of the repository",
                )
            } else {
                e
            }
        })?;
        let config: Config = crate::format::meta::decode_json(
            "config",
            &key.open(Domain::Config, &sealed)
                .map_err(|e| e.context("config"))?,
        )?;
        config.check().map_err(|e| e.context(&location))?;
        Ok(Repository {
            backend,
            key,
            config,
            index: Default::default(),
            cache: None,
        })
    }

    /// Keep a local cache of the master index under `base` (see
    /// [`cache`]); `None` turns it off (the default). A cache directory
    /// that cannot be created turns it off with a warning.
    pub fn set_cache(&mut self, base: Option<&std::path::Path>) {
        self.cache = base.and_then(|b| match cache::Cache::open(b, &self.config.id) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("local cache disabled: {e}");
                None
            }
        });
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    pub fn backend_arc(&self) -> DynBackend {
        self.backend.clone()
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Seal `plain`, name it by the SHA-256 of the stored bytes, store it under `dir`.
    pub async fn save_sealed(&self, dir: &str, domain: Domain, plain: &[u8]) -> Result<Id> {
        let sealed = self.key.seal(domain, plain);
        let id = Id::hash(&sealed);
        self.put_named_by_content(&names::in_dir(dir, &id), sealed.into())
            .await?;
        Ok(id)
    }

    /// Create an object whose name is the SHA-256 of `payload` (packs,
    /// indexes, snapshots, locks, key files: everything but `config`).
    ///
    /// "Already exists" is success here, not a conflict: an object with
    /// that name holds exactly these bytes (a put is atomic, and a name
    /// can only come from hashing those bytes). It happens when a PUT took
    /// effect but its answer was lost (the connection dropped after the
    /// store answered): the SDK retries, and the retried create meets the
    /// object the first attempt stored (`412 Precondition Failed`).
    /// Failing there would fail a backup whose snapshot is stored (and a
    /// retrying cron job would store a second one). The size of the object
    /// found is checked, so an object damaged in place is reported rather
    /// than counted as stored. `config` is not named by its content: for it
    /// AlreadyExists is a real conflict unless the bytes there are this
    /// init's own (see `create_config`).
    pub async fn put_named_by_content(&self, name: &str, payload: Payload) -> Result<()> {
        let len = payload.len();
        match self.backend.put(name, payload, PutMode::Create).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let found = self.backend.head(name).await?;
                if found.size != len {
                    return Err(Error::integrity(format!(
                        "{}: object {name} already exists with {} bytes, but its name \
                         is the hash of {len} bytes",
                        self.backend.location(),
                        found.size
                    ))
                    .with_hint("the stored object is damaged; run `usdcop-dr verify`"));
                }
                tracing::debug!("{name} was already stored (an earlier attempt's answer was lost)");
                Ok(())
            }
            r => r,
        }
    }

    /// Get an object, check its name against its content, and open it.
    pub async fn load_sealed(&self, name: &str, domain: Domain) -> Result<Vec<u8>> {
        let bytes = self.backend.get(name).await?;
        check_name(name, &bytes)?;
        self.key
            .open(domain, &bytes)
            .map_err(|e| e.context(format!("object {name}")))
    }

    // ---- snapshots ----

    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        self.save_sealed(
            names::SNAPSHOTS,
            Domain::Snapshot,
            &snapshot::encode_compressed(snap)?,
        )
        .await
    }

    /// Drop the local cache's copies of snapshots that were removed.
    pub fn forget_cached_snapshots(&self, ids: &[Id]) {
        if let Some(cache) = &self.cache {
            for id in ids {
                cache.remove_object(&names::in_dir(names::SNAPSHOTS, id));
            }
        }
    }

    pub async fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let name = names::in_dir(names::SNAPSHOTS, id);
        // Snapshot objects never change: a copy in the local cache saves
        // the GET (the parent lookup and `snapshots` read every summary).
        // The copy is checked like the stored object; a bad one is dropped.
        if let Some(cache) = &self.cache {
            if let Some(bytes) = cache.load_object(&name) {
                let plain = check_name(&name, &bytes)
                    .and_then(|()| self.key.open(Domain::Snapshot, &bytes));
                match plain.and_then(|p| snapshot::decode_compressed(&p)) {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        tracing::warn!("dropping the cached copy of {name}: {e}");
                        cache.remove_object(&name);
                    }
                }
            }
        }
        let bytes = self.backend.get(&name).await?;
        check_name(&name, &bytes)?;
        let plain = self
            .key
            .open(Domain::Snapshot, &bytes)
            .map_err(|e| e.context(format!("object {name}")))?;
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.save_object(&name, &bytes) {
                tracing::debug!("could not cache {name}: {e}");
            }
        }
        snapshot::decode_compressed(&plain)
            .map_err(|e| e.context(format!("snapshot {}", id.short())))
    }

    /// All snapshots, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.load_snapshots(self.snapshot_ids().await?).await
    }

    pub async fn snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(list_all(self.backend(), names::SNAPSHOTS)
            .await?
            .iter()
            .filter_map(|o| names::id_of(&o.name))
            .collect())
    }

    /// Load snapshots, oldest first. A damaged snapshot object is skipped
    /// with a warning (`verify` reports it) so that it cannot make every
    /// other snapshot unrestorable; any other failure is an error, so a
    /// flaky store never silently hides the latest snapshot.
    pub async fn load_snapshots(&self, ids: Vec<Id>) -> Result<Vec<(Id, Snapshot)>> {
        let (snaps, damaged) = self.load_snapshots_checked(ids).await?;
        for (id, e) in &damaged {
            tracing::warn!("skipping damaged snapshot {}: {e}", id.short());
        }
        Ok(snaps)
    }

    /// [`Self::load_snapshots`], returning the damaged ones (integrity
    /// errors) beside the readable ones instead of logging them.
    pub async fn load_snapshots_checked(
        &self,
        ids: Vec<Id>,
    ) -> Result<(Vec<(Id, Snapshot)>, Vec<(Id, Error)>)> {
        let loaded: Vec<(Id, Result<Snapshot>)> = futures::stream::iter(ids)
            .map(|id| async move { (id, self.load_snapshot(&id).await) })
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect()
            .await;
        let mut snaps = Vec::with_capacity(loaded.len());
        let mut damaged = vec![];
        for (id, r) in loaded {
            match r {
                Ok(s) => snaps.push((id, s)),
                Err(e) if e.kind() == ErrorKind::Integrity => damaged.push((id, e)),
                Err(e) => return Err(e),
            }
        }
        snaps.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        damaged.sort_by_key(|d| d.0);
        Ok((snaps, damaged))
    }

    /// Resolve `latest` or an id prefix (optionally within one source).
    pub async fn find_snapshot(&self, spec: &str, source: Option<&str>) -> Result<(Id, Snapshot)> {
        self.find_snapshot_of(spec, source, None).await
    }

    /// Resolve `latest` or an id prefix, optionally within one source and
    /// of one kind: `latest` is then the latest snapshot of that kind
    /// (`restore postgres` must not pick last night's files snapshot), and
    /// an id naming a snapshot of another kind is refused, saying so.
    pub async fn find_snapshot_of(
        &self,
        spec: &str,
        source: Option<&str>,
        kind: Option<SourceKind>,
    ) -> Result<(Id, Snapshot)> {
        let spec_l = spec.to_ascii_lowercase();
        let latest = spec == "latest";
        let mut ids = self.snapshot_ids().await?;
        if !latest {
            ids.retain(|id| id.to_hex().starts_with(&spec_l));
        }
        let (snaps, damaged) = self.load_snapshots_checked(ids).await?;
        let in_source = |s: &Snapshot| source.is_none_or(|n| s.source.name == n);
        let of_kind = |s: &Snapshot| kind.is_none_or(|k| s.source.kind == k);
        let scope = format!(
            "{}{}",
            kind.map(|k| format!(" of kind {}", k.as_str()))
                .unwrap_or_default(),
            source
                .map(|s| format!(" of source {s:?}"))
                .unwrap_or_default()
        );
        let candidates: Vec<(Id, Snapshot)> =
            snaps.into_iter().filter(|(_, s)| in_source(s)).collect();
        let found: Vec<(Id, Snapshot)> = if latest {
            candidates
                .into_iter()
                .rfind(|(_, s)| of_kind(s))
                .into_iter()
                .collect()
        } else {
            let (right, wrong): (Vec<_>, Vec<_>) =
                candidates.into_iter().partition(|(_, s)| of_kind(s));
            if let (true, Some(k), [(id, s)]) = (right.is_empty(), kind, &wrong[..]) {
                return Err(Error::usage(format!(
                    "snapshot {} (source {:?}) is a {} snapshot, not a {} one",
                    id.short(),
                    s.source.name,
                    s.source.kind.as_str(),
                    k.as_str()
                ))
                .with_hint("list them with `usdcop-dr snapshots`"));
            }
            right
        };
        if found.len() == 1 {
            if latest && !damaged.is_empty() {
                tracing::warn!(
                    "{} damaged snapshot(s) skipped while looking for the latest{scope}: {}",
                    damaged.len(),
                    damaged
                        .iter()
                        .map(|(id, e)| format!("{}: {e}", id.short()))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            return Ok(found.into_iter().next().unwrap());
        }
        if found.is_empty() && !damaged.is_empty() {
            // A damaged snapshot is not "no snapshot": say what is wrong with it.
            let (_, e) = &damaged[0];
            let more = match damaged.len() {
                1 => String::new(),
                n => format!(" ({} more damaged)", n - 1),
            };
            return Err(Error::integrity(format!(
                "no readable snapshot {spec}{scope}: {e}{more}"
            ))
            .with_hint("run `usdcop-dr verify` to see every damaged object; restore another snapshot by id"));
        }
        match found.len() {
            0 => Err(Error::not_found(format!("no snapshot {spec}{scope}"))
                .with_hint("list them with `usdcop-dr snapshots`")),
            n => Err(
                Error::usage(format!("snapshot id {spec} is ambiguous ({n} matches)"))
                    .with_hint("give more hex digits"),
            ),
        }
    }

    // ---- index ----

    /// Load (or reload) every index object into the master index. Objects
    /// skipped (see [`Self::load_index_reporting`]) are logged.
    pub async fn load_index(&self) -> Result<Arc<MasterIndex>> {
        self.load_index_reporting(&LogWarnings).await
    }

    /// Load (or reload) every index object into the master index, skipping
    /// stray and damaged ones with a warning each.
    ///
    /// One bad object under `index/` must not stop backup, restore or
    /// `repair index`: an S3 console "folder" object (`index/`, 0 bytes),
    /// an NFS silly-rename file (`.nfs…`) or a truncated or garbage index
    /// object. A stray name is not read at all; a damaged object (an
    /// integrity error: wrong hash, fails to authenticate or decode) is
    /// left out, so its packs count as unindexed: `repair index` re-indexes
    /// them from their own headers, and `verify` reports the object as a
    /// problem (exit 3). Any other error (transport, permission) still
    /// fails: a flaky store must not silently hide index entries.
    ///
    /// An index object that another loaded object supersedes is left out
    /// (its content is in the superseding object or in objects stored
    /// before it). An object listed but gone when fetched was deleted by a
    /// concurrent compaction after it stored the objects replacing it: the
    /// listing is re-read and the new objects loaded, up to
    /// [`INDEX_RELIST_ROUNDS`] times.
    pub async fn load_index_reporting(
        &self,
        progress: &dyn crate::progress::Progress,
    ) -> Result<Arc<MasterIndex>> {
        self.load_index_with(progress, true).await
    }

    /// Load the master index from the store's index objects alone, never
    /// from the local cache (which is then refreshed): for `repair index`
    /// and recovery, which must see what the store holds now (an index
    /// object damaged in place after it was cached, say).
    pub async fn load_index_from_store(&self) -> Result<Arc<MasterIndex>> {
        self.load_index_with(&LogWarnings, false).await
    }

    async fn load_index_with(
        &self,
        progress: &dyn crate::progress::Progress,
        use_cache: bool,
    ) -> Result<Arc<MasterIndex>> {
        let (master, covered, save) = self.build_index(progress, use_cache).await?;
        let master = Arc::new(master);
        if let (Some(c), true) = (&self.cache, save) {
            let (c, key, m) = (c.clone(), self.key.clone(), master.clone());
            let saved = tokio::task::spawn_blocking(move || c.save_index(&key, &m, &covered))
                .await
                .map_err(|e| Error::io(format!("cache task failed: {e}")))?;
            if let Err(e) = saved {
                tracing::warn!("could not update the local index cache: {e}");
            }
        }
        *self.index.write().await = master.clone();
        Ok(master)
    }

    /// Build the master index, from the local cache when it still fits.
    /// Returns it with the ids of the objects it covers and whether the
    /// cache needs writing.
    async fn build_index(
        &self,
        progress: &dyn crate::progress::Progress,
        use_cache: bool,
    ) -> Result<(MasterIndex, Vec<Id>, bool)> {
        let mut cached = None;
        if let (Some(c), true) = (&self.cache, use_cache) {
            let (c, key) = (c.clone(), self.key.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                let r = c.load_index(&key);
                if r.is_err() {
                    c.clear_index();
                }
                r
            })
            .await
            .map_err(|e| Error::io(format!("cache task failed: {e}")))?;
            match loaded {
                Ok(x) => cached = x,
                Err(e) => tracing::warn!("ignoring the local index cache (rebuilt): {e}"),
            }
        }
        let had_cache = cached.is_some();
        match self.build_index_from(progress, cached, None).await? {
            Some((m, covered, new)) => Ok((m, covered, !had_cache || new > 0)),
            None => {
                tracing::info!("the local index cache is out of date; rebuilding it");
                let (m, covered, _) = self
                    .build_index_from(progress, None, None)
                    .await?
                    .expect("no cache, no restart");
                Ok((m, covered, true))
            }
        }
    }

    /// Returns `None` when `cached` turned out unusable (a new index
    /// object supersedes an object it covers), else the index, the objects
    /// it covers, and how many were read from the store.
    async fn build_index_from(
        &self,
        progress: &dyn crate::progress::Progress,
        cached: Option<(MasterIndex, Vec<Id>)>,
        disfavor: Option<std::collections::HashSet<Id>>,
    ) -> Result<Option<(MasterIndex, Vec<Id>, usize)>> {
        use crate::progress::{Warning, WarningKind};
        use std::collections::{BTreeMap, HashSet};
        let mut skipped: BTreeMap<String, Warning> = BTreeMap::new();
        let mut done: HashSet<Id> = HashSet::new();
        let mut covered: Vec<Id> = vec![];
        let mut gone: Vec<(Id, String)> = vec![];
        let mut objs = list_all(self.backend(), names::INDEX).await?;
        let mut from_cache: HashSet<Id> = HashSet::new();
        let mut builder = match cached {
            Some((index, ids)) => {
                let listed: HashSet<Id> =
                    objs.iter().filter_map(|o| names::id_of(&o.name)).collect();
                if ids.iter().all(|id| listed.contains(id)) {
                    from_cache = ids.iter().copied().collect();
                    done = from_cache.clone();
                    covered = ids;
                    index::MasterIndexBuilder::from_index(index, true)
                } else {
                    index::MasterIndexBuilder::new(true)
                }
            }
            None => index::MasterIndexBuilder::new(true),
        };
        if let Some(d) = disfavor {
            builder.disfavor(d);
        }
        let mut fetched = 0;
        for round in 0.. {
            if round > 0 {
                objs = list_all(self.backend(), names::INDEX).await?;
            }
            let mut todo = vec![];
            let mut estimate = 0u64;
            for o in std::mem::take(&mut objs) {
                match names::id_of(&o.name) {
                    Some(id) if done.contains(&id) => {}
                    Some(id) => {
                        estimate += o.size;
                        todo.push((id, o.name));
                    }
                    None => {
                        let w = Warning::new(
                            WarningKind::SkippedObject,
                            o.name.clone(),
                            format!(
                                "stray object ({} bytes) in index/, not an index object: ignored",
                                o.size
                            ),
                        );
                        skipped.insert(o.name, w);
                    }
                }
            }
            if todo.is_empty() {
                break;
            }
            if round > INDEX_RELIST_ROUNDS {
                let names: Vec<&str> = gone.iter().map(|g| g.1.as_str()).collect();
                return Err(Error::not_found(format!(
                    "index objects keep vanishing while being loaded ({})",
                    names.join(", ")
                ))
                .with_hint("another process is deleting index objects; retry when it is done"));
            }
            // Deterministic pack order whatever order the loads finish in.
            todo.sort();
            // Stored index objects are zstd-compressed 46-byte records of
            // which the 32-byte ids do not compress: `size / 40` blobs is
            // close, and growing past it is amortised.
            builder.reserve((estimate / 40) as usize);
            gone.clear();
            let mut loads = futures::stream::iter(todo)
                .map(|(id, name)| async move {
                    let r = self.load_index_plain(&name).await;
                    (id, name, r)
                })
                .buffered(LOAD_CONCURRENCY);
            while let Some((id, name, r)) = loads.next().await {
                let r = r.and_then(|plain| {
                    builder
                        .add_plain(id, &plain)
                        .map_err(|e| e.context(format!("index {name}")))
                });
                match r {
                    Ok(()) => {
                        done.insert(id);
                        covered.push(id);
                        fetched += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => gone.push((id, name)),
                    Err(e) if e.kind() == ErrorKind::Integrity => {
                        done.insert(id);
                        let w = Warning::new(
                            WarningKind::SkippedObject,
                            name.clone(),
                            format!(
                                "damaged index object skipped ({e}); `usdcop-dr repair index` \
                                 re-indexes the packs it listed, `usdcop-dr verify` reports it"
                            ),
                        );
                        skipped.insert(name, w);
                    }
                    Err(e) => return Err(e),
                }
            }
            if gone.is_empty() {
                break;
            }
            tracing::debug!(
                "{} index object(s) vanished while loading (a concurrent compaction); listing again",
                gone.len()
            );
        }
        if builder
            .superseded()
            .iter()
            .any(|id| from_cache.contains(id))
        {
            return Ok(None);
        }
        for w in skipped.values() {
            progress.warning(w);
        }
        covered.sort();
        Ok(Some((builder.finish(), covered, fetched)))
    }

    /// The master index from the store's objects (never the cache, which
    /// is left as it is), each chunk located outside `disfavor` when any
    /// copy is: prune's view, where a condemned pack's copy is the last
    /// resort.
    pub async fn load_index_preferring(
        &self,
        disfavor: std::collections::HashSet<Id>,
    ) -> Result<MasterIndex> {
        let (m, _, _) = self
            .build_index_from(&LogWarnings, None, Some(disfavor))
            .await?
            .expect("no cache, no restart");
        Ok(m)
    }

    pub async fn index(&self) -> Arc<MasterIndex> {
        self.index.read().await.clone()
    }

    /// Store one index object. Callers split first (`index_fmt::split`):
    /// an object over the readers' cap is refused here, never stored.
    /// An index object's plaintext: fetched, name-checked, authenticated
    /// and decompressed (at most the reader cap).
    pub(crate) async fn load_index_plain(&self, name: &str) -> Result<Vec<u8>> {
        let plain = self.load_sealed(name, Domain::Index).await?;
        codec::decompress(&plain, index_fmt::MAX_PLAIN_LEN, "index")
    }

    pub async fn save_index(&self, file: &index_fmt::IndexFile) -> Result<Id> {
        if file.encoded_len() > index_fmt::MAX_PLAIN_LEN {
            return Err(Error::usage(format!(
                "index object of {} bytes exceeds the readers' cap of {} bytes (not stored)",
                file.encoded_len(),
                index_fmt::MAX_PLAIN_LEN
            )));
        }
        self.save_sealed(
            names::INDEX,
            Domain::Index,
            &index_fmt::encode_compressed(file),
        )
        .await
    }

    /// Read one chunk back: ranged get, authenticate, decompress, and check
    /// that its SHA-256 is its id. Wrong bytes never leave this function.
    /// (Restores read through `pipeline::ChunkReader`, which coalesces
    /// neighbouring chunks into one read.)
    pub async fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Bytes> {
        let loc = index.get(id).ok_or_else(|| {
            Error::integrity(format!("chunk {id} is not in the index"))
                .with_hint("run `usdcop-dr verify` to see which index or pack is missing")
        })?;
        let pack = index.pack_id(&loc);
        let stored = self
            .read_pack_range(&pack, loc.offset as u64, loc.stored_len as u64, || {
                format!("chunk {}", id.short())
            })
            .await?;
        let key = self.key.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || {
            decode_blob(&key, &stored, loc.compression, loc.raw_len, &id)
        })
        .await
        .map_err(|e| Error::io(format!("decode task failed: {e}")))?
        .map_err(|e| e.context(format!("pack {}", names::pack(&pack))))
        .map(Bytes::from)
    }

    /// `len` stored bytes of pack `pack` from `offset` (one ranged read;
    /// nothing checked yet: every blob in them goes through [`decode_blob`]).
    /// A missing pack is an integrity error naming `holding()`, the chunks
    /// the read was for.
    pub async fn read_pack_range(
        &self,
        pack: &Id,
        offset: u64,
        len: u64,
        holding: impl FnOnce() -> String,
    ) -> Result<Bytes> {
        let name = names::pack(pack);
        self.backend
            .get_range(&name, offset, len)
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::integrity(format!("pack {name} holding {} is missing", holding()))
                } else {
                    e
                }
            })
    }
}

/// A key object's parts, checked against its name.
struct ParsedKey {
    salt: Vec<u8>,
    sealed: Vec<u8>,
    kdf_params: KdfParams,
}

fn parse_key_object(name: &str, bytes: &[u8]) -> Result<ParsedKey> {
    check_name(name, bytes)?;
    let file: KeyFile = crate::format::meta::decode_json("key object", bytes)?;
    // Out-of-range KDF parameters are a malformed object too (checked
    // again by `derive_key`): skipped like the rest, not fatal.
    file.kdf_params.check()?;
    Ok(ParsedKey {
        salt: hex::decode(&file.salt).map_err(|e| Error::format("key object", e))?,
        sealed: hex::decode(&file.sealed_master_key).map_err(|e| Error::format("key object", e))?,
        kdf_params: file.kdf_params,
    })
}

/// Sends warnings to the log, for callers with no progress sink.
struct LogWarnings;
impl crate::progress::Progress for LogWarnings {
    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// Decrypt, decompress and check one stored blob.
pub fn decode_blob(
    key: &Key,
    stored: &[u8],
    compression: Compression,
    raw_len: u32,
    id: &Id,
) -> Result<Vec<u8>> {
    let inner = key
        .open(Domain::Blob, stored)
        .map_err(|e| e.context(format!("chunk {}", id.short())))?;
    let plain = match compression {
        Compression::None => inner,
        Compression::Zstd => codec::decompress_exact(&inner, raw_len as usize, "chunk")?,
    };
    if plain.len() != raw_len as usize || Id::hash(&plain) != *id {
        return Err(Error::integrity(format!(
            "chunk {} does not match its checksum",
            id.short()
        )));
    }
    Ok(plain)
}

/// Content-addressed objects must hash to their name.
pub fn check_name(name: &str, bytes: &[u8]) -> Result<()> {
    if let Some(expected) = names::id_of(name) {
        let actual = Id::hash(bytes);
        if actual != expected {
            return Err(Error::integrity(format!(
                "object {name} is damaged: its content hashes to {}",
                actual.short()
            )));
        }
    }
    Ok(())
}

/// Create the `config` object so that of two concurrent `init`s exactly
/// one wins. With atomic create that is the store's job. On stores that
/// silently overwrite (Garage ignores `If-None-Match`), write, wait for
/// any concurrent writer to land, and read back: if the bytes are not ours,
/// another init won and this one stops before writing a key.
async fn create_config(backend: &dyn Backend, sealed: Vec<u8>, location: &str) -> Result<()> {
    if backend.probe_atomic_create().await? {
        return match backend
            .put(names::CONFIG, sealed.clone().into(), PutMode::Create)
            .await
        {
            // Ours or another init's? A create whose answer was lost (the
            // retry met the object it had stored) finds its own bytes:
            // sealed under a fresh random key, they cannot be another's.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                match backend.get(names::CONFIG).await {
                    Ok(stored) if stored[..] == sealed[..] => Ok(()),
                    _ => Err(already_a_repo(location)),
                }
            }
            r => r,
        };
    }
    tracing::warn!(
        "{location}: the store does not refuse overwrites; using write-and-verify for init"
    );
    backend
        .put(names::CONFIG, sealed.clone().into(), PutMode::Overwrite)
        .await?;
    tokio::time::sleep(CONFIG_SETTLE).await;
    let stored = backend.get(names::CONFIG).await?;
    if stored[..] != sealed[..] {
        return Err(Error::usage(format!(
            "{location}: another `init` created this repository at the same time"
        ))
        .with_hint("use the repository it created (with its passphrase), or another location"));
    }
    Ok(())
}

/// How long write-and-verify init waits for a concurrent writer to land.
const CONFIG_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

fn already_a_repo(location: &str) -> Error {
    Error::usage(format!(
        "{location} already holds a repository; init refuses to touch it"
    ))
    .with_hint("use another --repo, or use the existing repository")
}

async fn derive_key_blocking(pass: Vec<u8>, salt: Vec<u8>, kdf: KdfParams) -> Result<Key> {
    let pass = zeroize::Zeroizing::new(pass);
    tokio::task::spawn_blocking(move || crypto::derive_key(&pass, &salt, kdf))
        .await
        .map_err(|e| Error::io(format!("key derivation task failed: {e}")))?
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Read and decrypt a pack's header, fetching bytes with `read(offset, len)`.
pub fn parse_pack_header(
    key: &Key,
    pack_len: u64,
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<Vec<crate::format::pack::PackEntry>> {
    use crate::format::pack;
    if pack_len < 4 {
        return Err(Error::integrity(format!(
            "pack of {pack_len} bytes is too short"
        )));
    }
    let trailer: [u8; 4] = read(pack_len - 4, 4)?
        .try_into()
        .map_err(|_| Error::integrity("short read"))?;
    let (offset, len) = pack::header_location(pack_len, trailer)?;
    let sealed = read(offset, len as u64)?;
    let plain = key.open(Domain::PackHeader, &sealed)?;
    let entries = pack::decode_header(&plain)?;
    pack::blob_offsets(&entries, offset)?;
    Ok(entries)
}

impl Repository {
    /// Read a stored pack's own header (two ranged reads), e.g. to rebuild
    /// the index from packs alone.
    pub async fn read_pack_header(
        &self,
        pack_id: &Id,
        pack_len: u64,
    ) -> Result<Vec<crate::format::pack::PackEntry>> {
        let name = names::pack(pack_id);
        if pack_len < 4 {
            return Err(Error::integrity(format!(
                "pack {name} is too short ({pack_len} bytes)"
            )));
        }
        let trailer = self.backend.get_range(&name, pack_len - 4, 4).await?;
        let (offset, len) = crate::format::pack::header_location(
            pack_len,
            trailer[..].try_into().expect("4 bytes"),
        )
        .map_err(|e| e.context(format!("pack {name}")))?;
        let sealed = self.backend.get_range(&name, offset, len as u64).await?;
        parse_pack_header(&self.key, pack_len, |o, l| {
            if o == pack_len - 4 {
                Ok(trailer.to_vec())
            } else if o == offset && l == len as u64 {
                Ok(sealed.to_vec())
            } else {
                Err(Error::integrity("unexpected header read"))
            }
        })
        .map_err(|e| e.context(format!("pack {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    async fn repo(dir: &std::path::Path) -> Repository {
        let backend = Arc::new(LocalBackend::new(dir).unwrap());
        let opts = InitOptions {
            kdf: KdfParams {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default()
        };
        Repository::init(backend, b"pw", &opts).await.unwrap()
    }

    /// A writer from before prune (it knows the lock features but not
    /// `prune-v1`: it would deduplicate against condemned packs) is
    /// refused by a repository created now, naming the feature; this
    /// binary is not.
    #[tokio::test]
    async fn a_writer_without_the_prune_protocol_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        assert!(repo.config().write_features.iter().any(|f| f == "prune-v1"));
        repo.check_writable().unwrap();
        let old = ["lock-lease", "store-time-locks", "lock-identity"];
        let e = repo.config().check_writable_by(&old, "0.1.0").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(e.to_string().contains("prune-v1"), "{e}");
    }

    /// The writer gate in the library: a config requiring a write feature
    /// this binary does not know refuses `open_for_write`, `check_writable`
    /// and every writing entry point (lock, repair, new key), naming the
    /// feature; `open` for reading still works.
    #[tokio::test]
    async fn unknown_write_feature_refuses_every_writer() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let mut config = repo.config().clone();
        config.write_features.push("prune-v9".into());
        config.min_writer_version = "99.1.0".into();
        let sealed = repo
            .key()
            .seal(Domain::Config, &serde_json::to_vec(&config).unwrap());
        repo.backend()
            .put(names::CONFIG, sealed.into(), PutMode::Overwrite)
            .await
            .unwrap();
        let backend = repo.backend_arc();
        let e = Repository::open_for_write(backend.clone(), b"pw")
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("prune-v9"), "{e}");
        assert!(e.hint().unwrap().contains("≥ 99.1.0"), "{:?}", e.hint());
        let repo = Arc::new(Repository::open(backend, b"pw").await.unwrap());
        let gated = |e: Error| assert!(e.to_string().contains("prune-v9"), "{e}");
        gated(repo.check_writable().unwrap_err());
        gated(
            lock::LockGuard::acquire(repo.clone(), crate::format::meta::LockKind::Backup)
                .await
                .err()
                .unwrap(),
        );
        gated(
            crate::commands::repair::index(repo.clone())
                .await
                .unwrap_err(),
        );
        gated(
            repo.add_key(
                b"other",
                KdfParams {
                    m_cost_kib: 1024,
                    t_cost: 1,
                    p_cost: 1,
                },
            )
            .await
            .unwrap_err(),
        );
        assert!(list_all(repo.backend(), names::LOCKS)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            list_all(repo.backend(), names::KEYS).await.unwrap().len(),
            1
        );
    }

    /// An object named by its content found already stored (an earlier
    /// attempt's answer was lost) counts as stored; one of another size
    /// under that name is reported as damaged, not counted.
    #[tokio::test]
    async fn content_named_object_found_stored_is_success_unless_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let bytes = b"sealed bytes".to_vec();
        let name = names::in_dir(names::INDEX, &Id::hash(&bytes));
        repo.put_named_by_content(&name, bytes.clone().into())
            .await
            .unwrap();
        repo.put_named_by_content(&name, bytes.clone().into())
            .await
            .unwrap();
        assert_eq!(&repo.backend().get(&name).await.unwrap()[..], &bytes[..]);

        let other = names::in_dir(names::INDEX, &Id::hash(b"other"));
        repo.backend()
            .put(&other, b"trunc".to_vec().into(), PutMode::Create)
            .await
            .unwrap();
        let e = repo
            .put_named_by_content(&other, b"other!".to_vec().into())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&other) && text.contains("already exists with 5 bytes"),
            "{text}"
        );
    }
}
