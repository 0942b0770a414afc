//! Small helpers shared by the binary decoders: a bounds-checked cursor and
//! size-limited zstd decompression. Decoders never trust a length field:
//! every count is checked against the bytes actually present before any
//! allocation is made from it.

use std::io::Read;

use crate::error::{Error, Result};

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::format(
                self.what,
                format!(
                    "truncated at byte {}: need {n} more, have {}",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    pub fn id(&mut self) -> Result<super::Id> {
        super::Id::from_slice(self.take(32)?)
    }
    pub fn expect_magic(&mut self, magic: &[u8; 4], version: u8) -> Result<()> {
        let m = self.take(4)?;
        if m != magic {
            return Err(Error::format(self.what, "bad magic"));
        }
        let v = self.u8()?;
        if v != version {
            return Err(Error::format(self.what, format!("unsupported version {v}")));
        }
        Ok(())
    }
    /// Read a count of records of `record_len` bytes each, refusing counts
    /// that cannot fit in what is left.
    pub fn count(&mut self, record_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.checked_mul(record_len)
            .is_none_or(|need| need > self.remaining())
        {
            return Err(Error::format(
                self.what,
                format!(
                    "count {n} of {record_len}-byte records exceeds remaining {} bytes",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::format(
                self.what,
                format!("{} trailing bytes", self.remaining()),
            ));
        }
        Ok(())
    }
}

thread_local! {
    /// One compression context per thread and level, reused from chunk to
    /// chunk: a fresh context per chunk costs an allocation and the reset
    /// of its tables (measurable at 1 MiB chunks).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd-compress a whole buffer.
pub fn compress(data: &[u8], level: i32) -> Vec<u8> {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        let (l, c) = slot.get_or_insert_with(|| {
            let c = zstd::bulk::Compressor::new(level).expect("zstd compression context");
            (level, c)
        });
        if *l != level {
            // The same context at another level (a writer's samples
            // alternate): its tables are kept, only the parameters change.
            c.set_compression_level(level)
                .expect("zstd clamps any level to its range");
            *l = level;
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        c.compress_to_buffer(data, &mut out)
            .expect("zstd compression of an in-memory buffer into its bound");
        out
    })
}

/// Decompress a zstd frame that must give exactly `len` bytes (a chunk,
/// whose length the index records): decoded straight into a buffer of that
/// size, so a frame claiming more fails instead of growing it.
pub fn decompress_exact(data: &[u8], len: usize, what: &'static str) -> Result<Vec<u8>> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| Error::format(what, e))?);
        }
        let d = slot.as_mut().expect("just set");
        let mut out = Vec::with_capacity(len);
        d.decompress_to_buffer(data, &mut out)
            .map_err(|e| Error::format(what, format!("zstd: {e}")))?;
        if out.len() != len {
            return Err(Error::format(
                what,
                format!("decompresses to {} bytes, not {len}", out.len()),
            ));
        }
        Ok(out)
    })
}

/// Decompress a zstd frame, refusing output larger than `limit` bytes
/// (grows the output as it goes instead of trusting the frame header).
pub fn decompress(data: &[u8], limit: usize, what: &'static str) -> Result<Vec<u8>> {
    let decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(|e| Error::format(what, e))?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(what, format!("zstd: {e}")))?;
    if out.len() > limit {
        return Err(Error::format(
            what,
            format!("decompresses to more than {limit} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_refuses_impossible_lengths() {
        let buf = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut r = Reader::new(&buf, "test");
        assert!(r.count(1).is_err());
    }

    #[test]
    fn decompress_limits_output() {
        let big = vec![0u8; 1 << 20];
        let c = compress(&big, 3);
        assert_eq!(decompress(&c, 1 << 20, "t").unwrap(), big);
        assert!(decompress(&c, (1 << 20) - 1, "t").is_err());
        assert!(decompress(b"not zstd", 100, "t").is_err());
    }

    #[test]
    fn decompress_exact_wants_the_exact_length() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for level in [1, 3, 3, -1] {
            let c = compress(&data, level);
            assert!(c.len() < data.len());
            assert_eq!(decompress_exact(&c, data.len(), "t").unwrap(), data);
        }
        let c = compress(&data, 3);
        assert!(decompress_exact(&c, data.len() - 1, "t").is_err());
        assert!(decompress_exact(&c, data.len() + 1, "t").is_err());
        assert!(decompress_exact(b"not zstd", 100, "t").is_err());
        assert_eq!(decompress_exact(&compress(b"", 3), 0, "t").unwrap(), b"");
    }
}
