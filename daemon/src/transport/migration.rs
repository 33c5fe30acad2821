//! Device state transfer for live migration (vhost-user `SET_DEVICE_STATE_FD` /
//! `CHECK_DEVICE_STATE`, protocol feature DEVICE_STATE). The state itself is
//! [`model::device::state`]; docs/STATE.md describes both.
//!
//! The frontend reads (SAVE) or writes (LOAD) the pipe it passed only after our reply to
//! `SET_DEVICE_STATE_FD`, so the bytes cannot move on the message handler thread without a
//! deadlock once the state outgrows the pipe buffer. One transfer thread, started with the
//! daemon (the handler thread may not start threads under its seccomp filter), does the I/O;
//! `CHECK_DEVICE_STATE` waits for its result.
//!
//! The fd is the frontend's choice: one whose end never comes (an eventfd, a FIFO opened for
//! reading and writing, a pipe whose writer stays open) must neither hold the thread for good
//! nor let transfers, each holding its fd, pile up behind it. So a transfer does non-blocking
//! I/O and gives up at its deadline, and there is one transfer at a time: another one is
//! refused until it is done.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error("a device state transfer is still running: one at a time")]
    Busy,
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
    /// A job is queued or running.
    busy: Arc<AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Save { data, .. } => write!(f, "Save({} bytes)", data.len()),
            Job::Load { limit, .. } => write!(f, "Load(at most {limit} bytes)"),
        }
    }
}

/// Make `file` non-blocking (its I/O then waits in [`wait`], up to a deadline).
fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL on a descriptor `file` owns; no memory is passed.
    let r = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The fd is not ready: wait a little, or give up at `deadline`.
fn wait(deadline: Instant, timeout: Duration) -> Result<(), TransferError> {
    if Instant::now() >= deadline {
        return Err(TransferError::Timeout(timeout));
    }
    std::thread::sleep(Duration::from_millis(1));
    Ok(())
}

fn read_limited(
    file: &mut File,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, TransferError> {
    let deadline = Instant::now() + timeout;
    set_nonblocking(file)?;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(data),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                // One byte more than allowed tells a too-large stream from one of exactly
                // `limit` bytes.
                if data.len() > limit {
                    return Err(TransferError::TooLarge(limit));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(deadline, timeout)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::Io(e)),
        }
    }
}

fn write_all(file: &mut File, data: &[u8], timeout: Duration) -> Result<usize, TransferError> {
    let deadline = Instant::now() + timeout;
    set_nonblocking(file)?;
    let mut rest = data;
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(0) => return Err(TransferError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(deadline, timeout)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::Io(e)),
        }
    }
    Ok(data.len())
}

impl Transfer {
    /// Start the transfer thread. `enter` runs first on it (the seccomp filter).
    pub fn spawn(
        enter: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<Transfer> {
        Self::spawn_with(enter, CHECK_TIMEOUT)
    }

    /// [`Transfer::spawn`], each transfer given up after `timeout`.
    fn spawn_with(
        enter: impl FnOnce() -> Result<(), String> + Send + 'static,
        timeout: Duration,
    ) -> io::Result<Transfer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let busy = Arc::new(AtomicBool::new(false));
        let idle = busy.clone();
        std::thread::Builder::new()
            .name("state-transfer".into())
            .spawn(move || {
                if let Err(e) = enter() {
                    error!("state transfer thread: {e}");
                    return;
                }
                // The fd is closed and the thread idle before the result is sent: whoever sees
                // the result may start the next transfer.
                for job in rx {
                    match job {
                        Job::Save {
                            mut file,
                            data,
                            done,
                        } => {
                            let r = write_all(&mut file, &data, timeout);
                            drop(file);
                            idle.store(false, Ordering::Release);
                            let _ = done.send(r);
                        }
                        Job::Load {
                            mut file,
                            limit,
                            done,
                        } => {
                            let r = read_limited(&mut file, limit, timeout);
                            drop(file);
                            idle.store(false, Ordering::Release);
                            let _ = done.send(r);
                        }
                    }
                }
            })?;
        Ok(Transfer {
            jobs: Mutex::new(tx),
            busy,
        })
    }

    /// Queue `job` unless a transfer is queued or running already (its fd is dropped then).
    fn send(&self, job: Job) -> Result<(), TransferError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(TransferError::Busy);
        }
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| TransferError::Gone);
        if sent.is_err() {
            self.busy.store(false, Ordering::Release);
        }
        sent
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

    #[test]
    fn a_transfer_that_never_ends_is_given_up_and_holds_off_the_next_meanwhile() {
        let t = Transfer::spawn_with(|| Ok(()), Duration::from_millis(200)).unwrap();
        // The writer stays open: the stream never ends.
        let (r, w) = pipe();
        let started = Instant::now();
        let stuck = t.load(r, 1000).unwrap();
        let (r2, _w2) = pipe();
        assert!(matches!(t.load(r2, 1000), Err(TransferError::Busy)));
        let (_r3, w3) = pipe();
        assert!(matches!(t.save(w3, vec![1; 10]), Err(TransferError::Busy)));
        assert!(matches!(stuck.wait(), Err(TransferError::Timeout(_))));
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Done: the next transfer runs, a save into a pipe nobody reads gives up too.
        let (_r4, w4) = pipe();
        let pending = t.save(w4, vec![0; 1 << 20]).unwrap();
        assert!(matches!(pending.wait(), Err(TransferError::Timeout(_))));
        let (r5, mut w5) = pipe();
        let pending = t.load(r5, 1000).unwrap();
        w5.write_all(&[3; 10]).unwrap();
        drop(w5);
        assert!(matches!(pending.wait(), Ok(Finished::Loaded(v)) if v == vec![3; 10]));
        drop(w);
    }
}
