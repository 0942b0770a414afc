//! Restore reads from a real S3 server (moto) on loopback: neighbouring
//! chunks of one pack are fetched with one coalesced ranged read
//! (`pipeline::reader`), and still every chunk is authenticated and
//! hash-checked before a byte of it is written.
//!
//! The repository has small chunks (16 KiB on average) and 1 MiB packs, so
//! a few megabytes make hundreds of chunks: 400 small files (one chunk
//! each, a few packs), a file whose chunks repeat (zeros, and one random
//! block five times) and a file whose chunks lie in several packs.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/servers.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{command, random_bytes, run_cmd, runtime, Run, PASSWORD};
use faultproxy::{FaultProxy, FaultRates};
use servers::{S3Server, ServerKind};

const BUCKET: &str = "backups";
const PREFIX: &str = "reads";
const SMALL_FILES: usize = 400;

fn repo() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

/// The CLI with the server's credentials, its repository requests going to
/// `endpoint` (the server, or a proxy in front of it).
fn cli(server: &S3Server, endpoint: &str, args: &[&str]) -> Run {
    let mut c = command(Path::new(&repo()));
    c.envs(server.env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .args(args);
    run_cmd(c, None)
}

struct Fixture {
    server: S3Server,
    src: tempfile::TempDir,
    /// (path relative to `src`, content).
    files: Vec<(String, Vec<u8>)>,
}

impl Fixture {
    fn new() -> Fixture {
        let server = S3Server::start(ServerKind::Moto);
        server.create_bucket(BUCKET);
        let ep = server.endpoint.clone();
        cli(
            &server,
            &ep,
            &[
                "init",
                "--kdf-memory-kib",
                "1024",
                "--chunk-avg-size",
                "16384",
                "--pack-size",
                "1048576",
            ],
        )
        .ok();
        let src = tempfile::tempdir().unwrap();
        let mut files = vec![];
        for i in 0..SMALL_FILES {
            let len = 1000 + (i * 37) % 7000;
            files.push((format!("small/f{i:03}"), random_bytes(len, 1000 + i as u64)));
        }
        // Chunks that repeat inside one file: runs of zeros (identical
        // maximum-size chunks) and a random block five times.
        let block = random_bytes(100 << 10, 7);
        let mut repeat = vec![0u8; 1 << 20];
        for _ in 0..5 {
            repeat.extend_from_slice(&block);
        }
        repeat.extend(std::iter::repeat_n(0u8, 512 << 10));
        files.push(("repeat.bin".into(), repeat));
        // Over several 1 MiB packs.
        files.push(("big.bin".into(), random_bytes(3 << 20, 8)));
        for (rel, data) in &files {
            let p = src.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        let s = src.path().to_str().unwrap();
        cli(&server, &ep, &["backup", "files", "--source", "data", s]).ok();
        Fixture { server, src, files }
    }

    /// Where a restore into `target` puts the sources (under their
    /// absolute path).
    fn restored(&self, target: &Path) -> PathBuf {
        target.join(self.src.path().to_str().unwrap().trim_start_matches('/'))
    }

    fn restore(&self, endpoint: &str, target: &Path) -> Run {
        cli(
            &self.server,
            endpoint,
            &[
                "--json",
                "restore",
                "--snapshot",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ],
        )
    }

    /// Paths (relative to the sources) whose restored bytes are not the
    /// originals, or that are missing.
    fn differing(&self, target: &Path) -> Vec<String> {
        let root = self.restored(target);
        self.files
            .iter()
            .filter(|(rel, data)| std::fs::read(root.join(rel)).ok().as_ref() != Some(data))
            .map(|(rel, _)| rel.clone())
            .collect()
    }
}

/// Every file below `dir` whose name says it is a restore's temporary file.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    common::files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("usdcop-dr"))
        .collect()
}

/// Hundreds of chunks (many small files in few packs, repeating chunks,
/// a file across packs) come back byte for byte with a few dozen GETs in
/// all: one per coalesced span, not one per chunk.
#[test]
fn coalesced_reads_restore_byte_identical() {
    let f = Fixture::new();
    let proxy = FaultProxy::start(&f.server.endpoint, FaultRates::NONE, 1);
    let target = tempfile::tempdir().unwrap();
    let out = f.restore(&proxy.endpoint, target.path()).ok().json();
    assert_eq!(out["files"].as_u64(), Some(f.files.len() as u64), "{out}");
    assert_eq!(f.differing(target.path()), Vec::<String>::new());
    assert!(temp_files(target.path()).is_empty());
    let gets = proxy.counts().gets;
    // One GET per chunk would be over 600 (400 small files alone); the
    // metadata (keys, config, snapshot, index) takes about ten.
    assert!(
        gets < 60,
        "{gets} GETs for {} files: neighbouring chunks were not coalesced",
        f.files.len()
    );
    // The same with one read in flight at a time.
    let target2 = tempfile::tempdir().unwrap();
    let ep = f.server.endpoint.clone();
    cli(
        &f.server,
        &ep,
        &[
            "restore",
            "--read-concurrency",
            "1",
            "--target",
            target2.path().to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(f.differing(target2.path()), Vec::<String>::new());
}

/// One flipped byte inside a pack, in the middle of a chunk that is read
/// together with its neighbours: only the file holding that chunk is
/// reported (exit 3), its neighbours in the same read are restored intact,
/// and nothing wrong is left under a final name (nor a temporary file).
#[test]
fn corrupt_byte_inside_a_coalesced_read_fails_only_its_file() {
    let f = Fixture::new();
    let victim = "small/f200";
    let victim_path = format!("{}/{victim}", f.src.path().to_str().unwrap());
    // Find the victim's chunk and its neighbours' through the library.
    let (pack_name, offset, len) = runtime().block_on(async {
        use usdcop_dr::backend::s3::{S3Backend, S3Options};
        let opts = S3Options {
            endpoint: Some(f.server.endpoint.clone()),
            credentials: Some((f.server.access_key.clone(), f.server.secret_key.clone())),
            region: Some(f.server.region.clone()),
            ..Default::default()
        };
        let backend = Arc::new(S3Backend::open(&repo(), &opts).await.unwrap());
        let r = usdcop_dr::repository::Repository::open(backend, PASSWORD.as_bytes())
            .await
            .unwrap();
        let (_, snap) = r.find_snapshot("latest", None).await.unwrap();
        let index = r.load_index().await.unwrap();
        let entries = r.load_entries(&index, &snap).await.unwrap();
        let loc_of = |path: &str| {
            let e = entries
                .iter()
                .find(|e| e.path.trim_start_matches('/') == path.trim_start_matches('/'))
                .unwrap_or_else(|| panic!("{path} is in the snapshot"));
            assert_eq!(e.chunks.len(), 1, "{path} is one chunk");
            index.get(&e.chunks[0]).unwrap()
        };
        let loc = loc_of(&victim_path);
        for n in ["small/f199", "small/f201"] {
            let l = loc_of(&format!("{}/{n}", f.src.path().to_str().unwrap()));
            assert_eq!(
                index.pack_id(&l),
                index.pack_id(&loc),
                "{n} is in the victim's pack, so read in the same span"
            );
        }
        (
            usdcop_dr::format::names::pack(&index.pack_id(&loc)),
            loc.offset as usize,
            loc.stored_len as usize,
        )
    });
    let key = format!("/{BUCKET}/{PREFIX}/{pack_name}");
    let (status, _, mut pack) = f.server.request("GET", &key, &[], b"").unwrap();
    assert_eq!(status, 200);
    pack[offset + len / 2] ^= 0x01;
    let (status, _, _) = f.server.request("PUT", &key, &[], &pack).unwrap();
    assert_eq!(status, 200);

    let target = tempfile::tempdir().unwrap();
    let r = f.restore(&f.server.endpoint, target.path());
    assert_eq!(r.code, 3, "exit 3 for damaged data: {}", r.stderr);
    // The summary, then the error object.
    let out: serde_json::Value = serde_json::Deserializer::from_slice(&r.stdout)
        .into_iter()
        .next()
        .expect("a summary on stdout")
        .expect("the summary is JSON");
    let failed = out["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0]["path"].as_str().unwrap().ends_with(victim),
        "{out}"
    );
    assert_eq!(failed[0]["reason"], "damaged");
    let err = failed[0]["error"].as_str().unwrap();
    assert!(err.contains("chunk") && err.contains("pack"), "{err}");
    assert!(
        r.stderr.contains(&format!(
            "not restored: {}",
            victim_path.trim_start_matches('/')
        )),
        "{}",
        r.stderr
    );
    assert_eq!(f.differing(target.path()), vec![victim.to_owned()]);
    assert!(!f.restored(target.path()).join(victim).exists());
    assert!(temp_files(target.path()).is_empty());
}

/// Pack reads (coalesced spans) cut short mid-body are resumed: the
/// restore completes byte for byte.
#[test]
fn span_cut_short_is_resumed() {
    let f = Fixture::new();
    const DATA: &[&str] = &["/backups/reads/data/"];
    let proxy = FaultProxy::start(
        &f.server.endpoint,
        FaultRates {
            cut_body: 1.0,
            cut_listings: false,
            cut_paths: Some(DATA),
            // Spans of data, not the few small list tree nodes read first
            // (a 300-byte body cut at a fraction again and again never
            // completes: five cuts of one read fail it, by design).
            cut_min_len: Some(4096),
            cut_limit: Some(6),
            ..FaultRates::NONE
        },
        3,
    );
    let target = tempfile::tempdir().unwrap();
    f.restore(&proxy.endpoint, target.path()).ok();
    // (Concurrent reads may pass the limit's check together: one or two more.)
    let cuts = proxy.counts().cut_body;
    assert!(cuts >= 6, "pack reads were cut: {cuts}");
    assert_eq!(f.differing(target.path()), Vec::<String>::new());
}

/// Every pack read cut short: the restore fails with a clear error
/// (exit 1, naming the cuts), and no file under a final name holds
/// anything but its own bytes; no temporary file is left.
#[test]
fn span_always_cut_short_fails_clearly() {
    let f = Fixture::new();
    const DATA: &[&str] = &["/backups/reads/data/"];
    let proxy = FaultProxy::start(
        &f.server.endpoint,
        FaultRates {
            cut_body: 1.0,
            cut_listings: false,
            cut_paths: Some(DATA),
            ..FaultRates::NONE
        },
        4,
    );
    let target = tempfile::tempdir().unwrap();
    let r = f.restore(&proxy.endpoint, target.path());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cut short"),
        "the error says what happened: {}",
        r.stderr
    );
    let root = f.restored(target.path());
    for (rel, data) in &f.files {
        if let Ok(got) = std::fs::read(root.join(rel)) {
            assert!(&got == data, "{rel} is under its name with other bytes");
        }
    }
    assert!(temp_files(target.path()).is_empty());
}
