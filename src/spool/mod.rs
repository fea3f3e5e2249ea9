//! The durable spool behind queued routes (`delivery = "queue"`): a request the rules let
//! through is appended here, made durable by the fsync policy, answered, and later delivered
//! in the background by [`crate::deliver::queue`].
//!
//! - [`record`]: one request as bytes, with a checksum;
//! - [`segment`]: segment files, and reading them back (torn and corrupt regions);
//! - `lane`: one worker's way in: its requests' frames, written by a task on that worker's
//!   runtime (group commit), answered there;
//! - `writer`: appending to segments, the fsync policy, the sync thread;
//! - this file: opening and recovering a spool folder, appending, and removing segments once
//!   every record in them is delivered.
//!
//! Durable records go to the workers that deliver them ([`Spool::attach`]): a group commit's
//! records as one [`Batch`] per worker (the worker that accepted each request delivers it),
//! recovered records shared out among the workers at start.
//!
//! Memory: every undelivered record is also held in memory (in a worker's delivery lanes)
//! until it is delivered, so memory use is bounded by `--spool-max-size` like the disk.

mod lane;
pub mod metrics;
pub mod record;
pub mod segment;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::deliver::Outgoing;
pub use metrics::SpoolMetrics;
pub use record::Record;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every record is synced before its request is answered (concurrent records share one
    /// sync). Nothing answered is lost, even on power loss.
    Always,
    /// Records are written before the answer and synced at most this long after. A process
    /// crash loses nothing; an OS crash or power loss may lose the last interval's records.
    Every(Duration),
}

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Largest total size of segment files; past it, routes' `on_spool_full` applies.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl SpoolSettings {
    pub fn new(dir: PathBuf) -> Self {
        SpoolSettings {
            dir,
            fsync: Fsync::Every(Duration::from_millis(10)),
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why a spool cannot be opened or a request cannot be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {what}: {source} (check --spool and the folder's permissions)")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "spool {0} is in use by another tagway process (each process needs its own --spool folder)"
    )]
    Locked(String),
    #[error("the spool is full ({0} bytes, --spool-max-size)")]
    Full(u64),
    #[error("the spool writer has stopped")]
    Stopped,
    #[error("this request cannot be spooled: {0}")]
    Record(#[from] record::DecodeError),
    #[error("this request ({0} bytes) is larger than a spool record may be (64MiB)")]
    TooLarge(usize),
}

impl SpoolError {
    fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        SpoolError::Io {
            path: path.display().to_string(),
            what,
            source,
        }
    }
}

/// Where a record is: its segment and the offset of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub offset: u64,
}

/// A spooled request on its way to delivery.
#[derive(Debug)]
pub struct Queued {
    pub loc: Loc,
    pub record: Record,
}

/// Records handed to one delivering worker at once (one channel message, one wake-up).
pub type Batch = Vec<Queued>;

/// Where durable records go: one channel per delivering worker. Records that become durable
/// before any worker is attached (the recovered ones, at start) wait here.
#[derive(Default)]
struct Outboxes {
    inner: Mutex<OutboxState>,
}

#[derive(Default)]
struct OutboxState {
    to: Vec<mpsc::UnboundedSender<Batch>>,
    waiting: Batch,
}

impl Outboxes {
    /// Hands each record to the worker that accepted it (modulo the workers attached), one
    /// batch per worker.
    fn deliver(&self, records: Vec<(usize, Queued)>) {
        let Ok(mut st) = self.inner.lock() else {
            return;
        };
        let n = st.to.len();
        if n == 0 {
            st.waiting.extend(records.into_iter().map(|(_, q)| q));
            return;
        }
        let mut per: Vec<Batch> = (0..n).map(|_| Vec::new()).collect();
        for (w, q) in records {
            per[w % n].push(q);
        }
        for (tx, b) in st.to.iter().zip(per) {
            // A worker gone (shutting down) leaves its records in the spool for next start.
            if !b.is_empty() {
                let _ = tx.send(b);
            }
        }
    }
}

#[derive(Debug)]
struct SegState {
    len: u64,
    /// Records in it still to deliver (recovered) or appended (this run: counted when the writer
    /// places a frame in it, before the write, so it is never complete while a batch adds to it).
    total: u64,
    done: u64,
    sealed: bool,
    /// Offsets of delivered records, buffered; written by [`Spool::flush_acks`].
    ack: Option<std::io::BufWriter<File>>,
}

#[derive(Debug, Default)]
struct State {
    segs: BTreeMap<u64, SegState>,
    next_id: u64,
}

/// What the writers and [`Spool::done`] share.
struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    metrics: Arc<SpoolMetrics>,
}

impl Shared {
    /// Removes a sealed segment whose records are all done (with its ack file).
    fn remove_if_complete(&self, st: &mut State, id: u64) {
        let Some(s) = st.segs.get(&id) else { return };
        if !(s.sealed && s.done >= s.total) {
            return;
        }
        let len = s.len;
        st.segs.remove(&id);
        for p in [
            segment::seg_path(&self.dir, id),
            segment::ack_path(&self.dir, id),
        ] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("spool: cannot remove {}: {e}", p.display());
            }
        }
        self.metrics.bytes.fetch_sub(len, Relaxed);
    }
}

pub struct Spool {
    settings: SpoolSettings,
    shared: Arc<Shared>,
    outboxes: Arc<Outboxes>,
    /// One per worker, from [`Spool::attach`] on.
    lanes: std::sync::OnceLock<Vec<Arc<lane::Lane>>>,
    /// `Fsync::Every`: what the sync thread syncs, and the thread.
    dirty: Option<Arc<writer::Dirty>>,
    syncer: Mutex<Option<writer::Syncer>>,
    /// Held (flock) while this spool is open.
    lock: Mutex<Option<File>>,
}

/// One worker's part of the spool (see [`Spool::attach`]).
pub struct Attached {
    /// The records this worker is to deliver: its own once durable, and its share of the
    /// recovered ones.
    pub records: mpsc::UnboundedReceiver<Batch>,
    /// Writes this worker's appends (with `Fsync::Always`, every worker's: only the first
    /// worker gets one); to be run on the worker's runtime.
    pub writer: Option<LaneTask>,
}

/// The task that writes one worker's appends ([`LaneTask::run`]).
pub struct LaneTask(Arc<lane::Lane>);

impl LaneTask {
    /// Runs for as long as the worker's runtime does.
    pub async fn run(self) {
        lane::run(self.0).await;
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.settings.dir)
            .finish()
    }
}

impl Spool {
    /// Opens (creating it if needed) and recovers a spool folder: every undelivered record
    /// in it is queued for delivery, damaged regions are logged and skipped.
    pub fn open(settings: SpoolSettings, metrics: Arc<SpoolMetrics>) -> Result<Spool, SpoolError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, "cannot create", e))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .map_err(|e| SpoolError::io(&lock_path, "cannot create the lock file", e))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(SpoolError::Locked(dir.display().to_string()));
        }
        let outboxes = Arc::new(Outboxes::default());
        let mut recovered = Vec::new();
        let state = recover(&dir, &metrics, &mut recovered)?;
        if let Ok(mut o) = outboxes.inner.lock() {
            o.waiting = recovered;
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(state),
            metrics,
        });
        let (dirty, syncer) = match settings.fsync {
            Fsync::Always => (None, None),
            Fsync::Every(every) => {
                let dirty = Arc::new(writer::Dirty::default());
                match writer::Syncer::start(shared.clone(), dirty.clone(), every) {
                    Ok(s) => (Some(dirty), Some(s)),
                    Err(e) => {
                        tracing::error!(
                            "spool: cannot start the sync thread, syncing on every write: {e}"
                        );
                        (None, None)
                    }
                }
            }
        };
        Ok(Spool {
            settings,
            shared,
            outboxes,
            lanes: std::sync::OnceLock::new(),
            dirty,
            syncer: Mutex::new(syncer),
            lock: Mutex::new(Some(lock)),
        })
    }

    pub fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    pub fn metrics(&self) -> &SpoolMetrics {
        &self.shared.metrics
    }

    /// Appends a request; returns once it is durable by the fsync policy (written, or written
    /// and synced). `Full` when it would take the spool past its size limit. The record is
    /// then handed to delivering worker `worker` (modulo the workers attached).
    pub async fn append(
        &self,
        route: &str,
        upstream: &str,
        out: &Outgoing,
        worker: usize,
    ) -> Result<(), SpoolError> {
        let at = now_ms();
        let frame = record::encode(at, route, upstream, out);
        // Recovery refuses longer records as damage: never answer for one.
        if frame.len() - record::HEADER > record::MAX_PAYLOAD {
            return Err(SpoolError::TooLarge(frame.len()));
        }
        let n = frame.len() as u64;
        let m = &self.shared.metrics;
        if m.bytes.fetch_add(n, Relaxed) + n > self.settings.max_bytes {
            m.bytes.fetch_sub(n, Relaxed);
            return Err(SpoolError::Full(self.settings.max_bytes));
        }
        // What waits in memory for delivery is read back from the frame: compact copies, not
        // the request's header and body buffers (which may share much larger read buffers).
        let record = match record::decode(&frame[record::HEADER..]) {
            Ok(r) => r,
            Err(e) => {
                m.bytes.fetch_sub(n, Relaxed);
                return Err(SpoolError::Record(e));
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = writer::Job {
            frame,
            record,
            worker,
            reply,
        };
        let lane = self
            .lanes
            .get()
            .and_then(|l| l.get(worker % l.len().max(1)));
        if !lane.is_some_and(|l| l.push(job)) {
            m.bytes.fetch_sub(n, Relaxed);
            return Err(SpoolError::Stopped);
        }
        answer.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Attaches `n` workers, once: each gets its way in (a lane task to run on its runtime;
    /// with `Fsync::Always` one lane for all) and its records to deliver, the recovered ones already shared out among them. `None`
    /// when already attached.
    pub fn attach(&self, n: usize) -> Option<Vec<Attached>> {
        let n = n.max(1);
        let mut st = self.outboxes.inner.lock().ok()?;
        if self.lanes.get().is_some() {
            return None;
        }
        // Per-request sync: one lane for all, so one sync covers every worker's requests.
        let n_lanes = if self.settings.fsync == Fsync::Always {
            1
        } else {
            n
        };
        let lanes: Vec<Arc<lane::Lane>> = (0..n_lanes)
            .map(|_| {
                let w = writer::Writer::new(
                    self.shared.clone(),
                    self.outboxes.clone(),
                    self.settings.fsync,
                    self.settings.segment_bytes,
                    self.dirty.clone(),
                );
                Arc::new(lane::Lane::new(w, self.shared.metrics.clone()))
            })
            .collect();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        st.to = txs;
        let waiting = std::mem::take(&mut st.waiting);
        let mut per: Vec<Batch> = (0..n).map(|_| Vec::new()).collect();
        for (i, q) in waiting.into_iter().enumerate() {
            per[i % n].push(q);
        }
        for (tx, b) in st.to.iter().zip(per) {
            if !b.is_empty() {
                let _ = tx.send(b);
            }
        }
        let attached = rxs
            .into_iter()
            .enumerate()
            .map(|(i, records)| Attached {
                records,
                writer: lanes.get(i).map(|l| LaneTask(l.clone())),
            })
            .collect();
        let _ = self.lanes.set(lanes);
        Some(attached)
    }

    /// Records are delivered or dead-lettered: they are never sent again, and a segment goes
    /// once all its records are done. One lock for the lot.
    pub fn done(&self, locs: &[Loc]) {
        let sh = &self.shared;
        let Ok(mut st) = sh.state.lock() else { return };
        let found = locs.iter().filter(|&&l| done_one(sh, &mut st, l)).count();
        sh.metrics.pending.fetch_sub(found as u64, Relaxed);
    }

    /// Writes out the buffered delivery marks (the delivery thread calls this every few tens
    /// of milliseconds and when idle, so a restart resends only what was delivered since).
    pub fn flush_acks(&self) {
        let Ok(mut st) = self.shared.state.lock() else {
            return;
        };
        for s in st.segs.values_mut() {
            if let Some(a) = &mut s.ack {
                let _ = a.flush();
            }
        }
    }

    /// Stops taking appends and syncs what was written (call once the workers have stopped).
    /// Records not yet delivered stay in the folder for the next start.
    pub fn close(&self) {
        self.flush_acks();
        for l in self.lanes.get().into_iter().flatten() {
            l.close();
        }
        if let Some(s) = self.syncer.lock().ok().and_then(|mut s| s.take()) {
            s.stop();
        }
        if let Some(d) = &self.dirty {
            writer::sync_all(&self.shared, d);
        }
        // Another gateway may open the folder from now on.
        if let Ok(mut l) = self.lock.lock() {
            l.take();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

/// One record done (see [`Spool::done`]); `false` if its segment is already gone.
fn done_one(sh: &Shared, st: &mut State, loc: Loc) -> bool {
    let Some(s) = st.segs.get_mut(&loc.seg) else {
        return false;
    };
    s.done += 1;
    if s.sealed && s.done >= s.total {
        sh.remove_if_complete(st, loc.seg);
        return true;
    }
    // Buffered and never synced: a crash may send the last few delivered records again.
    if s.ack.is_none() {
        let p = segment::ack_path(&sh.dir, loc.seg);
        s.ack = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| tracing::warn!("spool: cannot open {}: {e}", p.display()))
            .ok()
            .map(|f| std::io::BufWriter::with_capacity(8192, f));
    }
    if let Some(f) = &mut s.ack {
        let _ = f.write_all(&loc.offset.to_le_bytes());
    }
    true
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads every segment in `dir`: undelivered records go to `queue`, damage is logged and
/// counted, segments with nothing left are removed.
fn recover(dir: &Path, metrics: &SpoolMetrics, queue: &mut Batch) -> Result<State, SpoolError> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| SpoolError::io(dir, "cannot list", e))? {
        let e = e.map_err(|e| SpoolError::io(dir, "cannot list", e))?;
        if let Some(id) = e.file_name().to_str().and_then(segment::parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let mut st = State {
        next_id: ids.last().map_or(1, |l| l + 1),
        ..State::default()
    };
    let (mut recovered, mut segs) = (0u64, 0usize);
    for id in ids {
        let path = segment::seg_path(dir, id);
        let bytes = std::fs::read(&path).map_err(|e| SpoolError::io(&path, "cannot read", e))?;
        let acked: HashSet<u64> = std::fs::read(segment::ack_path(dir, id))
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let scan = segment::scan(&bytes);
        for d in &scan.damage {
            metrics.damaged.fetch_add(1, Relaxed);
            tracing::error!(
                "spool {}: {} damaged bytes at offset {} ({}){}; the good records around them are kept",
                path.display(),
                d.len,
                d.offset,
                d.reason,
                if d.tail {
                    ", a torn last write (crash or power loss)"
                } else {
                    ""
                }
            );
        }
        let mut total = 0;
        for (offset, payload) in scan.records {
            if acked.contains(&offset) {
                continue;
            }
            match record::decode(&bytes[payload]) {
                Ok(record) => {
                    total += 1;
                    queue.push(Queued {
                        loc: Loc { seg: id, offset },
                        record,
                    });
                }
                Err(e) => {
                    metrics.damaged.fetch_add(1, Relaxed);
                    tracing::error!(
                        "spool {}: record at offset {offset} skipped: {e}",
                        path.display()
                    );
                }
            }
        }
        if total == 0 {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(segment::ack_path(dir, id));
            continue;
        }
        recovered += total;
        segs += 1;
        metrics.bytes.fetch_add(bytes.len() as u64, Relaxed);
        st.segs.insert(
            id,
            SegState {
                len: bytes.len() as u64,
                total,
                done: 0,
                sealed: true,
                ack: None,
            },
        );
    }
    metrics.recovered.fetch_add(recovered, Relaxed);
    metrics.pending.fetch_add(recovered, Relaxed);
    if recovered > 0 {
        tracing::info!(
            "spool {}: {recovered} undelivered records in {segs} segments, delivering them",
            dir.display()
        );
    }
    Ok(st)
}

#[cfg(test)]
mod tests;
