//! Dropping privileges once everything that needs them is open.

use std::ffi::{CStr, CString};
use std::io;

use log::info;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0:?}: no such user")]
    NoSuchUser(String),
    #[error("--user {user:?}: cannot look the user up: {err}")]
    Lookup { user: String, err: io::Error },
    #[error("--user {user:?}: cannot switch to uid {uid} / gid {gid}: {call} failed: {err} (the daemon must start as root, or with CAP_SETUID and CAP_SETGID)")]
    Switch {
        user: String,
        uid: u32,
        gid: u32,
        call: &'static str,
        err: io::Error,
    },
    #[error("--user {0:?}: privileges could be regained after the switch; refusing to run")]
    NotDropped(String),
    #[error("group {0:?}: no such group")]
    NoSuchGroup(String),
    #[error("group {group:?}: cannot look the group up: {err}")]
    GroupLookup { group: String, err: io::Error },
}

/// A user to run as: its uid and primary gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Look up a user by name, or take a numeric uid (whose primary group is looked up when the
/// uid has a passwd entry, else gid = uid).
pub fn lookup(user: &str) -> Result<Identity, PrivilegeError> {
    let by_name = getpw(user)?;
    if let Some(id) = by_name {
        return Ok(id);
    }
    match user.parse::<u32>() {
        Ok(uid) => Ok(getpw_uid(uid, user)?.unwrap_or(Identity { uid, gid: uid })),
        Err(_) => Err(PrivilegeError::NoSuchUser(user.to_string())),
    }
}

fn getpw(user: &str) -> Result<Option<Identity>, PrivilegeError> {
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_string()))?;
    getpw_with(user, |pwd, buf, result| {
        // SAFETY: every pointer is valid for the call: `name` is a C string, `pwd`/`result`
        // point to live locals, and `buf` is a writable buffer of the given length.
        unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

fn getpw_uid(uid: u32, user: &str) -> Result<Option<Identity>, PrivilegeError> {
    getpw_with(user, |pwd, buf, result| {
        // SAFETY: as in `getpw`: valid out-pointers and a writable buffer of the given length.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
}

fn getpw_with(
    user: &str,
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Result<Option<Identity>, PrivilegeError> {
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: passwd is a plain C struct; all-zero is a valid value for it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let r = call(&mut pwd, &mut buf, &mut result);
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(PrivilegeError::Lookup {
                user: user.to_string(),
                err: io::Error::from_raw_os_error(r),
            });
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(Identity {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

fn check(
    r: libc::c_int,
    user: &str,
    id: Identity,
    call: &'static str,
) -> Result<(), PrivilegeError> {
    if r == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Switch {
            user: user.to_string(),
            uid: id.uid,
            gid: id.gid,
            call,
            err: io::Error::last_os_error(),
        })
    }
}

/// Look up a group by name, or take a numeric gid.
pub fn lookup_group(group: &str) -> Result<u32, PrivilegeError> {
    let name = CString::new(group).map_err(|_| PrivilegeError::NoSuchGroup(group.to_string()))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: group is a plain C struct; all-zero is a valid value for it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is a C string, `grp`/`result` point to live locals, and `buf` is a
        // writable buffer of the given length.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            return Err(PrivilegeError::GroupLookup {
                group: group.to_string(),
                err: io::Error::from_raw_os_error(r),
            });
        }
        if !result.is_null() {
            return Ok(grp.gr_gid);
        }
        return group
            .parse::<u32>()
            .map_err(|_| PrivilegeError::NoSuchGroup(group.to_string()));
    }
}

/// Switch the whole process (all threads: glibc broadcasts set*id) to `user`: supplementary
/// groups dropped, real/effective/saved ids all changed. Call before starting threads.
pub fn drop_to(user: &str) -> Result<Identity, PrivilegeError> {
    let id = lookup(user)?;
    // SAFETY: getuid/getgid cannot fail and touch no memory.
    let (cur_uid, cur_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if cur_uid == id.uid && cur_gid == id.gid && cur_uid != 0 {
        info!("already running as uid {} gid {}", id.uid, id.gid);
        return Ok(id);
    }
    let groups = [id.gid];
    // SAFETY: `groups` is a live array of one gid_t.
    let r = unsafe { libc::setgroups(1, groups.as_ptr()) };
    check(r, user, id, "setgroups")?;
    // SAFETY: plain system call with integer arguments.
    let r = unsafe { libc::setresgid(id.gid, id.gid, id.gid) };
    check(r, user, id, "setresgid")?;
    // SAFETY: plain system call with integer arguments.
    let r = unsafe { libc::setresuid(id.uid, id.uid, id.uid) };
    check(r, user, id, "setresuid")?;
    // With every uid changed away from 0, going back must fail.
    // SAFETY: as above; success here is the failure we check for.
    if id.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(PrivilegeError::NotDropped(user.to_string()));
    }
    info!("running as user {user} (uid {} gid {})", id.uid, id.gid);
    Ok(id)
}

/// The name of a passwd entry, for messages (best effort).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    // SAFETY: passwd is a plain C struct; all-zero is a valid value for it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid out-pointers and a writable buffer of the given length.
    let r = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if r != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`, alive here.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numeric_lookups() {
        assert_eq!(lookup("root").unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(lookup("0").unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(user_name(0).as_deref(), Some("root"));
        // A uid without a passwd entry keeps gid = uid.
        assert_eq!(
            lookup("4000123").unwrap(),
            Identity {
                uid: 4_000_123,
                gid: 4_000_123
            }
        );
        assert!(matches!(
            lookup("no-such-user-vui"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert_eq!(lookup_group("4000125").unwrap(), 4_000_125);
        assert!(matches!(
            lookup_group("no-such-group-vui"),
            Err(PrivilegeError::NoSuchGroup(_))
        ));
    }
}
