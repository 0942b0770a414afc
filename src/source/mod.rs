//! What gets backed up. Each source turns something outside (a directory
//! tree, a stream, pg_dump, S3 buckets) into snapshot entries by
//! feeding bytes through the pipeline [`Writer`](crate::pipeline::Writer).

pub mod basebackup;
pub mod bucket;
pub mod files;
pub mod merge;
pub mod postgres;
pub mod stdin;
