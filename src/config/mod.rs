//! The configuration file (`usdcop-dr.toml`): parsed and checked into typed
//! settings before anything runs. Pure: text in, [`Settings`] or a
//! [`ConfigError`] naming file, line and key out; [`load`] is the one read.
//!
//! The keys are a contract (docs/OPERATIONS.md, `usdcop-dr.example.toml`):
//! `[repository] url endpoint profile password_file`, `[objectives] rpo rto
//! timezone`, `[metrics] textfile`, `[retention] policies grace min_age`,
//! `[[source]] name kind dsn globals endpoint profile buckets paths`,
//! `[wal] source`, `[drill] postgres_dsn bucket_endpoint profile bucket
//! scratch_dir`.
//! Unknown keys are errors, so a typo never silently drops a setting. Later
//! sections (drills, WAL) are new optional fields of [`RawFile`] with their
//! own typed settings.
//!
//! `locate` (spans to lines and dotted keys) and `duration` are shared
//! with the other files of settings people write (`policies/*.toml`, see
//! `crate::retention`), so that their errors and durations read the same.
//!
//! Secrets never live here: a key that looks like one (`password`,
//! `secret_access_key`, …), a DSN with `password=` or an endpoint URL with
//! `user:pass@` is an error saying where that secret goes instead.

pub(crate) mod locate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::format::snapshot::SourceKind;

pub(crate) use locate::Located;

/// Where the file is looked for when neither `--config` nor
/// `USDCOP_DR_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/usdcop-dr/usdcop-dr.toml";
/// The environment variable naming the file (as `--config` does).
pub const ENV_VAR: &str = "USDCOP_DR_CONFIG";
/// The RPO when `[objectives] rpo` is not set: one nightly run.
pub const DEFAULT_RPO: Duration = Duration::from_secs(24 * 3600);
/// `[retention] grace` when not set: 23 h, so that a nightly prune finds
/// the packs the previous night condemned past their grace (a day minus an
/// hour of slack for a run that starts a little earlier), well above the
/// lock TTL (docs/OPERATIONS.md, "Retention policies").
pub const DEFAULT_GRACE: Duration = Duration::from_secs(23 * 3600);
/// `[retention] min_age` when not set: snapshots younger are always kept.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);
/// `[retention] policies` when not set: this directory next to the file.
pub const DEFAULT_POLICIES_DIR: &str = "policies";

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file it came from (as given), for messages.
    pub file: PathBuf,
    pub repository: Option<RepositorySettings>,
    pub objectives: Objectives,
    pub metrics: Option<MetricsSettings>,
    pub retention: RetentionSettings,
    /// `[wal]`: the WAL archive (`wal-push`, `wal-fetch`).
    pub wal: Option<WalSettings>,
    /// `[drill]`: the scratch targets restore drills restore into.
    pub drill: Option<DrillSettings>,
    /// In file order: `backup --all` runs them in this order.
    pub sources: Vec<SourceSettings>,
}

/// `[drill]`: where `drill` restores to. Only scratch: the drill creates,
/// checks and removes its own database, bucket content and files there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillSettings {
    /// A scratch PostgreSQL server (libpq DSN without a password; its
    /// database is where the drill connects to create its own).
    pub postgres_dsn: Option<String>,
    /// A scratch S3 store for bucket sources.
    pub bucket_endpoint: Option<String>,
    pub profile: Option<String>,
    /// The scratch bucket (must be empty, or hold only a drill's leftovers).
    pub bucket: Option<String>,
    /// Files and staging (absolute).
    pub scratch_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySettings {
    /// A directory path, `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objectives {
    /// Recovery point objective: the newest snapshot of every source must
    /// be younger than this (`status`, the alert rules).
    pub rpo: Duration,
    /// Recovery time objective (recorded; restore drills will measure it).
    pub rto: Option<Duration>,
    /// For showing times to operators (IANA name, e.g. America/Bogota).
    pub timezone: chrono_tz::Tz,
}

impl Default for Objectives {
    fn default() -> Self {
        Objectives {
            rpo: DEFAULT_RPO,
            rto: None,
            timezone: chrono_tz::UTC,
        }
    }
}

/// `[wal]`: which configured PostgreSQL source the WAL archive is of,
/// and how `wal-push` / `wal-fetch` keep up (docs/OPERATIONS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// The name of a `[[source]]` of kind `postgres`.
    pub source: String,
    /// `async`: a background pusher pushes ready segments ahead of
    /// PostgreSQL's calls (default [`DEFAULT_WAL_ASYNC`]).
    pub async_push: bool,
    /// `push_parallel`: segments the background pusher uploads at once.
    pub push_parallel: usize,
    /// `prefetch`: segments `wal-fetch` fetches ahead of the one asked for.
    pub prefetch: usize,
}

/// `[wal] async` when not set: on. PostgreSQL calls archive_command once
/// per segment, serially; a background pusher with parallel uploads keeps
/// the archive lag bounded under write bursts, with the same guarantee (a
/// call exits 0 only once its file is durable in the store).
pub const DEFAULT_WAL_ASYNC: bool = true;
/// `[wal] push_parallel` when not set.
pub const DEFAULT_WAL_PUSH_PARALLEL: usize = 4;
/// `[wal] prefetch` when not set.
pub const DEFAULT_WAL_PREFETCH: usize = 8;
/// The largest `push_parallel` and `prefetch` accepted: each segment in
/// flight holds up to twice its size in memory.
pub const MAX_WAL_PARALLEL: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// node_exporter textfile collector file (`*.prom`).
    pub textfile: PathBuf,
}

/// `[retention]`: where the policies are and the ages prune respects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// The folder of policy files (`*.toml`); a relative path written in
    /// the file is resolved against the file's directory.
    pub policies: PathBuf,
    /// How long a condemned pack waits before a later prune deletes it.
    pub grace: Duration,
    /// Snapshots younger than this are always kept.
    pub min_age: Duration,
}

impl RetentionSettings {
    /// The defaults for a configuration file at `file`.
    pub fn defaults_for(file: &Path) -> Self {
        RetentionSettings {
            policies: file
                .parent()
                .unwrap_or(Path::new(""))
                .join(DEFAULT_POLICIES_DIR),
            grace: DEFAULT_GRACE,
            min_age: DEFAULT_MIN_AGE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    pub name: String,
    /// Line of its `name` key, for messages.
    pub line: usize,
    pub spec: SourceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Postgres {
        /// libpq DSN without a password.
        dsn: String,
        globals: bool,
    },
    Bucket {
        endpoint: Option<String>,
        profile: Option<String>,
        buckets: Vec<String>,
    },
    Files {
        paths: Vec<PathBuf>,
    },
}

impl SourceSpec {
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceSpec::Postgres { .. } => SourceKind::Postgres,
            SourceSpec::Bucket { .. } => SourceKind::Bucket,
            SourceSpec::Files { .. } => SourceKind::Files,
        }
    }
}

impl Settings {
    pub fn source(&self, name: &str) -> Option<&SourceSettings> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// Every configured source as (name, kind), in file order: what the
    /// retention policies are checked against.
    pub fn source_kinds(&self) -> Vec<(String, SourceKind)> {
        self.sources
            .iter()
            .map(|s| (s.name.clone(), s.spec.kind()))
            .collect()
    }
}

/// What is wrong with a configuration file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no line (the file cannot be read).
    pub line: usize,
    /// Dotted path of the key (`source[1].dsn`), when there is one.
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        let hint = e.hint.clone();
        let err = crate::Error::usage(e.to_string());
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

/// Read and check the file at `path`.
pub fn load(path: &Path) -> crate::Result<Settings> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        key: None,
        message: format!("cannot read the configuration file: {e}"),
        hint: Some(format!(
            "pass --config FILE or set {ENV_VAR}; without either, {DEFAULT_PATH} is read"
        )),
    })?;
    Ok(parse(&text, path)?)
}

// ---- the file as written --------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    repository: Option<RawRepository>,
    objectives: Option<RawObjectives>,
    metrics: Option<RawMetrics>,
    retention: Option<RawRetention>,
    wal: Option<RawWal>,
    drill: Option<RawDrill>,
    #[serde(default)]
    source: Vec<RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    postgres_dsn: Option<Spanned<String>>,
    bucket_endpoint: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    scratch_dir: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWal {
    source: Spanned<String>,
    #[serde(rename = "async")]
    async_push: Option<bool>,
    push_parallel: Option<Spanned<i64>>,
    prefetch: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    policies: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
    min_age: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    url: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectives {
    rpo: Option<Spanned<String>>,
    rto: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Spanned<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Postgres,
    Bucket,
    Files,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<RawKind>,
    dsn: Option<Spanned<String>>,
    globals: Option<Spanned<bool>>,
    endpoint: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    buckets: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
}

// ---- parse and check --------------------------------------------------------

/// Check `text` (the content of `file`) into settings.
pub fn parse(text: &str, file: &Path) -> Result<Settings, ConfigError> {
    let at = Located::new(text, file);
    // Parsed once untyped, with every key's place: to name the key of a
    // typed error, and to find secrets before any other complaint.
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        // What could be read still tells which key the error is at.
        let (partial, _) = toml::de::DeTable::parse_recoverable(text);
        at.toml_error(&e, Some(partial.get_ref()))
    })?;
    locate::find_secret(table.get_ref(), &at)?;
    let raw: RawFile =
        toml::from_str(text).map_err(|e| at.toml_error(&e, Some(table.get_ref())))?;
    check(raw, &at)
}

fn check(raw: RawFile, at: &Located<'_>) -> Result<Settings, ConfigError> {
    let repository = raw
        .repository
        .map(|r| check_repository(r, at))
        .transpose()?;
    let objectives = match raw.objectives {
        Some(o) => check_objectives(o, at)?,
        None => Objectives::default(),
    };
    let metrics = raw
        .metrics
        .map(|m| -> Result<_, ConfigError> {
            let p = absolute(&m.textfile, "metrics.textfile", at)?;
            if p.extension().and_then(|e| e.to_str()) != Some("prom") {
                return Err(at.error(
                    m.textfile.span(),
                    "metrics.textfile",
                    format!("{:?} does not end in .prom", m.textfile.get_ref()),
                    Some("node_exporter's textfile collector reads only *.prom files"),
                ));
            }
            Ok(MetricsSettings { textfile: p })
        })
        .transpose()?;
    let retention = match raw.retention {
        Some(r) => check_retention(r, at)?,
        None => RetentionSettings::defaults_for(at.file()),
    };
    let mut sources: Vec<SourceSettings> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in raw.source.into_iter().enumerate() {
        let key = |k: &str| format!("source[{i}].{k}");
        let name = s.name.get_ref().clone();
        let line = at.line(s.name.span().start);
        if let Err(e) = crate::commands::backup::validate_source_name(&name) {
            return Err(at.error(s.name.span(), &key("name"), e.message().to_owned(), None));
        }
        if let Some(first) = seen.insert(name.clone(), line) {
            return Err(at.error(
                s.name.span(),
                &key("name"),
                format!("duplicate source name {name:?} (first at line {first})"),
                Some("every [[source]] needs its own name: snapshots, status and metrics are per name"),
            ));
        }
        let spec = check_source(s, i, at)?;
        sources.push(SourceSettings { name, line, spec });
    }
    let wal = match raw.wal {
        None => None,
        Some(w) => {
            let name = w.source.get_ref().trim().to_owned();
            match sources.iter().find(|s| s.name == name) {
                Some(s) if s.spec.kind() == SourceKind::Postgres => Some(WalSettings {
                    source: name,
                    async_push: w.async_push.unwrap_or(DEFAULT_WAL_ASYNC),
                    push_parallel: wal_count(&w.push_parallel, "wal.push_parallel", 1, DEFAULT_WAL_PUSH_PARALLEL, at)?,
                    prefetch: wal_count(&w.prefetch, "wal.prefetch", 0, DEFAULT_WAL_PREFETCH, at)?,
                }),
                Some(s) => {
                    return Err(at.error(
                        w.source.span(),
                        "wal.source",
                        format!("source {name:?} is a {} source, not postgres", format!("{:?}", s.spec.kind()).to_lowercase()),
                        Some("name the [[source]] of kind \"postgres\" whose cluster archives its WAL here"),
                    ))
                }
                None => {
                    return Err(at.error(
                        w.source.span(),
                        "wal.source",
                        format!("no [[source]] is named {name:?}"),
                        Some("name the [[source]] of kind \"postgres\" whose cluster archives its WAL here"),
                    ))
                }
            }
        }
    };
    let drill = raw
        .drill
        .map(|d| check_drill(d, &sources, at))
        .transpose()?;
    Ok(Settings {
        file: at.file().to_owned(),
        repository,
        objectives,
        metrics,
        retention,
        wal,
        drill,
        sources,
    })
}

/// A `[wal]` count in `min..=MAX_WAL_PARALLEL`, or `default` when unset.
fn wal_count(
    v: &Option<Spanned<i64>>,
    key: &str,
    min: usize,
    default: usize,
    at: &Located<'_>,
) -> Result<usize, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let n = *v.get_ref();
    if n < min as i64 || n > MAX_WAL_PARALLEL as i64 {
        return Err(at.error(
            v.span(),
            key,
            format!("{n} is out of range {min}..={MAX_WAL_PARALLEL}"),
            Some("each segment in flight holds up to twice its size (16 MiB) in memory"),
        ));
    }
    Ok(n as usize)
}

fn check_drill(
    d: RawDrill,
    sources: &[SourceSettings],
    at: &Located<'_>,
) -> Result<DrillSettings, ConfigError> {
    let postgres_dsn = match &d.postgres_dsn {
        None => None,
        Some(v) => {
            let text = non_empty(v, "drill.postgres_dsn", at)?;
            if crate::postgres::Dsn::had_inline_password(&text) {
                return Err(at.error(
                    v.span(),
                    "drill.postgres_dsn",
                    "a secret written inline: the DSN carries a password".into(),
                    Some(locate::PG_SECRET_HINT),
                ));
            }
            // The scratch server must not be a production source: the
            // drill creates and drops databases there.
            let same = sources.iter().find(
                |s| matches!(&s.spec, SourceSpec::Postgres { dsn, .. } if dsn.trim() == text),
            );
            if let Some(s) = same {
                return Err(at.error(
                    v.span(),
                    "drill.postgres_dsn",
                    format!("is the DSN of source {:?}: a drill restores into scratch only", s.name),
                    Some("point it at a scratch server (or at least another database) the drill may create and drop databases on"),
                ));
            }
            Some(text)
        }
    };
    let bucket_endpoint = d
        .bucket_endpoint
        .as_ref()
        .map(|v| check_endpoint(v, "drill.bucket_endpoint", at))
        .transpose()?;
    let profile = d
        .profile
        .as_ref()
        .map(|v| non_empty(v, "drill.profile", at))
        .transpose()?;
    let bucket = match &d.bucket {
        None => None,
        Some(v) => {
            let name = non_empty(v, "drill.bucket", at)?;
            if name.contains('/') {
                return Err(at.error(
                    v.span(),
                    "drill.bucket",
                    format!("{name:?} is not a bucket name"),
                    None,
                ));
            }
            let production = sources.iter().find(|s| {
                matches!(&s.spec, SourceSpec::Bucket { buckets, .. } if buckets.contains(&name))
            });
            if let Some(s) = production {
                return Err(at.error(
                    v.span(),
                    "drill.bucket",
                    format!(
                        "{name:?} is a bucket of source {:?}: a drill restores into scratch only",
                        s.name
                    ),
                    Some("name a scratch bucket the drill may fill and empty"),
                ));
            }
            Some(name)
        }
    };
    let scratch_dir = absolute(&d.scratch_dir, "drill.scratch_dir", at)?;
    Ok(DrillSettings {
        postgres_dsn,
        bucket_endpoint,
        profile,
        bucket,
        scratch_dir,
    })
}

fn check_repository(r: RawRepository, at: &Located<'_>) -> Result<RepositorySettings, ConfigError> {
    let url = r.url.get_ref().trim().to_owned();
    let bad = |why: &str| {
        at.error(
            r.url.span(),
            "repository.url",
            format!("{:?} {why}", r.url.get_ref()),
            Some("use an absolute directory path, file:///path or s3://bucket/prefix"),
        )
    };
    if url.is_empty() {
        return Err(bad("is empty"));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        if rest.split('/').next().unwrap_or("").is_empty() {
            return Err(bad("names no bucket"));
        }
    } else if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("is not an absolute path"));
        }
    } else if url.contains("://") {
        return Err(bad("has an unknown scheme"));
    } else if !url.starts_with('/') {
        return Err(bad(
            "is a relative path (a cron job's working directory is not yours)",
        ));
    }
    let endpoint = r
        .endpoint
        .map(|e| check_endpoint(&e, "repository.endpoint", at))
        .transpose()?;
    let profile = r
        .profile
        .map(|p| non_empty(&p, "repository.profile", at))
        .transpose()?;
    let password_file = r
        .password_file
        .map(|p| absolute(&p, "repository.password_file", at))
        .transpose()?;
    Ok(RepositorySettings {
        url,
        endpoint,
        profile,
        password_file,
    })
}

fn check_objectives(o: RawObjectives, at: &Located<'_>) -> Result<Objectives, ConfigError> {
    let duration = |v: &Spanned<String>, key: &str| positive_duration(v, key, at);
    let rpo = o
        .rpo
        .as_ref()
        .map(|v| duration(v, "objectives.rpo"))
        .transpose()?
        .unwrap_or(DEFAULT_RPO);
    let rto = o
        .rto
        .as_ref()
        .map(|v| duration(v, "objectives.rto"))
        .transpose()?;
    let timezone = match &o.timezone {
        None => chrono_tz::UTC,
        Some(tz) => tz.get_ref().trim().parse::<chrono_tz::Tz>().map_err(|_| {
            at.error(
                tz.span(),
                "objectives.timezone",
                format!("{:?} is not an IANA time zone", tz.get_ref()),
                Some("write e.g. \"America/Bogota\" or \"UTC\""),
            )
        })?,
    };
    Ok(Objectives { rpo, rto, timezone })
}

fn check_retention(r: RawRetention, at: &Located<'_>) -> Result<RetentionSettings, ConfigError> {
    let mut out = RetentionSettings::defaults_for(at.file());
    if let Some(p) = &r.policies {
        let text = p.get_ref().trim();
        if text.is_empty() {
            return Err(at.error(
                p.span(),
                "retention.policies",
                "is empty".into(),
                Some("name the folder of policy files, or leave the key out for the `policies` folder next to this file"),
            ));
        }
        // Relative to this file's folder, not to the working directory
        // of whoever runs the command.
        out.policies = at.file().parent().unwrap_or(Path::new("")).join(text);
    }
    if let Some(g) = &r.grace {
        // "0s" is allowed: tests and small repositories reclaim at once.
        out.grace = duration(g, "retention.grace", at)?;
    }
    if let Some(m) = &r.min_age {
        out.min_age = duration(m, "retention.min_age", at)?;
    }
    Ok(out)
}

/// A duration as people write it in the files of settings ("24h", "30d",
/// "1d 12h", "90m", "0s"): humantime's syntax, one parser for the
/// configuration and the policies.
pub(crate) fn duration(
    v: &Spanned<String>,
    key: &str,
    at: &Located<'_>,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.get_ref().trim()).map_err(|e| {
        at.error(
            v.span(),
            key,
            format!("{:?} is not a duration: {e}", v.get_ref()),
            Some("write e.g. \"24h\", \"30d\", \"1d 12h\" or \"90m\""),
        )
    })
}

/// [`duration`], longer than zero.
pub(crate) fn positive_duration(
    v: &Spanned<String>,
    key: &str,
    at: &Located<'_>,
) -> Result<Duration, ConfigError> {
    let d = duration(v, key, at)?;
    if d.is_zero() {
        return Err(at.error(v.span(), key, "must be longer than zero".into(), None));
    }
    Ok(d)
}

/// A duration for people, short: "48h" when it is whole hours, else
/// humantime's form ("1h 30m", "0s").
pub fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(3600) && d.subsec_nanos() == 0 {
        format!("{}h", secs / 3600)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// A source key: its name, its place when written, the kinds that take it.
type KeyUse<'a> = (&'a str, Option<std::ops::Range<usize>>, &'a [RawKind]);

fn check_source(s: RawSource, i: usize, at: &Located<'_>) -> Result<SourceSpec, ConfigError> {
    let key = |k: &str| format!("source[{i}].{k}");
    let kind = *s.kind.get_ref();
    let kind_name = match kind {
        RawKind::Postgres => "postgres",
        RawKind::Bucket => "bucket",
        RawKind::Files => "files",
    };
    let takes = match kind {
        RawKind::Postgres => "dsn, globals",
        RawKind::Bucket => "buckets, endpoint, profile",
        RawKind::Files => "paths",
    };
    // Keys of other kinds: an error, not silently ignored.
    let present: [KeyUse<'_>; 6] = [
        (
            "dsn",
            s.dsn.as_ref().map(|v| v.span()),
            &[RawKind::Postgres],
        ),
        (
            "globals",
            s.globals.as_ref().map(|v| v.span()),
            &[RawKind::Postgres],
        ),
        (
            "endpoint",
            s.endpoint.as_ref().map(|v| v.span()),
            &[RawKind::Bucket],
        ),
        (
            "profile",
            s.profile.as_ref().map(|v| v.span()),
            &[RawKind::Bucket],
        ),
        (
            "buckets",
            s.buckets.as_ref().map(|v| v.span()),
            &[RawKind::Bucket],
        ),
        (
            "paths",
            s.paths.as_ref().map(|v| v.span()),
            &[RawKind::Files],
        ),
    ];
    for (k, span, kinds) in present {
        if let Some(span) = span {
            if !kinds.contains(&kind) {
                return Err(at.error(
                    span,
                    &key(k),
                    format!("a {kind_name} source does not take `{k}`"),
                    Some(format!("a {kind_name} source takes {takes}").as_str()),
                ));
            }
        }
    }
    let missing = |k: &str| {
        at.error(
            s.name.span(),
            &key(k),
            format!(
                "source {:?} (kind {kind_name}) needs `{k}`",
                s.name.get_ref()
            ),
            Some(format!("a {kind_name} source takes {takes}").as_str()),
        )
    };
    match kind {
        RawKind::Postgres => {
            let dsn = s.dsn.as_ref().ok_or_else(|| missing("dsn"))?;
            let text = dsn.get_ref().trim();
            if text.is_empty() {
                return Err(at.error(dsn.span(), &key("dsn"), "is empty".into(), None));
            }
            if crate::postgres::Dsn::had_inline_password(text) {
                return Err(at.error(
                    dsn.span(),
                    &key("dsn"),
                    "a secret written inline: the DSN carries a password".into(),
                    Some(locate::PG_SECRET_HINT),
                ));
            }
            Ok(SourceSpec::Postgres {
                dsn: text.to_owned(),
                globals: s.globals.map(|g| *g.get_ref()).unwrap_or(false),
            })
        }
        RawKind::Bucket => {
            let list = s.buckets.as_ref().ok_or_else(|| missing("buckets"))?;
            if list.get_ref().is_empty() {
                return Err(at.error(
                    list.span(),
                    &key("buckets"),
                    "is empty".into(),
                    Some("name at least one bucket"),
                ));
            }
            let mut buckets = Vec::new();
            for b in list.get_ref() {
                let name = b.get_ref().trim();
                if name.is_empty() || name.contains('/') {
                    return Err(at.error(
                        b.span(),
                        &key("buckets"),
                        format!("{:?} is not a bucket name", b.get_ref()),
                        None,
                    ));
                }
                buckets.push(name.to_owned());
            }
            Ok(SourceSpec::Bucket {
                endpoint: s
                    .endpoint
                    .as_ref()
                    .map(|e| check_endpoint(e, &key("endpoint"), at))
                    .transpose()?,
                profile: s
                    .profile
                    .as_ref()
                    .map(|p| non_empty(p, &key("profile"), at))
                    .transpose()?,
                buckets,
            })
        }
        RawKind::Files => {
            let list = s.paths.as_ref().ok_or_else(|| missing("paths"))?;
            if list.get_ref().is_empty() {
                return Err(at.error(
                    list.span(),
                    &key("paths"),
                    "is empty".into(),
                    Some("name at least one file or directory"),
                ));
            }
            let paths = list
                .get_ref()
                .iter()
                .map(|p| absolute(p, &key("paths"), at))
                .collect::<Result<_, _>>()?;
            Ok(SourceSpec::Files { paths })
        }
    }
}

fn non_empty(v: &Spanned<String>, key: &str, at: &Located<'_>) -> Result<String, ConfigError> {
    let t = v.get_ref().trim();
    if t.is_empty() {
        return Err(at.error(v.span(), key, "is empty".into(), None));
    }
    Ok(t.to_owned())
}

fn absolute(v: &Spanned<String>, key: &str, at: &Located<'_>) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(v.get_ref());
    if !p.is_absolute() {
        return Err(at.error(
            v.span(),
            key,
            format!("{:?} is not an absolute path", v.get_ref()),
            Some("cron and systemd run jobs from another directory: write the full path"),
        ));
    }
    Ok(p)
}

fn check_endpoint(v: &Spanned<String>, key: &str, at: &Located<'_>) -> Result<String, ConfigError> {
    let t = v.get_ref().trim();
    let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    else {
        return Err(at.error(
            v.span(),
            key,
            format!("{t:?} is not an http:// or https:// URL"),
            None,
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(at.error(
            v.span(),
            key,
            "a secret written inline: the URL carries credentials (user:password@)".into(),
            Some(locate::AWS_SECRET_HINT),
        ));
    }
    if authority.is_empty() {
        return Err(at.error(v.span(), key, format!("{t:?} names no host"), None));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests;
