//! What gets backed up. Each source turns something outside (a directory
//! tree, a stream, later pg_dump and S3 buckets) into snapshot entries by
//! feeding bytes through the pipeline [`Writer`](crate::pipeline::Writer).

pub mod bucket;
pub mod files;
pub mod postgres;
pub mod stdin;
