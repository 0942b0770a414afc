//! The PostgreSQL client programs (`pg_dump`, `pg_restore`): finding a
//! version that fits the server, running them with the password in the
//! environment (never argv), and reading their output as a stream whose
//! end reports the program's failure with its own error message.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Result};
use crate::scratch::Registered;

#[derive(Debug, Clone)]
pub struct PgTool {
    pub path: PathBuf,
    /// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`
    pub version: String,
    pub major: u32,
}

/// Parse the major version out of `pg_dump --version` output.
pub fn parse_major(version: &str) -> Option<u32> {
    let v = version.split(')').nth(1).unwrap_or(version).trim();
    v.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

fn probe(path: &Path) -> Option<PgTool> {
    // Nothing of ours for a program that is only asked its version (it
    // may be any script named by --pg-dump): PATH to run, nothing else.
    let mut c = Command::new(path);
    c.env_clear();
    if let Some(p) = std::env::var_os("PATH") {
        c.env("PATH", p);
    }
    let out = c.arg("--version").stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some(PgTool {
        path: path.to_owned(),
        major: parse_major(&version)?,
        version,
    })
}

/// Find `tool` of at least major version `min_major`: `explicit` if given,
/// else `$USDCOP_DR_PG_BIN/tool`, Debian's `/usr/lib/postgresql/N/bin`
/// (the exact major first, then newer ones), then `$PATH`.
pub fn find(tool: &str, min_major: u32, explicit: Option<&Path>) -> Result<PgTool> {
    let mut candidates: Vec<PathBuf> = vec![];
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Ok(dir) = std::env::var("USDCOP_DR_PG_BIN") {
            candidates.push(Path::new(&dir).join(tool));
        }
        candidates.push(PathBuf::from(format!(
            "/usr/lib/postgresql/{min_major}/bin/{tool}"
        )));
        let mut newer: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major: u32 = e.file_name().to_str()?.parse().ok()?;
                (major > min_major).then(|| (major, e.path().join("bin").join(tool)))
            })
            .collect();
        newer.sort();
        candidates.extend(newer.into_iter().map(|(_, p)| p));
        candidates.push(PathBuf::from(tool));
    }
    let mut seen = vec![];
    for c in &candidates {
        if c.components().count() > 1 && !c.exists() {
            continue;
        }
        if let Some(t) = probe(c) {
            if t.major >= min_major {
                return Ok(t);
            }
            seen.push(t.version);
        }
    }
    let msg = if let (Some(p), true) = (explicit, seen.is_empty()) {
        format!(
            "{} is not a working {tool} (`--version` failed)",
            p.display()
        )
    } else if seen.is_empty() {
        format!("{tool} not found")
    } else {
        format!(
            "{tool} {min_major} or newer is needed, found only: {}",
            seen.join(", ")
        )
    };
    Err(Error::new(ErrorKind::Usage, msg).with_hint(format!(
        "install the PostgreSQL {min_major} client programs (Debian: postgresql-client-{min_major}), \
         or point USDCOP_DR_PG_BIN at their directory"
    )))
}

impl PgTool {
    /// A command running this tool against `dsn`: the DSN without its
    /// secrets as `--dbname` (its own settings win), our resolved
    /// defaults for what it leaves out (a socket directory as `--host`,
    /// as libpq takes it), never a prompt, and an environment built from
    /// an allow-list ([`super::Dsn::child_env`]): the password there only,
    /// none of our own secrets. `args` come first.
    pub fn command(&self, dsn: &super::Dsn, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        c.args(args)
            .arg("--no-password")
            .arg(format!("--host={}", dsn.host))
            .arg(format!("--port={}", dsn.port))
            .arg(format!("--username={}", dsn.user))
            .arg(format!("--dbname={}", dsn.redacted()))
            .env_clear()
            .envs(dsn.child_env(std::env::vars_os()));
        c
    }
}

/// The last lines a child wrote to stderr (bounded), for error messages.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
}

const TAIL_LINES: usize = 20;

/// Sees each line a child writes to stderr, as it is written; a line it
/// returns `true` for is its own and stays out of the child's error tail
/// (e.g. `pg_restore -v` progress lines).
pub type LineObserver = Box<dyn FnMut(&str) -> bool + Send>;

fn collect_stderr(
    stderr: impl Read + Send + 'static,
    mut observer: Option<LineObserver>,
) -> (Arc<Mutex<Tail>>, JoinHandle<()>) {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let t = tail.clone();
    let handle = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            tracing::debug!("child: {line}");
            if observer.as_mut().is_some_and(|o| o(&line)) {
                continue;
            }
            let mut g = t.lock().unwrap();
            if g.lines.len() == TAIL_LINES {
                g.lines.pop_front();
            }
            g.lines.push_back(line);
        }
    });
    (tail, handle)
}

/// A child just started: registered for signals, its stderr collected.
type Spawned = (Child, Registered, Arc<Mutex<Tail>>, JoinHandle<()>);

/// Start `cmd` with the given stdin/stdout and its stderr collected.
fn spawn(
    what: &str,
    mut cmd: Command,
    stdin: Stdio,
    stdout: Stdio,
    observer: Option<LineObserver>,
) -> Result<Spawned> {
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        Error::new(
            ErrorKind::Source,
            format!(
                "cannot start {what} ({}): {e}",
                cmd.get_program().to_string_lossy()
            ),
        )
    })?;
    // A signal that stops the run stops the child too (docs/CLI.md, Signals).
    let registered = match crate::scratch::register_child(child.id()) {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(format!("not starting {what}: {e}")));
        }
    };
    let (tail, handle) = collect_stderr(child.stderr.take().expect("piped"), observer);
    Ok((child, registered, tail, handle))
}

fn describe_failure(what: &str, status: ExitStatus, tail: &Tail) -> String {
    let how = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    };
    let said: Vec<&str> = tail.lines.iter().map(String::as_str).collect();
    if said.is_empty() {
        format!("{what} {how}")
    } else {
        format!("{what} {how}: {}", said.join(" | "))
    }
}

/// Wait until `child` has exited *without reaping it* (`waitid` with
/// `WNOWAIT`), then drop its registration: while it runs a signal that
/// stops the run stops it too, and its pid, still held by the unreaped
/// child, cannot name another process by then.
fn release_when_exited(child: &Child, registered: &mut Option<Registered>) {
    loop {
        // SAFETY: info is written by waitid; the pid is our unreaped child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    registered.take();
}

/// A running client program whose stdout is read as a stream. Reading past
/// the end waits for the program: a non-zero exit (or a signal) turns the
/// end of the stream into an error carrying the program's own message, so
/// a failed dump can never pass for a complete one.
pub struct ChildStream {
    what: String,
    child: Child,
    /// Dropped before the child is reaped (its pid is then free again).
    registered: Option<Registered>,
    stdout: ChildStdout,
    tail: Arc<Mutex<Tail>>,
    stderr_thread: Option<JoinHandle<()>>,
    done: Option<std::result::Result<(), String>>,
}

impl ChildStream {
    /// Spawn `cmd` (stdin null, stdout piped, stderr collected).
    pub fn spawn(what: &str, cmd: Command) -> Result<ChildStream> {
        let (mut child, registered, tail, handle) =
            spawn(what, cmd, Stdio::null(), Stdio::piped(), None)?;
        let stdout = child.stdout.take().expect("piped");
        widen_pipe(&stdout);
        Ok(ChildStream {
            what: what.to_owned(),
            child,
            registered: Some(registered),
            stdout,
            tail,
            stderr_thread: Some(handle),
            done: None,
        })
    }

    /// The child's pid (valid until the stream has been read to its end).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finish(&mut self) -> std::result::Result<(), String> {
        if let Some(d) = &self.done {
            return d.clone();
        }
        release_when_exited(&self.child, &mut self.registered);
        let status = self.child.wait();
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        let r = match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(describe_failure(&self.what, s, &self.tail.lock().unwrap())),
            Err(e) => Err(format!("waiting for {}: {e}", self.what)),
        };
        self.done = Some(r.clone());
        r
    }
}

/// The pipe's buffer, raised from the kernel's 64 KiB so that the
/// producer (pg_dump) can run up to a mebibyte ahead while our workers
/// compress a burst of chunks, and each read takes more at once: fewer
/// wake-ups on both sides. Best effort: a kernel or per-user limit that
/// refuses it leaves the default, which only costs speed.
const PIPE_BYTES: libc::c_int = 1 << 20;

fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; no memory is passed.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

impl Read for ChildStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(done) = &self.done {
            return done.clone().map(|_| 0).map_err(std::io::Error::other);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }
}

impl Drop for ChildStream {
    fn drop(&mut self) {
        if self.done.is_none() {
            // Abandoned (the backup failed elsewhere): do not leave it running.
            let _ = self.child.kill();
            self.registered.take();
            let _ = self.child.wait();
        }
    }
}

/// A running client program fed through its stdin (`pg_restore`), or
/// with no input at all.
pub struct FedChild {
    what: String,
    child: Child,
    /// Dropped before the child is reaped (its pid is then free again).
    registered: Option<Registered>,
    tail: Arc<Mutex<Tail>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl FedChild {
    /// Spawn `cmd` with stdin piped (returned) and stderr collected.
    pub fn spawn(what: &str, cmd: Command) -> Result<(FedChild, ChildStdin)> {
        Self::spawn_observed(what, cmd, None)
    }

    /// [`FedChild::spawn`], each stderr line shown to `observer` first.
    pub fn spawn_observed(
        what: &str,
        cmd: Command,
        observer: Option<LineObserver>,
    ) -> Result<(FedChild, ChildStdin)> {
        let (mut child, registered, tail, handle) =
            spawn(what, cmd, Stdio::piped(), Stdio::null(), observer)?;
        let stdin = child.stdin.take().expect("piped");
        Ok((
            FedChild {
                what: what.to_owned(),
                child,
                registered: Some(registered),
                tail,
                stderr_thread: Some(handle),
            },
            stdin,
        ))
    }

    /// [`FedChild::finish`], returning what the program last wrote to
    /// stderr (up to 20 lines) when it succeeded.
    pub fn finish_with_stderr(self) -> Result<Vec<String>> {
        let tail = self.tail.clone();
        self.finish()?;
        let lines = tail.lock().unwrap().lines.iter().cloned().collect();
        Ok(lines)
    }

    /// Wait for the program (its stdin must be closed by now); its failure
    /// comes back with its own message.
    pub fn finish(mut self) -> Result<()> {
        release_when_exited(&self.child, &mut self.registered);
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}: {e}", self.what)))?;
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        if status.success() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Source,
                describe_failure(&self.what, status, &self.tail.lock().unwrap()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_parse_from_version_lines() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("nonsense"), None);
    }

    #[test]
    fn a_failing_child_turns_the_end_of_its_stream_into_its_error() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "printf abc; echo 'pg_dump: error: connection lost' >&2; exit 1",
        ]);
        let mut s = ChildStream::spawn("pg_dump", c).unwrap();
        let mut out = Vec::new();
        let err = s.read_to_end(&mut out).unwrap_err().to_string();
        assert_eq!(out, b"abc");
        assert!(err.contains("pg_dump exited with code 1"), "{err}");
        assert!(err.contains("connection lost"), "{err}");

        let mut c = Command::new("sh");
        c.args(["-c", "printf ok"]);
        let mut s = ChildStream::spawn("pg_dump", c).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ok");

        let mut c = Command::new("sh");
        c.args(["-c", "kill -9 $$"]);
        let mut s = ChildStream::spawn("pg_dump", c).unwrap();
        let err = s.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("killed by signal 9"), "{err}");
    }
}
