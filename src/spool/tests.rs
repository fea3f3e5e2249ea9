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

fn open(dir: &Path, fsync: Fsync) -> (Spool, mpsc::UnboundedReceiver<Queued>) {
    let s = Spool::open(
        SpoolSettings {
            fsync,
            segment_bytes: 200,
            ..SpoolSettings::new(dir.to_path_buf())
        },
        Arc::default(),
    )
    .unwrap();
    let q = s.take_queue().unwrap();
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
            s.append("r", "v", &out(i)).await.unwrap();
        }
        let got: Vec<Queued> = (0..10).map(|_| q.try_recv().unwrap()).collect();
        assert!(files(dir.path(), "seg") > 1, "rotated at 200 bytes");
        // Deliver the even ones, then stop.
        for g in got.iter().step_by(2) {
            s.done(g.loc);
        }
        assert_eq!(s.metrics().pending.load(Relaxed), 5);
        s.close();
        drop(s);

        let (s, mut q) = open(dir.path(), fsync);
        assert_eq!(s.metrics().recovered.load(Relaxed), 5);
        let mut ids = Vec::new();
        while let Ok(g) = q.try_recv() {
            ids.push(g.record.out.target.as_str().to_string());
            s.done(g.loc);
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
    let mut q = s.take_queue().unwrap();
    s.append("r", "v", &out(1)).await.unwrap();
    s.append("r", "v", &out(2)).await.unwrap();
    assert!(matches!(
        s.append("r", "v", &out(3)).await,
        Err(SpoolError::Full(100))
    ));
    s.done(q.try_recv().unwrap().loc);
    s.done(q.try_recv().unwrap().loc);
    s.close();
    // The last segment went when its records were all done and the writer stopped.
    assert_eq!(s.metrics().bytes.load(Relaxed), 0);
}

/// Runs a writer over `n` appends that it takes as one batch (all queued before it starts),
/// with segments smaller than the batch, then stops it. Returns what it queued for delivery.
fn write_one_batch(dir: &Path, n: u32) -> (Vec<Queued>, Arc<SpoolMetrics>) {
    let metrics: Arc<SpoolMetrics> = Arc::default();
    let (qtx, mut qrx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        state: Mutex::new(recover(dir, &metrics, &qtx).unwrap()),
        metrics: metrics.clone(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let mut answers = Vec::new();
    for i in 0..n {
        let frame = record::encode(now_ms(), "r", "v", &out(i));
        metrics.bytes.fetch_add(frame.len() as u64, Relaxed);
        let record = record::decode(&frame[record::HEADER..]).unwrap();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = writer::Job {
            frame,
            record,
            reply,
        };
        tx.send(writer::Msg::Append(job)).unwrap();
        answers.push(answer);
    }
    let (stop, stopped) = std::sync::mpsc::channel();
    tx.send(writer::Msg::Stop(stop)).unwrap();
    writer::Writer::new(shared, qtx, Fsync::Always, 200).run(rx);
    stopped.recv().unwrap();
    for mut a in answers {
        a.try_recv().unwrap().unwrap();
    }
    let got = (0..n).map(|_| qrx.try_recv().unwrap()).collect();
    (got, metrics)
}

#[test]
fn a_batch_that_rolls_segments_keeps_every_record_on_disk() {
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
        s.done(g.loc);
    }
    let want: Vec<String> = (0..10).map(|i| format!("/b?id={i}")).collect();
    assert_eq!(ids, want);
    assert_eq!(s.metrics().pending.load(Relaxed), 0);
    s.close();
    assert_eq!(files(dir.path(), "seg"), 0);
    assert_eq!(s.metrics().bytes.load(Relaxed), 0);
}
