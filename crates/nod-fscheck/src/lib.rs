//! Opens files that must be trusted: root-owned, not writable by group or others, with no
//! symlink anywhere on the path.
//!
//! Used by `nod-helper` for its config and keys and by `pam_nod.so` for the helper binary. A
//! path-based check followed by a path-based open leaves a window in which a directory can be
//! swapped; here every component is opened with `O_NOFOLLOW` relative to the fd of its parent,
//! starting at `/`, and checked with `fstat` on that fd. The fd that was checked is the fd that
//! is returned, so what was checked is what gets read or executed.
//!
//! Threat model: a local user who can write somewhere on the path must not be able to make root
//! read a config, key or binary of their choosing.

#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::Uid;

/// What the final component must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// The requirements on the final component; ancestors are always checked as root-owned
/// directories that group and others cannot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    /// Also refuse any permission bit for group or others (private keys).
    pub private: bool,
    /// The owner every component must have. Root in production; tests may pass their own uid.
    pub owner: Uid,
}

impl Rule {
    /// A root-owned regular file that only root may write.
    pub const fn root_file() -> Self {
        Self {
            kind: Kind::File,
            private: false,
            owner: Uid::from_raw(0),
        }
    }

    /// A root-owned regular file that only root may read or write.
    pub const fn root_private_file() -> Self {
        Self {
            kind: Kind::File,
            private: true,
            owner: Uid::from_raw(0),
        }
    }

    /// A root-owned directory that only root may write.
    pub const fn root_dir() -> Self {
        Self {
            kind: Kind::Dir,
            private: false,
            owner: Uid::from_raw(0),
        }
    }
}

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    NotAbsolute,
    NotFound,
    Symlink,
    WrongOwner { uid: u32, want: u32 },
    Writable { mode: u32 },
    NotPrivate { mode: u32 },
    NotRegularFile,
    NotDirectory,
    Io(Errno),
}

/// A path that failed the checks, with the component that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    pub path: PathBuf,
    pub reason: Reason,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.reason {
            Reason::NotAbsolute => write!(f, "{p} is not an absolute path — use a full path"),
            Reason::NotFound => write!(f, "{p} does not exist"),
            Reason::Symlink => write!(
                f,
                "{p} is a symlink — replace it with the real file or directory"
            ),
            Reason::WrongOwner { uid, want } => write!(
                f,
                "{p} is owned by uid {uid}, not {want} — run `chown {want} {p}`"
            ),
            Reason::Writable { mode } => write!(
                f,
                "{p} is writable by group or others (mode {mode:04o}) — run `chmod go-w {p}`"
            ),
            Reason::NotPrivate { mode } => write!(
                f,
                "{p} is accessible by group or others (mode {mode:04o}) — run `chmod 600 {p}`"
            ),
            Reason::NotRegularFile => write!(f, "{p} is not a regular file"),
            Reason::NotDirectory => write!(f, "{p} is not a directory"),
            Reason::Io(e) => write!(f, "{p}: {}", e.desc()),
        }
    }
}

impl std::error::Error for Unsafe {}

const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn unsafe_at(path: &Path, reason: Reason) -> Unsafe {
    Unsafe {
        path: path.to_owned(),
        reason,
    }
}

fn io_reason(e: Errno) -> Reason {
    match e {
        Errno::ENOENT => Reason::NotFound,
        // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on a symlink gives ENOTDIR.
        Errno::ELOOP => Reason::Symlink,
        Errno::ENOTDIR => Reason::NotDirectory,
        e => Reason::Io(e),
    }
}

fn check_stat(
    path: &Path,
    st: &FileStat,
    kind: Kind,
    private: bool,
    owner: Uid,
) -> Result<(), Unsafe> {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let mode = st.st_mode & 0o7777;
    match (kind, fmt) {
        (_, SFlag::S_IFLNK) => return Err(unsafe_at(path, Reason::Symlink)),
        (Kind::File, SFlag::S_IFREG) | (Kind::Dir, SFlag::S_IFDIR) => {}
        (Kind::File, _) => return Err(unsafe_at(path, Reason::NotRegularFile)),
        (Kind::Dir, _) => return Err(unsafe_at(path, Reason::NotDirectory)),
    }
    if st.st_uid != owner.as_raw() {
        return Err(unsafe_at(
            path,
            Reason::WrongOwner {
                uid: st.st_uid,
                want: owner.as_raw(),
            },
        ));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_at(path, Reason::Writable { mode }));
    }
    if private && mode & 0o077 != 0 {
        return Err(unsafe_at(path, Reason::NotPrivate { mode }));
    }
    Ok(())
}

/// A trusted directory, held open so files in it are opened relative to the checked fd.
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl TrustedDir {
    /// Walks `path` from `/` and checks every directory on the way, including `path` itself.
    pub fn open(path: &Path, owner: Uid) -> Result<Self, Unsafe> {
        if !path.is_absolute() {
            return Err(unsafe_at(path, Reason::NotAbsolute));
        }
        let root_path = Path::new("/");
        let fd = nix::fcntl::open(root_path, DIR_FLAGS, Mode::empty())
            .map_err(|e| unsafe_at(root_path, io_reason(e)))?;
        let mut dir = Self {
            fd,
            path: root_path.to_owned(),
        };
        dir.check_self(owner)?;
        for comp in path.components() {
            match comp {
                Component::RootDir => {}
                Component::Normal(name) => dir = dir.child_dir(name, owner)?,
                // `..` and `.` would let a path leave the walked tree; refuse them.
                _ => return Err(unsafe_at(path, Reason::NotAbsolute)),
            }
        }
        Ok(dir)
    }

    fn check_self(&self, owner: Uid) -> Result<(), Unsafe> {
        let st = fstat(self.fd.as_fd()).map_err(|e| unsafe_at(&self.path, Reason::Io(e)))?;
        check_stat(&self.path, &st, Kind::Dir, false, owner)
    }

    fn child_dir(&self, name: &OsStr, owner: Uid) -> Result<Self, Unsafe> {
        let path = self.path.join(name);
        let fd = openat(self.fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(|e| {
            // O_DIRECTORY|O_NOFOLLOW reports a symlink as ENOTDIR; name it for what it is.
            let is_link = nix::sys::stat::fstatat(
                self.fd.as_fd(),
                name,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits());
            let reason = if is_link {
                Reason::Symlink
            } else {
                io_reason(e)
            };
            unsafe_at(&path, reason)
        })?;
        let dir = Self { fd, path };
        dir.check_self(owner)?;
        Ok(dir)
    }

    /// The path this directory was opened as.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` in this directory for reading, without following a symlink, and checks it.
    pub fn open_file(&self, name: &OsStr, rule: Rule) -> Result<File, Unsafe> {
        let path = self.path.join(name);
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(unsafe_at(&path, Reason::NotAbsolute));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::empty())
            .map_err(|e| unsafe_at(&path, io_reason(e)))?;
        let st = fstat(fd.as_fd()).map_err(|e| unsafe_at(&path, Reason::Io(e)))?;
        check_stat(&path, &st, rule.kind, rule.private, rule.owner)?;
        Ok(File::from(fd))
    }

    /// Names of the entries in this directory, sorted; `.` and `..` are left out.
    pub fn file_names(&self) -> Result<Vec<OsString>, Unsafe> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let dir = nix::dir::Dir::openat(self.fd.as_fd(), ".", flags, Mode::empty())
            .map_err(|e| unsafe_at(&self.path, io_reason(e)))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| unsafe_at(&self.path, Reason::Io(e)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Opens a trusted file: every ancestor is a directory owned by `rule.owner` that group and
/// others cannot write, no component is a symlink, and the file meets `rule`.
pub fn open_file(path: &Path, rule: Rule) -> Result<File, Unsafe> {
    let (parent, name) = split(path)?;
    TrustedDir::open(parent, rule.owner)?.open_file(name, rule)
}

/// Checks a path as [`open_file`] or [`TrustedDir::open`] would, without keeping it open.
pub fn check(path: &Path, rule: Rule) -> Result<(), Unsafe> {
    match rule.kind {
        Kind::File => open_file(path, rule).map(drop),
        Kind::Dir => TrustedDir::open(path, rule.owner).map(drop),
    }
}

fn split(path: &Path) -> Result<(&Path, &OsStr), Unsafe> {
    match (path.is_absolute(), path.parent(), path.file_name()) {
        (true, Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(unsafe_at(path, Reason::NotAbsolute)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// A scratch tree owned by whoever runs the tests. Its ancestors (`/tmp`) are not trusted,
    /// so the tests open the scratch directory itself and check what lies below it.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("nod-fscheck-{}", std::process::id()))
            .join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn me() -> Uid {
        Uid::effective()
    }

    fn stat_of(p: &Path) -> FileStat {
        nix::sys::stat::lstat(p).unwrap()
    }

    #[test]
    fn rejects_relative_and_dotdot_paths() {
        assert_eq!(
            open_file(Path::new("etc/passwd"), Rule::root_file())
                .unwrap_err()
                .reason,
            Reason::NotAbsolute
        );
        assert_eq!(
            TrustedDir::open(Path::new("/etc/../tmp"), Uid::from_raw(0))
                .unwrap_err()
                .reason,
            Reason::NotAbsolute
        );
    }

    #[test]
    fn world_writable_tmp_is_not_a_trusted_ancestor() {
        let err = TrustedDir::open(Path::new("/tmp"), Uid::from_raw(0)).unwrap_err();
        assert!(matches!(err.reason, Reason::Writable { .. }), "{err}");
    }

    #[test]
    fn group_writable_file_is_refused() {
        let dir = scratch("gw");
        let f = dir.join("config.toml");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check_stat(&f, &stat_of(&f), Kind::File, false, me()).unwrap_err();
        assert_eq!(err.reason, Reason::Writable { mode: 0o664 });
        assert!(err.to_string().contains("chmod go-w"));
    }

    #[test]
    fn readable_private_file_is_refused() {
        let dir = scratch("priv");
        let f = dir.join("host.key");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_stat(&f, &stat_of(&f), Kind::File, true, me()).unwrap_err();
        assert_eq!(err.reason, Reason::NotPrivate { mode: 0o640 });
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        check_stat(&f, &stat_of(&f), Kind::File, true, me()).unwrap();
    }

    #[test]
    fn wrong_owner_is_refused() {
        let dir = scratch("owner");
        let f = dir.join("f");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let other = Uid::from_raw(me().as_raw().wrapping_add(1));
        let err = check_stat(&f, &stat_of(&f), Kind::File, false, other).unwrap_err();
        assert!(matches!(err.reason, Reason::WrongOwner { .. }));
    }

    #[test]
    fn symlinked_file_is_refused_by_open() {
        let dir = scratch("link");
        fs::write(dir.join("real"), "x").unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        // Open relative to the scratch dir fd, so the ancestors of the build dir do not matter.
        let fd = nix::fcntl::open(&dir, DIR_FLAGS, Mode::empty()).unwrap();
        let td = TrustedDir {
            fd,
            path: dir.clone(),
        };
        let rule = Rule {
            kind: Kind::File,
            private: false,
            owner: me(),
        };
        assert_eq!(
            td.open_file(OsStr::new("link"), rule).unwrap_err().reason,
            Reason::Symlink
        );
        td.open_file(OsStr::new("real"), rule).unwrap();
        assert_eq!(
            td.file_names().unwrap(),
            vec![OsString::from("link"), OsString::from("real")]
        );
    }

    #[test]
    fn symlinked_directory_is_refused_by_walk() {
        let dir = scratch("dirlink");
        fs::create_dir(dir.join("real")).unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        let fd = nix::fcntl::open(&dir, DIR_FLAGS, Mode::empty()).unwrap();
        let td = TrustedDir {
            fd,
            path: dir.clone(),
        };
        let err = td.child_dir(OsStr::new("link"), me()).unwrap_err();
        assert_eq!(err.reason, Reason::Symlink);
    }
}
