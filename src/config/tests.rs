use std::path::Path;
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/usdcop-dr/test.toml";

fn ok(text: &str) -> Settings {
    parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, Path::new(FILE)) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e,
    }
}

/// The error's line, key and a piece of its message.
fn assert_err(e: &ConfigError, line: usize, key: &str, says: &str) {
    assert_eq!(e.file, Path::new(FILE), "{e}");
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert!(e.message.contains(says), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{FILE}:{line}: key `{key}`: ")),
        "{shown}"
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let s = ok(include_str!("../../usdcop-dr.example.toml"));
    let r = s.repository.as_ref().unwrap();
    assert_eq!(r.url, "s3://usdcop-dr-offsite/prod");
    assert_eq!(r.profile.as_deref(), Some("offsite"));
    assert_eq!(
        r.password_file.as_deref(),
        Some(Path::new("/etc/usdcop-dr/passphrase"))
    );
    assert_eq!(s.objectives.rpo, Duration::from_secs(24 * 3600));
    assert_eq!(s.objectives.rto, Some(Duration::from_secs(4 * 3600)));
    assert_eq!(s.objectives.timezone, chrono_tz::America::Bogota);
    assert_eq!(
        s.metrics.unwrap().textfile,
        Path::new("/var/lib/node_exporter/textfile/usdcop_dr.prom")
    );
    let names: Vec<_> = s.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pg-usdcop", "minio-raw", "config"]);
    assert_eq!(
        s.sources[0].spec,
        SourceSpec::Postgres {
            dsn: "dbname=usdcop_trading".into(),
            globals: true
        }
    );
    assert_eq!(
        s.sources[1].spec,
        SourceSpec::Bucket {
            endpoint: Some("http://minio:9000".into()),
            profile: Some("minio".into()),
            buckets: vec![
                "00-raw-usdcop-marketdata".into(),
                "01-l1-ds-usdcop-standardize".into()
            ],
        }
    );
    match &s.sources[2].spec {
        SourceSpec::Files { paths } => assert_eq!(paths.len(), 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_when_sections_are_left_out() {
    let s = ok("[[source]]\nname = \"etc\"\nkind = \"files\"\npaths = [\"/etc/hosts\"]\n");
    assert_eq!(s.repository, None);
    assert_eq!(s.metrics, None);
    assert_eq!(s.objectives, Objectives::default());
    assert_eq!(s.objectives.rpo, DEFAULT_RPO);
    assert_eq!(s.sources[0].line, 2);
    assert_eq!(ok("").sources.len(), 0);
}

#[test]
fn an_unknown_key_names_its_line_and_key() {
    let e = err("[repository]\nurl = \"/srv/repo\"\nendpont = \"http://x\"\n");
    assert_err(&e, 3, "repository.endpont", "unknown field `endpont`");
    let e = err(
        "[[source]]\nname = \"a\"\nkind = \"files\"\npaths = [\"/a\"]\n\n[[source]]\nname = \"b\"\nkind = \"files\"\npath = [\"/b\"]\n",
    );
    assert_err(&e, 9, "source[1].path", "unknown field `path`");
    // A section of a later version (or a typo of one): not ignored.
    let e = err("[drills]\nevery = \"7d\"\n");
    assert_eq!(e.line, 1, "{e}");
    assert_eq!(e.key.as_deref(), Some("drills"), "{e}");
    assert!(e.message.contains("unknown field `drills`"), "{e}");
    // Retention rules live in the policy files, not here.
    let e = err("[retention]\nkeep_daily = 7\n");
    assert_err(&e, 2, "retention.keep_daily", "unknown field `keep_daily`");
}

#[test]
fn a_wrong_type_names_its_line_and_key() {
    let e = err(
        "[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = \"dbname=x\"\nglobals = \"yes\"\n",
    );
    assert_err(&e, 5, "source[0].globals", "invalid type");
    let e = err("[objectives]\nrpo = 24\n");
    assert_err(&e, 2, "objectives.rpo", "invalid type");
    let e = err("[[source]]\nname = \"b\"\nkind = \"bucket\"\nbuckets = \"one\"\n");
    assert_err(&e, 4, "source[0].buckets", "invalid type");
    let e = err("[[source]]\nname = \"x\"\nkind = \"mysql\"\n");
    assert_err(&e, 3, "source[0].kind", "unknown variant `mysql`");
    let e = err("repository = \"s3://x\"\n");
    assert_err(&e, 1, "repository", "invalid type");
}

#[test]
fn a_duplicate_source_name_names_both_lines() {
    let e = err(
        "[[source]]\nname = \"cfg\"\nkind = \"files\"\npaths = [\"/a\"]\n[[source]]\nname = \"cfg\"\nkind = \"files\"\npaths = [\"/b\"]\n",
    );
    assert_err(
        &e,
        6,
        "source[1].name",
        "duplicate source name \"cfg\" (first at line 2)",
    );
}

#[test]
fn secrets_written_inline_are_refused_with_where_they_go() {
    let e = err("[repository]\nurl = \"/srv/repo\"\npassword = \"hunter2\"\n");
    assert_err(&e, 3, "repository.password", "a secret written inline");
    assert!(
        e.hint.as_deref().unwrap().contains("password_file"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");

    let e = err("[repository]\nurl = \"s3://b/p\"\naws_secret_access_key = \"abc\"\n");
    assert_err(
        &e,
        3,
        "repository.aws_secret_access_key",
        "a secret written inline",
    );
    assert!(e.hint.as_deref().unwrap().contains("AWS profile"), "{e:?}");

    let e = err(
        "[[source]]\nname = \"m\"\nkind = \"bucket\"\nbuckets = [\"b\"]\naccess_key = \"AKIA\"\n",
    );
    assert_err(&e, 5, "source[0].access_key", "a secret written inline");
    assert!(e.hint.as_deref().unwrap().contains("AWS profile"), "{e:?}");

    let e = err(
        "[[source]]\nname = \"pg\"\nkind = \"postgres\"\nPassword = \"x\"\ndsn = \"dbname=x\"\n",
    );
    assert_err(&e, 4, "source[0].Password", "a secret written inline");
    assert!(e.hint.as_deref().unwrap().contains("pgpass"), "{e:?}");

    // The secret is found before anything else is said about the file.
    let e = err("[metrics]\ntextfile = 3\n[repository]\nurl = \"/r\"\npassphrase = \"x\"\n");
    assert_err(&e, 5, "repository.passphrase", "a secret written inline");

    for dsn in [
        "dbname=x password=hunter2",
        "postgresql://u:hunter2@db/x",
        "host=db dbname=x sslpassword=k",
    ] {
        let e = err(&format!(
            "[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = {dsn:?}\n"
        ));
        assert_err(&e, 4, "source[0].dsn", "the DSN carries a password");
        assert!(
            e.hint.as_deref().unwrap().contains("peer authentication"),
            "{e:?}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    let e = err("[[source]]\nname = \"m\"\nkind = \"bucket\"\nendpoint = \"http://ak:sk@minio:9000\"\nbuckets = [\"b\"]\n");
    assert_err(&e, 4, "source[0].endpoint", "carries credentials");
    let e = err("[repository]\nurl = \"s3://b/p\"\nendpoint = \"https://ak:sk@s3.example\"\n");
    assert_err(&e, 3, "repository.endpoint", "carries credentials");
    // password_file names a file: not a secret.
    ok("[repository]\nurl = \"/r\"\npassword_file = \"/etc/usdcop-dr/passphrase\"\n");
}

#[test]
fn keys_of_another_kind_and_missing_keys_are_errors() {
    let e = err(
        "[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = \"dbname=x\"\npaths = [\"/x\"]\n",
    );
    assert_err(
        &e,
        5,
        "source[0].paths",
        "a postgres source does not take `paths`",
    );
    let e = err("[[source]]\nname = \"pg\"\nkind = \"postgres\"\n");
    assert_err(&e, 2, "source[0].dsn", "needs `dsn`");
    let e = err("[[source]]\nname = \"b\"\nkind = \"bucket\"\nbuckets = []\n");
    assert_err(&e, 4, "source[0].buckets", "is empty");
    let e = err("[[source]]\nname = \"f\"\nkind = \"files\"\npaths = [\"relative/x\"]\n");
    assert_err(&e, 4, "source[0].paths", "not an absolute path");
    let e = err("[[source]]\nkind = \"files\"\npaths = [\"/x\"]\n");
    assert_eq!(e.line, 1, "{e}");
    assert!(e.message.contains("missing field `name`"), "{e}");
    let e = err("[[source]]\nname = \"no spaces\"\nkind = \"files\"\npaths = [\"/x\"]\n");
    assert_err(&e, 2, "source[0].name", "invalid source name");
}

#[test]
fn values_are_checked() {
    let e = err("[objectives]\nrpo = \"a day\"\n");
    assert_err(&e, 2, "objectives.rpo", "not a duration");
    let e = err("[objectives]\nrpo = \"0s\"\n");
    assert_err(&e, 2, "objectives.rpo", "longer than zero");
    let e = err("[objectives]\ntimezone = \"America/Medellin\"\n");
    assert_err(&e, 2, "objectives.timezone", "not an IANA time zone");
    let e = err("[metrics]\ntextfile = \"/var/lib/node_exporter/usdcop_dr.txt\"\n");
    assert_err(&e, 2, "metrics.textfile", "does not end in .prom");
    let e = err("[repository]\nurl = \"repo\"\n");
    assert_err(&e, 2, "repository.url", "relative path");
    let e = err("[repository]\nurl = \"ftp://x/y\"\n");
    assert_err(&e, 2, "repository.url", "unknown scheme");
    let e = err("[repository]\nurl = \"s3:///prefix\"\n");
    assert_err(&e, 2, "repository.url", "names no bucket");
    let s = ok("[objectives]\nrpo = \"36h\"\nrto = \"90m\"\ntimezone = \"UTC\"\n");
    assert_eq!(s.objectives.rpo, Duration::from_secs(36 * 3600));
    assert_eq!(s.objectives.rto, Some(Duration::from_secs(90 * 60)));
}

#[test]
fn a_duplicate_key_names_its_line_and_key() {
    let e = err("[repository]\nurl = \"/r\"\nurl = \"/s\"\n");
    assert_eq!(e.line, 3, "{e}");
    assert!(e.message.contains("duplicate key"), "{e}");
    assert_eq!(e.key.as_deref(), Some("repository.url"), "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:3: ")), "{e}");
    let e = err("[repository]\nurl = \"/r\"\n\n[repository]\nurl = \"/s\"\n");
    assert_eq!(e.line, 4, "{e}");
    assert_eq!(e.key.as_deref(), Some("repository"), "{e}");
}

#[test]
fn a_syntax_error_names_its_line() {
    let e = err("[repository]\nurl = \"/r\"\n\n[[source]\nname = \"x\"\n");
    assert_eq!(e.line, 4, "{e}");
    assert!(e.to_string().starts_with(&format!("{FILE}:4: ")), "{e}");
}

#[test]
fn a_config_error_is_a_usage_error_with_its_hint() {
    let e: crate::Error = err("[repository]\nurl = \"/r\"\npassword = \"x\"\n").into();
    assert_eq!(e.exit_code(), 2);
    assert!(e.hint().unwrap().contains("password_file"));
    assert!(e.to_string().starts_with(FILE));
}

#[test]
fn retention_defaults_next_to_the_file() {
    let s = ok("");
    assert_eq!(s.retention.policies, Path::new("/etc/usdcop-dr/policies"));
    assert_eq!(s.retention.grace, DEFAULT_GRACE);
    assert_eq!(s.retention.grace, Duration::from_secs(23 * 3600));
    assert_eq!(s.retention.min_age, Duration::from_secs(3600));
    let s = ok(include_str!("../../usdcop-dr.example.toml"));
    assert_eq!(s.retention.policies, Path::new("/etc/usdcop-dr/policies"));
    assert_eq!(s.retention.grace, DEFAULT_GRACE);
}

#[test]
fn retention_keys_are_read_and_checked() {
    let s = ok("[retention]\npolicies = \"rules/prod\"\ngrace = \"0s\"\nmin_age = \"90m\"\n");
    assert_eq!(s.retention.policies, Path::new("/etc/usdcop-dr/rules/prod"));
    assert_eq!(s.retention.grace, Duration::ZERO);
    assert_eq!(s.retention.min_age, Duration::from_secs(90 * 60));
    let s = ok("[retention]\npolicies = \"/srv/policies\"\n");
    assert_eq!(s.retention.policies, Path::new("/srv/policies"));
    // A relative configuration path stays relative to its own folder.
    let s = parse("[retention]\npolicies = \"p\"\n", Path::new("conf/x.toml")).unwrap();
    assert_eq!(s.retention.policies, Path::new("conf/p"));
    let e = err("[retention]\ngrace = \"soon\"\n");
    assert_err(&e, 2, "retention.grace", "is not a duration");
    let e = err("[retention]\n\nmin_age = 3600\n");
    assert_err(&e, 3, "retention.min_age", "invalid type");
    let e = err("[retention]\npolicies = \"  \"\n");
    assert_err(&e, 2, "retention.policies", "is empty");
}

#[test]
fn duration_text_is_short() {
    assert_eq!(duration_text(Duration::from_secs(48 * 3600)), "48h");
    assert_eq!(duration_text(Duration::from_secs(90 * 60)), "1h 30m");
    assert_eq!(duration_text(Duration::ZERO), "0s");
}

#[test]
fn wal_section_names_a_postgres_source() {
    let base = "[repository]\nurl = \"/srv/repo\"\n\n[[source]]\nname = \"trading\"\nkind = \"postgres\"\ndsn = \"postgresql://backup@db/trading\"\n\n[[source]]\nname = \"etc\"\nkind = \"files\"\npaths = [\"/etc\"]\n";
    let s = ok(&format!("{base}\n[wal]\nsource = \"trading\"\n"));
    let w = s.wal.unwrap();
    assert_eq!(w.source, "trading");
    assert_eq!(
        (w.async_push, w.push_parallel, w.prefetch),
        (true, 4, 8),
        "defaults"
    );
    let w = ok(&format!(
        "{base}\n[wal]\nsource = \"trading\"\nasync = false\npush_parallel = 2\nprefetch = 0\n"
    ))
    .wal
    .unwrap();
    assert_eq!((w.async_push, w.push_parallel, w.prefetch), (false, 2, 0));
    let e = err(&format!(
        "{base}\n[wal]\nsource = \"trading\"\npush_parallel = 0\n"
    ));
    assert_err(&e, 16, "wal.push_parallel", "out of range");
    let e = err(&format!(
        "{base}\n[wal]\nsource = \"trading\"\nprefetch = 99\n"
    ));
    assert_err(&e, 16, "wal.prefetch", "out of range");
    assert!(ok(base).wal.is_none());
    let e = err(&format!("{base}\n[wal]\nsource = \"etc\"\n"));
    assert_err(&e, 15, "wal.source", "not postgres");
    let e = err(&format!("{base}\n[wal]\nsource = \"nope\"\n"));
    assert_err(&e, 15, "wal.source", "no [[source]] is named");
    let e = err(&format!(
        "{base}\n[wal]\nsource = \"trading\"\nspool = \"/x\"\n"
    ));
    assert!(e.to_string().contains("spool"), "{e}");
}

#[test]
fn drill_targets() {
    let base = "[[source]]\nname = \"trading\"\nkind = \"postgres\"\ndsn = \"host=/var/run/postgresql dbname=usdcop_trading\"\n\n\
                [[source]]\nname = \"minio\"\nkind = \"bucket\"\nbuckets = [\"00-raw-usdcop-marketdata\"]\n\n";
    let s = ok(&format!(
        "{base}[drill]\npostgres_dsn = \"host=scratch-db dbname=postgres\"\nbucket_endpoint = \"http://scratch-s3:9000\"\n\
         profile = \"drill\"\nbucket = \"usdcop-dr-drill\"\nscratch_dir = \"/var/tmp/usdcop-dr-drill\"\n"
    ));
    let d = s.drill.unwrap();
    assert_eq!(
        d.postgres_dsn.as_deref(),
        Some("host=scratch-db dbname=postgres")
    );
    assert_eq!(d.bucket_endpoint.as_deref(), Some("http://scratch-s3:9000"));
    assert_eq!(d.profile.as_deref(), Some("drill"));
    assert_eq!(d.bucket.as_deref(), Some("usdcop-dr-drill"));
    assert_eq!(d.scratch_dir, Path::new("/var/tmp/usdcop-dr-drill"));
    // Only scratch_dir is required.
    let s = ok("[drill]\nscratch_dir = \"/var/tmp/d\"\n");
    assert_eq!(s.drill.unwrap().postgres_dsn, None);
    // 10 lines of sources before [drill] (line 11), its keys from line 12.
    assert_err(
        &err(&format!(
            "{base}[drill]\npostgres_dsn = \"host=x password=hunter2\"\nscratch_dir = \"/d\"\n"
        )),
        12,
        "drill.postgres_dsn",
        "secret",
    );
    assert_err(
        &err(&format!(
            "{base}[drill]\npostgres_dsn = \"host=/var/run/postgresql dbname=usdcop_trading\"\nscratch_dir = \"/d\"\n"
        )),
        12,
        "drill.postgres_dsn",
        "scratch only",
    );
    assert_err(
        &err(&format!(
            "{base}[drill]\nbucket = \"00-raw-usdcop-marketdata\"\nscratch_dir = \"/d\"\n"
        )),
        12,
        "drill.bucket",
        "scratch only",
    );
    assert_err(
        &err(&format!("{base}[drill]\nscratch_dir = \"relative/dir\"\n")),
        12,
        "drill.scratch_dir",
        "absolute",
    );
    assert_err(
        &err(&format!(
            "{base}[drill]\nbucket_endpoint = \"http://k:s@h:9000\"\nscratch_dir = \"/d\"\n"
        )),
        12,
        "drill.bucket_endpoint",
        "secret",
    );
    assert_err(
        &err(&format!(
            "{base}[drill]\nscratch_dir = \"/d\"\nbuckets = \"x\"\n"
        )),
        13,
        "drill.buckets",
        "unknown",
    );
}
