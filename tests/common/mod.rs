//! A small harness for driving the `usdcop-dr` binary against a fresh
//! repository in a temporary directory.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        // The local index cache: out of the user's home (repository ids
        // are random, so tests never share an entry).
        .env(
            "USDCOP_DR_CACHE_DIR",
            std::env::temp_dir().join("usdcop-dr-test-cache"),
        )
        .arg("--repo")
        .arg(repo);
    c
}

/// How long one command may run before [`run_cmd`] kills it and fails the
/// test naming it: 120 s, or `USDCOP_DR_TEST_CMD_TIMEOUT` seconds. Far above
/// what any command of the suite needs; it turns a hang into a precise
/// failure instead of a CI job that eats its whole budget.
pub fn cmd_timeout() -> Duration {
    let secs = std::env::var("USDCOP_DR_TEST_CMD_TIMEOUT")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("USDCOP_DR_TEST_CMD_TIMEOUT={v:?} is not seconds"))
        })
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Runs a command to completion with [`cmd_timeout`].
pub fn run_cmd(c: Command, stdin: Option<&[u8]>) -> Run {
    run_cmd_timeout(c, stdin, cmd_timeout())
}

/// Pipes a command's stdout and stderr, puts it in a process group of its
/// own (so a kill reaches its children) that the kernel kills when the
/// test process dies; returns its command line for messages (program and
/// arguments only: the environment holds test secrets).
pub fn guard_child(c: &mut Command) -> String {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command, feeding `stdin`; past `timeout` the command and anything
/// it started (its process group: pg_dump, psql, …) is killed and the test
/// panics with the command line and what it printed so far.
pub fn run_cmd_timeout(mut c: Command, stdin: Option<&[u8]>, timeout: Duration) -> Run {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let shown = guard_child(&mut c);
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {shown}: {e}"));
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    // Pipes drained on their own threads so a chatty child never blocks.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the group we created; the child is not yet
            // reaped, so its pid (= the group id) is still ours.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            // The group is dead, so the pipes close in a moment; should a
            // grandchild have left the group and hold them open, do not
            // wait for it.
            let give_up = Instant::now() + Duration::from_secs(2);
            while !(stdout.is_finished() && stderr.is_finished()) && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
            let out = if stdout.is_finished() {
                String::from_utf8_lossy(&stdout.join().unwrap()).into_owned()
            } else {
                "(still open)".to_owned()
            };
            let err = if stderr.is_finished() {
                String::from_utf8_lossy(&stderr.join().unwrap()).into_owned()
            } else {
                "(still open)".to_owned()
            };
            panic!(
                "command did not finish within {timeout:?} and was killed \
                 (USDCOP_DR_TEST_CMD_TIMEOUT=SECONDS to change): {shown}\n\
                 --- stdout ---\n{out}\n--- stderr ---\n{err}"
            );
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    }
}

/// One small runtime per test process, for tests that call the library
/// directly (crafting snapshots) besides driving the binary.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

impl TestRepo {
    /// The repository opened through the library (local backend).
    pub async fn open_lib(&self) -> usdcop_dr::repository::Repository {
        let backend = std::sync::Arc::new(
            usdcop_dr::backend::local::LocalBackend::new(self.path.clone()).unwrap(),
        );
        usdcop_dr::repository::Repository::open(backend, PASSWORD.as_bytes())
            .await
            .unwrap()
    }

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

    /// `restore --snapshot <snapshot> --target <dir>`.
    pub fn restore_into(&self, snapshot: &str, dir: &Path) -> Run {
        self.run(&[
            "restore",
            "--snapshot",
            snapshot,
            "--target",
            dir.to_str().unwrap(),
        ])
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

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Permission bits of `p` itself (a link is not followed).
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
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
