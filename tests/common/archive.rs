//! A WAL archive for tests: a repository, its passphrase file,
//! configuration (`[wal] source = "trading"`) and state directory, all
//! owned by the PostgreSQL server's OS user, and usdcop-dr run as that
//! user; plus waiting for the server's archiver.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{run_cmd, Run};
use crate::postgres::PgServer;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_usdcop-dr");

/// The uid/gid PostgreSQL runs as when the tests run as root.
pub fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid and getpwnam have no memory-safety preconditions;
    // the record is read before any other call could reuse it.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "running as root needs a `postgres` OS user");
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A repository, its passphrase file, configuration and state directory,
/// all owned by the server's OS user.
pub struct Archive {
    pub home: tempfile::TempDir,
    pub owner: Option<(u32, u32)>,
}

impl Archive {
    pub fn new() -> Archive {
        let owner = server_user();
        let home = tempfile::Builder::new()
            .prefix("usdcop-dr-wal-")
            .tempdir()
            .unwrap();
        let a = Archive { home, owner };
        let pass = a.path("passphrase");
        std::fs::write(&pass, format!("{}\n", crate::common::PASSWORD)).unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(a.path("state")).unwrap();
        std::fs::write(
            a.config(),
            format!(
                "[repository]\nurl = \"{repo}\"\npassword_file = \"{pass}\"\n\n\
                 [[source]]\nname = \"trading\"\nkind = \"postgres\"\ndsn = \"dbname=postgres\"\n\n\
                 [wal]\nsource = \"trading\"\n",
                repo = a.path("repo").display(),
                pass = pass.display()
            ),
        )
        .unwrap();
        for p in [a.home.path().to_owned(), pass, a.path("state"), a.config()] {
            a.give(&p);
        }
        // The default (full-cost) KDF: what the key cache saves is real.
        a.run(&["init"]).ok();
        a
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    pub fn config(&self) -> PathBuf {
        self.path("usdcop-dr.toml")
    }

    pub fn give(&self, p: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }

    /// The environment archive_command gets from us: the state directory
    /// only (the passphrase comes from the configuration's password_file).
    pub fn archive_command(&self) -> String {
        format!(
            "USDCOP_DR_STATE_DIR={} {BIN} --config {} wal-push %p",
            self.path("state").display(),
            self.config().display()
        )
    }

    /// usdcop-dr as the server's OS user, with nothing but PATH and the
    /// state directory in its environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("USDCOP_DR_STATE_DIR", self.path("state"))
            .env("USDCOP_DR_CACHE_DIR", self.path("cache"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir(self.home.path());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), None)
    }

    /// Archived objects under `wal/<timeline>/`: (file name, hash).
    pub fn archived(&self, timeline: &str) -> Vec<(String, String)> {
        let dir = self.path("repo").join("wal").join(timeline);
        let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter_map(|n| {
                        n.rsplit_once('-')
                            .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every object under `dir` of the repository (recursively).
    pub fn objects_under(&self, dir: &str) -> Vec<PathBuf> {
        let root = self.path("repo").join(dir);
        if !root.exists() {
            return vec![];
        }
        crate::common::files_under(&root)
    }

    /// `wal-push --json FILE` as the owner; the file is copied into the
    /// home first (so the owner can read it).
    pub fn push_copy(&self, name: &str, bytes: &[u8]) -> Run {
        let dir = self.path("in");
        let _ = std::fs::create_dir(&dir);
        self.give(&dir);
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        self.give(&p);
        self.run(&["--json", "wal-push", p.to_str().unwrap()])
    }

    pub fn fetch(&self, name: &str) -> (Run, Vec<u8>) {
        let dir = self.path("out");
        let _ = std::fs::create_dir(&dir);
        self.give(&dir);
        let dest = dir.join(name);
        let _ = std::fs::remove_file(&dest);
        let r = self.run(&["wal-fetch", name, dest.to_str().unwrap()]);
        let bytes = std::fs::read(&dest).unwrap_or_default();
        (r, bytes)
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Waits (with a deadline) until the server has archived at least `n`
/// files; fails at once when an archive_command failed.
pub fn wait_archived(pg: &PgServer, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = pg.psql(
            "postgres",
            "SELECT archived_count, failed_count FROM pg_stat_archiver",
        );
        let (a, f) = row.split_once('|').unwrap();
        let (a, f): (u64, u64) = (a.parse().unwrap(), f.parse().unwrap());
        assert_eq!(f, 0, "archive_command failed; server log:\n{}", pg.log());
        if a >= n {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "only {a} of {n} files archived after 120 s; server log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn system_identifier(pg: &PgServer) -> String {
    pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )
}
