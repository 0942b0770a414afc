//! A small harness for driving the `usdcop-dr` binary against a fresh
//! repository in a temporary directory.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed (exit {}): {}",
            self.code, self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// The binary with a clean environment: only our passphrase and repo.
pub fn command(repo: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    c.env_remove("USDCOP_DR_PASSWORD_FILE")
        .env_remove("USDCOP_DR_REPO")
        .env("USDCOP_DR_PASSWORD", PASSWORD)
        .arg("--repo")
        .arg(repo);
    c
}

pub fn run_cmd(mut c: Command, stdin: Option<&[u8]>) -> Run {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn usdcop-dr");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for usdcop-dr");
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl TestRepo {
    /// A new repository with small chunks and packs, so tests exercise many
    /// chunks and packs with little data, and a cheap KDF.
    pub fn new() -> TestRepo {
        Self::with_init_args(&["--chunk-avg-size", "65536", "--pack-size", "1048576"])
    }

    pub fn with_init_args(extra: &[&str]) -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let repo = TestRepo { dir, path };
        let mut args = vec!["init", "--kdf-memory-kib", "1024"];
        args.extend_from_slice(extra);
        repo.run(&args).ok();
        repo
    }

    pub fn cmd(&self) -> Command {
        command(&self.path)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        run_cmd(c, None)
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        run_cmd(c, Some(input))
    }

    /// `backup stdin --json`; returns the summary.
    pub fn backup_stdin(&self, source: &str, name: &str, input: &[u8]) -> serde_json::Value {
        self.run_stdin(
            &[
                "--json",
                "backup",
                "stdin",
                "--source",
                source,
                "--stdin-name",
                name,
            ],
            input,
        )
        .ok()
        .json()
    }

    pub fn restore_stdout(&self, snapshot: &str) -> Vec<u8> {
        self.run(&["restore", "--snapshot", snapshot, "--stdout"])
            .ok()
            .stdout
    }

    /// Objects under a repository directory (e.g. "data"), as paths.
    pub fn objects(&self, dir: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.path.join(dir), &mut out);
        out.sort();
        out
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), fast and seedable.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
