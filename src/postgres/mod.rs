//! PostgreSQL, shared by the backup source (`source/postgres.rs`) and the
//! restore (`commands/restore_postgres.rs`):
//!
//! - `dsn`: connection strings with the password split off (pure);
//! - `picture`: what a database looked like, and how a restore is judged (pure);
//! - `inspect`: tokio-postgres queries (snapshot export, counts, checksums);
//! - `tls`: libpq's `sslmode` for our own connection (rustls);
//! - `tools`: finding and running `pg_dump` / `pg_restore`.

pub mod dsn;
pub mod inspect;
pub mod picture;
pub mod tls;
pub mod tools;

pub use dsn::Dsn;
pub use picture::DbPicture;
