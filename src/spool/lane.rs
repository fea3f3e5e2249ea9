//! A way into the spool: requests push their frames here and wait; the lane's task writes
//! everything that arrived since its last pass with one write (group commit) and answers.
//! With `Fsync::Every` each worker has its own lane, its task on the same worker's runtime: no
//! thread hop on the way in or out, the requests, the write and the answers are on one thread.
//! With `Fsync::Always` (or no syncer thread) one lane serves every worker (one sync covers
//! all the requests waiting) and its writes and syncs run on the blocking pool, so a sync
//! never stalls a worker.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::SpoolError;
use super::writer::{Job, Writer};

/// How often an idle lane checks whether its segment is fully delivered (to remove it).
const IDLE_TICK: Duration = Duration::from_millis(100);

pub(super) struct Lane {
    jobs: Mutex<Vec<Job>>,
    wake: Notify,
    writer: Mutex<Writer>,
    /// The spool is closing: nothing more is taken.
    closed: AtomicBool,
}

impl Lane {
    pub(super) fn new(writer: Writer) -> Lane {
        Lane {
            jobs: Mutex::new(Vec::new()),
            wake: Notify::new(),
            writer: Mutex::new(writer),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a frame for the lane's next write; `false` (and the job dropped) when the
    /// spool is closing.
    pub(super) fn push(&self, job: Job) -> bool {
        if self.closed.load(Acquire) {
            return false;
        }
        let Ok(mut jobs) = self.jobs.lock() else {
            return false;
        };
        let first = jobs.is_empty();
        jobs.push(job);
        drop(jobs);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// At shutdown (the lane's task is gone with its worker): jobs never written are refused
    /// (their requests were not answered), what was written is synced.
    pub(super) fn close(&self) -> Vec<Job> {
        self.closed.store(true, Release);
        let left = self
            .jobs
            .lock()
            .map(|mut j| std::mem::take(&mut *j))
            .unwrap_or_default();
        if let Ok(mut w) = self.writer.lock() {
            w.finish();
        }
        left
    }

    fn take(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .map(|mut j| std::mem::take(&mut *j))
            .unwrap_or_default()
    }

    fn write(&self, jobs: Vec<Job>) {
        match self.writer.lock() {
            Ok(mut w) => w.write(jobs),
            Err(_) => {
                for j in jobs {
                    let _ = j.reply.send(Err(SpoolError::Stopped));
                }
            }
        }
    }
}

/// The lane's task, run on its worker's runtime for as long as the worker runs.
pub async fn run(lane: Arc<Lane>) {
    let blocking = lane.writer.lock().map(|w| w.syncs_inline()).unwrap_or(true);
    let mut tick = tokio::time::interval(IDLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = lane.wake.notified() => {}
            _ = tick.tick() => {
                if let Ok(mut w) = lane.writer.lock() {
                    if lane.jobs.lock().is_ok_and(|j| j.is_empty()) {
                        w.retire_delivered_active();
                    }
                }
                continue;
            }
        }
        let jobs = lane.take();
        if jobs.is_empty() {
            continue;
        }
        if blocking {
            let l = lane.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || l.write(jobs)).await {
                tracing::error!("spool: a write did not complete: {e}");
            }
        } else {
            lane.write(jobs);
        }
    }
}
