//! What delta compression against the parent chunk would save and cost
//! (issue 14), measured on two streams (two nights' `pg_dump -Fc -Z0`),
//! without changing the repository format: scripts/bench-postgres.sh runs
//! it on the dumps before and after a random 1 % update.
//!
//! ```text
//! delta_estimate PARENT CHILD [LEVEL] [AVG_CHUNK]
//! ```
//!
//! Both files are cut with the repository's chunker (FastCDC 2020, the
//! default 1 MiB average, seed 0). A child chunk whose SHA-256 is among
//! the parent's is a duplicate (0 bytes). Every other child chunk is
//! compressed twice at LEVEL (default 1, what a backup of pg_dump text
//! chooses): alone, as a backup stores it today, and with its parent
//! chunk as a zstd prefix dictionary, with long-distance matching
//! (`DELTA_NO_LDM=1`: without). The parent chunk is the one a writer
//! could name without reading the parent's contents: the parent chunk
//! whose end boundary sits at the same place in the stream, counting from
//! the last chunk both streams share (ordinal, resynchronised at every
//! duplicate). Printed: bytes and CPU seconds of both ways, and how many
//! parent bytes a backup would have to read back from the repository to
//! delta against (the cost a remote repository pays in downloads).
//! Memory: one chunk of each stream at a time (the parent read by seek).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use usdcop_dr::chunker::Chunker;
use usdcop_dr::format::meta::ChunkerParams;

struct ChunkRef {
    offset: u64,
    len: usize,
}

fn chunks(path: &str, params: ChunkerParams, mut each: impl FnMut(u64, &[u8])) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut c = Chunker::new(params);
    let mut buf = vec![0u8; 256 * 1024];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        c.push(&buf[..n]);
        while let Some(ch) = c.next_chunk(n == 0) {
            each(offset, &ch);
            offset += ch.len() as u64;
        }
        if n == 0 {
            break;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: delta_estimate PARENT CHILD [LEVEL] [AVG_CHUNK]");
        std::process::exit(2);
    }
    let level: i32 = args.get(3).map_or(1, |s| s.parse().expect("LEVEL"));
    let avg: u32 = args
        .get(4)
        .map_or(1 << 20, |s| s.parse().expect("AVG_CHUNK"));
    let params = ChunkerParams::with_avg(avg, 0).expect("chunker parameters");

    // The parent's chunk list: ids and where each chunk lies.
    let mut parent: Vec<ChunkRef> = Vec::new();
    let mut parent_ids: HashMap<[u8; 32], usize> = HashMap::new();
    chunks(&args[1], params, |offset, ch| {
        parent_ids.insert(Sha256::digest(ch).into(), parent.len());
        parent.push(ChunkRef {
            offset,
            len: ch.len(),
        });
    });
    let mut pf = File::open(&args[1]).expect("parent");
    let mut base = Vec::new();

    let (mut total, mut dup, mut n_new) = (0u64, 0u64, 0u64);
    let (mut plain_bytes, mut delta_bytes, mut base_read) = (0u64, 0u64, 0u64);
    let (mut plain_cpu, mut delta_cpu) = (Duration::ZERO, Duration::ZERO);
    // Index of the parent chunk the next child chunk lines up with.
    let mut next_parent = 0usize;
    let mut plain = zstd::bulk::Compressor::new(level).expect("zstd");
    chunks(&args[2], params, |_, ch| {
        total += ch.len() as u64;
        let id: [u8; 32] = Sha256::digest(ch).into();
        if let Some(&k) = parent_ids.get(&id) {
            dup += ch.len() as u64;
            next_parent = k + 1;
            return;
        }
        n_new += 1;
        let t = Instant::now();
        let alone = plain.compress(ch).expect("zstd").len() as u64;
        plain_cpu += t.elapsed();
        plain_bytes += alone;
        let k = next_parent.min(parent.len().saturating_sub(1));
        next_parent += 1;
        let Some(p) = parent.get(k) else {
            delta_bytes += alone;
            return;
        };
        base.resize(p.len, 0);
        pf.seek(SeekFrom::Start(p.offset)).expect("seek");
        pf.read_exact(&mut base).expect("parent chunk");
        base_read += p.len as u64;
        let t = Instant::now();
        // A prefix, not a trained dictionary: the parent chunk's bytes
        // are the history the child chunk's matches point into.
        let mut cctx = zstd::zstd_safe::CCtx::create();
        cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(level))
            .expect("level");
        cctx.set_parameter(zstd::zstd_safe::CParameter::WindowLog(23))
            .expect("window");
        // Long-distance matching: level 1's own match finder keeps 2^13
        // hash slots, too few to remember a 1 MiB prefix (without it the
        // prefix saved 1 % on the benchmark's random change; with it 98 %,
        // in less CPU than compressing the chunk alone).
        if std::env::var_os("DELTA_NO_LDM").is_none() {
            cctx.set_parameter(zstd::zstd_safe::CParameter::EnableLongDistanceMatching(
                true,
            ))
            .expect("ldm");
        }
        cctx.ref_prefix(&base).expect("prefix");
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(ch.len()));
        cctx.compress2(&mut out, ch).expect("zstd with prefix");
        delta_bytes += out.len().min(ch.len()) as u64;
        delta_cpu += t.elapsed();
    });
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("child stream            {:10.1} MiB", mib(total));
    println!("  duplicate chunks      {:10.1} MiB", mib(dup));
    println!(
        "  new chunks            {:10} ({:.1} MiB raw)",
        n_new,
        mib(total - dup)
    );
    println!(
        "stored as today (zstd {level})  {:10.2} MiB, {:.2} CPU s",
        mib(plain_bytes),
        plain_cpu.as_secs_f64()
    );
    println!(
        "delta vs parent chunk   {:10.2} MiB, {:.2} CPU s ({:.1}x less stored)",
        mib(delta_bytes),
        delta_cpu.as_secs_f64(),
        plain_bytes as f64 / delta_bytes.max(1) as f64
    );
    println!("parent bytes to read back {:8.1} MiB", mib(base_read));
}
