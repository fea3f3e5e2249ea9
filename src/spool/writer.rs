//! The spool's writer thread: the only code that appends to segments. Callers on any worker
//! thread send a frame and wait; the writer takes every frame waiting (group commit), appends
//! them with one write, syncs per the policy, registers them for delivery, then answers the
//! callers. With `Fsync::Always` a caller is answered only after the sync that covers its
//! record; with `Fsync::Every(t)` right after the write, and a second thread syncs the written
//! segments every `t`, so a slow sync never holds up a write (or an answer).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Fsync, Loc, Queued, Record, SegState, Shared, SpoolError, segment};

/// Most frames taken into one write.
const MAX_BATCH: usize = 4096;
/// How often an idle writer checks whether its segment is fully delivered (to remove it).
const IDLE_TICK: Duration = Duration::from_millis(100);

pub(super) struct Job {
    pub frame: Vec<u8>,
    pub record: Record,
    pub reply: oneshot::Sender<Result<(), SpoolError>>,
}

pub(super) enum Msg {
    Append(Job),
    /// Sync, close, and say so.
    Stop(std::sync::mpsc::Sender<()>),
}

struct Active {
    id: u64,
    file: File,
    len: u64,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Queued>,
    fsync: Fsync,
    segment_bytes: u64,
    active: Option<Active>,
    /// `Fsync::Every`: segments written since the syncer's last pass (a handle each).
    dirty: Arc<Mutex<Vec<(u64, File)>>>,
    syncer: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    buf: Vec<u8>,
}

/// `Fsync::Every(t)`: every `t`, syncs the segments written since the last pass.
fn syncer(
    shared: Arc<Shared>,
    dirty: Arc<Mutex<Vec<(u64, File)>>>,
    every: Duration,
    stop: Arc<AtomicBool>,
) {
    loop {
        std::thread::sleep(every);
        let stopping = stop.load(Relaxed);
        sync_all(&shared, &dirty);
        if stopping {
            return;
        }
    }
}

fn sync_all(shared: &Shared, dirty: &Mutex<Vec<(u64, File)>>) {
    let files = dirty
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

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        queue: mpsc::UnboundedSender<Queued>,
        fsync: Fsync,
        segment_bytes: u64,
    ) -> Self {
        let dirty = Arc::new(Mutex::new(Vec::new()));
        let syncer = match fsync {
            Fsync::Always => None,
            Fsync::Every(every) => {
                let stop = Arc::new(AtomicBool::new(false));
                let (sh, d, st) = (shared.clone(), dirty.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("tagway-spool-sync".into())
                    .spawn(move || syncer(sh, d, every, st))
                    .map_err(|e| {
                        tracing::error!(
                            "spool: cannot start the sync thread, syncing on the writer: {e}"
                        )
                    })
                    .ok()
                    .map(|h| (stop, h))
            }
        };
        Writer {
            shared,
            queue,
            fsync,
            segment_bytes: segment_bytes.max(1),
            active: None,
            dirty,
            syncer,
            buf: Vec::new(),
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut stop = None;
        while stop.is_none() {
            let mut jobs = Vec::new();
            match rx.recv_timeout(IDLE_TICK) {
                Ok(Msg::Append(j)) => jobs.push(j),
                Ok(Msg::Stop(s)) => stop = Some(s),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while stop.is_none() && jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Append(j)) => jobs.push(j),
                    Ok(Msg::Stop(s)) => stop = Some(s),
                    Err(_) => break,
                }
            }
            if jobs.is_empty() {
                self.retire_delivered_active();
            } else {
                self.write(jobs);
            }
        }
        if let Err(e) = self.flush().and_then(|()| self.sync()) {
            tracing::error!("{e}");
        }
        if let Some((stop, h)) = self.syncer.take() {
            stop.store(true, Relaxed);
            let _ = h.join();
        }
        sync_all(&self.shared, &self.dirty);
        self.retire_delivered_active();
        if let Some(s) = stop {
            let _ = s.send(());
        }
    }

    fn write(&mut self, jobs: Vec<Job>) {
        let mut locs = Vec::with_capacity(jobs.len());
        let mut result = Ok(());
        for j in &jobs {
            if let Err(e) = self.append(&j.frame, &mut locs) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = self.flush();
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
        for (j, loc) in jobs.into_iter().zip(locs) {
            let _ = self.queue.send(Queued {
                loc,
                record: j.record,
            });
            let _ = j.reply.send(Ok(()));
        }
    }

    /// A failed batch: its frames are taken back off their segments' counts (sealed segments
    /// left with every record done are removed), and a new segment is started next time, as
    /// the failed one may end in a partial record (recovery skips it). The reservations of
    /// frames in no segment file are given back now; those of frames written before the
    /// failure stay in their segment's length until it is removed.
    fn unwind(&mut self, jobs: &[Job], locs: &[Loc]) {
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
        self.buf.clear();
        self.seal_active();
    }

    /// Adds one frame to the pending write, starting a new segment first when the current
    /// one would grow past the segment size. The frame counts in its segment's `total` from
    /// here on, so sealing a segment (here, when the batch rolls on) never removes it while
    /// it holds frames of this batch.
    fn append(&mut self, frame: &[u8], locs: &mut Vec<Loc>) -> Result<(), SpoolError> {
        let full = self.active.as_ref().is_some_and(|a| {
            a.len + self.buf.len() as u64 > 0
                && a.len + (self.buf.len() + frame.len()) as u64 > self.segment_bytes
        });
        if full {
            self.flush()?;
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
        let mut st = self.shared.state.lock().map_err(|_| SpoolError::Stopped)?;
        if let Some(s) = st.segs.get_mut(&a.id) {
            s.total += 1;
        }
        drop(st);
        locs.push(Loc {
            seg: a.id,
            offset: a.len + self.buf.len() as u64,
        });
        self.buf.extend_from_slice(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = segment::seg_path(&self.shared.dir, a.id);
        if let Err(e) = a.file.write_all(&self.buf) {
            // Cut a partial write off, so the segment ends at a record boundary.
            let _ = a.file.set_len(a.len);
            return Err(SpoolError::io(&path, "cannot write", e));
        }
        a.len += self.buf.len() as u64;
        let len = a.len;
        let id = a.id;
        self.buf.clear();
        if let Ok(mut st) = self.shared.state.lock() {
            if let Some(s) = st.segs.get_mut(&id) {
                s.len = len;
            }
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
        // The new name must survive a power loss too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
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
            st.active = Some(id);
        }
        self.active = Some(Active { id, file, len: 0 });
        Ok(())
    }

    /// Closes the current segment; it is removed as soon as all its records are done.
    fn seal_active(&mut self) {
        let Some(a) = self.active.take() else { return };
        if let Ok(mut st) = self.shared.state.lock() {
            st.active = None;
            if let Some(s) = st.segs.get_mut(&a.id) {
                s.sealed = true;
            }
            self.shared.remove_if_complete(&mut st, a.id);
        }
    }

    /// When idle: a current segment whose records are all delivered is closed (and so
    /// removed), so a quiet gateway leaves an empty folder.
    fn retire_delivered_active(&mut self) {
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
        if self.syncer.is_none() {
            if let Err(e) = self.sync() {
                self.shared.metrics.write_errors.fetch_add(1, Relaxed);
                tracing::error!("{e}");
            }
            return;
        }
        let Ok(mut d) = self.dirty.lock() else { return };
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
