//! The state journal: the device's guest-visible state kept in a file (under /run) as it
//! changes, so a restarted daemon resumes serving the same VM with the same domains and
//! mappings. The file is a device-state stream (docs/STATE.md): a snapshot ending with END,
//! then one record appended per state change. docs/STATE.md, "Restart".
//!
//! The file is opened and locked at start-up, before the seccomp filters; afterwards only
//! write(2) and ftruncate(2) touch it, which every thread may make.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::{error, warn};

use crate::device::state::push_record;

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "device-state";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state directory {path}: {err}")]
    Open { path: PathBuf, err: io::Error },
    #[error("state directory {0}: another daemon is using it (its journal is locked)")]
    Locked(PathBuf),
}

/// Open (creating it and its directory) a file of the state directory for reading and
/// appending, private to the daemon's user.
pub fn open_state_file(dir: &Path, path: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// An open, locked journal file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// A write failed: the journal no longer reflects the device; say so once.
    broken: bool,
}

impl Journal {
    /// Open (creating it if needed) and lock the journal in `dir`; return it with what it held.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<u8>), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let open_err = |err| JournalError::Open {
            path: path.clone(),
            err,
        };
        let mut file = open_state_file(dir, &path).map_err(open_err)?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::Locked(dir.to_owned()));
        }
        let mut old = Vec::new();
        file.read_to_end(&mut old).map_err(open_err)?;
        Ok((
            Journal {
                file,
                path,
                broken: false,
            },
            old,
        ))
    }

    fn failed(&mut self, what: &str, e: io::Error) {
        if !self.broken {
            error!(
                "state journal {}: {what}: {e}; a restart would not find the current state",
                self.path.display()
            );
        }
        self.broken = true;
    }

    /// Append one record. One write(2): a crash leaves at most a torn last record, which the
    /// next start drops.
    pub fn append(&mut self, kind: u8, payload: &[u8]) {
        let mut rec = Vec::with_capacity(4 + payload.len());
        push_record(&mut rec, kind, payload);
        if let Err(e) = self.file.write_all(&rec) {
            self.failed("append", e);
        }
    }

    /// Replace the content with `snapshot` (a whole stream ending with END).
    pub fn rewrite(&mut self, snapshot: &[u8]) {
        if let Err(e) = self.file.set_len(0) {
            self.failed("truncate", e);
            return;
        }
        match self.file.write_all(snapshot) {
            Ok(()) => {
                if self.broken {
                    warn!("state journal {}: written again", self.path.display());
                }
                self.broken = false;
            }
            Err(e) => self.failed("write", e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
