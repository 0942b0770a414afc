//! Secrets around PostgreSQL: a password with URL-reserved characters
//! (base64 has `/`) never shows, on stderr or in `--json`, and is refused
//! on the command line; `sslpassword` reaches no argv, metadata or child;
//! and the client programs (pg_dump, pg_dumpall, pg_restore, psql, or
//! what `--pg-dump` names) get an allow-listed environment, none of our
//! own secrets. Wrappers that log their argv and environment, then run
//! the real program, prove it against a real server.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;

use common::{run_cmd, TestRepo};
use postgres::*;
use usdcop_dr::postgres::dsn;

const SOURCE_DB: &str = "usdcop_trading";

#[test]
fn a_password_with_reserved_characters_never_shows() {
    let repo = TestRepo::new();
    // Unescaped `/`, `?`, `@`, `#`, as a base64 password may have.
    let pw = "kQ9/xT?z@wP#v+Lm=";
    let fragments = ["kQ9/xT", "z@wP", "#v+Lm"];
    let url = format!("postgresql://trader:{pw}@127.0.0.1:1/usdcop_trading");
    for json in [false, true] {
        let mut args = vec!["backup", "postgres", "--source", "pg", "--dsn", &url];
        if json {
            args.insert(0, "--json");
        }
        let r = repo.run(&args);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("carries a password"), "{}", r.stderr);
        let out = format!("{}{}", r.stderr, r.stdout_str());
        for f in fragments {
            assert!(!out.contains(f), "{f:?} shown: {out}");
        }
        if json {
            let e = &r.json()["error"];
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains("carries a password"),
                "{e}"
            );
        }
    }
    // The same from the environment (allowed) but unusable: a bad
    // setting, a bad port, nothing listening. Each fails, none shows it.
    for (dsn, code, says) in [
        (format!("{url}?sslmode=bogus"), 2, "invalid sslmode"),
        (
            format!("postgresql://trader:{pw}@127.0.0.1:notaport/db"),
            2,
            "invalid PostgreSQL DSN",
        ),
        (
            url.clone(),
            1,
            "cannot connect to PostgreSQL at 127.0.0.1:1",
        ),
    ] {
        let mut c = repo.cmd();
        c.env("USDCOP_DR_PG_DSN", &dsn)
            .env("PGPASSFILE", "/nonexistent")
            .args(["--json", "backup", "postgres", "--source", "pg"]);
        let r = run_cmd(c, None);
        assert_eq!(r.code, code, "{dsn}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{}", r.stderr);
        let out = format!("{}{}", r.stderr, r.stdout_str());
        for f in fragments {
            assert!(!out.contains(f), "{f:?} shown: {out}");
        }
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(says));
    }
    // sslpassword on the command line is refused too.
    let r = repo.run(&[
        "backup",
        "postgres",
        "--source",
        "pg",
        "--dsn",
        "host=127.0.0.1 port=1 dbname=x sslpassword=Ssl-Key-Secret",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!r.stderr.contains("Ssl-Key-Secret"), "{}", r.stderr);
}

/// Variables a client program may see: the library's allow-list
/// ([`dsn::CHILD_ENV`], `LC_*`), `PGPASSWORD` (set by us when there is a
/// password), plus what `sh` itself sets in the wrapper.
fn allowed(name: &str) -> bool {
    const WRAPPER: &[&str] = &["PGPASSWORD", "PWD", "OLDPWD", "SHLVL", "_"];
    dsn::CHILD_ENV.contains(&name) || WRAPPER.contains(&name) || name.starts_with("LC_")
}

/// The allow-list itself never passes on a secret, nor the variables
/// naming the server or user (given explicitly instead).
#[test]
fn child_env_allow_list_holds_no_secret_or_server_variable() {
    for name in dsn::CHILD_ENV {
        assert!(
            !name.starts_with("AWS_") && !name.starts_with("USDCOP_DR"),
            "{name} in CHILD_ENV"
        );
        assert!(
            ![
                "PGPASSWORD",
                "PGPASSFILE",
                "PGHOST",
                "PGHOSTADDR",
                "PGPORT",
                "PGUSER",
                "PGDATABASE",
                "PGSERVICE",
                "PGSERVICEFILE",
            ]
            .contains(name),
            "{name} in CHILD_ENV"
        );
    }
}

#[test]
fn client_programs_get_only_what_they_need() {
    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 500);
    let repo = TestRepo::new();

    // Every client program, found through USDCOP_DR_PG_BIN, is a wrapper
    // that logs its argv and environment, then runs the real one.
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("calls.log");
    for tool in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        let path = tools.path().join(tool);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 {{ echo '== {tool}'; for a in \"$@\"; do echo \"arg: $a\"; done; \
                 /usr/bin/env; echo '== end'; }} >> '{log}'\n\
                 exec '{real}' \"$@\"\n",
                log = log.display(),
                real = pg.bin(tool).display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    let aws_secret = "aws-Secret-Key-0123456789";
    let ssl_secret = "Ssl-Key-Secret-0123456789";
    let dsn = |db: &str| {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/{db}?sslmode=disable&sslpassword={ssl_secret}",
            pg.password(),
            pg.port()
        )
    };
    let run = |args: &[&str]| {
        let mut c = repo.cmd();
        c.env("USDCOP_DR_PG_DSN", dsn(SOURCE_DB))
            .env("USDCOP_DR_PG_TARGET_DSN", dsn("restored"))
            .env("USDCOP_DR_PG_BIN", tools.path())
            .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
            .env("AWS_SECRET_ACCESS_KEY", aws_secret)
            .env("AWS_SESSION_TOKEN", "aws-Session-Token-0123")
            .env("UNRELATED_SETTING", "x")
            .env("PGHOST", "192.0.2.1")
            .env("PGPASSFILE", "/nonexistent")
            .env_remove("PGPASSWORD")
            .args(args);
        run_cmd(c, None).ok()
    };
    // pg_dump named by --pg-dump, the others found in USDCOP_DR_PG_BIN.
    let pg_dump = tools.path().join("pg_dump");
    run(&[
        "--json",
        "backup",
        "postgres",
        "--source",
        "pg",
        "--globals",
        "--pg-dump",
        pg_dump.to_str().unwrap(),
    ]);
    let r = run(&[
        "--json",
        "restore",
        "postgres",
        "--source",
        "pg",
        "--create",
        "--globals",
    ])
    .json();
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    assert_same_data(&pg, SOURCE_DB, &pg, "restored");

    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = BTreeSet::new();
    for call in text.split("== end\n").filter(|c| !c.trim().is_empty()) {
        let mut lines = call.lines();
        let tool = lines.next().unwrap().trim_start_matches("== ").to_owned();
        let mut args = vec![];
        let mut names = vec![];
        for l in lines {
            if let Some(a) = l.strip_prefix("arg: ") {
                args.push(a.to_owned());
            } else if let Some((k, v)) = l.split_once('=') {
                assert!(allowed(k), "{tool} {args:?} inherited {k}={v}");
                if k == "PGPASSWORD" {
                    assert_eq!(v, pg.password(), "{tool}");
                }
                names.push(k.to_owned());
            }
        }
        let version_probe = args == ["--version"];
        if !version_probe {
            // The password only in PGPASSWORD; sslpassword nowhere.
            assert!(names.iter().any(|n| n == "PGPASSWORD"), "{tool}: {names:?}");
            for a in &args {
                assert!(!a.contains(pg.password()), "{tool} argv: {a}");
                assert!(!a.contains("sslpassword"), "{tool} argv: {a}");
            }
        } else {
            assert!(
                !names.iter().any(|n| n == "PGPASSWORD"),
                "{tool}: {names:?}"
            );
        }
        seen.insert((tool, version_probe));
    }
    for secret in [
        aws_secret,
        ssl_secret,
        common::PASSWORD,
        "AKIAEXAMPLEKEYID",
        "USDCOP_DR",
        "192.0.2.1",
    ] {
        assert!(!text.contains(secret), "{secret} reached a child:\n{text}");
    }
    for tool in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        assert!(
            seen.contains(&(tool.to_owned(), false)),
            "{tool} never ran: {seen:?}"
        );
    }

    // The snapshot records the DSN without either secret.
    let snaps = repo.run(&["--json", "snapshots"]).ok().json();
    let recorded = snaps[0]["metadata"]["postgres"]["dsn"].as_str().unwrap();
    assert_eq!(
        recorded,
        format!(
            "postgresql://postgres@127.0.0.1:{}/{SOURCE_DB}?sslmode=disable",
            pg.port()
        )
    );
    assert!(!snaps.to_string().contains(ssl_secret));
}
