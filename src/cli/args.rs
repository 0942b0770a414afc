//! Command-line flags (clap). Secrets are never flags: the passphrase comes
//! from USDCOP_DR_PASSWORD or USDCOP_DR_PASSWORD_FILE only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "usdcop-dr",
    version,
    about = "Backup and disaster recovery: deduplicated, encrypted, verified"
)]
#[command(
    after_help = "Passphrase: set USDCOP_DR_PASSWORD or USDCOP_DR_PASSWORD_FILE (never a flag).\n\
Exit codes: 0 ok, 1 operational failure, 2 usage/configuration (incl. wrong passphrase), 3 integrity failure,\n\
130/143 stopped by SIGINT/SIGTERM (temporary decrypted files removed first)."
)]
pub struct Cli {
    /// Configuration file (TOML; docs/OPERATIONS.md). Default:
    /// /etc/usdcop-dr/usdcop-dr.toml when it exists. Flags win over it
    #[arg(
        long,
        env = "USDCOP_DR_CONFIG",
        global = true,
        value_name = "FILE",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    /// Repository: a directory path, file:///path or s3://bucket/prefix
    #[arg(
        long,
        short = 'r',
        env = "USDCOP_DR_REPO",
        global = true,
        hide_env_values = true
    )]
    pub repo: Option<String>,
    /// S3 endpoint for s3:// repositories (MinIO, Garage, …); path-style
    /// addressing. Default: the profile's endpoint_url, else AWS_ENDPOINT_URL
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// AWS profile (~/.aws/config, ~/.aws/credentials) for the s3://
    /// repository: its keys, endpoint_url and region win over AWS_* variables
    #[arg(long, env = "USDCOP_DR_S3_PROFILE", global = true, value_name = "NAME")]
    pub s3_profile: Option<String>,
    /// Region of the s3:// repository's store (default: the profile's, else the AWS chain's)
    #[arg(
        long,
        env = "USDCOP_DR_S3_REGION",
        global = true,
        value_name = "REGION"
    )]
    pub s3_region: Option<String>,
    /// Storage class for data packs in S3 (e.g. STANDARD_IA)
    #[arg(long, env = "USDCOP_DR_S3_DATA_STORAGE_CLASS", global = true)]
    pub s3_data_storage_class: Option<String>,
    /// Local cache directory (default: $XDG_CACHE_HOME/usdcop-dr, else
    /// ~/.cache/usdcop-dr); holds the decoded index, sealed with the
    /// repository key
    #[arg(long, env = "USDCOP_DR_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use no local cache: read every index object from the repository
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Machine-readable JSON on stdout (shapes documented in docs/CLI.md)
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output, only errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More log output on stderr (-v info, -vv debug)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository (refuses an existing one)
    Init(InitArgs),
    /// Back up files, a stream, buckets, a database; or the configured
    /// sources (--all, --source NAME)
    Backup(BackupArgs),
    /// Per configured source: newest snapshot, its age against the RPO, the
    /// last run; exit 4 if a source is outside its RPO or never backed up
    Status,
    /// The configuration file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List snapshots
    Snapshots {
        /// Only this source
        #[arg(long)]
        source: Option<String>,
    },
    /// Restore a snapshot into a directory or to stdout
    Restore(RestoreArgs),
    /// Check the repository's integrity (exit 3 if damaged)
    Verify(VerifyArgs),
    /// Repository size, deduplication and settings
    Stats,
    /// Repair repository metadata
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Apply the retention policies: remove the snapshots they drop (the
    /// space is freed by `prune`)
    Forget(PruneArgs),
    /// Apply the retention policies and free the space no kept snapshot
    /// uses (two phases: packs are condemned, then deleted by a later run
    /// after `[retention] grace`); never blocks a backup
    Prune(PruneArgs),
    /// Restore drill: restore the newest snapshot of every configured source
    /// into the [drill] scratch targets, check it, time it, judge the RTO
    /// and RPO, store the record offsite; exit 0 passed, 3 a check failed,
    /// 4 an objective missed
    Drill(DrillArgs),
    /// Past restore drills (stored in the repository) with their verdicts
    Drills,
    /// Archive one WAL file (archive_command = 'usdcop-dr wal-push %p'):
    /// settings from the configuration file ([wal], [repository]); exit 0
    /// only once the file is durable in the repository
    WalPush {
        /// The file (PostgreSQL's %p); with --background, the pg_wal directory
        path: PathBuf,
        /// Run as the background pusher of [wal] async (started by wal-push
        /// itself; docs/CLI.md)
        #[arg(long, hide = true)]
        background: bool,
    },
    /// Fetch one archived WAL file (restore_command = 'usdcop-dr wal-fetch
    /// %f %p'); exit 1 with one line when it is not archived
    WalFetch {
        /// The WAL file name (PostgreSQL's %f)
        name: String,
        /// Where to write it (PostgreSQL's %p), atomically
        dest: PathBuf,
    },
    /// Check the WAL archive: from each base backup (else the oldest
    /// segment) to the newest segment of every timeline, nothing missing;
    /// prints the ranges, the gaps by name and the newest recoverable
    /// time; exit 3 on a gap or damage
    WalVerify {
        /// Also download every needed segment, check and decode it, and
        /// read its page headers and records
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Decide and report; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the report as Markdown to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Repack a pack when at least this percentage of it is unused
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0)]
    pub repack_unused: f64,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and check the file (default: --config, USDCOP_DR_CONFIG, then
    /// /etc/usdcop-dr/usdcop-dr.toml); touches nothing else
    Check {
        /// The file to check
        file: Option<PathBuf>,
    },
}

/// `backup SOURCE-KIND …` for one ad-hoc backup, or `backup --all` /
/// `backup --source NAME` for the configuration file's sources.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(
    clap::ArgGroup::new("configured")
        .required(true)
        .args(["all", "sources"])
))]
pub struct BackupArgs {
    #[command(subcommand)]
    pub mode: Option<BackupCommand>,
    /// Every [[source]] of the configuration file, in turn; exit 0 only if
    /// all succeeded (75: another `backup --all` is running)
    #[arg(long, conflicts_with = "sources")]
    pub all: bool,
    /// Only this configured source (repeatable)
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild index entries for packs that no index lists (reads pack headers)
    Index {
        /// Then rewrite all index objects as few (each under the size cap)
        /// and delete the ones replaced
        #[arg(long)]
        compact: bool,
    },
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Only this source (repeatable); no RTO is claimed for the whole
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Also write the drill report (Markdown) to this file
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Require the point-in-time check of the [wal] source (it runs by
    /// default when [wal] is configured): fail when it cannot run
    #[arg(long, conflicts_with = "no_point_in_time")]
    pub point_in_time: bool,
    /// Skip the point-in-time check (no marker row is written)
    #[arg(long)]
    pub no_point_in_time: bool,
    /// Ranged reads in flight from the repository
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub read_concurrency: Option<u16>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SyncArg {
    End,
    File,
    None,
}

impl From<SyncArg> for usdcop_dr::commands::restore::SyncMode {
    fn from(s: SyncArg) -> Self {
        use usdcop_dr::commands::restore::SyncMode;
        match s {
            SyncArg::End => SyncMode::End,
            SyncArg::File => SyncMode::File,
            SyncArg::None => SyncMode::None,
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Target average chunk size in bytes (power of two, 256 B … 4 MiB)
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk_avg_size: u32,
    /// zstd level for chunks (1 = fast … 19)
    #[arg(long, default_value_t = 3)]
    pub compression_level: i32,
    /// Pack files are closed at this size in bytes (1 MiB … 1 GiB)
    #[arg(long, default_value_t = 32 << 20)]
    pub pack_size: u32,
    /// Argon2id memory in KiB for the passphrase key (default 32768)
    #[arg(long, default_value_t = 32 * 1024, hide = true)]
    pub kdf_memory_kib: u32,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Files and directories (mode, owner, mtime, symlinks kept)
    Files {
        #[command(flatten)]
        common: BackupCommon,
        /// Files or directories to back up
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Whatever arrives on standard input, stored as one file
    Stdin {
        #[command(flatten)]
        common: BackupCommon,
        /// File name recorded for the stream (used on restore)
        #[arg(long)]
        stdin_name: String,
    },
    /// Objects of S3 buckets (MinIO, Garage, AWS): content, content type,
    /// user metadata; the buckets' store is configured apart from the
    /// repository's (--profile / --endpoint / --region)
    Bucket {
        #[command(flatten)]
        common: BackupCommon,
        #[command(flatten)]
        store: BucketStoreArgs,
        /// Bucket to back up (repeatable)
        #[arg(long = "bucket", required = true)]
        buckets: Vec<String>,
        /// Only keys starting with this prefix (repeatable; applies to every bucket)
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
    /// A PostgreSQL database: pg_dump (custom format, uncompressed) streamed
    /// into the repository, with exact row counts taken in the same snapshot
    Postgres {
        #[command(flatten)]
        common: BackupCommon,
        #[command(flatten)]
        pg: PgBackupArgs,
    },
    /// A physical base backup of a cluster that archives its WAL here
    /// (pg_basebackup, split into the data directory's files): the start
    /// of point-in-time recovery. Done only once its WAL is archived
    #[command(name = "postgres-base")]
    PostgresBase {
        #[command(flatten)]
        common: BackupCommon,
        #[command(flatten)]
        base: BaseBackupArgs,
    },
}

#[derive(Args, Debug)]
pub struct BaseBackupArgs {
    /// Cluster to back up (a replication connection is made; default: the
    /// `dsn` of the configuration's source named by --source). No password
    /// here: USDCOP_DR_PG_DSN, PGPASSWORD or ~/.pgpass
    #[arg(long, env = "USDCOP_DR_PG_DSN", hide_env_values = true)]
    pub dsn: Option<String>,
    /// pg_basebackup to run (default: one at least as new as the server)
    #[arg(long, value_name = "PATH")]
    pub pg_basebackup: Option<PathBuf>,
    /// How long to wait for the backup's WAL to reach the archive
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub wal_timeout: String,
    /// Wait for a spread checkpoint instead of requesting an immediate one
    #[arg(long)]
    pub spread_checkpoint: bool,
}

/// The store holding the buckets of `backup bucket` / `restore bucket`,
/// apart from the repository's (--s3-profile, --s3-endpoint). Keys come
/// from the profile or the AWS environment, never from flags.
#[derive(Args, Debug)]
pub struct BucketStoreArgs {
    /// AWS profile (~/.aws/config, ~/.aws/credentials) for the buckets'
    /// store: its keys, endpoint_url and region win over AWS_* variables
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Endpoint of the buckets' store (e.g. http://minio:9000); default:
    /// the profile's endpoint_url, else AWS_ENDPOINT_URL, else AWS
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Region of the buckets' store (default: the profile's, else the AWS chain's)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

#[derive(Args, Debug)]
pub struct PgBackupArgs {
    /// Database to dump: a URL or libpq key=value string, or a database
    /// name. No password here (argv is visible to every user): put a DSN
    /// with password in USDCOP_DR_PG_DSN, or use PGPASSWORD or ~/.pgpass
    #[arg(long, env = "USDCOP_DR_PG_DSN", hide_env_values = true)]
    pub dsn: String,
    /// pg_dump to run (default: one at least as new as the server)
    #[arg(long, value_name = "PATH")]
    pub pg_dump: Option<PathBuf>,
    /// Tables of at most this many rows also get a content checksum
    #[arg(long, default_value_t = 1_000_000)]
    pub checksum_max_rows: u64,
    /// Also store the cluster's roles and tablespaces (pg_dumpall
    /// --globals-only, without password hashes), for restores onto a fresh server
    #[arg(long)]
    pub globals: bool,
}

#[derive(Args, Debug)]
pub struct BackupCommon {
    /// Name of the source (e.g. config, pg-usdcop): retention and restore select by it
    #[arg(long)]
    pub source: String,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Record this snapshot time (RFC 3339) instead of now
    #[arg(long)]
    pub time: Option<String>,
    /// Record this host name instead of the machine's
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreArgs {
    #[command(subcommand)]
    pub mode: Option<RestoreCommand>,
    /// Snapshot id (or unique prefix) or `latest`
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// With `latest`: the latest of this source
    #[arg(long)]
    pub source: Option<String>,
    /// With `latest`: the latest snapshot of this kind (default: any kind)
    #[arg(long, value_enum)]
    pub kind: Option<SnapshotKind>,
    /// Directory to restore into
    #[arg(long, conflicts_with = "stdout", required_unless_present = "stdout")]
    pub target: Option<PathBuf>,
    /// Stream the snapshot's single file to stdout (of a `backup postgres
    /// --globals` snapshot: the dump; `--path globals.sql` for the roles)
    #[arg(long)]
    pub stdout: bool,
    /// Only restore these paths (as stored in the snapshot; repeatable)
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Ranged reads in flight from the repository (default: 32 for an S3
    /// repository, CPUs + 2 for a local one)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub read_concurrency: Option<u16>,
    /// How restored files reach the disk: end (one filesystem sync once
    /// all are in place), file (fsync each before it is renamed into
    /// place), none
    #[arg(long, value_enum, default_value = "end")]
    pub sync: SyncArg,
}

/// Snapshot kinds, as `snapshots` shows them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    Files,
    /// `backup stdin` (also accepted: stream)
    #[value(alias = "stream")]
    Stdin,
    Postgres,
    Bucket,
}

#[derive(Subcommand, Debug)]
pub enum RestoreCommand {
    /// Put a `backup bucket` snapshot's objects back into an S3 bucket
    /// (content, content type, user metadata; checked after upload)
    Bucket(RestoreBucketArgs),
    /// Restore a `backup postgres` snapshot into a database with
    /// pg_restore, then check every table against the snapshot's counts
    /// and checksums (exit 3 on any difference)
    Postgres(RestorePostgresArgs),
}

#[derive(Args, Debug)]
pub struct RestorePostgresArgs {
    /// Snapshot id (or unique prefix) or `latest`
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// With `latest`: the latest of this source
    #[arg(long)]
    pub source: Option<String>,
    /// Database to restore into (no password here: USDCOP_DR_PG_TARGET_DSN,
    /// PGPASSWORD or ~/.pgpass). With --point-in-time: where to restore
    /// the newest logical dump before TIME when no base backup covers it
    #[arg(long, env = "USDCOP_DR_PG_TARGET_DSN", hide_env_values = true)]
    pub target_dsn: Option<String>,
    /// Point-in-time recovery: `latest`, RFC 3339, or "YYYY-MM-DD HH:MM:SS"
    /// [zone] (default zone: the configuration's objectives.timezone). Needs
    /// --pgdata; restores the newest base backup before TIME and replays
    /// the archived WAL up to TIME
    #[arg(long, value_name = "TIME", requires = "pgdata")]
    pub point_in_time: Option<String>,
    /// With --point-in-time: the empty (or missing) data directory to write
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// With --point-in-time: start PostgreSQL, wait until recovery reaches
    /// the target, report the point reached, restart it with its own settings
    #[arg(long, requires = "point_in_time")]
    pub start: bool,
    /// With --point-in-time: the restored cluster's port (postgresql.auto.conf)
    #[arg(long, requires = "point_in_time")]
    pub port: Option<u16>,
    /// With --point-in-time: keep the backup's archive settings (for the
    /// cluster that becomes the primary); default: archive_mode = off
    #[arg(long, requires = "point_in_time")]
    pub keep_archiving: bool,
    /// With --start: leave the server stopped after the recovery
    #[arg(long, requires = "start")]
    pub no_restart: bool,
    /// With --start: how long the recovery may take
    #[arg(long, value_name = "DURATION", default_value = "4h")]
    pub recovery_timeout: String,
    /// Create the target database first (from template0, the dump's encoding)
    #[arg(long)]
    pub create: bool,
    /// Drop the snapshot's objects in the target before recreating them;
    /// without it a non-empty target is refused
    #[arg(long)]
    pub clean: bool,
    /// Parallel pg_restore jobs (the dump is staged on local disk first)
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// Where to stage the dump for --jobs > 1 (default: the temp directory)
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Skip ownership and privileges (for a scratch server without the roles)
    #[arg(long)]
    pub no_owner: bool,
    /// pg_restore to run (default: one at least as new as the dump's pg_dump)
    #[arg(long, value_name = "PATH")]
    pub pg_restore: Option<PathBuf>,
    /// First create the roles and tablespaces the snapshot holds (taken
    /// with `backup postgres --globals`); existing ones give warnings
    #[arg(long)]
    pub globals: bool,
    /// Ranged reads in flight from the repository (default: 32 for an S3
    /// repository, CPUs + 2 for a local one)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub read_concurrency: Option<u16>,
}

#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("into")
        .required(true)
        .args(["bucket", "map", "to_original_names"])
))]
pub struct RestoreBucketArgs {
    /// Snapshot id (or unique prefix) or `latest`
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// With `latest`: the latest of this source
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub store: BucketStoreArgs,
    /// Bucket to write into (may differ from the original); a snapshot of
    /// several buckets also needs --from-bucket
    #[arg(long, conflicts_with_all = ["map", "to_original_names"])]
    pub bucket: Option<String>,
    /// The snapshot's bucket to restore (with --bucket; repeatable with
    /// --to-original-names)
    #[arg(long, value_name = "BUCKET")]
    pub from_bucket: Vec<String>,
    /// Restore the snapshot's bucket SRC into bucket DST (repeatable; one
    /// source per target)
    #[arg(long, value_name = "SRC=DST", conflicts_with_all = ["from_bucket", "to_original_names"])]
    pub map: Vec<String>,
    /// Restore every bucket of the snapshot (or each --from-bucket) under
    /// its original name
    #[arg(long)]
    pub to_original_names: bool,
    /// Only objects whose key starts with this
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Replace existing objects that differ (default: leave them, report conflicts, exit 1)
    #[arg(long)]
    pub overwrite: bool,
    /// Where to spool objects over 16 MiB (a private directory is made
    /// there per run; default: the temp directory)
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Ranged reads in flight from the repository (default: 32 for an S3
    /// repository, CPUs + 2 for a local one)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub read_concurrency: Option<u16>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also download every pack and re-check every chunk
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download and re-check this percentage of packs (chosen at random)
    #[arg(long, value_name = "PERCENT")]
    pub read_data_subset: Option<f64>,
}
