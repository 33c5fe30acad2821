//! Unix socket binding shared by the vhost-user and control sockets.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Who may connect to a socket the daemon binds itself: its owner, group and permission bits
/// (`--socket-user`, `--socket-group`, `--socket-mode`), already resolved to ids. `None` keeps
/// what bind(2) gave (the daemon's user and group, mode from the umask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

impl SocketAccess {
    /// Whether anything is to be changed.
    pub fn is_default(&self) -> bool {
        *self == SocketAccess::default()
    }
}

/// Bind a unix socket at `path`. A stale socket left by a dead process is replaced; a live one
/// (something accepts connections) or a path that is not a socket is refused, so a typo can
/// never delete a regular file.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on it (is a daemon already running?)",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; choose another path",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// [`bind_unix`], then give the socket file `access`. The mode is set before the owner, and a
/// socket fresh from bind(2) is at most as open as the umask allows, so nobody outside the new
/// owner and group can connect in between. On failure the socket file is removed again.
pub fn bind_unix_with(path: &Path, access: &SocketAccess) -> io::Result<UnixListener> {
    let listener = bind_unix(path)?;
    if let Err(e) = apply_access(path, access) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

/// Set the mode, then the owner and group, of the socket file at `path` (which must still be a
/// socket: a path swapped for something else in between is refused, and a symlink is never
/// followed for the owner change).
pub fn apply_access(path: &Path, access: &SocketAccess) -> io::Result<()> {
    if access.is_default() {
        return Ok(());
    }
    let md = std::fs::symlink_metadata(path)?;
    if !md.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is no longer a socket",
        ));
    }
    if let Some(mode) = access.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set mode {mode:04o}: {e}")))?;
    }
    if access.uid.is_some() || access.gid.is_some() {
        std::os::unix::fs::lchown(path, access.uid, access.gid).map_err(|e| {
            let who = match (access.uid, access.gid) {
                (Some(u), Some(g)) => format!("uid {u} gid {g}"),
                (Some(u), None) => format!("uid {u}"),
                (None, Some(g)) => format!("gid {g}"),
                (None, None) => String::new(),
            };
            io::Error::new(
                e.kind(),
                format!("cannot change the owner to {who}: {e} (a different owner needs root or CAP_CHOWN; a group needs membership of it)"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vui-socket-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("s.sock")
    }

    #[test]
    fn mode_and_group_are_applied() {
        let p = temp("mode");
        // SAFETY: getegid cannot fail and touches no memory.
        let gid = unsafe { libc::getegid() };
        let access = SocketAccess {
            uid: None,
            gid: Some(gid),
            mode: Some(0o660),
        };
        let _l = bind_unix_with(&p, &access).unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.mode() & 0o7777, 0o660);
        assert_eq!(md.gid(), gid);
        // Re-applied with another mode: only the bits change.
        apply_access(
            &p,
            &SocketAccess {
                mode: Some(0o600),
                ..SocketAccess::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::symlink_metadata(&p).unwrap().mode() & 0o7777,
            0o600
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn owner_change_as_root() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let p = temp("owner");
        let access = SocketAccess {
            uid: Some(4_000_123),
            gid: Some(4_000_124),
            mode: Some(0o640),
        };
        let _l = bind_unix_with(&p, &access).unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o777),
            (4_000_123, 4_000_124, 0o640)
        );
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_refused() {
        let p = temp("file");
        std::fs::write(&p, "x").unwrap();
        let e = apply_access(
            &p,
            &SocketAccess {
                mode: Some(0o666),
                ..SocketAccess::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no longer a socket"), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}
