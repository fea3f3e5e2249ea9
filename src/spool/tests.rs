//! The spool end to end: append, deliver some, reopen, recover the rest; the size limit.
use super::*;
use crate::deliver::Target;

fn out(i: u32) -> Outgoing {
    Outgoing {
        method: http::Method::GET,
        upstream: 0,
        target: Target::Text(format!("/b?id={i}")),
        headers: Vec::new(),
        body: bytes::Bytes::new(),
    }
}

/// What one attached worker receives, record by record.
struct Q(
    mpsc::UnboundedReceiver<Batch>,
    std::collections::VecDeque<Queued>,
);

impl Q {
    fn try_recv(&mut self) -> Result<Queued, ()> {
        while self.1.is_empty() {
            self.1.extend(self.0.try_recv().map_err(|_| ())?);
        }
        self.1.pop_front().ok_or(())
    }
}

/// Attaches one worker: its lane task runs on the test's runtime.
fn attach(s: &Spool) -> Q {
    let a = s.attach(1).unwrap().pop().unwrap();
    tokio::spawn(a.writer.unwrap().run());
    Q(a.records, Default::default())
}

fn open(dir: &Path, fsync: Fsync) -> (Spool, Q) {
    let s = Spool::open(
        SpoolSettings {
            fsync,
            segment_bytes: 200,
            ..SpoolSettings::new(dir.to_path_buf())
        },
        Arc::default(),
    )
    .unwrap();
    let q = attach(&s);
    (s, q)
}

fn files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

#[tokio::test]
async fn delivered_records_are_not_recovered_and_done_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    for fsync in [Fsync::Always, Fsync::Every(Duration::from_millis(1))] {
        let (s, mut q) = open(dir.path(), fsync);
        for i in 0..10 {
            s.append("r", "v", &out(i), 0).await.unwrap();
        }
        let got: Vec<Queued> = (0..10).map(|_| q.try_recv().unwrap()).collect();
        assert!(files(dir.path(), "seg") > 1, "rotated at 200 bytes");
        // Deliver the even ones, then stop.
        for g in got.iter().step_by(2) {
            s.done(&[g.loc]);
        }
        assert_eq!(s.metrics().pending.load(Relaxed), 5);
        s.close();
        drop(s);

        let (s, mut q) = open(dir.path(), fsync);
        assert_eq!(s.metrics().recovered.load(Relaxed), 5);
        let mut ids = Vec::new();
        while let Ok(g) = q.try_recv() {
            ids.push(g.record.out.target.as_str().to_string());
            s.done(&[g.loc]);
        }
        assert_eq!(ids, ["/b?id=1", "/b?id=3", "/b?id=5", "/b?id=7", "/b?id=9"]);
        assert_eq!(
            files(dir.path(), "seg"),
            0,
            "all delivered: segments removed"
        );
        assert_eq!(files(dir.path(), "ack"), 0);
        assert_eq!(s.metrics().bytes.load(Relaxed), 0);
    }
}

#[tokio::test]
async fn the_size_limit_refuses_and_gives_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(
        SpoolSettings {
            max_bytes: 100,
            ..SpoolSettings::new(dir.path().to_path_buf())
        },
        Arc::default(),
    )
    .unwrap();
    let mut q = attach(&s);
    s.append("r", "v", &out(1), 0).await.unwrap();
    s.append("r", "v", &out(2), 0).await.unwrap();
    assert!(matches!(
        s.append("r", "v", &out(3), 0).await,
        Err(SpoolError::Full(100))
    ));
    s.done(&[q.try_recv().unwrap().loc]);
    s.done(&[q.try_recv().unwrap().loc]);
    s.close();
    // The last segment went when its records were all done and the writer stopped.
    assert_eq!(s.metrics().bytes.load(Relaxed), 0);
}

/// Runs a writer over `n` appends that it takes as one batch (all queued before it starts),
/// with segments smaller than the batch, then stops it. Returns what it queued for delivery.
fn write_one_batch(dir: &Path, n: u32) -> (Vec<Queued>, Arc<SpoolMetrics>) {
    let metrics: Arc<SpoolMetrics> = Arc::default();
    let mut recovered = Vec::new();
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        state: Mutex::new(recover(dir, &metrics, &mut recovered).unwrap()),
        metrics: metrics.clone(),
    });
    let outboxes = Arc::new(Outboxes::default());
    let (qtx, qrx) = mpsc::unbounded_channel();
    outboxes.inner.lock().unwrap().to.push(qtx);
    let mut qrx = Q(qrx, Default::default());
    let mut answers = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..n {
        let frame = record::encode(now_ms(), "r", "v", &out(i));
        metrics.bytes.fetch_add(frame.len() as u64, Relaxed);
        let record = record::decode(&frame[record::HEADER..]).unwrap();
        let (reply, answer) = tokio::sync::oneshot::channel();
        jobs.push(writer::Job {
            frame,
            record,
            worker: 0,
            reply,
        });
        answers.push(answer);
    }
    let mut w = writer::Writer::new(shared, outboxes, Fsync::Always, 200, None);
    w.write(jobs);
    w.finish();
    for mut a in answers {
        a.try_recv().unwrap().unwrap();
    }
    let got = (0..n).map(|_| qrx.try_recv().unwrap()).collect();
    (got, metrics)
}

#[tokio::test]
async fn a_batch_that_rolls_segments_keeps_every_record_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (got, metrics) = write_one_batch(dir.path(), 10);
    let segs: HashSet<u64> = got.iter().map(|g| g.loc.seg).collect();
    assert!(segs.len() > 1, "the batch rolled segments");
    for g in &got {
        assert!(
            segment::seg_path(dir.path(), g.loc.seg).exists(),
            "{} was answered but its segment {} is gone",
            g.record.out.target.as_str(),
            g.loc.seg
        );
    }
    assert_eq!(metrics.pending.load(Relaxed), 10);

    // After a crash (nothing delivered), every answered record comes back, and delivering
    // them all empties the folder.
    let (s, mut q) = open(dir.path(), Fsync::Always);
    assert_eq!(s.metrics().recovered.load(Relaxed), 10);
    let mut ids = Vec::new();
    while let Ok(g) = q.try_recv() {
        ids.push(g.record.out.target.as_str().to_string());
        s.done(&[g.loc]);
    }
    let want: Vec<String> = (0..10).map(|i| format!("/b?id={i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(s.metrics().pending.load(Relaxed), 0);
    s.close();
    assert_eq!(files(dir.path(), "seg"), 0);
    assert_eq!(s.metrics().bytes.load(Relaxed), 0);
}
