//! Runs the fuzz targets' checks (fuzz/checks.rs) over the committed seed
//! corpora in fuzz/seeds/<target>/ and over a few thousand deterministic
//! mutations of each seed, so CI exercises the decoders' no-panic,
//! bounded-allocation and round-trip properties without libFuzzer.
//!
//! Seed files named `valid_*` must be accepted by a decoder (so the
//! round-trip half of a check really runs); `bad_*` must be rejected.
//!
//! Regenerate the generated seeds (after a deliberate format change) with
//! `cargo test --test fuzz_seeds -- --ignored generate_seeds`.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[allow(dead_code)]
mod checks {
    include!("../fuzz/checks.rs");
}

type Check = fn(&[u8]) -> bool;

/// Mutations tried per seed file.
const MUTATIONS_PER_SEED: usize = 5000;

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
        .join(target)
}

/// Every regular file in fuzz/seeds/<target>/, sorted by name. Panics when
/// the directory is missing or empty, so the test cannot pass vacuously.
fn load_seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seed_dir(target);
    let rd = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {} unreadable: {e}", dir.display()));
    let mut seeds = Vec::new();
    for ent in rd {
        let ent = ent.unwrap();
        if !ent.file_type().unwrap().is_file() {
            continue;
        }
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let data = std::fs::read(ent.path()).unwrap();
        assert!(
            data.len() <= 4096,
            "seed {target}/{name} is {} bytes; keep seeds under 4 KiB",
            data.len()
        );
        seeds.push((name, data));
    }
    seeds.sort();
    assert!(
        !seeds.is_empty(),
        "seed directory {} is empty",
        dir.display()
    );
    assert!(
        seeds.iter().any(|(n, _)| n.starts_with("valid_")),
        "seed directory {} has no valid_* seed: the round-trip checks would never run",
        dir.display()
    );
    seeds
}

/// Run `check` on `input`, turning a panic into an error message that
/// carries the input in hex (so it can be replayed with the fuzz target).
fn run_one(check: Check, target: &str, what: &str, input: &[u8]) -> Result<bool, String> {
    match panic::catch_unwind(AssertUnwindSafe(|| check(input))) {
        Ok(accepted) => Ok(accepted),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".into());
            Err(format!(
                "fuzz check `{target}` panicked on {what}\n  panic: {msg}\n  input ({} bytes, hex): {}",
                input.len(),
                checks::hex_of(input)
            ))
        }
    }
}

/// SplitMix64: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` positions spread evenly over `0..len` (all of them when `len <= n`).
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        (0..len).collect()
    } else {
        (0..n).map(|i| i * len / n).collect()
    }
}

const INTERESTING_U32: [u32; 8] = [
    0xFFFF_FFFF,
    0,
    1,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFE,
    40,
    39,
];
const INTERESTING_U8: [u8; 8] = [0, 1, 2, 0x7F, 0x80, 0xFF, b'"', b'\\'];
const NUMBER_TOKENS: [&str; 12] = [
    "-1",
    "0",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e309",
    "5e-324",
    "1.7976931348623157e308",
    "0.30000000000000004",
    "2.2250738585072011e-308",
    "123456789012345678901234567890.5",
];

/// Calls `f(description, mutant)` for `budget` deterministic mutations of
/// `seed`: every truncation and every 0xFFFFFFFF length-field overwrite
/// (spread out for long seeds), then random bit flips, byte and u32
/// overwrites, deletions, insertions, duplications, splices with the other
/// seeds and number-token replacements.
fn for_each_mutant(
    name: &str,
    seed: &[u8],
    others: &[(String, Vec<u8>)],
    budget: usize,
    mut f: impl FnMut(&str, &[u8]),
) {
    let mut done = 0usize;
    let mut emit = |desc: &str, m: &[u8], done: &mut usize| {
        f(desc, m);
        *done += 1;
    };
    let len = seed.len();

    for n in spread(len, 400) {
        emit(&format!("truncation to {n} bytes"), &seed[..n], &mut done);
    }
    if len >= 4 {
        for off in spread(len - 3, 600) {
            let mut m = seed.to_vec();
            m[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            emit(&format!("0xFFFFFFFF at offset {off}"), &m, &mut done);
        }
    }
    for pos in spread(len, 300) {
        let mut m = seed.to_vec();
        m[pos] ^= 1 << (pos % 8);
        emit(
            &format!("bit {} flipped at offset {pos}", pos % 8),
            &m,
            &mut done,
        );
    }

    let mut rng = Rng(fnv1a(name));
    let mut i = 0u64;
    while done < budget {
        i += 1;
        let mut m = seed.to_vec();
        let op = rng.below(10);
        let desc = match op {
            0 | 1 => {
                let flips = 1 + rng.below(8);
                for _ in 0..flips {
                    if !m.is_empty() {
                        let p = rng.below(m.len());
                        m[p] ^= 1 << rng.below(8);
                    }
                }
                format!("random mutation {i}: {flips} bit flips")
            }
            2 => {
                if !m.is_empty() {
                    let p = rng.below(m.len());
                    m[p] = INTERESTING_U8[rng.below(INTERESTING_U8.len())];
                }
                format!("random mutation {i}: byte overwrite")
            }
            3 => {
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                if m.len() >= 4 {
                    let p = rng.below(m.len() - 3);
                    m[p..p + 4].copy_from_slice(&v.to_le_bytes());
                }
                format!("random mutation {i}: u32 {v:#x} overwrite")
            }
            4 => {
                if !m.is_empty() {
                    let a = rng.below(m.len());
                    let b = (a + 1 + rng.below(64)).min(m.len());
                    m.drain(a..b);
                }
                format!("random mutation {i}: deletion")
            }
            5 => {
                let p = rng.below(m.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(p..p, bytes);
                format!("random mutation {i}: insertion")
            }
            6 => {
                if !m.is_empty() {
                    let a = rng.below(m.len());
                    let b = (a + 1 + rng.below(128)).min(m.len());
                    let chunk = m[a..b].to_vec();
                    let p = rng.below(m.len() + 1);
                    m.splice(p..p, chunk);
                }
                format!("random mutation {i}: duplication")
            }
            7 => {
                let (oname, other) = &others[rng.below(others.len())];
                let cut = rng.below(m.len() + 1);
                let ocut = rng.below(other.len() + 1);
                m.truncate(cut);
                m.extend_from_slice(&other[ocut..]);
                format!("random mutation {i}: splice with {oname}")
            }
            8 => {
                // Replace a run of ASCII digits (a JSON number, in text seeds)
                // with an extreme number.
                let tok = NUMBER_TOKENS[rng.below(NUMBER_TOKENS.len())];
                let digits: Vec<usize> = (0..m.len()).filter(|&p| m[p].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let a = digits[rng.below(digits.len())];
                    let mut b = a;
                    while b < m.len() && (m[b].is_ascii_digit() || m[b] == b'.') {
                        b += 1;
                    }
                    m.splice(a..b, tok.bytes());
                }
                format!("random mutation {i}: number token {tok}")
            }
            _ => {
                let n = rng.below(m.len() + 1);
                m.truncate(n);
                if !m.is_empty() {
                    let p = rng.below(m.len());
                    m[p] ^= 1 << rng.below(8);
                }
                format!("random mutation {i}: truncation to {n} and bit flip")
            }
        };
        emit(&desc, &m, &mut done);
    }
}

fn replay(target: &str, check: Check) {
    let start = Instant::now();
    let seeds = load_seeds(target);
    let mut errors = Vec::new();
    let mut execs = 0usize;
    let mut accepted = 0usize;

    for (name, data) in &seeds {
        match run_one(check, target, &format!("seed {name}"), data) {
            Ok(ok) => {
                if name.starts_with("valid_") && !ok {
                    errors.push(format!(
                        "seed {target}/{name} should decode but every decoder rejected it"
                    ));
                }
                if name.starts_with("bad_") && ok {
                    errors.push(format!(
                        "seed {target}/{name} should be rejected but a decoder accepted it"
                    ));
                }
            }
            Err(e) => errors.push(e),
        }
        execs += 1;

        let mut first_failure = None;
        for_each_mutant(name, data, &seeds, MUTATIONS_PER_SEED, |desc, m| {
            execs += 1;
            if first_failure.is_some() {
                return;
            }
            match run_one(check, target, &format!("seed {name}, {desc}"), m) {
                Ok(true) => accepted += 1,
                Ok(false) => {}
                Err(e) => first_failure = Some(e),
            }
        });
        errors.extend(first_failure);
    }

    println!(
        "{target}: {} seeds, {execs} inputs ({accepted} mutants accepted) in {:.2?}",
        seeds.len(),
        start.elapsed()
    );
    if !errors.is_empty() {
        panic!(
            "{} failure(s) in fuzz target `{target}`:\n\n{}",
            errors.len(),
            errors.join("\n\n")
        );
    }
}

#[test]
fn pack_header_seeds() {
    replay("pack_header", checks::check_pack_header);
}

#[test]
fn index_seeds() {
    replay("index", checks::check_index);
}

#[test]
fn snapshot_seeds() {
    replay("snapshot", checks::check_snapshot);
}

#[test]
fn tree_node_seeds() {
    replay("tree_node", checks::check_tree_node);
}

#[test]
fn wal_decode_seeds() {
    replay("wal_decode", checks::check_wal);
}

/// Writes the generated seeds into fuzz/seeds/. Ignored: run it by hand
/// after a deliberate format change.
#[test]
#[ignore]
fn generate_seeds() {
    gen::all();
}

mod gen {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use usdcop_dr::crypto::OVERHEAD;
    use usdcop_dr::format::index::{self, IndexBlob, IndexFile, IndexPack};
    use usdcop_dr::format::pack::{self, BlobKind, Compression, PackEntry, MAX_BLOB_LEN};
    use usdcop_dr::format::snapshot::{
        self, Entry, EntryType, Snapshot, Source, SourceKind, Totals,
    };
    use usdcop_dr::format::Id;

    fn write(target: &str, name: &str, data: &[u8]) {
        assert!(
            data.len() <= 4096,
            "{target}/{name} is {} bytes",
            data.len()
        );
        let dir = super::seed_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    fn id(seed: u8) -> Id {
        Id::hash(&[seed])
    }

    pub fn all() {
        pack_headers();
        indexes();
        snapshots();
        tree_nodes();
        wal();
    }

    /// Short segments (a seed is at most 4 KiB: part of the first page)
    /// written as PostgreSQL lays them out.
    fn wal() {
        use usdcop_dr::format::wal_records::synth::Writer;
        let start = 3u64 << 24;
        let mb16 = 16 << 20;
        let mut w = Writer::new(start, mb16, 1, 4096, 0);
        w.xact(0x00, 700, 849_600_000_000_000, false);
        w.filler(300);
        w.xact(0x20, 701, 849_600_000_000_100, true);
        w.xact(0x30, 702, 849_600_000_000_200, true);
        write("wal_decode", "valid_commits.bin", &w.bytes);
        let mut w = Writer::new(start, mb16, 2, 2048, 700);
        w.xact(0x00, 9, 849_600_000_000_000, false);
        w.switch();
        w.xact(0x00, 10, 849_600_000_000_001, false);
        write("wal_decode", "valid_continuation_switch.bin", &w.bytes);
        let mut w = Writer::new(start, mb16, 1, 1024, 0);
        w.filler(2000);
        write("wal_decode", "valid_cut_record.bin", &w.bytes);
        write("wal_decode", "bad_short.bin", &w.bytes[..39]);
        let mut b = w.bytes[..512].to_vec();
        b[2] = 0;
        write("wal_decode", "bad_no_long_header.bin", &b);
    }

    fn pack_entry(i: u32) -> PackEntry {
        PackEntry {
            kind: BlobKind::Data,
            compression: if i.is_multiple_of(3) {
                Compression::None
            } else {
                Compression::Zstd
            },
            stored_len: OVERHEAD as u32 + 17 * i,
            raw_len: 100 + 31 * i,
            id: id(i as u8),
        }
    }

    fn pack_headers() {
        let t = "pack_header";
        write(t, "valid_empty.bin", &pack::encode_header(&[]));
        let one = pack::encode_header(&[pack_entry(1)]);
        write(t, "valid_one.bin", &one);
        let many: Vec<_> = (0..40).map(pack_entry).collect();
        write(t, "valid_many.bin", &pack::encode_header(&many));
        let edge = [
            PackEntry {
                kind: BlobKind::Data,
                compression: Compression::None,
                stored_len: OVERHEAD as u32,
                raw_len: 0,
                id: Id([0; 32]),
            },
            PackEntry {
                kind: BlobKind::Data,
                compression: Compression::Zstd,
                stored_len: MAX_BLOB_LEN,
                raw_len: u32::MAX,
                id: Id([0xff; 32]),
            },
        ];
        write(t, "valid_edge.bin", &pack::encode_header(&edge));

        let three = pack::encode_header(&(0..3).map(pack_entry).collect::<Vec<_>>());
        write(t, "bad_truncated.bin", &three[..three.len() - 7]);
        let mut m = three.clone();
        m[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        write(t, "bad_count.bin", &m);
        let mut m = three.clone();
        m.push(0);
        write(t, "bad_trailing.bin", &m);
        let mut m = one.clone();
        m[9] = 2; // kind (0 data and 1 tree are the only ones)
        write(t, "bad_kind.bin", &m);
        let mut m = one.clone();
        m[10] = 2; // compression
        write(t, "bad_compression.bin", &m);
        let mut m = one.clone();
        m[11..15].copy_from_slice(&(OVERHEAD as u32 - 1).to_le_bytes());
        write(t, "bad_short_blob.bin", &m);
        let mut m = one.clone();
        m[11..15].copy_from_slice(&(MAX_BLOB_LEN + 1).to_le_bytes());
        write(t, "bad_long_blob.bin", &m);
        let mut m = one.clone();
        m[4] = 2;
        write(t, "bad_version.bin", &m);
        let mut m = one;
        m[0] = b'X';
        write(t, "bad_magic.bin", &m);
    }

    fn sample_index(packs: u8, blobs_per_pack: u32) -> IndexFile {
        IndexFile {
            supersedes: vec![id(200), id(201)],
            packs: (0..packs)
                .map(|p| IndexPack {
                    id: id(100 + p),
                    blobs: (0..blobs_per_pack)
                        .map(|b| IndexBlob {
                            kind: BlobKind::Data,
                            compression: if (p as u32 + b).is_multiple_of(2) {
                                Compression::Zstd
                            } else {
                                Compression::None
                            },
                            offset: b * 1000,
                            stored_len: 1000,
                            raw_len: 4000 + b,
                            id: id(p.wrapping_mul(16).wrapping_add(b as u8)),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn indexes() {
        let t = "index";
        let empty = IndexFile::default();
        write(t, "valid_empty.bin", &index::encode(&empty));
        write(t, "valid_empty.zst", &index::encode_compressed(&empty));
        let small = sample_index(3, 2);
        let small_enc = index::encode(&small);
        write(t, "valid_small.bin", &small_enc);
        write(t, "valid_small.zst", &index::encode_compressed(&small));
        let big = sample_index(6, 12);
        write(t, "valid_big.bin", &index::encode(&big));
        write(t, "valid_big.zst", &index::encode_compressed(&big));
        let edge = IndexFile {
            supersedes: vec![],
            packs: vec![
                IndexPack {
                    id: Id([0; 32]),
                    blobs: vec![],
                },
                IndexPack {
                    id: Id([0xff; 32]),
                    blobs: vec![IndexBlob {
                        kind: BlobKind::Data,
                        compression: Compression::None,
                        offset: index::MAX_OFFSET - MAX_BLOB_LEN,
                        stored_len: MAX_BLOB_LEN,
                        raw_len: u32::MAX,
                        id: Id([0xab; 32]),
                    }],
                },
            ],
        };
        write(t, "valid_edge.bin", &index::encode(&edge));

        write(t, "bad_truncated.bin", &small_enc[..small_enc.len() - 5]);
        let small_zst = index::encode_compressed(&small);
        write(t, "bad_truncated.zst", &small_zst[..small_zst.len() / 2]);
        let mut m = small_enc.clone();
        m.push(0);
        write(t, "bad_trailing.bin", &m);
        // Layout: magic(4) version(1) ns(4) 2*32 np(4) …
        let np_off = 5 + 4 + 64;
        let mut m = small_enc.clone();
        m[np_off..np_off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        write(t, "bad_pack_count.bin", &m);
        let mut m = small_enc.clone();
        m[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        write(t, "bad_supersedes_count.bin", &m);
        // First blob of the first pack: np(4) pack_id(32) nb(4) kind compression offset stored_len
        let blob0 = np_off + 4 + 32 + 4;
        let mut m = small_enc.clone();
        m[blob0 + 1] = 7;
        write(t, "bad_compression.bin", &m);
        let mut m = small_enc.clone();
        m[blob0 + 2..blob0 + 6].copy_from_slice(&u32::MAX.to_le_bytes());
        write(t, "bad_offset_overflow.bin", &m);
        let mut m = small_enc;
        m[blob0 + 6..blob0 + 10].copy_from_slice(&(MAX_BLOB_LEN + 1).to_le_bytes());
        write(t, "bad_long_blob.bin", &m);
    }

    fn time(secs: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, nanos).unwrap()
    }

    fn minimal_snapshot() -> Snapshot {
        Snapshot {
            version: snapshot::VERSION,
            time: time(1_700_000_000, 0),
            host: "db1".into(),
            username: String::new(),
            source: Source {
                kind: SourceKind::Stdin,
                name: "dump.sql".into(),
            },
            tags: vec![],
            parent: None,
            paths: vec!["dump.sql".into()],
            tree: id(2),
            entry_count: 1,
            totals: Totals {
                files: 1,
                bytes: 12,
                chunks: 1,
                chunks_new: 1,
                bytes_stored_new: 52,
                ..Totals::default()
            },
            started: time(1_699_999_999, 500_000_000),
            duration_s: 0.25,
            program_version: "0.1.0".into(),
            metadata: BTreeMap::new(),
        }
    }

    fn files_snapshot() -> Snapshot {
        let mut metadata = BTreeMap::new();
        metadata.insert("pg_dump_version".to_string(), serde_json::json!("16.2"));
        metadata.insert(
            "tables".to_string(),
            serde_json::json!({"users": {"rows": 1234567, "bytes": 1.5e9}, "empty": [], "flags": [true, false, null]}),
        );
        metadata.insert("neg".to_string(), serde_json::json!(-42));
        metadata.insert("big".to_string(), serde_json::json!(u64::MAX));
        Snapshot {
            version: snapshot::VERSION,
            time: time(1_712_345_678, 123_456_789),
            host: "web-01.example".into(),
            username: "backup".into(),
            source: Source {
                kind: SourceKind::Files,
                name: "etc".into(),
            },
            tags: vec!["nightly".into(), "prod".into()],
            parent: Some(id(9)),
            paths: vec!["/etc".into(), "/srv/www".into()],
            tree: id(7),
            entry_count: 4,
            totals: Totals {
                files: 2,
                dirs: 1,
                symlinks: 1,
                bytes: 70_012,
                chunks: 3,
                chunks_new: 2,
                bytes_stored_new: 33_000,
                files_unchanged: 1,
            },
            started: time(1_712_345_600, 1),
            duration_s: 77.123456789,
            program_version: "0.1.0".into(),
            metadata,
        }
    }

    fn files_entries() -> Vec<Entry> {
        let entries = vec![
            Entry {
                path: "etc".into(),
                kind: EntryType::Dir,
                mode: 0o40755,
                uid: 0,
                gid: 0,
                mtime_ns: 1_712_000_000_000_000_000,
                ctime_ns: 0,
                inode: 0,
                size: 0,
                sha256: None,
                chunks: vec![],
                target: None,
                chunk_tree: None,
                object: None,
            },
            Entry {
                path: "etc/hosts".into(),
                kind: EntryType::File,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                mtime_ns: -1,
                ctime_ns: 1_712_000_000_000_000_001,
                inode: 131_077,
                size: 70_000,
                sha256: Some(id(3)),
                chunks: vec![id(4), id(5)],
                target: None,
                chunk_tree: None,
                object: None,
            },
            Entry {
                path: "srv/www/caf\u{e9} \u{1F600}.html".into(),
                kind: EntryType::File,
                mode: 0o100600,
                uid: 33,
                gid: 33,
                mtime_ns: i64::MAX,
                ctime_ns: i64::MIN,
                inode: u64::MAX,
                size: u64::MAX,
                sha256: Some(id(6)),
                chunks: vec![id(6)],
                target: None,
                chunk_tree: None,
                object: None,
            },
            Entry {
                path: "etc/localtime".into(),
                kind: EntryType::Symlink,
                mode: 0o120777,
                uid: 0,
                gid: 0,
                mtime_ns: 5,
                ctime_ns: 0,
                inode: 0,
                size: 0,
                sha256: None,
                chunks: vec![],
                target: Some("/usr/share/zoneinfo/Etc/UTC\"\\\n".into()),
                chunk_tree: None,
                object: None,
            },
        ];
        entries
    }

    fn tree_nodes() {
        use usdcop_dr::format::tree::TreeBuilder;
        let t = "tree_node";
        let build = |entries: &[Entry]| {
            let mut b = TreeBuilder::<Entry>::new();
            for e in entries {
                assert!(b.push(e).unwrap().is_empty());
            }
            let (_, nodes) = b.finish();
            assert_eq!(nodes.len(), 1);
            nodes.into_iter().next().unwrap().plain
        };
        let leaf = build(&files_entries());
        write(t, "valid_leaf.json", &leaf);
        write(t, "valid_empty_leaf.json", &build(&[]));
        let ids: Vec<Id> = (0..5).map(id).collect();
        let mut b = TreeBuilder::<Id>::new();
        for i in &ids {
            b.push(i).unwrap();
        }
        let (_, nodes) = b.finish();
        write(t, "valid_chunk_leaf.json", &nodes[0].plain);
        let inner = format!(
            r#"{{"v":1,"level":1,"children":[{{"id":"{}","count":4}},{{"id":"{}","count":3}}]}}"#,
            id(1),
            id(2)
        );
        write(t, "valid_inner.json", inner.as_bytes());
        write(
            t,
            "valid_unknown_field.json",
            br#"{"v":1,"level":0,"ids":[],"later":{"x":[1,2]}}"#,
        );
        write(t, "bad_version.json", br#"{"v":2,"level":0,"ids":[]}"#);
        write(
            t,
            "bad_both.json",
            br#"{"v":1,"level":0,"ids":[],"entries":[]}"#,
        );
        write(
            t,
            "bad_inner_at_level_0.json",
            inner.replace("\"level\":1", "\"level\":0").as_bytes(),
        );
        write(
            t,
            "bad_empty_inner.json",
            br#"{"v":1,"level":3,"children":[]}"#,
        );
        let zero = inner.replace("\"count\":3", "\"count\":0");
        write(t, "bad_empty_child.json", zero.as_bytes());
        let overflow = inner.replace("\"count\":3", "\"count\":18446744073709551615");
        write(t, "bad_count_overflow.json", overflow.as_bytes());
        write(t, "bad_truncated.json", &leaf[..leaf.len() / 2]);
    }

    fn snapshots() {
        let t = "snapshot";
        let min = minimal_snapshot();
        let min_json = serde_json::to_vec(&min).unwrap();
        write(t, "valid_minimal.json", &min_json);
        write(
            t,
            "valid_minimal.zst",
            &snapshot::encode_compressed(&min).unwrap(),
        );
        let files = files_snapshot();
        let files_json = serde_json::to_vec_pretty(&files).unwrap();
        write(t, "valid_files.json", &files_json);
        write(
            t,
            "valid_files.zst",
            &snapshot::encode_compressed(&files).unwrap(),
        );
        // Not what the encoder writes: defaults left out, an unknown field,
        // escapes, a non-UTC offset and an explicit null.
        let hand = br#"{"version":2,"time":"2024-02-29T23:59:59.999999999+05:30","host":"h\u00e9","source":{"kind":"wal","name":"pg\/main"},"tree":"0000000000000000000000000000000000000000000000000000000000000000","entry_count":0,"entries":[{"path":"a\/b","type":"file","sha256":null,"extra":[1,{"x":null}]}],"totals":{"files":0,"dirs":0,"symlinks":0,"bytes":0,"chunks":0,"chunks_new":0,"bytes_stored_new":0,"files_unchanged":0},"started":"1970-01-01T00:00:00Z","duration_s":1e-7,"program_version":"","metadata":{"k":{"nested":[[[]]],"f":-0.0,"e":1E+2}},"unknown":true}"#;
        write(t, "valid_handwritten.json", hand);
        // Floats that serde_json parses wrongly (by 1-2 ULP) without its
        // `float_roundtrip` feature, so they change on a decode/encode trip.
        let floats = String::from_utf8(min_json.clone())
            .unwrap()
            .replace("\"duration_s\":0.25", "\"duration_s\":94815.703598957334")
            .replace(
                "\"metadata\":{}",
                "\"metadata\":{\"f\":[1.9477003958951621e-169,-1.4901437678453858e129,23762.2102018230180,6.1625998656410322e196]}",
            );
        assert_ne!(
            floats.as_bytes(),
            &min_json[..],
            "float seed template no longer matches"
        );
        write(t, "valid_float_roundtrip.json", floats.as_bytes());

        write(t, "bad_truncated.json", &min_json[..min_json.len() / 2]);
        let comp = snapshot::encode_compressed(&files).unwrap();
        write(t, "bad_truncated.zst", &comp[..comp.len() - 9]);
        let mut v = min.clone();
        v.version = 1;
        write(t, "bad_version.json", &serde_json::to_vec(&v).unwrap());
        let mut v = serde_json::to_value(&min).unwrap();
        v.as_object_mut().unwrap().remove("tree");
        write(t, "bad_no_tree.json", &serde_json::to_vec(&v).unwrap());
        let s = String::from_utf8(min_json)
            .unwrap()
            .replace(&id(2).to_hex(), "not-hex");
        write(t, "bad_id.json", s.as_bytes());
    }
}
