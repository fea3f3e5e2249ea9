//! A way into the spool: requests push their frames here and wait; the lane's task writes
//! everything that arrived since its last pass with one write (group commit) and answers.
//! With `Fsync::Every` each worker has its own lane, its task on the same worker's runtime: no
//! thread hop on the way in or out, the requests, the write and the answers are on one thread.
//! With `Fsync::Always` (or no syncer thread) one lane serves every worker (one sync covers
//! all the requests waiting) and its writes and syncs run on the blocking pool, so a sync
//! never stalls a worker.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::writer::{Job, Writer};
use super::{SpoolError, SpoolMetrics};

/// How often an idle lane checks whether its segment is fully delivered (to remove it).
const IDLE_TICK: Duration = Duration::from_millis(100);

pub(super) struct Lane {
    jobs: Mutex<Jobs>,
    wake: Notify,
    writer: Mutex<Writer>,
    metrics: Arc<SpoolMetrics>,
}

#[derive(Default)]
struct Jobs {
    list: Vec<Job>,
    /// No task writes for this lane any more (its runtime is gone, or the spool is closing):
    /// nothing more is taken.
    closed: bool,
}

impl Lane {
    pub(super) fn new(writer: Writer, metrics: Arc<SpoolMetrics>) -> Lane {
        Lane {
            jobs: Mutex::default(),
            wake: Notify::new(),
            writer: Mutex::new(writer),
            metrics,
        }
    }

    /// Queues a frame for the lane's next write; `false` (and the job dropped) when the lane
    /// is closed.
    pub(super) fn push(&self, job: Job) -> bool {
        let Ok(mut jobs) = self.jobs.lock() else {
            return false;
        };
        if jobs.closed {
            return false;
        }
        let first = jobs.list.is_empty();
        jobs.list.push(job);
        drop(jobs);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Takes nothing more; jobs never written are refused (their requests were not answered:
    /// the route's `on_spool_full` decides what they get).
    fn stop(&self) {
        let left = match self.jobs.lock() {
            Ok(mut j) => {
                j.closed = true;
                std::mem::take(&mut j.list)
            }
            Err(_) => Vec::new(),
        };
        self.refuse(left);
    }

    fn refuse(&self, jobs: Vec<Job>) {
        for j in jobs {
            self.metrics.bytes.fetch_sub(j.frame.len() as u64, Relaxed);
            let _ = j.reply.send(Err(SpoolError::Stopped));
        }
    }

    /// At shutdown: nothing more is taken, what was written is synced.
    pub(super) fn close(&self) {
        self.stop();
        if let Ok(mut w) = self.writer.lock() {
            w.finish();
        }
    }

    fn take(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .map(|mut j| std::mem::take(&mut j.list))
            .unwrap_or_default()
    }

    fn write(&self, jobs: Vec<Job>) {
        match self.writer.lock() {
            Ok(mut w) => w.write(jobs),
            Err(_) => self.refuse(jobs),
        }
    }
}

/// Closes the lane when its task ends (with the runtime it ran on), so requests from other
/// workers never wait for a write that will not come.
struct CloseOnDrop(Arc<Lane>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The lane's task, run on its worker's runtime for as long as the worker runs.
pub async fn run(lane: Arc<Lane>) {
    let _close = CloseOnDrop(lane.clone());
    let blocking = lane.writer.lock().map(|w| w.syncs_inline()).unwrap_or(true);
    let mut tick = tokio::time::interval(IDLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = lane.wake.notified() => {}
            _ = tick.tick() => {
                if let Ok(mut w) = lane.writer.lock()
                    && lane.jobs.lock().is_ok_and(|j| j.list.is_empty()) {
                        w.retire_delivered_active();
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
