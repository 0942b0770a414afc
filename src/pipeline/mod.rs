//! Moving bytes between sources, the repository and restore targets.

pub mod level;
pub mod reader;
pub mod writer;

pub use reader::{off_runtime, ChunkReader, ReadOptions};
pub use writer::{StoredList, StoredStream, Writer, WriterOptions, WriterTotals};
