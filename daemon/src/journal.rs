//! The state journal: the device's guest-visible state kept in a file (under /run) as it
//! changes, so a restarted daemon resumes serving the same VM with the same domains and
//! mappings. The file is a device-state stream (docs/STATE.md): a snapshot ending with END,
//! then one record appended per state change. docs/STATE.md, "Restart".
//!
//! Two files take turns: when the records appended since the last snapshot outweigh it, the
//! device writes a new snapshot (with the next generation number) into the other file, and only
//! then empties the current one. A crash at any point leaves at least one whole snapshot; when
//! both are whole, the higher generation is the current one. So the journal stays bounded by
//! about twice the state however long a guest keeps mapping and unmapping.
//!
//! The files are opened and locked at start-up, before the seccomp filters; afterwards only
//! write(2) and ftruncate(2) touch them, which every thread may make.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::{error, warn};

use model::device::state::{
    journal_generation, parse_state, push_record, StateJournal, StreamKind,
};

/// The journal's file names inside the state directory (the first one holds the lock).
pub const JOURNAL_FILES: [&str; 2] = ["device-state", "device-state.alt"];

/// Appended records never trigger a new snapshot below this many bytes.
const COMPACT_MIN: u64 = 256 * 1024;
/// Buffered records are written once they reach this many bytes, flush or not.
const PENDING_MAX: usize = 64 * 1024;

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

/// The open, locked journal files.
#[derive(Debug)]
pub struct Journal {
    files: [File; 2],
    /// The file appended to (the other is empty, or an older snapshot a crash left).
    active: usize,
    /// The state directory (for messages).
    dir: PathBuf,
    /// Generation of the active file's snapshot.
    generation: u64,
    /// Bytes of the active file's snapshot, and of the records appended after it.
    snapshot_len: u64,
    appended: u64,
    /// Records not written yet (see [`Self::append`]).
    pending: Vec<u8>,
    /// A write failed: the journal no longer reflects the device; say so once.
    broken: bool,
}

impl Journal {
    /// Open (creating them if needed) and lock the journal files in `dir`; return the journal
    /// with the content of its current file (empty if neither holds a whole snapshot but both
    /// are empty; an unreadable file's bytes otherwise, for the caller to report).
    pub fn open(dir: &Path) -> Result<(Journal, Vec<u8>), JournalError> {
        let open = |name: &str| -> Result<(File, Vec<u8>), JournalError> {
            let path = dir.join(name);
            let err = |err| JournalError::Open {
                path: path.clone(),
                err,
            };
            let mut file = open_state_file(dir, &path).map_err(err)?;
            if name == JOURNAL_FILES[0] {
                // SAFETY: flock on an fd we own; no memory is involved.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                    return Err(JournalError::Locked(dir.to_owned()));
                }
            }
            let mut old = Vec::new();
            file.read_to_end(&mut old).map_err(err)?;
            Ok((file, old))
        };
        let (f0, d0) = open(JOURNAL_FILES[0])?;
        let (f1, d1) = open(JOURNAL_FILES[1])?;
        let generation_of = |d: &[u8]| {
            parse_state(d, StreamKind::Journal)
                .ok()
                .map(|p| journal_generation(&p))
        };
        let generations = [generation_of(&d0), generation_of(&d1)];
        let active = match generations {
            [Some(g0), Some(g1)] if g1 > g0 => 1,
            [None, Some(_)] => 1,
            [None, None] if d0.is_empty() => 1,
            _ => 0,
        };
        let generation = generations[active].unwrap_or(0);
        let mut data = [d0, d1];
        let saved = std::mem::take(&mut data[active]);
        Ok((
            Journal {
                files: [f0, f1],
                active,
                dir: dir.to_owned(),
                generation,
                snapshot_len: saved.len() as u64,
                appended: 0,
                pending: Vec::with_capacity(PENDING_MAX),
                broken: false,
            },
            saved,
        ))
    }

    /// The generation the next snapshot carries.
    pub fn next_generation(&self) -> u64 {
        self.generation.wrapping_add(1)
    }

    fn failed(&mut self, what: &str, e: io::Error) {
        if !self.broken {
            error!(
                "state journal {}: {what}: {e}; a restart would not find the current state",
                self.dir.display()
            );
        }
        self.broken = true;
    }

    /// Add one record. It is buffered until [`Self::flush`] (which the request-queue worker
    /// calls once per batch, before any status of the batch reaches the driver), so a batch
    /// costs one write(2); a crash leaves at most a torn last record, which the next start
    /// drops.
    pub fn append(&mut self, kind: u8, payload: &[u8]) {
        push_record(&mut self.pending, kind, payload);
        if self.pending.len() >= PENDING_MAX {
            self.flush();
        }
    }

    /// Write the buffered records.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.files[self.active].write_all(&self.pending) {
            Ok(()) => self.appended += self.pending.len() as u64,
            Err(e) => self.failed("append", e),
        }
        self.pending.clear();
    }

    /// Have enough records piled up since the last snapshot to write a new one?
    pub fn wants_compaction(&self) -> bool {
        self.appended + self.pending.len() as u64 >= self.snapshot_len.max(COMPACT_MIN)
    }

    /// Make `snapshot` (a whole stream ending with END, carrying [`Self::next_generation`])
    /// the journal's content: written into the other file first, the current one emptied only
    /// once it is whole.
    pub fn rewrite(&mut self, snapshot: &[u8]) {
        // The snapshot holds what the buffered records say.
        self.pending.clear();
        let next = 1 - self.active;
        let written = self.files[next]
            .set_len(0)
            .and_then(|()| self.files[next].write_all(snapshot));
        if let Err(e) = written {
            // The current file still holds a whole, older state; keep appending there.
            self.failed("snapshot", e);
            return;
        }
        if let Err(e) = self.files[self.active].set_len(0) {
            // Harmless for a restart (the new snapshot has the higher generation); the file
            // is emptied at the next snapshot.
            warn!(
                "state journal {}: cannot empty the previous file: {e}",
                self.dir.display()
            );
        }
        if self.broken {
            warn!("state journal {}: written again", self.dir.display());
        }
        self.broken = false;
        self.active = next;
        self.generation = self.next_generation();
        self.snapshot_len = snapshot.len() as u64;
        self.appended = 0;
    }

    /// The current file's path (for messages).
    pub fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILES[self.active])
    }
}

/// Can this binary resume the journal in `dir` (for `--check-config` before an upgrade)? Read
/// only, without the lock the running daemon holds: the current snapshot's format, its
/// configuration against `device`, and its record kinds. `Ok` says what it holds.
pub fn check(dir: &Path, device: &model::config::DeviceConfig) -> Result<String, String> {
    let mut whole = Vec::new();
    let mut errors = Vec::new();
    for name in JOURNAL_FILES {
        let path = dir.join(name);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("state journal {}: {e}", path.display())),
        };
        if data.is_empty() {
            continue;
        }
        match parse_state(&data, StreamKind::Journal) {
            Ok(p) => whole.push((journal_generation(&p), path, p.header, kinds(&p))),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    fn kinds(p: &model::device::state::ParsedState<'_>) -> Vec<u8> {
        p.records.iter().map(|&(k, _)| k).collect()
    }
    let Some((generation, path, header, kinds)) = whole.into_iter().max_by_key(|w| w.0) else {
        return if errors.is_empty() {
            Ok(format!("state journal {}: empty", dir.display()))
        } else {
            Err(format!(
                "state journal cannot be resumed by this binary: {}",
                errors.join("; ")
            ))
        };
    };
    let refuse = |why: String| {
        Err(format!(
            "state journal {} cannot be resumed by this binary: {why}",
            path.display()
        ))
    };
    if let Err(e) = model::device::Device::new(device.clone()).check_state_header(&header) {
        return refuse(e.to_string());
    }
    if let Some(k) = kinds
        .iter()
        .find(|&&k| !model::device::state::known_record_kind(k))
    {
        return refuse(format!("record kind {k} is unknown to this version"));
    }
    Ok(format!(
        "state journal {}: generation {generation}, {} records, resumable by this binary",
        path.display(),
        kinds.len()
    ))
}

impl StateJournal for Journal {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }
    fn next_generation(&self) -> u64 {
        Journal::next_generation(self)
    }
    fn append(&mut self, kind: u8, payload: &[u8]) {
        Journal::append(self, kind, payload)
    }
    fn flush(&mut self) {
        Journal::flush(self)
    }
    fn wants_compaction(&self) -> bool {
        Journal::wants_compaction(self)
    }
    fn rewrite(&mut self, snapshot: &[u8]) {
        Journal::rewrite(self, snapshot)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::{DeviceConfig, EndpointSet};
    use model::device::state::{push_end, REC_ENDPOINT, REC_GENERATION};
    use model::device::{Device, Reply};
    use model::protocol::{Status, MAP_F_READ};
    use vhost_user_iommu_tests::proto;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vui-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A journal snapshot of generation `g` holding one ENDPOINT record `endpoint`.
    fn snapshot(g: u64, endpoint: u32) -> Vec<u8> {
        let mut s = model::device::Device::new(model::config::DeviceConfig::default()).save_state();
        // Drop the empty stream's END and build the records again.
        s.truncate(s.len() - 12);
        push_record(&mut s, REC_GENERATION, &g.to_le_bytes());
        push_record(&mut s, REC_ENDPOINT, &endpoint.to_le_bytes());
        push_end(&mut s, 2);
        s
    }

    fn write(dir: &Path, i: usize, data: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(JOURNAL_FILES[i]), data).unwrap();
    }

    #[test]
    fn the_newer_whole_snapshot_wins() {
        for (g0, g1, want) in [(3, 4, 1), (5, 2, 0), (7, 7, 0)] {
            let dir = tempdir("newer");
            write(&dir, 0, &snapshot(g0, 10));
            write(&dir, 1, &snapshot(g1, 11));
            let (j, saved) = Journal::open(&dir).unwrap();
            assert_eq!(j.active, want, "{g0} vs {g1}");
            assert_eq!(saved, snapshot([g0, g1][want], [10, 11][want]));
            assert_eq!(j.next_generation(), [g0, g1][want] + 1);
            drop(j);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_snapshot_cut_short_by_a_crash_loses_to_the_previous_one() {
        let dir = tempdir("torn");
        let mut old = snapshot(8, 10);
        push_record(&mut old, REC_ENDPOINT, &12u32.to_le_bytes());
        let new = snapshot(9, 11);
        // Every cut of the new snapshot before its END is whole: the old file is current.
        for cut in [0, 10, 72, new.len() - 1] {
            write(&dir, 0, &old);
            write(&dir, 1, &new[..cut]);
            let (j, saved) = Journal::open(&dir).unwrap();
            assert_eq!(
                (j.active, saved.as_slice()),
                (0, old.as_slice()),
                "cut {cut}"
            );
        }
        // Whole: the new one.
        write(&dir, 1, &new);
        let (j, saved) = Journal::open(&dir).unwrap();
        assert_eq!((j.active, saved), (1, new));
        drop(j);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rewrites_alternate_files_and_empty_the_previous_one() {
        let dir = tempdir("alternate");
        let (mut j, saved) = Journal::open(&dir).unwrap();
        assert!(saved.is_empty());
        for round in 1..=4u64 {
            let g = j.next_generation();
            assert_eq!(g, round);
            j.rewrite(&snapshot(g, round as u32));
            j.append(REC_ENDPOINT, &100u32.to_le_bytes());
            // Buffered until flushed.
            assert_eq!(
                std::fs::metadata(dir.join(JOURNAL_FILES[j.active]))
                    .unwrap()
                    .len(),
                snapshot(g, 0).len() as u64
            );
            j.flush();
            let sizes: Vec<u64> = JOURNAL_FILES
                .iter()
                .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
                .collect();
            assert_eq!(sizes[1 - j.active], 0, "round {round}: {sizes:?}");
            assert_eq!(sizes[j.active], snapshot(g, 0).len() as u64 + 8);
        }
        drop(j);
        // A second daemon on the same directory is refused while the first holds the lock.
        let (j, saved) = Journal::open(&dir).unwrap();
        let mut want = snapshot(4, 4);
        push_record(&mut want, REC_ENDPOINT, &100u32.to_le_bytes());
        assert_eq!(saved, want);
        assert!(matches!(Journal::open(&dir), Err(JournalError::Locked(_))));
        drop(j);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A device whose driver acked every offered feature (the model's unit-test configuration).
    fn dev() -> Device {
        let mut d = Device::new(DeviceConfig {
            input_start: 0,
            input_end: (1 << 48) - 1,
            domain_start: 1,
            domain_end: 1000,
            endpoints: EndpointSet::Ranges(vec![(0, 15)]),
            ..DeviceConfig::default()
        });
        let f = d.features();
        d.set_acked_features(f);
        d
    }

    fn ok(d: &mut Device, req: &[u8]) {
        let mut props = vec![0u8; d.config().probe_size as usize];
        assert_eq!(
            d.handle_request(req, &mut props),
            Reply::Status(Status::Ok),
            "{req:?}"
        );
    }

    /// The worker's passes: the last whole one comes back to the restarted daemon (to publish
    /// its used entries), and the REQUEST records of a pass whose write a crash cut short (no
    /// PASS record after them) are dropped: the driver never saw their statuses and submits
    /// them again from the queue, so applying them now would apply them twice.
    #[test]
    fn a_pass_cut_short_is_dropped_and_the_last_whole_pass_comes_back() {
        use model::device::state::Pass;
        let dir = tempdir("passes");
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut d = dev();
        d.set_journal(Box::new(j), saved);
        ok(&mut d, &proto::attach(1, 0, 0));
        d.journal_pass(7, &[(3, 4)]);
        ok(&mut d, &proto::map(1, 0x1000, 0x1fff, 0x5000, MAP_F_READ));
        ok(&mut d, &proto::map(1, 0x2000, 0x2fff, 0x6000, MAP_F_READ));
        d.journal_pass(8, &[(9, 4), (10, 4)]);
        // A pass that never got its PASS record: its MAP reached the file, its status never
        // reached the driver.
        ok(&mut d, &proto::map(1, 0x3000, 0x3fff, 0x7000, MAP_F_READ));
        d.journal_flush();
        drop(d);
        let (j, saved) = Journal::open(&dir).expect("journal again");
        let mut again = dev();
        again.set_journal(Box::new(j), saved);
        let s = again.resume_state(true).expect("a state").expect("resumed");
        assert_eq!((s.domains, s.mappings), (1, 2));
        assert_eq!(
            again.take_resumed_pass(),
            Some(Pass {
                avail_start: 8,
                chains: vec![(9, 4), (10, 4)]
            })
        );
        // The resumed state's snapshot carries the pass on: a second crash right away gives
        // the same answer.
        drop(again);
        let (j, saved) = Journal::open(&dir).expect("journal again");
        let mut third = dev();
        third.set_journal(Box::new(j), saved);
        let s = third.resume_state(true).expect("a state").expect("resumed");
        assert_eq!((s.domains, s.mappings), (1, 2));
        assert_eq!(third.take_resumed_pass().map(|p| p.avail_start), Some(8));
        drop(third);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A journal whose driver kept its request queue elsewhere belongs to another VM (or to
    /// this one before its driver started over): refused with the reason, the device starts
    /// clean and the journal is emptied (never a half-resumed device); the same driver resumes.
    #[test]
    fn a_journal_of_another_driver_is_refused_and_emptied() {
        use model::device::state::StateError;
        let dir = tempdir("otherdriver");
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut d = dev();
        d.set_journal(Box::new(j), saved);
        d.set_ring_identity(0x10_0000, 0x10_4000, 0x10_5000, 256);
        ok(&mut d, &proto::attach(1, 0, 0));
        ok(&mut d, &proto::map(1, 0x1000, 0x1fff, 0x5000, MAP_F_READ));
        d.journal_pass(0, &[(0, 4), (1, 4)]);
        drop(d);
        // The same driver: resumed.
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut same = dev();
        same.set_journal(Box::new(j), saved);
        same.set_ring_identity(0x10_0000, 0x10_4000, 0x10_5000, 256);
        let s = same.resume_state(true).expect("a state").expect("resumed");
        assert_eq!((s.domains, s.mappings), (1, 1));
        drop(same);
        // Another driver whose queue also carries on past 0.
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut other = dev();
        other.set_journal(Box::new(j), saved);
        other.set_ring_identity(0x20_0000, 0x20_4000, 0x20_5000, 256);
        let e = other
            .resume_state(true)
            .expect("a state")
            .expect_err("refused");
        assert!(matches!(e, StateError::OtherDriver { .. }), "{e}");
        assert!(e.to_string().contains("used 0x105000"), "{e}");
        assert!(other.is_pristine());
        assert_eq!(other.take_resumed_pass(), None);
        drop(other);
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut next = dev();
        next.set_journal(Box::new(j), saved);
        assert!(
            !next.has_resume_state(),
            "the refused state was dropped from the journal"
        );
        drop(next);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A corrupt journal (a flipped byte in its snapshot) or one in a format this binary does
    /// not read is not resumed: the device starts clean.
    #[test]
    fn a_corrupt_or_newer_journal_is_not_resumed() {
        for (what, patch) in [("checksum", 80usize), ("version", 8)] {
            let dir = tempdir(what);
            let (j, saved) = Journal::open(&dir).expect("journal");
            let mut d = dev();
            d.set_journal(Box::new(j), saved);
            ok(&mut d, &proto::attach(1, 0, 0));
            d.journal_pass(0, &[(0, 4)]);
            drop(d);
            for f in JOURNAL_FILES {
                let p = dir.join(f);
                let mut b = std::fs::read(&p).expect("read");
                if let Some(x) = b.get_mut(patch) {
                    *x ^= 0x40;
                }
                std::fs::write(&p, b).expect("write");
            }
            let (j, saved) = Journal::open(&dir).expect("journal");
            let mut again = dev();
            again.set_journal(Box::new(j), saved);
            assert!(!again.has_resume_state(), "{what}");
            assert!(again.is_pristine(), "{what}");
            drop(again);
            std::fs::remove_dir_all(&dir).expect("clean up");
        }
    }

    /// `--check-config` before an upgrade: a journal the binary can resume, one written with
    /// another configuration, one with a record kind it does not know.
    #[test]
    fn check_says_whether_this_binary_resumes_the_journal() {
        let dir = tempdir("check");
        let cfg = dev().config().clone();
        assert!(check(&dir, &cfg).expect("no journal").contains("empty"));
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut d = dev();
        d.set_journal(Box::new(j), saved);
        ok(&mut d, &proto::attach(1, 0, 0));
        d.journal_pass(0, &[(0, 4)]);
        // Checked while the daemon holds the lock.
        let said = check(&dir, &cfg).expect("resumable");
        assert!(said.contains("resumable by this binary"), "{said}");
        let other = model::config::DeviceConfig {
            domain_end: 2000,
            ..cfg.clone()
        };
        let e = check(&dir, &other).expect_err("another configuration");
        assert!(e.contains("domain-end"), "{e}");
        drop(d);
        let path = dir.join(JOURNAL_FILES[1]);
        let mut data = std::fs::read(&path).expect("read");
        if data.is_empty() {
            data = std::fs::read(dir.join(JOURNAL_FILES[0])).expect("read");
        }
        push_record(&mut data, 0x42, &[]);
        std::fs::write(dir.join(JOURNAL_FILES[0]), &data).expect("write");
        std::fs::write(dir.join(JOURNAL_FILES[1]), b"").expect("write");
        let e = check(&dir, &cfg).expect_err("unknown kind");
        assert!(e.contains("record kind 66"), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A journal written before passes existed (no PASSES flag): every record counts.
    #[test]
    fn a_journal_without_passes_keeps_every_request() {
        let dir = tempdir("nopasses");
        let mut d = dev();
        ok(&mut d, &proto::attach(1, 0, 0));
        let mut old = d.save_state();
        push_record(
            &mut old,
            model::device::state::REC_REQUEST,
            &proto::map(1, 0x1000, 0x1fff, 0x5000, MAP_F_READ),
        );
        write(&dir, 0, &old);
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut again = dev();
        again.set_journal(Box::new(j), saved);
        let s = again.resume_state(true).expect("a state").expect("resumed");
        assert_eq!((s.domains, s.mappings), (1, 1));
        assert_eq!(again.take_resumed_pass(), None);
        drop(again);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_guest_that_maps_and_unmaps_forever_keeps_the_journal_bounded() {
        let dir = std::env::temp_dir().join(format!("vui-bounded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (j, saved) = Journal::open(&dir).expect("journal");
        let mut d = dev();
        d.set_journal(Box::new(j), saved);
        ok(&mut d, &proto::attach(1, 0, 0));
        // A standing state of 2000 mappings, then a long churn over one page.
        for i in 0..2000u64 {
            let va = 0x1000_0000 + i * 0x1000;
            ok(
                &mut d,
                &proto::map(1, va, va + 0xfff, 0x10_0000 + i * 0x1000, MAP_F_READ),
            );
        }
        let sizes = || -> u64 {
            JOURNAL_FILES
                .iter()
                .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
                .sum()
        };
        let state_len = d.save_state().len() as u64;
        let mut largest = 0;
        for i in 0..40_000u64 {
            // One pass of the worker per request pair, as a driver waiting for each.
            ok(
                &mut d,
                &proto::map(1, 0, 0xfff, 0x1000 * (i % 16), MAP_F_READ),
            );
            ok(&mut d, &proto::unmap(1, 0, 0xfff));
            d.journal_pass((2 * i) as u16, &[(0, 4), (1, 4)]);
            if i % 1000 == 0 {
                largest = largest.max(sizes());
            }
        }
        // 80 000 records of 40 bytes went through; the files never held more than a snapshot,
        // the records that trigger the next one, and one snapshot being written.
        let bound = 2 * state_len.max(256 * 1024) + state_len + 1024;
        assert!(
            largest <= bound,
            "journal grew to {largest} bytes (bound {bound})"
        );
        // A restart finds exactly the device's state.
        let want = d.save_state();
        drop(d);
        let (j, saved) = Journal::open(&dir).expect("journal again");
        let mut again = dev();
        again.set_journal(Box::new(j), saved);
        let summary = again.resume_state(true).expect("a state").expect("resumed");
        assert_eq!((summary.domains, summary.mappings), (1, 2000));
        assert_eq!(again.save_state(), want);
        drop(again);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
