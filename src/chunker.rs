//! Content-defined chunking, sans I/O: push bytes in, take chunks out.
//! The same chunker serves files, stdin, pg_dump pipes and S3 bodies.
//!
//! FastCDC (2020) from the `fastcdc` crate finds the cut points; this type
//! only keeps the window of at most `max_size` bytes the algorithm needs,
//! so memory stays at about two maximum chunk sizes whatever the input.

use fastcdc::v2020::{FastCDC, Normalization};

use crate::format::meta::ChunkerParams;

pub struct Chunker {
    params: ChunkerParams,
    buf: Vec<u8>,
    /// Start of the not-yet-emitted bytes in `buf`.
    start: usize,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        Chunker {
            params,
            buf: Vec::with_capacity(params.max_size as usize * 2),
            start: 0,
        }
    }

    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// How many more bytes `push` should be given before `next_chunk` can
    /// decide a cut; callers read this much from their source.
    pub fn wanted(&self) -> usize {
        (self.params.max_size as usize).saturating_sub(self.pending())
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start + self.pending() + data.len() > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete chunk, if enough bytes are buffered to be sure of
    /// its end. With `eof`, whatever remains is cut too.
    pub fn next_chunk(&mut self, eof: bool) -> Option<Vec<u8>> {
        let pending = self.pending();
        if pending == 0 || (!eof && pending < self.params.max_size as usize) {
            return None;
        }
        let len = self.cut(&self.buf[self.start..]);
        let chunk = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
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
    }
}
