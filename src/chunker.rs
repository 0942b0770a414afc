//! Content-defined chunking, sans I/O: push bytes in, take chunks out.
//! The same chunker serves files, stdin, pg_dump pipes and S3 bodies.
//!
//! FastCDC (2020) from the `fastcdc` crate finds the cut points; this type
//! only keeps the window the algorithm needs: a cut is decided once
//! `max_size` bytes past the chunk's start are buffered (or at the end).
//! The window is two maximum chunk sizes and one read, so memory stays
//! bounded whatever the input. A reader fills it in place
//! ([`Chunker::read_from`]: no copy between a read buffer and the window),
//! and the bytes still pending move to its front only once the free space
//! at its end runs low: at most once per `max_size` bytes read, moving
//! fewer than `max_size` bytes.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization};

use crate::format::meta::ChunkerParams;

/// The most one [`Chunker::read_from`] asks its reader for.
pub const READ_MAX: usize = 1 << 20;
/// The window's first size; it doubles as the input needs.
const FIRST_GROWTH: usize = 64 << 10;

pub struct Chunker {
    params: ChunkerParams,
    /// The window; `buf[start..end]` are the bytes not yet emitted.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        Chunker {
            params,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Two maximum chunks and one read: the pending bytes (fewer than
    /// `max_size` once the chunks are taken) move to the front at most
    /// once per `max_size` bytes read. A larger window moves less often but
    /// is held by every stream in flight; a copy costs far less than the
    /// memory (docs/ARCHITECTURE.md).
    fn window(&self) -> usize {
        self.params.max_size as usize * 2 + READ_MAX
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Room at the window's end for up to `want` (> 0) more bytes. While
    /// the buffer is smaller than the window it doubles, from
    /// [`FIRST_GROWTH`], so that a small stream touches little memory; at
    /// the window's size the pending bytes move to the front once the free
    /// space at the end is short of `want`. Returns the free space: more
    /// than 0, possibly less than `want`.
    fn make_room(&mut self, want: usize) -> usize {
        if self.buf.len() - self.end < want && self.buf.len() < self.window() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.window());
            }
            let len = (self.buf.len() * 2).max(FIRST_GROWTH).min(self.window());
            self.buf.resize(len, 0);
        }
        if self.buf.len() - self.end < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() == self.end {
            // Only past the window: a caller pushing more than it holds
            // without taking chunks.
            self.buf.resize(self.end + want, 0);
        }
        self.buf.len() - self.end
    }

    /// Copy `data` into the window.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.make_room(data.len().min(READ_MAX));
            let n = room.min(data.len());
            self.buf[self.end..self.end + n].copy_from_slice(&data[..n]);
            self.end += n;
            data = &data[n..];
        }
    }

    /// One read from `reader` straight into the window (at most
    /// [`READ_MAX`] bytes, and never more than the window holds beyond the
    /// pending bytes, so it does not grow past its size while the caller
    /// takes chunks between reads). Returns 0 at the end of the input; an
    /// `Interrupted` read is retried.
    pub fn read_from(&mut self, reader: &mut impl Read) -> std::io::Result<usize> {
        let want = READ_MAX.min(self.window().saturating_sub(self.pending()).max(1));
        let want = self.make_room(want).min(want);
        loop {
            match reader.read(&mut self.buf[self.end..self.end + want]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete chunk, if enough bytes are buffered to be sure of
    /// its end. With `eof`, whatever remains is cut too.
    pub fn next_chunk(&mut self, eof: bool) -> Option<Vec<u8>> {
        let pending = self.pending();
        if pending == 0 || (!eof && pending < self.params.max_size as usize) {
            return None;
        }
        let len = self.cut(&self.buf[self.start..self.end]);
        let chunk = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Some(chunk)
    }

    fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let mut cdc = FastCDC::with_level_and_seed(
            data,
            p.min_size,
            p.avg_size,
            p.max_size,
            Normalization::Level1,
            p.seed,
        );
        cdc.next().map_or(data.len(), |c| c.length)
    }
}

/// Chunk a whole buffer: a convenience for tests and small inputs.
pub fn chunk_all(params: ChunkerParams, data: &[u8]) -> Vec<Vec<u8>> {
    let mut c = Chunker::new(params);
    let mut out = Vec::new();
    for piece in data.chunks(64 * 1024) {
        c.push(piece);
        while let Some(ch) = c.next_chunk(false) {
            out.push(ch);
        }
    }
    while let Some(ch) = c.next_chunk(true) {
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn params() -> ChunkerParams {
        ChunkerParams::with_avg(4096, 42).unwrap()
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.gen()).collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let data = random(300_000, 1);
        let chunks = chunk_all(params(), &data);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 1024 && c.len() <= 16384, "chunk of {}", c.len());
        }
        let avg = data.len() / chunks.len();
        assert!((2048..8192).contains(&avg), "average {avg}");
    }

    #[test]
    fn boundaries_resynchronise_after_an_insert() {
        let data = random(400_000, 2);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<_> = chunk_all(params(), &data).into_iter().collect();
        let b = chunk_all(params(), &edited);
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(
            shared + 3 >= b.len(),
            "only {shared} of {} chunks shared",
            b.len()
        );
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = random(200_000, 3);
        let other = ChunkerParams {
            seed: 7,
            ..params()
        };
        assert_ne!(chunk_all(params(), &data), chunk_all(other, &data));
    }

    proptest! {
        #[test]
        fn any_feeding_pattern_gives_the_same_chunks(
            data in proptest::collection::vec(any::<u8>(), 0..60_000),
            pieces in proptest::collection::vec(1usize..20_000, 1..10),
        ) {
            let expected = chunk_all(params(), &data);
            let mut c = Chunker::new(params());
            let mut got = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = pieces[i % pieces.len()].min(rest.len());
                c.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
                while let Some(ch) = c.next_chunk(false) { got.push(ch); }
            }
            while let Some(ch) = c.next_chunk(true) { got.push(ch); }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn reading_in_place_gives_the_same_chunks(
            data in proptest::collection::vec(any::<u8>(), 0..200_000),
            pieces in proptest::collection::vec(1usize..40_000, 1..10),
        ) {
            // A reader whose reads come back short, by the given sizes.
            struct Short<'a> { data: &'a [u8], pieces: Vec<usize>, i: usize }
            impl Read for Short<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = self.pieces[self.i % self.pieces.len()].min(buf.len()).min(self.data.len());
                    self.i += 1;
                    buf[..n].copy_from_slice(&self.data[..n]);
                    self.data = &self.data[n..];
                    Ok(n)
                }
            }
            let expected = chunk_all(params(), &data);
            let mut r = Short { data: &data, pieces, i: 0 };
            let mut c = Chunker::new(params());
            let mut got = Vec::new();
            loop {
                let n = c.read_from(&mut r).unwrap();
                // The window stays bounded while chunks are taken.
                prop_assert!(c.buf.len() <= c.window());
                while let Some(ch) = c.next_chunk(n == 0) { got.push(ch); }
                if n == 0 { break; }
            }
            prop_assert_eq!(got, expected);
        }
    }
}
