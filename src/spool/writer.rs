//! Appending to segments. With `Fsync::Every` each worker has its own [`Writer`] (its own
//! current segment), driven by the worker's lane task (`lane.rs`); with `Fsync::Always` one
//! writer serves every worker, so one sync covers all the requests waiting for it. The jobs
//! that arrived since the last pass go out with one write (group commit), are synced per the
//! policy, handed to the workers that accepted them for delivery, and answered. With `Fsync::Every(t)` a separate thread ([`Syncer`]) syncs the
//! written segments (and the folder, for new ones) every `t`, so a sync never holds up a
//! write or an answer.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Fsync, Loc, Outboxes, Queued, Record, SegState, Shared, SpoolError, segment};

pub(super) struct Job {
    pub frame: Vec<u8>,
    pub record: Record,
    /// The worker that accepted it, and delivers it.
    pub worker: usize,
    pub reply: oneshot::Sender<Result<(), SpoolError>>,
}

struct Active {
    id: u64,
    file: File,
    len: u64,
}

/// Segments written since the syncer's last pass (a handle each), and whether the folder
/// has a new name to sync.
#[derive(Default)]
pub(super) struct Dirty {
    files: Mutex<Vec<(u64, File)>>,
    dir: AtomicBool,
}

/// `Fsync::Every(t)`: the thread that syncs, every `t`, what was written since its last pass.
pub(super) struct Syncer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(
        shared: Arc<Shared>,
        dirty: Arc<Dirty>,
        every: Duration,
    ) -> std::io::Result<Syncer> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tagway-spool-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let stopping = st.load(Relaxed);
                    sync_all(&shared, &dirty);
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Syncer { stop, handle })
    }

    /// A last pass, then the thread ends.
    pub(super) fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.handle.join();
    }
}

pub(super) fn sync_all(shared: &Shared, dirty: &Dirty) {
    if dirty.dir.swap(false, Ordering::AcqRel) {
        sync_dir(shared);
    }
    let files = dirty
        .files
        .lock()
        .map(|mut d| std::mem::take(&mut *d))
        .unwrap_or_default();
    for (id, f) in files {
        shared.metrics.fsyncs.fetch_add(1, Relaxed);
        if let Err(e) = f.sync_data() {
            shared.metrics.write_errors.fetch_add(1, Relaxed);
            tracing::error!(
                "spool {}: cannot sync: {e}",
                segment::seg_path(&shared.dir, id).display()
            );
        }
    }
}

/// Every frame, in order, gathered by `writev` (as many calls as it takes).
fn write_frames(file: &mut File, frames: &[Job]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|j| IoSlice::new(&j.frame)).collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// New segment names must survive a power loss too.
fn sync_dir(shared: &Shared) {
    if let Ok(d) = File::open(&shared.dir) {
        let _ = d.sync_all();
    }
}

/// Appends to one current segment at a time.
pub(super) struct Writer {
    shared: Arc<Shared>,
    outboxes: Arc<Outboxes>,
    fsync: Fsync,
    segment_bytes: u64,
    active: Option<Active>,
    /// `Fsync::Every`: what the syncer syncs; `None` without a syncer thread (sync here).
    dirty: Option<Arc<Dirty>>,
    /// Bytes placed in the current segment and not yet written (the frames of the jobs
    /// being written, from the one after the last flush on).
    pending: u64,
    /// Frames placed in the current segment and not yet in its `total` (added under one lock
    /// per write, before the write and before the segment is sealed).
    uncounted: u64,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        outboxes: Arc<Outboxes>,
        fsync: Fsync,
        segment_bytes: u64,
        dirty: Option<Arc<Dirty>>,
    ) -> Self {
        Writer {
            shared,
            outboxes,
            fsync,
            segment_bytes: segment_bytes.max(1),
            active: None,
            dirty,
            pending: 0,
            uncounted: 0,
        }
    }

    /// Whether `write` may block on a sync (then it runs off the worker's thread).
    pub(super) fn syncs_inline(&self) -> bool {
        self.fsync == Fsync::Always || self.dirty.is_none()
    }

    /// At shutdown: whatever was written is synced, a segment whose records are all done goes.
    pub(super) fn finish(&mut self) {
        if let Err(e) = self.flush(&[]).and_then(|()| self.sync()) {
            tracing::error!("{e}");
        }
        self.retire_delivered_active();
    }

    /// Appends `jobs` with one write, syncs per the policy, hands the records to delivery and
    /// answers the callers (or tells them why not).
    pub(super) fn write(&mut self, jobs: Vec<Job>) {
        let mut locs = Vec::with_capacity(jobs.len());
        // jobs[from..locs.len()] are placed in the current segment, not yet written.
        let mut from = 0;
        let mut result = Ok(());
        for j in &jobs {
            if let Err(e) = self.place(&jobs, &mut from, j.frame.len(), &mut locs) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = self.flush(&jobs[from..locs.len()]);
        }
        if result.is_ok() {
            result = match self.fsync {
                Fsync::Always => self.sync(),
                Fsync::Every(_) => {
                    self.mark_dirty();
                    Ok(())
                }
            };
        }
        let m = &self.shared.metrics;
        if let Err(e) = result {
            m.write_errors.fetch_add(1, Relaxed);
            tracing::error!("{e}");
            self.unwind(&jobs, &locs);
            for j in jobs {
                let _ = j.reply.send(Err(SpoolError::Io {
                    path: self.shared.dir.display().to_string(),
                    what: "write failed",
                    source: std::io::Error::other(e.to_string()),
                }));
            }
            return;
        }
        m.appended.fetch_add(jobs.len() as u64, Relaxed);
        m.pending.fetch_add(jobs.len() as u64, Relaxed);
        // Handed over before the answers, so a record is with its worker once its request
        // is answered.
        let mut ready = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for (j, loc) in jobs.into_iter().zip(locs) {
            let q = Queued {
                loc,
                record: j.record,
            };
            ready.push((j.worker, q));
            replies.push(j.reply);
        }
        self.outboxes.deliver(ready);
        for r in replies {
            let _ = r.send(Ok(()));
        }
    }

    /// A failed batch: its frames are taken back off their segments' counts (sealed segments
    /// left with every record done are removed), and a new segment is started next time, as
    /// the failed one may end in a partial record (recovery skips it). The reservations of
    /// frames in no segment file are given back now; those of frames written before the
    /// failure stay in their segment's length until it is removed.
    fn unwind(&mut self, jobs: &[Job], locs: &[Loc]) {
        self.count();
        let reserved: u64 = jobs.iter().map(|j| j.frame.len() as u64).sum();
        let mut written = 0;
        if let Ok(mut st) = self.shared.state.lock() {
            for (j, l) in jobs.iter().zip(locs) {
                if let Some(s) = st.segs.get_mut(&l.seg) {
                    s.total = s.total.saturating_sub(1);
                    if l.offset < s.len {
                        written += j.frame.len() as u64;
                    }
                }
            }
            let mut segs: Vec<u64> = locs.iter().map(|l| l.seg).collect();
            segs.dedup();
            for id in segs {
                self.shared.remove_if_complete(&mut st, id);
            }
        }
        self.shared
            .metrics
            .bytes
            .fetch_sub(reserved - written, Relaxed);
        self.pending = 0;
        self.seal_active();
    }

    /// Places the next job's frame (`len` bytes) in the current segment, first writing what
    /// is placed and starting a new segment when it would grow past the segment size. The
    /// frame counts in its segment's `total` from the next `flush` on (before anything is
    /// written or sealed), so sealing a segment (here, when the batch rolls on) never removes
    /// it while it holds frames of this batch.
    fn place(
        &mut self,
        jobs: &[Job],
        from: &mut usize,
        len: usize,
        locs: &mut Vec<Loc>,
    ) -> Result<(), SpoolError> {
        let len = len as u64;
        let full = self.active.as_ref().is_some_and(|a| {
            a.len + self.pending > 0 && a.len + self.pending + len > self.segment_bytes
        });
        if full {
            self.flush(&jobs[*from..locs.len()])?;
            *from = locs.len();
            match self.fsync {
                Fsync::Always => self.sync()?,
                Fsync::Every(_) => self.mark_dirty(),
            }
            self.seal_active();
        }
        if self.active.is_none() {
            self.open_segment()?;
        }
        let a = self.active.as_ref().ok_or(SpoolError::Stopped)?;
        self.uncounted += 1;
        locs.push(Loc {
            seg: a.id,
            offset: a.len + self.pending,
        });
        self.pending += len;
        Ok(())
    }

    /// Adds the frames placed since the last call to the current segment's `total`.
    fn count(&mut self) {
        let n = std::mem::take(&mut self.uncounted);
        let Some(a) = &self.active else { return };
        if n == 0 {
            return;
        }
        if let Ok(mut st) = self.shared.state.lock()
            && let Some(s) = st.segs.get_mut(&a.id)
        {
            s.total += n;
        }
    }

    /// Writes the placed frames (`frames`, `pending` bytes) with one `writev`, no copy.
    fn flush(&mut self, frames: &[Job]) -> Result<(), SpoolError> {
        self.count();
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        if self.pending == 0 {
            return Ok(());
        }
        let path = segment::seg_path(&self.shared.dir, a.id);
        if let Err(e) = write_frames(&mut a.file, frames) {
            // Cut a partial write off, so the segment ends at a record boundary.
            let _ = a.file.set_len(a.len);
            return Err(SpoolError::io(&path, "cannot write", e));
        }
        a.len += std::mem::take(&mut self.pending);
        let (len, id) = (a.len, a.id);
        if let Ok(mut st) = self.shared.state.lock()
            && let Some(s) = st.segs.get_mut(&id)
        {
            s.len = len;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), SpoolError> {
        let dir = &self.shared.dir;
        let id = {
            let mut st = self.shared.state.lock().map_err(|_| SpoolError::Stopped)?;
            let id = st.next_id;
            st.next_id += 1;
            id
        };
        let path = segment::seg_path(dir, id);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, "cannot create a segment", e))?;
        // The new name must survive a power loss too: now, or with the syncer's next pass.
        match &self.dirty {
            Some(d) if self.fsync != Fsync::Always => d.dir.store(true, Ordering::Release),
            _ => sync_dir(&self.shared),
        }
        if let Ok(mut st) = self.shared.state.lock() {
            st.segs.insert(
                id,
                SegState {
                    len: 0,
                    total: 0,
                    done: 0,
                    sealed: false,
                    ack: None,
                },
            );
        }
        self.active = Some(Active { id, file, len: 0 });
        Ok(())
    }

    /// Closes the current segment; it is removed as soon as all its records are done.
    fn seal_active(&mut self) {
        self.count();
        let Some(a) = self.active.take() else { return };
        if let Ok(mut st) = self.shared.state.lock() {
            if let Some(s) = st.segs.get_mut(&a.id) {
                s.sealed = true;
            }
            self.shared.remove_if_complete(&mut st, a.id);
        }
    }

    /// When idle: a current segment whose records are all delivered is closed (and so
    /// removed), so a quiet gateway leaves an empty folder.
    pub(super) fn retire_delivered_active(&mut self) {
        let Some(a) = &self.active else { return };
        let complete = self
            .shared
            .state
            .lock()
            .ok()
            .and_then(|st| st.segs.get(&a.id).map(|s| s.total > 0 && s.done >= s.total))
            .unwrap_or(false);
        if complete {
            self.seal_active();
        }
    }

    /// `Fsync::Every`: the current segment is for the syncer's next pass (or, without a
    /// syncer thread, synced now).
    fn mark_dirty(&mut self) {
        let Some(a) = &self.active else { return };
        let Some(dirty) = &self.dirty else {
            if let Err(e) = self.sync() {
                self.shared.metrics.write_errors.fetch_add(1, Relaxed);
                tracing::error!("{e}");
            }
            return;
        };
        let Ok(mut d) = dirty.files.lock() else {
            return;
        };
        if !d.iter().any(|(id, _)| *id == a.id) {
            match a.file.try_clone() {
                Ok(f) => d.push((a.id, f)),
                Err(e) => tracing::error!("spool: cannot hand a segment to the sync thread: {e}"),
            }
        }
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        let Some(a) = &self.active else { return Ok(()) };
        self.shared.metrics.fsyncs.fetch_add(1, Relaxed);
        a.file.sync_data().map_err(|e| {
            SpoolError::io(&segment::seg_path(&self.shared.dir, a.id), "cannot sync", e)
        })
    }
}
