//! Device state transfer for live migration (vhost-user `SET_DEVICE_STATE_FD` /
//! `CHECK_DEVICE_STATE`, protocol feature DEVICE_STATE). The state itself is
//! [`model::device::state`]; docs/STATE.md describes both.
//!
//! The frontend reads (SAVE) or writes (LOAD) the pipe it passed only after our reply to
//! `SET_DEVICE_STATE_FD`, so the bytes cannot move on the message handler thread without a
//! deadlock once the state outgrows the pipe buffer. One transfer thread, started with the
//! daemon (the handler thread may not start threads under its seccomp filter), does the blocking
//! I/O; `CHECK_DEVICE_STATE` waits for its result.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::time::Duration;

use log::error;

/// How long CHECK_DEVICE_STATE waits for the transfer to finish after the frontend asked: the
/// frontend sends it only once it has read or written everything, so this is a safety net
/// against a frontend that keeps the pipe open.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("device state transfer: {0}")]
    Io(#[from] io::Error),
    #[error("device state transfer: the stream is larger than {0} bytes (the state of this configuration cannot be that large)")]
    TooLarge(usize),
    #[error("device state transfer thread is gone")]
    Gone,
    #[error("device state transfer did not finish within {0:?}")]
    Timeout(Duration),
}

enum Job {
    Save {
        file: File,
        data: Vec<u8>,
        done: SyncSender<Result<usize, TransferError>>,
    },
    Load {
        file: File,
        limit: usize,
        done: SyncSender<Result<Vec<u8>, TransferError>>,
    },
}

/// A transfer the frontend started and has yet to check.
#[derive(Debug)]
pub enum Pending {
    Save(Receiver<Result<usize, TransferError>>),
    Load(Receiver<Result<Vec<u8>, TransferError>>),
}

/// Handle to the transfer thread.
#[derive(Debug)]
pub struct Transfer {
    jobs: Mutex<Sender<Job>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Save { data, .. } => write!(f, "Save({} bytes)", data.len()),
            Job::Load { limit, .. } => write!(f, "Load(at most {limit} bytes)"),
        }
    }
}

fn read_limited(file: &mut File, limit: usize) -> Result<Vec<u8>, TransferError> {
    let mut data = Vec::new();
    // One byte more than allowed tells a too-large stream from one of exactly `limit` bytes.
    let n = file
        .take(limit as u64 + 1)
        .read_to_end(&mut data)
        .map_err(TransferError::Io)?;
    if n > limit {
        return Err(TransferError::TooLarge(limit));
    }
    Ok(data)
}

impl Transfer {
    /// Start the transfer thread. `enter` runs first on it (the seccomp filter).
    pub fn spawn(
        enter: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<Transfer> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("state-transfer".into())
            .spawn(move || {
                if let Err(e) = enter() {
                    error!("state transfer thread: {e}");
                    return;
                }
                for job in rx {
                    match job {
                        Job::Save {
                            mut file,
                            data,
                            done,
                        } => {
                            let r = file.write_all(&data).map(|()| data.len());
                            drop(file);
                            let _ = done.send(r.map_err(TransferError::Io));
                        }
                        Job::Load {
                            mut file,
                            limit,
                            done,
                        } => {
                            let _ = done.send(read_limited(&mut file, limit));
                        }
                    }
                }
            })?;
        Ok(Transfer {
            jobs: Mutex::new(tx),
        })
    }

    fn send(&self, job: Job) -> Result<(), TransferError> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| TransferError::Gone)
    }

    /// Write `data` into the frontend's pipe, in the background.
    pub fn save(&self, file: File, data: Vec<u8>) -> Result<Pending, TransferError> {
        let (done, rx) = mpsc::sync_channel(1);
        self.send(Job::Save { file, data, done })?;
        Ok(Pending::Save(rx))
    }

    /// Read the frontend's pipe to its end (at most `limit` bytes), in the background.
    pub fn load(&self, file: File, limit: usize) -> Result<Pending, TransferError> {
        let (done, rx) = mpsc::sync_channel(1);
        self.send(Job::Load { file, limit, done })?;
        Ok(Pending::Load(rx))
    }
}

/// What a finished transfer produced.
#[derive(Debug)]
pub enum Finished {
    Saved(usize),
    Loaded(Vec<u8>),
}

impl Pending {
    /// Wait for the transfer thread to finish this transfer.
    pub fn wait(self) -> Result<Finished, TransferError> {
        let timeout = |e| match e {
            mpsc::RecvTimeoutError::Timeout => TransferError::Timeout(CHECK_TIMEOUT),
            mpsc::RecvTimeoutError::Disconnected => TransferError::Gone,
        };
        match self {
            Pending::Save(rx) => rx
                .recv_timeout(CHECK_TIMEOUT)
                .map_err(timeout)?
                .map(Finished::Saved),
            Pending::Load(rx) => rx
                .recv_timeout(CHECK_TIMEOUT)
                .map_err(timeout)?
                .map(Finished::Loaded),
        }
    }
}

/// The largest stream a device with this configuration can produce: every mapping as a MAP
/// record, plus room for everything else (endpoints, domains, tables, events).
pub fn load_limit(max_mappings: u64) -> usize {
    const MAP_RECORD: u64 = 4 + 4 + 32;
    let n = max_mappings
        .saturating_mul(MAP_RECORD)
        .saturating_add(16 << 20);
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0);
        // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn save_larger_than_a_pipe_and_load_with_a_limit() {
        let t = Transfer::spawn(|| Ok(())).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let (mut r, w) = pipe();
        let pending = t.save(w, data.clone()).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert!(matches!(pending.wait(), Ok(Finished::Saved(1_000_000))));

        let (r, mut w) = pipe();
        let pending = t.load(r, 1000).unwrap();
        w.write_all(&[7u8; 1000]).unwrap();
        drop(w);
        assert!(matches!(pending.wait(), Ok(Finished::Loaded(v)) if v == vec![7u8; 1000]));

        let (r, mut w) = pipe();
        let pending = t.load(r, 1000).unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&[7u8; 5000]);
        });
        assert!(matches!(pending.wait(), Err(TransferError::TooLarge(1000))));
        writer.join().unwrap();
    }
}
