//! Writing the log: records, checkpoints, rotation, recovery after a crash.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::verify::scan;
use super::{AuditError, AuditRecord, Checkpoint, Entry, segment_name, sha256_hex};
use crate::keys::SigningKey;

/// How often the log signs and rotates.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    /// A signed checkpoint at least every this many records.
    pub checkpoint_every: u64,
    /// Records per segment file before rotating to the next.
    pub segment_records: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        // A checkpoint with every record: no record is ever unsigned on disk (a signature
        // costs tens of microseconds, next to the fsync that both share).
        Self {
            checkpoint_every: 1,
            segment_records: 100_000,
        }
    }
}

struct Tail {
    file: Arc<File>,
    path: PathBuf,
    segment: u32,
    segment_records: u64,
    seq: u64,
    head: String,
    since_checkpoint: u64,
    /// The last line is a shutdown checkpoint.
    sealed: bool,
    /// Writes so far (each a record or checkpoint with its lines), for group commit.
    writes: u64,
}

/// When an appended record must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before `append` returns (records that must precede what they allow).
    Now,
    /// With the next durable write, at the latest when the log closes: for records whose
    /// loss in a crash reads as the crash itself (a stream's completion: without it the
    /// stream shows as cut off by the process dying, which it then was).
    WithNext,
}

/// The append-only, hash-chained, signed audit log of one exchange process.
pub struct AuditLog {
    dir: PathBuf,
    options: AuditOptions,
    signer: Arc<SigningKey>,
    key_id: String,
    tail: Mutex<Tail>,
    /// Writes known durable. Held while syncing, so that concurrent appenders wait for one
    /// fsync that covers them all instead of each paying its own (group commit).
    synced: Mutex<u64>,
    /// Held for the life of the log: one writer per log.
    lock: File,
    /// The policy version named by records that do not name their own.
    policy_version: Mutex<Option<String>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Make a directory entry (a new or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How many times, 25 ms apart, a held lock is retried before the log is in use.
const LOCK_TRIES: u32 = 40;

/// Whether another process holds the log of `dir` (a running exchange).
pub fn in_use(dir: &Path) -> bool {
    let Ok(lock) = OpenOptions::new().read(true).open(dir.join("LOCK")) else {
        return false;
    };
    // A shared lock: it never keeps a starting exchange from taking the exclusive one
    // for longer than this call.
    match lock.try_lock_shared() {
        Ok(()) => {
            let _ = lock.unlock();
            false
        }
        Err(_) => true,
    }
}

/// The process id of the running server (serve, node) that holds the log of `dir` and
/// reloads its policies on SIGHUP. Ok(None): no process holds the log, or one that does
/// not reload (a query, an export, a REPL). Err: the id in the lock file is not
/// confirmed as the holder's (the lock file was written by someone else, or the holder
/// runs in another PID namespace), so it must not be signalled.
pub fn holder_pid(dir: &Path) -> Result<Option<u32>, String> {
    let lock = dir.join("LOCK");
    if !in_use(dir) {
        return Ok(None);
    }
    let text = fs::read_to_string(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    let Some(pid) = text.trim().strip_prefix("reload-pid ") else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a process id", lock.display()))?;
    if pid <= 1 {
        return Err(format!(
            "{}: process id {pid} is not a server's",
            lock.display()
        ));
    }
    if holds_lock(pid, &lock)? {
        Ok(Some(pid))
    } else {
        Err(format!(
            "{}: process {pid} is not confirmed as the holder of the lock (another PID namespace, or a file written by someone else): signal the server yourself",
            lock.display()
        ))
    }
}

/// Whether process `pid` holds a lock on `file` (Linux: `/proc/locks`, which names the
/// holder's pid and the file's inode).
#[cfg(target_os = "linux")]
fn holds_lock(pid: u32, file: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .ino();
    let locks = fs::read_to_string("/proc/locks").map_err(|e| format!("/proc/locks: {e}"))?;
    Ok(locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`
        f.get(1) == Some(&"FLOCK")
            && f.get(4).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            && f.get(5)
                .and_then(|d| d.rsplit(':').next())
                .and_then(|i| i.parse::<u64>().ok())
                == Some(inode)
    }))
}

#[cfg(not(target_os = "linux"))]
fn holds_lock(_pid: u32, _file: &Path) -> Result<bool, String> {
    Err(
        "the holder of the lock cannot be confirmed on this platform: signal the server yourself"
            .into(),
    )
}

impl AuditLog {
    /// Open (or create) the log in `dir`. The whole log is verified first under the
    /// signer's public key; a log that does not verify is not appended to. A torn last
    /// line is moved to a `.torn` file beside its segment and an unclean shutdown is
    /// sealed with a `recovered` checkpoint that says what was found.
    pub fn open(
        dir: &Path,
        signer: Arc<SigningKey>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // A lock can outlive its holder by a moment: a process that another thread of the
        // holder forks keeps the lock's file description until it execs (seen in CI, under
        // load). So a held lock is retried for up to a second before the log is in use.
        let mut tries = 0;
        while lock.try_lock().is_err() {
            tries += 1;
            if tries > LOCK_TRIES {
                return Err(AuditError::Locked { path: lock_path });
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        // No process id until a server advertises one (advertise_reloads): a stale one
        // must not be signalled.
        let _ = lock.set_len(0);
        migrate_legacy(dir)?;
        remove_stale_snapshots(dir);
        let public = signer.public_key();
        let found = scan(dir, Some(&public), false)?;
        let mut notes = Vec::new();
        if let Some(t) = &found.torn {
            let aside = t.path.with_extension(format!(
                "jsonl.torn-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
            ));
            fs::write(&aside, &t.bytes).map_err(io_err(&aside))?;
            let f = OpenOptions::new()
                .write(true)
                .open(&t.path)
                .map_err(io_err(&t.path))?;
            f.set_len(t.offset).map_err(io_err(&t.path))?;
            f.sync_all().map_err(io_err(&t.path))?;
            sync_dir(dir)?;
            notes.push(format!(
                "torn last line {} of segment {} ({} bytes, SHA-256 {}) moved to {}",
                t.line,
                t.segment,
                t.bytes.len(),
                sha256_hex(&t.bytes),
                aside
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            ));
        }
        let (segment, path) = if found.last_segment == 0 {
            (1, dir.join(segment_name(1)))
        } else {
            (
                found.last_segment,
                dir.join(segment_name(found.last_segment)),
            )
        };
        let segment_records = found.segment_records;
        if let Some(next) = found.pending_segment {
            // Rotation creates the next segment before announcing it, so a missing one
            // was deleted: damage, not a crash.
            return Err(AuditError::Broken {
                path: dir.join(segment_name(next)),
                segment: next,
                line: 0,
                seq: Some(found.summary.records),
                message: format!(
                    "segment {next}, announced by the last rotation checkpoint, is missing"
                ),
            });
        }
        if let Some(empty) = &found.dangling {
            // Created by a rotation that died before announcing it: nothing in it.
            fs::remove_file(empty).map_err(io_err(empty))?;
            sync_dir(dir)?;
            notes.push(format!(
                "empty segment {} left by an interrupted rotation removed",
                empty
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            ));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir)?;
        let empty = found.summary.records == 0 && found.summary.checkpoints == 0;
        if !empty && !found.summary.sealed && notes.is_empty() {
            notes.push(format!(
                "the log was not closed cleanly: {} records after the last checkpoint",
                found.since_checkpoint
            ));
        } else if !notes.is_empty() && found.since_checkpoint > 0 {
            notes.push(format!(
                "{} records after the last checkpoint",
                found.since_checkpoint
            ));
        }
        let log = Self {
            dir: dir.to_path_buf(),
            options,
            key_id: public.id(),
            signer,
            tail: Mutex::new(Tail {
                file: Arc::new(file),
                path,
                segment,
                segment_records,
                seq: found.summary.records,
                head: found.summary.head,
                since_checkpoint: found.since_checkpoint,
                sealed: found.summary.sealed,
                writes: 0,
            }),
            synced: Mutex::new(0),
            lock,
            policy_version: Mutex::new(None),
        };
        if !notes.is_empty() {
            let mut tail = log.tail.lock().map_err(|_| AuditError::Poisoned)?;
            log.checkpoint(&mut tail, "recovered", Some(notes.join("; ")))?;
        }
        Ok(log)
    }

    /// The log directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn broken(tail: &Tail, message: String) -> AuditError {
        AuditError::Broken {
            path: tail.path.clone(),
            segment: tail.segment,
            line: 0,
            seq: Some(tail.seq),
            message,
        }
    }

    /// A signed checkpoint line over `seq` records and chain head `prev`.
    fn checkpoint_line(
        &self,
        tail: &Tail,
        seq: u64,
        prev: &str,
        reason: &str,
        note: Option<String>,
    ) -> Result<String, AuditError> {
        let mut c = Checkpoint {
            checkpoint: seq,
            segment: tail.segment,
            time: now(),
            reason: reason.to_string(),
            note,
            key_id: self.key_id.clone(),
            signature: String::new(),
            prev: prev.to_string(),
        };
        c.signature = self.signer.sign_hex(&c.message());
        serde_json::to_string(&c).map_err(|e| Self::broken(tail, e.to_string()))
    }

    /// Write lines in one write (not yet synced: see [`Self::sync`]).
    fn write_lines(&self, tail: &mut Tail, lines: &[&str]) -> Result<(), AuditError> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        (&*tail.file).write_all(&buf).map_err(io_err(&tail.path))?;
        tail.writes += 1;
        Ok(())
    }

    /// Make every write up to `mine` durable: one fsync covers all writes made before it
    /// starts, so appenders that queue here behind a running fsync usually find theirs done.
    fn sync(&self, mine: u64) -> Result<(), AuditError> {
        let mut synced = self.synced.lock().map_err(|_| AuditError::Poisoned)?;
        if *synced >= mine {
            return Ok(());
        }
        // Every write so far is in this segment or in earlier ones, synced when rotated.
        let (upto, file, path) = {
            let tail = self.tail.lock().map_err(|_| AuditError::Poisoned)?;
            (tail.writes, Arc::clone(&tail.file), tail.path.clone())
        };
        file.sync_data().map_err(io_err(&path))?;
        *synced = upto;
        Ok(())
    }

    /// Sync under the tail lock (checkpoints of rotation, recovery and shutdown).
    fn sync_locked(&self, tail: &Tail) -> Result<(), AuditError> {
        tail.file.sync_data().map_err(io_err(&tail.path))?;
        if let Ok(mut synced) = self.synced.try_lock() {
            *synced = (*synced).max(tail.writes);
        }
        Ok(())
    }

    fn checkpoint(
        &self,
        tail: &mut Tail,
        reason: &str,
        note: Option<String>,
    ) -> Result<(), AuditError> {
        let line = self.checkpoint_line(tail, tail.seq, &tail.head, reason, note)?;
        self.write_lines(tail, &[&line])?;
        self.sync_locked(tail)?;
        tail.head = sha256_hex(line.as_bytes());
        tail.since_checkpoint = 0;
        tail.sealed = reason == "shutdown";
        Ok(())
    }

    /// Continue in the next segment. The new file exists before the old segment announces
    /// it, so an announced segment that is missing was deleted, never lost in a crash.
    fn rotate(&self, tail: &mut Tail) -> Result<(), AuditError> {
        let next = tail.segment + 1;
        let path = self.dir.join(segment_name(next));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.checkpoint(
            tail,
            "rotate",
            Some(format!("continues in {}", segment_name(next))),
        )?;
        tail.file = Arc::new(file);
        tail.path = path;
        tail.segment = next;
        tail.segment_records = 0;
        Ok(())
    }

    /// Append a record durably (written and fsynced, with its checkpoint when one is due,
    /// before this returns); returns it as written. Concurrent appends share fsyncs.
    pub fn append(&self, entry: Entry) -> Result<AuditRecord, AuditError> {
        self.append_with(entry, Durability::Now)
    }

    /// Append a record, on disk as `durability` says; returns it as written.
    pub fn append_with(
        &self,
        entry: Entry,
        durability: Durability,
    ) -> Result<AuditRecord, AuditError> {
        let (record, mine) = self.write_record(entry)?;
        if durability == Durability::Now {
            self.sync(mine)?;
        }
        Ok(record)
    }

    /// Write this process's id into the lock file, for `exchange policy reload` to signal:
    /// only servers that reload on SIGHUP (serve, node) do.
    pub fn advertise_reloads(&self) {
        use std::io::{Seek, Write};
        let mut f = &self.lock;
        let _ = f
            .set_len(0)
            .and_then(|()| f.seek(std::io::SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| writeln!(f, "reload-pid {}", std::process::id()))
            .and_then(|()| f.sync_data());
    }

    /// The policy version recorded on records that do not name their own (the version in
    /// force: set when the exchange opens and at each reload).
    pub fn set_policy_version(&self, version: &str) {
        if let Ok(mut v) = self.policy_version.lock() {
            *v = Some(version.to_string());
        }
    }

    /// Number, chain, sign and write a record (not synced); returns it and its write.
    fn write_record(&self, mut entry: Entry) -> Result<(AuditRecord, u64), AuditError> {
        if entry.policy_version.is_none() {
            entry.policy_version = self.policy_version.lock().ok().and_then(|v| v.clone());
        }
        let mut tail = self.tail.lock().map_err(|_| AuditError::Poisoned)?;
        // Rotate before writing, so that a failed rotation fails before the record exists.
        if tail.segment_records >= self.options.segment_records.max(1) {
            self.rotate(&mut tail)?;
        }
        let record = AuditRecord {
            seq: tail.seq + 1,
            time: now(),
            entry,
            prev: tail.head.clone(),
        };
        let line =
            serde_json::to_string(&record).map_err(|e| Self::broken(&tail, e.to_string()))?;
        let mut head = sha256_hex(line.as_bytes());
        let signed = tail.since_checkpoint + 1 >= self.options.checkpoint_every.max(1);
        let checkpoint = if signed {
            Some(self.checkpoint_line(&tail, record.seq, &head, "interval", None)?)
        } else {
            None
        };
        match &checkpoint {
            Some(c) => self.write_lines(&mut tail, &[&line, c])?,
            None => self.write_lines(&mut tail, &[&line])?,
        }
        if let Some(c) = &checkpoint {
            head = sha256_hex(c.as_bytes());
        }
        tail.head = head;
        tail.seq = record.seq;
        tail.segment_records += 1;
        tail.since_checkpoint = if signed { 0 } else { tail.since_checkpoint + 1 };
        tail.sealed = false;
        Ok((record, tail.writes))
    }

    /// Verify the whole log as it stood when called, under this log's own public key,
    /// while statements go on being recorded (the console's "verify now"). Appends wait
    /// only while the segments are listed: every segment but the last is closed, and the
    /// last holds whole lines up to its length then. A snapshot of them (hard links, and a
    /// copy of the last up to that length) beside the log is verified; an error names the
    /// log's own files.
    pub fn verify_now(&self) -> Result<super::Summary, AuditError> {
        let (files, last_len) = {
            let _tail = self.tail.lock().map_err(|_| AuditError::Poisoned)?;
            let files = super::verify::segments(&self.dir)?;
            let last_len = match files.last() {
                Some((_, p)) => fs::metadata(p).map_err(io_err(p))?.len(),
                None => 0,
            };
            (files, last_len)
        };
        let parent = self.dir.parent().unwrap_or(&self.dir);
        let snap = tempfile::Builder::new()
            .prefix(".audit-verify-")
            .tempdir_in(parent)
            .map_err(io_err(parent))?;
        for (i, (_, path)) in files.iter().enumerate() {
            let to = snap.path().join(path.file_name().unwrap_or_default());
            if i + 1 == files.len() {
                let from = File::open(path).map_err(io_err(path))?;
                let mut out = File::create(&to).map_err(io_err(&to))?;
                std::io::copy(&mut std::io::Read::take(from, last_len), &mut out)
                    .map_err(io_err(&to))?;
            } else if fs::hard_link(path, &to).is_err() {
                fs::copy(path, &to).map_err(io_err(path))?;
            }
        }
        super::verify(snap.path(), &self.signer.public_key()).map_err(|e| match e {
            AuditError::Broken {
                path,
                segment,
                line,
                seq,
                message,
            } => AuditError::Broken {
                path: self.dir.join(path.file_name().unwrap_or_default()),
                segment,
                line,
                seq,
                message,
            },
            AuditError::Io { path, source } => AuditError::Io {
                path: self.dir.join(path.file_name().unwrap_or_default()),
                source,
            },
            other => other,
        })
    }

    /// Seal the log with a shutdown checkpoint (also done when the log is dropped).
    pub fn close(&self) -> Result<(), AuditError> {
        let mut tail = self.tail.lock().map_err(|_| AuditError::Poisoned)?;
        if tail.sealed {
            return Ok(());
        }
        self.checkpoint(&mut tail, "shutdown", None)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("exchange: could not seal the audit log: {e}");
        }
    }
}

/// Snapshots of [`AuditLog::verify_now`] left by a process that died while verifying
/// (copies of the log, nothing else): removed when the log is opened.
fn remove_stale_snapshots(dir: &Path) {
    let Some(parent) = dir.parent() else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".audit-verify-")
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Logs of earlier versions lived in one `audit.jsonl` beside the directory: it becomes
/// segment 1 (its chain is the same).
fn migrate_legacy(dir: &Path) -> Result<(), AuditError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let legacy = parent.join("audit.jsonl");
    let first = dir.join(segment_name(1));
    if legacy.is_file() && !first.exists() {
        fs::rename(&legacy, &first).map_err(io_err(&legacy))?;
        sync_dir(dir)?;
    }
    Ok(())
}
