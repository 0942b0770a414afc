//! Policy files, the policy function and its report. Deadlines: nextest's
//! (.config/nextest.toml); every test here is pure and quick.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use proptest::prelude::*;

use super::evaluate::{before, Bucket};
use super::policy::{glob_match, parse_file};
use super::*;
use crate::format::snapshot::SourceKind;
use crate::format::Id;

const DIR: &str = "/etc/usdcop-dr/policies";

fn file(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

fn sources(list: &[(&str, SourceKind)]) -> Vec<(String, SourceKind)> {
    list.iter().map(|(n, k)| (n.to_string(), *k)).collect()
}

/// The sources of the shipped example configuration.
fn example_sources() -> Vec<(String, SourceKind)> {
    crate::config::parse(
        include_str!("../../usdcop-dr.example.toml"),
        Path::new("/etc/usdcop-dr/usdcop-dr.toml"),
    )
    .unwrap()
    .source_kinds()
}

fn parse_set(
    files: &[(&str, &str)],
    srcs: &[(String, SourceKind)],
) -> Result<PolicySet, PolicyError> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (file(n), t.to_string()))
        .collect();
    PolicySet::parse(Path::new(DIR), &files, srcs)
}

fn one(text: &str) -> Policy {
    let mut v = parse_file(text, &file("p.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn err(text: &str) -> PolicyError {
    match parse_file(text, &file("p.toml")) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e,
    }
}

/// The error's file, line, key and a piece of its message.
fn assert_err(e: &PolicyError, name: &str, line: usize, key: &str, says: &str) {
    assert_eq!(e.file, file(name), "{e}");
    assert_eq!(e.line, line, "{e}");
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert!(e.message.contains(says), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{DIR}/{name}:{line}: key `{key}`: ")),
        "{e}"
    );
}

// ---- policy files -----------------------------------------------------------

#[test]
fn the_shipped_policies_cover_the_example_sources_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let srcs = example_sources();
    let set = load(&dir, &srcs).unwrap_or_else(|e| panic!("{e}: {:?}", e.hint()));
    assert_eq!(set.covered(&srcs), 3);
    let of = |n: &str, k| set.policy_for(n, k).unwrap();
    let db = of("pg-usdcop", SourceKind::Postgres);
    assert!(db.file.ends_with("database.toml"), "{db:?}");
    assert_eq!(db.rules.keep_within, Some(Duration::from_secs(48 * 3600)));
    assert_eq!(db.rules.keep_daily, Some(Count::N(30)));
    assert_eq!(db.rules.keep_weekly, Some(Count::N(12)));
    assert_eq!(db.rules.keep_monthly, Some(Count::N(24)));
    assert_eq!(db.rules.keep_yearly, Some(Count::N(7)));
    let raw = of("minio-raw", SourceKind::Bucket);
    assert!(raw.file.ends_with("buckets.toml"), "{raw:?}");
    assert_eq!(raw.rules.keep_daily, Some(Count::N(14)));
    let cfg = of("config", SourceKind::Files);
    assert!(cfg.file.ends_with("files.toml"), "{cfg:?}");
    assert_eq!(cfg.rules.keep_daily, Some(Count::N(90)));
    assert_eq!(cfg.rules.keep_yearly, Some(Count::All));
    // Files are read sorted by name.
    let files: Vec<_> = set
        .policies
        .iter()
        .map(|p| p.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
}

#[test]
fn the_issues_shape_parses() {
    let p = one(
        "# policies/database.toml\n[[policy]]\nsources = [\"pg-usdcop\"]          # names or globs\nkinds = [\"postgres\"]\nkeep_within = \"48h\"\nkeep_daily = 30\nkeep_weekly = 12\nkeep_monthly = 24\nkeep_yearly = 7\n",
    );
    assert_eq!(p.name, "p.toml#1");
    assert_eq!(p.line, 3);
    assert_eq!(p.index, 0);
    assert_eq!(p.kinds, [SourceKind::Postgres]);
    assert!(p.covers("pg-usdcop", SourceKind::Postgres));
    assert!(!p.covers("pg-usdcop", SourceKind::Files));
    assert!(!p.covers("pg-other", SourceKind::Postgres));
    assert_eq!(p.rules.keep_last, None);
    assert_eq!(p.rules.keep_daily, Some(Count::N(30)));
    let p = one(
        "[[policy]]\nname = \"everything\"\nsources = [\"*\"]\nkeep_last = \"all\"\nkeep_hourly = 0\nkeep_tags = [\"release\"]\npitr_window = \"7d\"\n",
    );
    assert_eq!(p.name, "everything");
    assert!(p.kinds.is_empty());
    assert!(p.covers("anything", SourceKind::Wal));
    assert_eq!(p.rules.keep_last, Some(Count::All));
    assert_eq!(p.rules.keep_hourly, Some(Count::N(0)));
    assert_eq!(p.rules.keep_tags, ["release"]);
    assert_eq!(p.rules.pitr_window, Some(Duration::from_secs(7 * 86400)));
    // Policies serialise with their durations and counts as written.
    let v = serde_json::to_value(&p.rules).unwrap();
    assert_eq!(v["keep_last"], "all");
    assert_eq!(v["keep_hourly"], 0);
    assert_eq!(v["pitr_window"], "168h");
    // Several policies in a file: default names count from 1.
    let v = parse_file(
        "[[policy]]\nsources = [\"a\"]\nkeep_last = 1\n\n[[policy]]\nsources = [\"b\"]\nkeep_last = 2\n",
        &file("two.toml"),
    )
    .unwrap();
    assert_eq!(v[1].name, "two.toml#2");
    assert_eq!((v[1].line, v[1].index), (6, 1));
}

#[test]
fn unknown_keys_and_wrong_types_name_file_line_and_key() {
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_daly = 7\n");
    assert_err(
        &e,
        "p.toml",
        3,
        "policy[0].keep_daly",
        "unknown field `keep_daly`",
    );
    assert!(
        e.hint.as_deref().unwrap().contains("policies/README.md"),
        "{e:?}"
    );
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_last = 1\n[[policy]]\nsources = [\"b\"]\nkeep_daily = 1.5\n");
    assert_err(
        &e,
        "p.toml",
        6,
        "policy[1].keep_daily",
        "invalid type: float",
    );
    let e = err("[[policy]]\nsources = \"a\"\nkeep_last = 1\n");
    assert_err(&e, "p.toml", 2, "policy[0].sources", "invalid type");
    let e = err("[[policy]]\nsources = [\"a\"]\nkinds = [\"mysql\"]\nkeep_last = 1\n");
    assert_err(
        &e,
        "p.toml",
        3,
        "policy[0].kinds",
        "unknown variant `mysql`",
    );
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_within = 48\n");
    assert_err(&e, "p.toml", 3, "policy[0].keep_within", "invalid type");
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_weekly = \"many\"\n");
    assert_err(&e, "p.toml", 3, "policy[0].keep_weekly", "is not a count");
    let e = err("[policy]\nsources = [\"a\"]\n");
    assert_eq!(e.line, 1, "{e}");
    let e = err("# nothing here\n");
    assert!(e.message.contains("no [[policy]]"), "{e}");
    let e = err("[[policy]]\nsources = [\"a\"\n");
    assert_eq!(e.file, file("p.toml"), "{e}");
}

#[test]
fn bad_values_name_file_line_and_key() {
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_daily = -3\n");
    assert_err(&e, "p.toml", 3, "policy[0].keep_daily", "negative count -3");
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_monthly = 99999999999\n");
    assert_err(&e, "p.toml", 3, "policy[0].keep_monthly", "too large");
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_within = \"2 fortnights\"\n");
    assert_err(
        &e,
        "p.toml",
        3,
        "policy[0].keep_within",
        "is not a duration",
    );
    let e = err("[[policy]]\nsources = [\"a\"]\npitr_window = \"0s\"\n");
    assert_err(&e, "p.toml", 3, "policy[0].pitr_window", "longer than zero");
    let e = err("[[policy]]\nsources = [\"pg/*\"]\nkeep_last = 1\n");
    assert_err(&e, "p.toml", 2, "policy[0].sources", "'/' is not allowed");
    let e = err("[[policy]]\nsources = [\"[ab]\"]\nkeep_last = 1\n");
    assert_err(
        &e,
        "p.toml",
        2,
        "policy[0].sources",
        "not a source name or glob",
    );
    let e = err("[[policy]]\nsources = []\nkeep_last = 1\n");
    assert_err(&e, "p.toml", 2, "policy[0].sources", "is empty");
    let e = err("[[policy]]\nsources = [\"a\"]\nkinds = []\nkeep_last = 1\n");
    assert_err(&e, "p.toml", 3, "policy[0].kinds", "is empty");
    let e = err("[[policy]]\nsources = [\"a\"]\nkeep_tags = [\"\"]\n");
    assert_err(&e, "p.toml", 3, "policy[0].keep_tags", "empty tag");
    let e = err("[[policy]]\nname = \"x\"\nsources = [\"a\"]\nkeep_last = 1\n[[policy]]\nname = \"x\"\nsources = [\"b\"]\nkeep_last = 1\n");
    assert_err(&e, "p.toml", 7, "policy[1].name", "duplicate policy name");
}

#[test]
fn a_policy_that_keeps_nothing_is_refused() {
    for rules in ["", "keep_daily = 0\nkeep_last = 0\n", "keep_tags = []\n"] {
        let e = err(&format!("\n[[policy]]\nsources = [\"a\"]\n{rules}"));
        assert_err(&e, "p.toml", 3, "policy[0]", "keeps nothing");
    }
    // keep_last = 1 keeps the newest on purpose.
    one("[[policy]]\nsources = [\"a\"]\nkeep_last = 1\n");
}

#[test]
fn policies_are_checked_against_the_configured_sources() {
    let srcs = sources(&[
        ("pg-usdcop", SourceKind::Postgres),
        ("config", SourceKind::Files),
    ]);
    let db = "[[policy]]\nsources = [\"pg-*\"]\nkinds = [\"postgres\"]\nkeep_daily = 30\n";
    let files = "[[policy]]\nsources = [\"config\"]\nkeep_daily = 90\n";
    let set = parse_set(&[("a.toml", db), ("b.toml", files)], &srcs).unwrap();
    assert_eq!(set.policies.len(), 2);
    assert_eq!(set.covered(&srcs), 2);

    // A policy that matches no configured source.
    let typo = "[[policy]]\nsources = [\"confg\"]\nkeep_daily = 90\n";
    let e = parse_set(
        &[("a.toml", db), ("b.toml", files), ("c.toml", typo)],
        &srcs,
    )
    .unwrap_err();
    assert_err(
        &e,
        "c.toml",
        2,
        "policy[0].sources",
        "names a source that is not configured",
    );
    assert!(e.message.contains("pg-usdcop (postgres)"), "{e}");
    // Right name, wrong kind: matches nothing either.
    let kind = "[[policy]]\nsources = [\"config\"]\nkinds = [\"bucket\"]\nkeep_daily = 90\n";
    let e = parse_set(
        &[("a.toml", db), ("b.toml", files), ("c.toml", kind)],
        &srcs,
    )
    .unwrap_err();
    assert_err(
        &e,
        "c.toml",
        2,
        "policy[0].sources",
        "names a source that is not configured",
    );

    // A policy of globs only may match nothing (the shipped folder has
    // one per kind; a site without buckets keeps buckets.toml).
    let none = "[[policy]]\nsources = [\"*\"]\nkinds = [\"bucket\"]\nkeep_daily = 9\n";
    let set = parse_set(
        &[("a.toml", db), ("b.toml", files), ("c.toml", none)],
        &srcs,
    )
    .unwrap();
    assert_eq!(set.covered(&srcs), 2);

    // Two policies claiming one source: both named with file and line.
    let all = "# every source\n\n[[policy]]\nsources = [\"*\"]\nkeep_last = 5\n";
    let e = parse_set(&[("a.toml", db), ("b.toml", files), ("z.toml", all)], &srcs).unwrap_err();
    assert_err(
        &e,
        "z.toml",
        4,
        "policy[0].sources",
        "claimed by two policies",
    );
    assert!(e.message.contains(&format!("{DIR}/a.toml:2")), "{e}");
    assert!(e.message.contains(&format!("{DIR}/z.toml:4")), "{e}");

    // A configured source no policy covers: named, with the folder.
    let e = parse_set(&[("a.toml", db)], &srcs).unwrap_err();
    assert_eq!(e.file, Path::new(DIR), "{e}");
    assert!(
        e.message
            .contains("source \"config\" (files) is covered by no policy"),
        "{e}"
    );
    assert!(
        e.hint.as_deref().unwrap().contains("kinds = [\"files\"]"),
        "{e:?}"
    );
}

#[test]
fn load_reads_only_toml_files_sorted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "not a policy").unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "[[policy]]\nsources = [\"b\"]\nkeep_last = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[[policy]]\nsources = [\"a\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let srcs = sources(&[("a", SourceKind::Files), ("b", SourceKind::Stdin)]);
    let set = load(dir.path(), &srcs).unwrap();
    let names: Vec<_> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a.toml#1", "b.toml#1"]);
    // A policy error is a usage error that names the file.
    std::fs::write(
        dir.path().join("c.toml"),
        "[[policy]]\nsources = [\"a\"]\nkeep_last = -1\n",
    )
    .unwrap();
    let e = load(dir.path(), &srcs).unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::Usage);
    assert!(
        e.message().contains("c.toml:3: key `policy[0].keep_last`"),
        "{e}"
    );
    // A missing folder: not found, with a hint.
    let e = load(&dir.path().join("nope"), &srcs).unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::NotFound);
    assert!(e.message().contains("policy folder"), "{e}");
    assert!(e.hint().is_some());
}

// ---- globs ------------------------------------------------------------------

#[test]
fn globs_match_names() {
    let m = |p: &str, n: &str| Glob::new(p).unwrap().matches(n);
    assert!(m("*", "anything"));
    assert!(m("*", ""));
    assert!(m("pg-*", "pg-usdcop"));
    assert!(m("pg-*", "pg-"));
    assert!(!m("pg-*", "pgx"));
    assert!(m("*-raw", "minio-raw"));
    assert!(m("m?nio-*w", "minio-raw"));
    assert!(!m("m?nio", "mnio"));
    assert!(m("a*b*c", "aXbYbZc"));
    assert!(!m("a*b*c", "aXbYbZ"));
    assert!(m("config", "config"));
    assert!(!m("config", "config2"));
    assert!(m("**a", "a"));
    assert!(Glob::new("").is_err());
    assert!(Glob::new("a b").is_err());
    assert!(Glob::new("{a,b}").is_err());
}

/// A plain recursive matcher: the reference.
fn reference_match(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => (0..=n.len()).any(|k| reference_match(rest, &n[k..])),
        Some((c, rest)) => {
            !n.is_empty() && (*c == b'?' || *c == n[0]) && reference_match(rest, &n[1..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn glob_matches_like_the_reference(p in "[ab*?]{0,8}", n in "[ab]{0,10}") {
        prop_assert_eq!(glob_match(p.as_bytes(), n.as_bytes()), reference_match(p.as_bytes(), n.as_bytes()));
    }
}

// ---- the policy function: examples ----------------------------------------

fn id(i: u32) -> Id {
    Id::hash(&i.to_le_bytes())
}

fn snap(i: u32, source: &str, kind: SourceKind, time: DateTime<Utc>) -> SnapshotInfo {
    SnapshotInfo {
        id: id(i),
        time,
        source_name: source.into(),
        source_kind: kind,
        host: "db1".into(),
        tags: Vec::new(),
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn set_of(text: &str) -> PolicySet {
    PolicySet {
        policies: parse_file(text, &file("p.toml")).unwrap(),
    }
}

fn kept(d: &[Decision]) -> Vec<bool> {
    d.iter().map(|d| d.keep).collect()
}

#[test]
fn bogota_evening_is_that_days_daily_bucket() {
    let tz = chrono_tz::America::Bogota;
    // Monday 2026-11-30 21:00 in Bogota is Tuesday 02:00 UTC.
    let monday_night = utc("2026-12-01T02:00:00Z");
    let monday_noon = utc("2026-11-30T17:00:00Z");
    let tuesday_noon = utc("2026-12-01T17:00:00Z");
    assert_eq!(Bucket::Daily.of(monday_night, tz), "2026-11-30");
    assert_eq!(Bucket::Daily.of(monday_night, chrono_tz::UTC), "2026-12-01");
    let snaps = vec![
        snap(1, "pg", SourceKind::Postgres, monday_noon),
        snap(2, "pg", SourceKind::Postgres, monday_night),
        snap(3, "pg", SourceKind::Postgres, tuesday_noon),
    ];
    let set = set_of("[[policy]]\nsources = [\"pg\"]\nkeep_daily = 7\n");
    let now = utc("2026-12-02T12:00:00Z");
    let d = evaluate(&snaps, &set, now, tz, Duration::ZERO);
    // In Bogota: Monday's newest is 21:00, Tuesday's is noon.
    assert_eq!(kept(&d), [false, true, true]);
    assert_eq!(
        d[1].reasons,
        [Reason::Daily {
            n: 2,
            bucket: "2026-11-30".into()
        }]
    );
    assert_eq!(d[1].reasons[0].to_string(), "daily #2 (2026-11-30)");
    // Taken in UTC instead, 02:00 would be Tuesday's and Monday noon kept.
    let d = evaluate(&snaps, &set, now, chrono_tz::UTC, Duration::ZERO);
    assert_eq!(kept(&d), [true, false, true]);
}

#[test]
fn rules_no_policy_overrides() {
    let tz = chrono_tz::UTC;
    let now = utc("2026-12-02T12:00:00Z");
    let snaps = vec![
        snap(1, "pg", SourceKind::Postgres, utc("2026-11-01T00:00:00Z")),
        snap(2, "pg", SourceKind::Postgres, utc("2026-11-02T00:00:00Z")),
        snap(3, "pg", SourceKind::Postgres, utc("2026-12-02T11:30:00Z")),
        snap(4, "pg", SourceKind::Postgres, utc("2026-12-02T11:45:00Z")),
        snap(5, "adhoc", SourceKind::Stdin, utc("2026-01-01T00:00:00Z")),
        snap(6, "adhoc", SourceKind::Stdin, utc("2026-01-02T00:00:00Z")),
    ];
    let set = set_of("[[policy]]\nsources = [\"pg\"]\nkeep_tags = [\"release\"]\n");
    let d = evaluate(&snaps, &set, now, tz, Duration::from_secs(3600));
    assert_eq!(kept(&d), [false, false, true, true, true, true]);
    assert_eq!(
        d[2].reasons,
        [Reason::MinAge {
            min_age: "1h".into()
        }]
    );
    assert_eq!(d[3].reasons[0], Reason::Newest);
    assert_eq!(d[3].reasons[0].to_string(), "newest of its source");
    assert_eq!(d[2].reasons[0].to_string(), "younger than min_age 1h");
    assert_eq!(
        d[4].reasons,
        [Reason::Uncovered {
            source: "adhoc".into()
        }]
    );
    assert_eq!(
        d[4].reasons[0].to_string(),
        "no policy covers source adhoc: kept"
    );
    assert_eq!(d[5].reasons[0], Reason::Newest);
    assert!(d[0].reasons.is_empty());
    // Output in input order, whatever it is.
    let mut rev = snaps.clone();
    rev.reverse();
    let mut r = evaluate(&rev, &set, now, tz, Duration::from_secs(3600));
    r.reverse();
    assert_eq!(r, d);
}

#[test]
fn last_within_tags_and_counted_buckets() {
    let tz = chrono_tz::UTC;
    let now = utc("2026-12-10T00:00:00Z");
    // Two a day, 1..=9 December, 06:00 and 18:00.
    let mut snaps = Vec::new();
    for day in 1..=9u32 {
        for h in [6, 18] {
            let t = Utc.with_ymd_and_hms(2026, 12, day, h, 0, 0).unwrap();
            snaps.push(snap(day * 100 + h, "pg", SourceKind::Postgres, t));
        }
    }
    snaps[0].tags = vec!["release".into()];
    let set = set_of(
        "[[policy]]\nsources = [\"pg\"]\nkeep_last = 3\nkeep_daily = 2\nkeep_within = \"36h\"\nkeep_tags = [\"x\", \"release\"]\nkeep_monthly = \"all\"\n",
    );
    let d = evaluate(&snaps, &set, now, tz, Duration::ZERO);
    let show = |i: usize| {
        d[i].reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    // Newest: 9 Dec 18:00.
    assert_eq!(
        show(17),
        [
            "newest of its source",
            "last #1",
            "daily #1 (2026-12-09)",
            "monthly #1 (2026-12)",
            "within 36h"
        ]
    );
    assert_eq!(show(16), ["last #2", "within 36h"]);
    assert_eq!(show(15), ["last #3", "daily #2 (2026-12-08)", "within 36h"]);
    // 8 Dec 06:00 is 42 h old: outside 36h, and not its day's newest.
    assert_eq!(show(14), Vec::<String>::new());
    assert_eq!(show(0), ["tag release"]);
    assert_eq!(d.iter().filter(|d| d.keep).count(), 4);
    let json = serde_json::to_value(&d[15].reasons).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"rule": "last", "n": 3},
            {"rule": "daily", "n": 2, "bucket": "2026-12-08"},
            {"rule": "within", "within": "36h"}
        ])
    );
    let back: Vec<Reason> = serde_json::from_value(json).unwrap();
    assert_eq!(back, d[15].reasons);
}

#[test]
fn weeks_are_iso_weeks_and_years_local() {
    let tz = chrono_tz::Asia::Kolkata;
    // 2026-12-31 20:00 UTC is 2027-01-01 01:30 in Kolkata: ISO week 2026-W53.
    let t = utc("2026-12-31T20:00:00Z");
    assert_eq!(Bucket::Weekly.of(t, tz), "2026-W53");
    assert_eq!(Bucket::Yearly.of(t, tz), "2027");
    assert_eq!(Bucket::Monthly.of(t, tz), "2027-01");
    assert_eq!(Bucket::Yearly.of(t, chrono_tz::UTC), "2026");
    assert_eq!(Bucket::Hourly.of(t, tz), "2027-01-01 01h");
}

#[test]
fn the_hour_dst_repeats_is_one_hourly_bucket() {
    let tz = chrono_tz::Europe::London;
    // 2026-10-25: clocks go back at 02:00 BST to 01:00 GMT; 01:xx twice.
    let first = utc("2026-10-25T00:10:00Z"); // 01:10 BST
    let second = utc("2026-10-25T01:10:00Z"); // 01:10 GMT
    let next = utc("2026-10-25T02:10:00Z"); // 02:10 GMT
    assert_eq!(Bucket::Hourly.of(first, tz), Bucket::Hourly.of(second, tz));
    let snaps = vec![
        snap(1, "pg", SourceKind::Postgres, first),
        snap(2, "pg", SourceKind::Postgres, second),
        snap(3, "pg", SourceKind::Postgres, next),
    ];
    let set = set_of("[[policy]]\nsources = [\"pg\"]\nkeep_hourly = 10\n");
    let d = evaluate(
        &snaps,
        &set,
        utc("2026-10-26T00:00:00Z"),
        tz,
        Duration::ZERO,
    );
    assert_eq!(kept(&d), [false, true, true]);
    assert_eq!(d[1].reasons[0].to_string(), "hourly #2 (2026-10-25 01h)");
}

#[test]
fn pitr_window_keeps_the_window_and_its_base_for_wal_only() {
    let tz = chrono_tz::UTC;
    let now = utc("2026-12-10T00:00:00Z");
    let mk = |kind| {
        (1..=9u32)
            .map(|day| {
                snap(
                    day,
                    "pg",
                    kind,
                    Utc.with_ymd_and_hms(2026, 12, day, 0, 0, 0).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let set = set_of("[[policy]]\nsources = [\"pg\"]\npitr_window = \"72h\"\n");
    // Window: after 7 Dec 00:00; base: 7 Dec 00:00 itself (at the start).
    let d = evaluate(&mk(SourceKind::Wal), &set, now, tz, Duration::ZERO);
    assert_eq!(
        kept(&d),
        [false, false, false, false, false, false, true, true, true]
    );
    assert!(d[6].reasons.contains(&Reason::Pitr {
        window: "72h".into()
    }));
    assert_eq!(d[6].reasons[0].to_string(), "pitr window 72h");
    // Not a point-in-time kind: the window does not apply.
    let d = evaluate(&mk(SourceKind::Postgres), &set, now, tz, Duration::ZERO);
    assert_eq!(d.iter().filter(|d| d.keep).count(), 1);
}

#[test]
fn the_report_renders_per_source() {
    let tz = chrono_tz::America::Bogota;
    let now = utc("2026-12-02T12:00:00Z");
    let snaps = vec![
        snap(1, "pg", SourceKind::Postgres, utc("2026-11-30T17:00:00Z")),
        snap(2, "pg", SourceKind::Postgres, utc("2026-11-30T18:00:00Z")),
        snap(3, "adhoc", SourceKind::Stdin, utc("2026-11-30T18:00:00Z")),
    ];
    let set = set_of("[[policy]]\nname = \"db\"\nsources = [\"pg\"]\nkeep_last = 1\n");
    let d = evaluate(&snaps, &set, now, tz, Duration::ZERO);
    let groups = report::by_source(&snaps, &d, &set);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].source, "adhoc");
    assert_eq!(groups[0].policy, None);
    assert_eq!(groups[1].policy.as_deref(), Some("db"));
    assert_eq!((groups[1].kept, groups[1].removed), (1, 1));
    assert_eq!(groups[1].snapshots[0].id, id(2));
    let md = render_markdown(&groups, tz);
    assert!(
        md.contains("### pg (postgres)\n\npolicy `db`: 1 kept, 1 removed"),
        "{md}"
    );
    assert!(md.contains("no policy: kept whole"), "{md}");
    assert!(md.contains("| snapshot | time (America/Bogota) |"), "{md}");
    assert!(
        md.contains(&format!(
            "| `{}` | 2026-11-30 13:00 -05 | db1 | keep | newest of its source; last #1 |",
            id(2).short()
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "| `{}` | 2026-11-30 12:00 -05 | db1 | **remove** | - |",
            id(1).short()
        )),
        "{md}"
    );
    let v = serde_json::to_value(&groups[1]).unwrap();
    assert_eq!(v["kind"], "postgres");
    assert_eq!(v["snapshots"][0]["reasons"][0]["rule"], "newest");
    let back: SourceDecisions = serde_json::from_value(v).unwrap();
    assert_eq!(back, groups[1]);
}

// ---- the policy function: properties --------------------------------------

const ZONES: [chrono_tz::Tz; 6] = [
    chrono_tz::UTC,
    chrono_tz::America::Bogota,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
    chrono_tz::Europe::London,
    chrono_tz::America::Santiago,
];

/// Times near DST changes (London, Chatham, Santiago in 2026), at UTC
/// midnights, and anywhere in a year.
fn time_strategy() -> impl Strategy<Value = DateTime<Utc>> {
    let base = utc("2026-01-01T00:00:00Z");
    let near = prop::sample::select(vec![
        utc("2026-03-29T01:00:00Z"),
        utc("2026-10-25T01:00:00Z"),
        utc("2026-04-04T14:00:00Z"),
        utc("2026-09-26T14:00:00Z"),
        utc("2026-04-05T03:00:00Z"),
        utc("2026-09-06T04:00:00Z"),
        utc("2026-06-01T00:00:00Z"),
        utc("2026-12-31T23:00:00Z"),
    ]);
    prop_oneof![
        (0i64..366 * 24 * 60).prop_map(move |m| base + chrono::TimeDelta::minutes(m)),
        (near, -600i64..600).prop_map(|(t, m)| t + chrono::TimeDelta::minutes(m)),
        (0i64..40).prop_map(move |d| base + chrono::TimeDelta::hours(d * 23)),
    ]
}

fn count_strategy() -> impl Strategy<Value = Option<Count>> {
    prop_oneof![
        3 => Just(None),
        3 => (0u32..6).prop_map(|n| Some(Count::N(n))),
        1 => Just(Some(Count::All)),
    ]
}

fn rules_strategy() -> impl Strategy<Value = Rules> {
    (
        [
            count_strategy(),
            count_strategy(),
            count_strategy(),
            count_strategy(),
            count_strategy(),
            count_strategy(),
        ],
        prop::option::of(1u64..24 * 60),
        prop::sample::subsequence(vec!["release", "x"], 0..=2),
        prop::option::of(1u64..24 * 30),
    )
        .prop_map(|(c, within_h, tags, pitr_h)| Rules {
            keep_last: c[0],
            keep_hourly: c[1],
            keep_daily: c[2],
            keep_weekly: c[3],
            keep_monthly: c[4],
            keep_yearly: c[5],
            keep_within: within_h.map(|h| Duration::from_secs(h * 3600)),
            keep_tags: tags.into_iter().map(String::from).collect(),
            pitr_window: pitr_h.map(|h| Duration::from_secs(h * 3600)),
        })
}

const NAMES: [&str; 3] = ["pg", "raw", "adhoc"];
const KINDS: [SourceKind; 2] = [SourceKind::Postgres, SourceKind::Wal];

fn history_strategy() -> impl Strategy<Value = Vec<SnapshotInfo>> {
    prop::collection::vec(
        (
            0..NAMES.len(),
            0..KINDS.len(),
            time_strategy(),
            prop::sample::subsequence(vec!["release", "x", "y"], 0..=2),
            prop::sample::select(vec!["db1", "db2"]),
        ),
        1..40,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (n, k, t, tags, host))| SnapshotInfo {
                id: id(i as u32),
                time: t,
                source_name: NAMES[n].into(),
                source_kind: KINDS[k],
                host: host.into(),
                tags: tags.into_iter().map(String::from).collect(),
            })
            .collect()
    })
}

/// "pg" and "raw" covered (one rule set for each), "adhoc" not.
fn policies(pg: Rules, raw: Rules) -> PolicySet {
    let p = |name: &str, rules: Rules| Policy {
        name: name.into(),
        file: file("p.toml"),
        line: 1,
        index: 0,
        sources: vec![Glob::new(name).unwrap()],
        kinds: Vec::new(),
        rules,
    };
    PolicySet {
        policies: vec![p("pg", pg), p("raw", raw)],
    }
}

fn key(s: &SnapshotInfo) -> (DateTime<Utc>, Id) {
    (s.time, s.id)
}

/// The names of the rules that keep each snapshot, computed plainly: per
/// source, map each bucket to its newest snapshot, take the N greatest
/// buckets; and so on for each rule. Independent of the evaluator's walk.
fn oracle(
    snaps: &[SnapshotInfo],
    set: &PolicySet,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
    min_age: Duration,
) -> HashMap<Id, BTreeSet<&'static str>> {
    let mut out: HashMap<Id, BTreeSet<&'static str>> =
        snaps.iter().map(|s| (s.id, BTreeSet::new())).collect();
    let mut groups: BTreeMap<(String, &str), Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snaps {
        groups
            .entry((s.source_name.clone(), s.source_kind.as_str()))
            .or_default()
            .push(s);
    }
    for g in groups.values() {
        let newest = g.iter().max_by_key(|s| key(s)).unwrap();
        out.get_mut(&newest.id).unwrap().insert("newest");
        for s in g {
            if now.signed_duration_since(s.time) < chrono::TimeDelta::from_std(min_age).unwrap() {
                out.get_mut(&s.id).unwrap().insert("min_age");
            }
        }
        let Some(p) = set.policy_for(&g[0].source_name, g[0].source_kind) else {
            for s in g {
                out.get_mut(&s.id).unwrap().insert("uncovered");
            }
            continue;
        };
        let r = &p.rules;
        let take = |c: Count, len: usize| match c {
            Count::All => len,
            Count::N(n) => (n as usize).min(len),
        };
        if let Some(c) = r.keep_last {
            let mut sorted = g.clone();
            sorted.sort_by_key(|s| std::cmp::Reverse(key(s)));
            for s in &sorted[..take(c, sorted.len())] {
                out.get_mut(&s.id).unwrap().insert("last");
            }
        }
        type KeyFn = fn(DateTime<chrono_tz::Tz>) -> (i32, u32, u32, u32);
        let buckets: [(&str, Option<Count>, KeyFn); 5] = [
            ("hourly", r.keep_hourly, |l| {
                (l.year(), l.month(), l.day(), l.hour())
            }),
            ("daily", r.keep_daily, |l| (l.year(), l.month(), l.day(), 0)),
            ("weekly", r.keep_weekly, |l| {
                (l.iso_week().year(), l.iso_week().week(), 0, 0)
            }),
            ("monthly", r.keep_monthly, |l| (l.year(), l.month(), 0, 0)),
            ("yearly", r.keep_yearly, |l| (l.year(), 0, 0, 0)),
        ];
        for (name, c, f) in buckets {
            let Some(c) = c else { continue };
            let mut newest_of: BTreeMap<(i32, u32, u32, u32), &SnapshotInfo> = BTreeMap::new();
            for s in g {
                let b = f(s.time.with_timezone(&tz));
                let e = newest_of.entry(b).or_insert(*s);
                if key(s) > key(e) {
                    *e = *s;
                }
            }
            let n = take(c, newest_of.len());
            for s in newest_of.values().rev().take(n) {
                out.get_mut(&s.id).unwrap().insert(name);
            }
        }
        if let Some(d) = r.keep_within {
            for s in g {
                if now.signed_duration_since(s.time) < chrono::TimeDelta::from_std(d).unwrap() {
                    out.get_mut(&s.id).unwrap().insert("within");
                }
            }
        }
        for s in g {
            if s.tags.iter().any(|t| r.keep_tags.contains(t)) {
                out.get_mut(&s.id).unwrap().insert("tag");
            }
        }
        if let (Some(d), SourceKind::Wal) = (r.pitr_window, g[0].source_kind) {
            let start = now - chrono::TimeDelta::from_std(d).unwrap();
            let base = g.iter().filter(|s| s.time <= start).max_by_key(|s| key(s));
            for s in g {
                if s.time > start || base.is_some_and(|b| b.id == s.id) {
                    out.get_mut(&s.id).unwrap().insert("pitr");
                }
            }
        }
    }
    out
}

fn rule_name(r: &Reason) -> &'static str {
    match r {
        Reason::Newest => "newest",
        Reason::MinAge { .. } => "min_age",
        Reason::Uncovered { .. } => "uncovered",
        Reason::Last { .. } => "last",
        Reason::Hourly { .. } => "hourly",
        Reason::Daily { .. } => "daily",
        Reason::Weekly { .. } => "weekly",
        Reason::Monthly { .. } => "monthly",
        Reason::Yearly { .. } => "yearly",
        Reason::Within { .. } => "within",
        Reason::Tag { .. } => "tag",
        Reason::Pitr { .. } => "pitr",
    }
}

/// The evaluator's decisions agree with the oracle, rule by rule, and
/// keep ⇔ some rule keeps.
fn check_against_oracle(
    snaps: &[SnapshotInfo],
    d: &[Decision],
    expected: &HashMap<Id, BTreeSet<&'static str>>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.len(), snaps.len());
    for (s, d) in snaps.iter().zip(d) {
        prop_assert_eq!(s.id, d.id);
        prop_assert_eq!(d.keep, !d.reasons.is_empty());
        let got: BTreeSet<&str> = d.reasons.iter().map(rule_name).collect();
        prop_assert_eq!(
            got.len(),
            d.reasons.len(),
            "a rule named twice: {:?}",
            d.reasons
        );
        prop_assert_eq!(
            &got,
            &expected[&s.id],
            "snapshot {:?} at {}",
            s.source_name,
            s.time
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every rule as the plain oracle computes it; the newest per source
    /// always kept; every rule that keeps a snapshot named once.
    #[test]
    fn decisions_match_the_plain_computation(
        snaps in history_strategy(),
        pg in rules_strategy(),
        raw in rules_strategy(),
        tz in prop::sample::select(ZONES.to_vec()),
        later_h in 0i64..24 * 20,
        min_age_m in prop_oneof![Just(0u64), 1u64..3000],
    ) {
        let set = policies(pg, raw);
        let now = snaps.iter().map(|s| s.time).max().unwrap() + chrono::TimeDelta::hours(later_h);
        let min_age = Duration::from_secs(min_age_m * 60);
        let d = evaluate(&snaps, &set, now, tz, min_age);
        check_against_oracle(&snaps, &d, &oracle(&snaps, &set, now, tz, min_age))?;
        // The newest snapshot of every source survives.
        let mut newest: HashMap<(&str, SourceKind), &SnapshotInfo> = HashMap::new();
        for s in &snaps {
            let e = newest.entry((s.source_name.as_str(), s.source_kind)).or_insert(s);
            if (s.time, s.id) > (e.time, e.id) { *e = s; }
        }
        for s in newest.values() {
            let i = snaps.iter().position(|x| x.id == s.id).unwrap();
            prop_assert!(d[i].keep);
            prop_assert!(d[i].reasons.contains(&Reason::Newest));
        }
    }

    /// keep_daily = N alone: exactly the newest snapshot of each of the N
    /// newest days (in the zone) that have snapshots, plus the newest.
    #[test]
    fn keep_daily_keeps_the_newest_of_the_n_newest_local_days(
        snaps in history_strategy(),
        n in 0u32..8,
        tz in prop::sample::select(ZONES.to_vec()),
    ) {
        let rules = Rules { keep_daily: Some(Count::N(n)), ..Rules::default() };
        let set = PolicySet { policies: vec![Policy {
            name: "all".into(), file: file("p.toml"), line: 1, index: 0,
            sources: vec![Glob::new("*").unwrap()], kinds: Vec::new(), rules,
        }]};
        let now = snaps.iter().map(|s| s.time).max().unwrap() + chrono::TimeDelta::days(1);
        let d = evaluate(&snaps, &set, now, tz, Duration::ZERO);
        // Per source: its local days, newest first; the newest of each.
        let mut expected: BTreeSet<Id> = BTreeSet::new();
        let mut by_source: BTreeMap<(&str, &str), Vec<&SnapshotInfo>> = BTreeMap::new();
        for s in &snaps {
            by_source.entry((s.source_name.as_str(), s.source_kind.as_str())).or_default().push(s);
        }
        for g in by_source.values() {
            let mut days: BTreeMap<chrono::NaiveDate, &SnapshotInfo> = BTreeMap::new();
            for s in g {
                let day = s.time.with_timezone(&tz).date_naive();
                let e = days.entry(day).or_insert(*s);
                if key(s) > key(e) { *e = *s; }
            }
            for s in days.values().rev().take(n as usize) {
                expected.insert(s.id);
            }
            expected.insert(g.iter().max_by_key(|s| (s.time, s.id)).unwrap().id);
        }
        let got: BTreeSet<Id> = d.iter().filter(|d| d.keep).map(|d| d.id).collect();
        prop_assert_eq!(got, expected);
    }

    /// The result does not depend on input order.
    #[test]
    fn the_input_order_does_not_matter(
        (snaps, shuffled) in history_strategy().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        pg in rules_strategy(),
        raw in rules_strategy(),
        tz in prop::sample::select(ZONES.to_vec()),
    ) {
        let set = policies(pg, raw);
        let now = snaps.iter().map(|s| s.time).max().unwrap() + chrono::TimeDelta::hours(5);
        let min_age = Duration::from_secs(3600);
        let a = evaluate(&snaps, &set, now, tz, min_age);
        let b = evaluate(&shuffled, &set, now, tz, min_age);
        for (s, d) in shuffled.iter().zip(&b) {
            prop_assert_eq!(s.id, d.id);
        }
        let by_id: HashMap<Id, &Decision> = b.iter().map(|d| (d.id, d)).collect();
        for d in &a {
            prop_assert_eq!(d, by_id[&d.id]);
        }
    }

    /// A newer snapshot never makes prune drop an older snapshot that a
    /// rule still keeps: after adding one, every snapshot dropped is one no
    /// rule keeps (by the plain computation over the new history), and a
    /// snapshot kept for a reason that does not depend on newer ones
    /// (within, tags, min_age, pitr window, uncovered) stays kept.
    #[test]
    fn a_newer_snapshot_never_drops_what_a_rule_keeps(
        snaps in history_strategy(),
        newer in (0..NAMES.len(), 0..KINDS.len(), 1i64..24 * 60 * 3),
        pg in rules_strategy(),
        raw in rules_strategy(),
        tz in prop::sample::select(ZONES.to_vec()),
    ) {
        let set = policies(pg, raw);
        let (n, k, after_m) = newer;
        let latest = snaps.iter().map(|s| s.time).max().unwrap();
        let mut more = snaps.clone();
        more.push(SnapshotInfo {
            id: id(1_000_000),
            time: latest + chrono::TimeDelta::minutes(after_m),
            source_name: NAMES[n].into(),
            source_kind: KINDS[k],
            host: "db1".into(),
            tags: Vec::new(),
        });
        let now = latest + chrono::TimeDelta::minutes(after_m) + chrono::TimeDelta::hours(2);
        let min_age = Duration::from_secs(3600);
        let before_d = evaluate(&snaps, &set, now, tz, min_age);
        let after_d = evaluate(&more, &set, now, tz, min_age);
        let expected = oracle(&more, &set, now, tz, min_age);
        check_against_oracle(&more, &after_d, &expected)?;
        prop_assert!(after_d.last().unwrap().keep);
        for (old, new) in before_d.iter().zip(&after_d) {
            prop_assert_eq!(old.id, new.id);
            if old.keep && !new.keep {
                prop_assert!(expected[&new.id].is_empty());
                // Only rules about "the newest of …" let go of it.
                for r in &old.reasons {
                    prop_assert!(
                        matches!(r, Reason::Newest | Reason::Last { .. } | Reason::Hourly { .. }
                            | Reason::Daily { .. } | Reason::Weekly { .. } | Reason::Monthly { .. }
                            | Reason::Yearly { .. } | Reason::Pitr { .. }),
                        "{:?} dropped although {} keeps it", new.id, r
                    );
                }
            }
        }
    }
}

#[test]
fn before_saturates() {
    let now = utc("2026-12-02T12:00:00Z");
    assert_eq!(
        before(now, Duration::from_secs(3600)),
        Some(utc("2026-12-02T11:00:00Z"))
    );
    assert_eq!(before(now, Duration::from_secs(u64::MAX)), None);
}
