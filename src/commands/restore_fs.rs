//! Writing below a restore target without ever following a link.
//!
//! A restore runs as root in a disaster, into a directory that may already
//! hold files (and symlinks someone else put there). Path-based calls
//! (`create_dir_all`, `File::create`, `chmod`, `chown`) resolve every
//! symlink on the way, so `target/x/evil` lands in `/etc/evil` when `x` is
//! a link to `/etc`. Here every step is relative to an open directory:
//! each component is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its
//! parent's descriptor, files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` and renamed into place within that directory, and owners,
//! modes and times are set on the descriptor itself (or with
//! `AT_SYMLINK_NOFOLLOW`). A symlink or a non-directory where a directory
//! is needed stops that one entry with [`blocked`]; nothing is written
//! through it. Only the target directory itself (the operator's choice) is
//! opened following links.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ErrorKind};

/// Flags for walking: a directory, never through a link. `O_PATH` needs
/// no read permission on the directory, only search permission, as a
/// path lookup does.
#[cfg(target_os = "linux")]
const WALK: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
#[cfg(not(target_os = "linux"))]
const WALK: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// The restore target, open.
pub(crate) struct TargetDir {
    root: OwnedFd,
    path: PathBuf,
    /// Parent directories walked to lately, open: files of one directory
    /// come one after another (from several writers at once), and each
    /// walk costs an openat and a close per component. Opened by the same
    /// safe walk, so reusing one is as safe (it stays the directory that
    /// was checked, whatever is renamed later).
    parents: std::sync::Mutex<Vec<(String, Arc<OwnedFd>)>>,
}

/// Parent directories kept open ([`TargetDir::parents`]): a few per
/// writer thread.
const PARENTS_KEPT: usize = 32;

/// Owner, mode and modification time to give an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime_ns: i64,
    /// Set the owner (only root can give files away).
    pub owner: bool,
}

/// An entry that something already in the target stands in the way of
/// (a link or a file where a directory is needed, a directory where a file
/// is): reported per entry, the rest of the restore goes on.
pub(crate) fn blocked(message: String) -> Error {
    Error::new(ErrorKind::AlreadyExists, message)
        .with_hint("usdcop-dr never writes through a link in the target: remove what is in the way, or restore into an empty directory")
}

impl TargetDir {
    /// Create (if needed) and open the target directory.
    /// Flush everything written to the target's filesystem to disk
    /// (`syncfs(2)`: one call instead of an fsync per file).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        // SAFETY: the descriptor is open for the life of self.
        if unsafe { libc::syncfs(self.root.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn open(path: &Path) -> io::Result<TargetDir> {
        std::fs::create_dir_all(path)?;
        let c = cstring(path.as_os_str().as_encoded_bytes())?;
        let root = open_at(
            None,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        Ok(TargetDir {
            root,
            path: path.to_path_buf(),
            parents: std::sync::Mutex::new(Vec::with_capacity(PARENTS_KEPT)),
        })
    }

    /// Where `rel` is, for messages (and for anyone who must name a file).
    pub fn display(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Open directory `rel` (a safe relative path, "" for the target
    /// itself), creating missing components when `create`.
    pub fn dir(&self, rel: &str, create: bool) -> crate::Result<OwnedFd> {
        let mut fd = dup(self.root.as_fd()).map_err(|e| self.io_err("", e))?;
        let mut walked = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(comp);
            let name = cstring(comp.as_bytes()).map_err(|e| self.io_err(&walked, e))?;
            fd = self.step(fd.as_fd(), &name, &walked, create)?;
        }
        Ok(fd)
    }

    /// The open parent directory of `rel` (created if missing) and the
    /// entry's own name in it.
    pub fn parent(&self, rel: &str) -> crate::Result<(Arc<OwnedFd>, CString)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let name = cstring(name.as_bytes()).map_err(|e| self.io_err(rel, e))?;
        let cached = {
            let parents = self.parents.lock().unwrap_or_else(|p| p.into_inner());
            parents
                .iter()
                .rev()
                .find(|(d, _)| d == dir)
                .map(|(_, fd)| fd.clone())
        };
        if let Some(fd) = cached {
            return Ok((fd, name));
        }
        let fd = Arc::new(self.dir(dir, true)?);
        let mut parents = self.parents.lock().unwrap_or_else(|p| p.into_inner());
        if parents.len() >= PARENTS_KEPT {
            parents.remove(0); // the oldest; closed once no file holds it
        }
        parents.push((dir.to_owned(), fd.clone()));
        Ok((fd, name))
    }

    fn step(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        walked: &str,
        create: bool,
    ) -> crate::Result<OwnedFd> {
        match open_at(Some(parent), name, WALK, 0) {
            Ok(fd) => return Ok(fd),
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(self.walk_err(parent, name, walked, e)),
        }
        // SAFETY: parent is an open descriptor, name a NUL-terminated string.
        let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o777) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Created meanwhile by a parallel file restore: fine, opened below.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(self.io_err(walked, e));
            }
        }
        open_at(Some(parent), name, WALK, 0).map_err(|e| self.walk_err(parent, name, walked, e))
    }

    /// Why `walked` could not be entered: a link or a non-directory is
    /// [`blocked`], anything else an I/O error.
    fn walk_err(&self, parent: BorrowedFd<'_>, name: &CStr, walked: &str, e: io::Error) -> Error {
        let shown = self.display(walked);
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => match lstat_at(parent, name) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    let to = read_link_at(parent, name).unwrap_or_default();
                    blocked(format!(
                        "{} is a symlink (to {to:?}) where the snapshot needs a directory; not followed",
                        shown.display()
                    ))
                }
                _ => blocked(format!(
                    "{} is not a directory, and the snapshot needs one there",
                    shown.display()
                )),
            },
            _ => self.io_err(walked, e),
        }
    }

    fn io_err(&self, rel: &str, e: io::Error) -> Error {
        Error::io(format!("writing {}: {e}", self.display(rel).display()))
    }

    /// Start a regular file: created under a fresh temporary name in its
    /// directory (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600). The caller
    /// fills [`TempFile::file`] (checking the content), then
    /// [`TempFile::commit`] sets owner, mode and times, syncs and renames it
    /// over `rel`. Dropped uncommitted, the temporary file is removed.
    pub fn create_file(&self, rel: &str) -> crate::Result<TempFile> {
        self.create_file_as(rel, false)
    }

    /// [`create_file`](Self::create_file), but where nothing is in the
    /// way the file is created under its own name (`O_EXCL`: a name no one
    /// else holds), which saves the rename; removed again if not
    /// committed. Where something is, a temporary file replaces it as
    /// usual. A crash midway may leave a partly written file under its
    /// name: for restores that sync once at the end (`--sync end|none`).
    pub fn create_file_direct(&self, rel: &str) -> crate::Result<TempFile> {
        self.create_file_as(rel, true)
    }

    fn create_file_as(&self, rel: &str, direct: bool) -> crate::Result<TempFile> {
        let (dir, name) = self.parent(rel)?;
        if direct {
            let made = crate::scratch::create_at(&dir, &name, || {
                open_at(
                    Some(dir.as_fd()),
                    &name,
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600,
                )
            });
            match made {
                Ok((registered, fd)) => {
                    let shown = self.display(rel);
                    return Ok(TempFile {
                        file: Some(File::from(fd)),
                        dir,
                        tmp: name.clone(),
                        name,
                        tmp_path: shown.clone(),
                        shown,
                        _registered: registered,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.io_err(rel, e)),
            }
        }
        let tmp = temp_name(&name);
        let shown = self.display(rel);
        let tmp_path = shown
            .parent()
            .unwrap_or(&self.path)
            .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(tmp.to_bytes()));
        // Created and registered under one lock, so that SIGINT/SIGTERM
        // removes it too (decrypted data is not left behind,
        // docs/SECURITY.md), through this directory's descriptor.
        let (registered, fd) = crate::scratch::create_at(&dir, &tmp, || {
            open_at(
                Some(dir.as_fd()),
                &tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        })
        .map_err(|e| self.io_err(rel, e))?;
        Ok(TempFile {
            file: Some(File::from(fd)),
            dir,
            tmp,
            name,
            shown,
            tmp_path,
            _registered: registered,
        })
    }

    /// Create symlink `rel` pointing at `to` (the link itself gets owner
    /// and times; its mode means nothing on Linux). Replaces a file or link
    /// already there, never a directory.
    pub fn symlink(&self, rel: &str, to: &str, meta: Meta) -> crate::Result<()> {
        let (dir, name) = self.parent(rel)?;
        let tmp = temp_name(&name);
        let to_c = cstring(to.as_bytes()).map_err(|e| self.io_err(rel, e))?;
        // SAFETY: both strings are NUL-terminated, dir is open.
        let rc = unsafe { libc::symlinkat(to_c.as_ptr(), dir.as_raw_fd(), tmp.as_ptr()) };
        if rc != 0 {
            return Err(self.io_err(rel, io::Error::last_os_error()));
        }
        let result = set_link_meta(dir.as_fd(), &tmp, &meta)
            .map_err(|e| self.io_err(rel, e))
            .and_then(|()| {
                rename_at(dir.as_fd(), &tmp, &name).map_err(|e| replace_err(&self.display(rel), e))
            });
        if result.is_err() {
            unlink_at(dir.as_fd(), &tmp, 0);
        }
        result
    }

    /// Give directory `rel` its owner, mode and times, on the directory
    /// itself (opened without following a link).
    pub fn set_dir_meta(&self, rel: &str, meta: Meta) -> crate::Result<()> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (self.dir(p, false)?, n),
            None => (dup(self.root.as_fd()).map_err(|e| self.io_err("", e))?, rel),
        };
        let name_c = cstring(name.as_bytes()).map_err(|e| self.io_err(rel, e))?;
        let fd = open_at(
            Some(parent.as_fd()),
            &name_c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| self.walk_err(parent.as_fd(), &name_c, rel, e))?;
        set_fd_meta(fd.as_fd(), &meta).map_err(|e| self.io_err(rel, e))
    }
}

/// A file being restored under a temporary name (see [`TargetDir::create_file`]).
pub(crate) struct TempFile {
    file: Option<File>,
    dir: Arc<OwnedFd>,
    tmp: CString,
    name: CString,
    shown: PathBuf,
    tmp_path: PathBuf,
    /// Dropped after `Drop::drop` has unlinked the file.
    _registered: crate::scratch::Registered,
}

impl TempFile {
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// The temporary file's path (for messages and clean-up lists).
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Sync (with `sync`), set owner, mode and times on the descriptor,
    /// then rename over the destination (replacing a file or a link there,
    /// never following it).
    pub fn commit(mut self, meta: Meta, sync: bool) -> crate::Result<()> {
        let file = self.file.take().expect("open until committed");
        let io_err = |e: io::Error| Error::io(format!("writing {}: {e}", self.shown.display()));
        if sync {
            file.sync_all().map_err(io_err)?;
        }
        set_fd_meta(file.as_fd(), &meta).map_err(io_err)?;
        drop(file);
        // Created under its own name (create_file_direct): nothing to move.
        if self.tmp != self.name {
            rename_at(self.dir.as_fd(), &self.tmp, &self.name)
                .map_err(|e| replace_err(&self.shown, e))?;
        }
        self.tmp = CString::default();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            unlink_at(self.dir.as_fd(), &self.tmp, 0);
        }
    }
}

fn replace_err(shown: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => blocked(format!(
            "{} is a directory in the target, and the snapshot has a file or symlink there",
            shown.display()
        )),
        _ => Error::io(format!("writing {}: {e}", shown.display())),
    }
}

/// `.<name>.usdcop-dr-<random>`, or just the random part when the name is
/// so long that the prefixed one would exceed NAME_MAX.
fn temp_name(name: &CStr) -> CString {
    let rand = hex::encode(crate::crypto::random_bytes::<6>());
    let bytes = name.to_bytes();
    let mut t = Vec::with_capacity(bytes.len() + 32);
    t.push(b'.');
    if bytes.len() <= 200 {
        t.extend_from_slice(bytes);
        t.push(b'.');
    }
    t.extend_from_slice(b"usdcop-dr-");
    t.extend_from_slice(rand.as_bytes());
    CString::new(t).expect("no NUL in a C string's bytes")
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn open_at(
    dir: Option<BorrowedFd<'_>>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: name is NUL-terminated; dirfd is open or AT_FDCWD.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    let d = dir.as_raw_fd();
    // SAFETY: both names NUL-terminated, dir open.
    if unsafe { libc::renameat(d, from.as_ptr(), d, to.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) {
    // SAFETY: name NUL-terminated, dir open; failure is ignored (clean-up).
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) };
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is written by fstatat on success; name NUL-terminated.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is valid for its length; name NUL-terminated.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn times(mtime_ns: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    [t, t]
}

/// Owner first (a chown clears set-uid bits), then mode, then times.
/// A failed chown is not an error: restoring owners is best effort, as in
/// tar (e.g. an id squashed by NFS).
fn set_fd_meta(fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    if m.owner {
        // SAFETY: raw is an open descriptor.
        let _ = unsafe { libc::fchown(raw, m.uid, m.gid) };
    }
    // SAFETY: raw is an open descriptor.
    if unsafe { libc::fchmod(raw, (m.mode & 0o7777) as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ts = times(m.mtime_ns);
    // SAFETY: ts holds two timespecs.
    if unsafe { libc::futimens(raw, ts.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A symlink's own owner and times (`AT_SYMLINK_NOFOLLOW`); best effort.
fn set_link_meta(dir: BorrowedFd<'_>, name: &CStr, m: &Meta) -> io::Result<()> {
    let d = dir.as_raw_fd();
    if m.owner {
        // SAFETY: name NUL-terminated, dir open.
        let _ =
            unsafe { libc::fchownat(d, name.as_ptr(), m.uid, m.gid, libc::AT_SYMLINK_NOFOLLOW) };
    }
    let ts = times(m.mtime_ns);
    // SAFETY: ts holds two timespecs; name NUL-terminated.
    let _ = unsafe { libc::utimensat(d, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            uid: 0,
            gid: 0,
            mode: 0o640,
            mtime_ns: 1_600_000_000_123_456_789,
            owner: false,
        }
    }

    fn write(target: &TargetDir, rel: &str, data: &[u8]) {
        let mut f = target.create_file(rel).unwrap();
        std::io::Write::write_all(f.file(), data).unwrap();
        f.commit(meta(), true).unwrap();
    }

    #[test]
    fn links_in_the_target_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"keep").unwrap();
        let root = t.path().join("target");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("x")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("lf")).unwrap();
        let target = TargetDir::open(&root).unwrap();

        // Through the link: refused, nothing written outside.
        let e = target.create_file("x/evil").err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        assert!(e.message().contains("is a symlink"), "{e}");
        let e = target.dir("x/sub", true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let e = target.set_dir_meta("x", meta()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        let e = target.symlink("x/l", "/etc", meta()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        // A file over a link replaces the link, never writes its target.
        write(&target, "lf", b"new");
        assert_eq!(std::fs::read(root.join("lf")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(root.join("lf"))
            .unwrap()
            .is_symlink());
        let names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
        assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"keep");
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(
            std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn files_dirs_and_links_get_their_metadata() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let target = TargetDir::open(&t.path().join("r")).unwrap();
        target.dir("a/b", true).unwrap();
        target
            .set_dir_meta(
                "a/b",
                Meta {
                    mode: 0o750,
                    ..meta()
                },
            )
            .unwrap();
        write(&target, "a/b/f", b"x");
        // An uncommitted file leaves nothing behind.
        let mut t2 = target.create_file("a/b/g").unwrap();
        std::io::Write::write_all(t2.file(), b"half").unwrap();
        assert!(t2.temp_path().exists());
        drop(t2);
        target.symlink("a/l", "b/f", meta()).unwrap();
        // Replacing a link with a link.
        target.symlink("a/l", "b", meta()).unwrap();
        let m = std::fs::metadata(t.path().join("r/a/b/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime_nsec(), 123_456_789);
        assert_eq!(
            std::fs::metadata(t.path().join("r/a/b")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            std::fs::read_link(t.path().join("r/a/l")).unwrap(),
            Path::new("b")
        );
        // A directory where a file goes is reported, not replaced.
        let e = target.symlink("a/b", "x", meta()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        assert!(std::fs::symlink_metadata(t.path().join("r/a/b"))
            .unwrap()
            .is_dir());
        // No temporary names left behind.
        let left: Vec<_> = std::fs::read_dir(t.path().join("r/a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.iter().all(|n| !n.contains("usdcop-dr")), "{left:?}");
    }
}
