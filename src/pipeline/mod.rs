//! Moving bytes between sources, the repository and restore targets.

pub mod level;
pub mod reader;
pub mod writer;

pub use reader::{off_runtime, Chunk, ChunkReader, ReadOptions};
pub use writer::{StoredList, StoredStream, WholeHash, Writer, WriterOptions, WriterTotals};
