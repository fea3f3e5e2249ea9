//! The `tagway` binary as a user runs it: signals, start-up errors, `check`. Every process
//! started here is stopped by its PID.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) struct Proc {
    child: Child,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub(crate) fn start(args: &[&str]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().to_path_buf();
        Self::start_in(dir, &cwd, args)
    }

    /// Starts tagway with `cwd` as its working folder; `dir` holds its log.
    pub(crate) fn start_in(dir: tempfile::TempDir, cwd: &Path, args: &[&str]) -> Proc {
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tagway"))
            .args(args)
            .current_dir(cwd)
            .env("TAGWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            stderr,
            _dir: dir,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log shows the plain listener's address.
    pub(crate) fn http_addr(&mut self) -> std::net::SocketAddr {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(rest) = log.split("listening (http) on ").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tagway exited with {st}:\n{log}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tagway did not start:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub(crate) fn wait(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < bound {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tagway serve` on a free loopback port, plain HTTP only (no TLS, no admin listener), with
/// the rules in `rules` and one upstream override `NAME=URL`; callers append their own flags.
pub(crate) fn serve_args<'a>(rules: &'a str, upstream: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "off",
        "--admin-listen",
        "off",
        "--rules",
        rules,
        "--upstream",
        upstream,
    ]
}

pub(crate) fn write_rules(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("00-test.toml"), text).unwrap();
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mock = Mock::plain_with(|_| {
        MockReply::status(200)
            .body("done")
            .delay(Duration::from_millis(1500))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_rules(
        dir.path(),
        &crate::support::gateway::rules(
            "[[route]]\nname = \"s\"\npath = \"/slow\"\nupstream = \"v\"\n",
        ),
    );
    let upstream = format!("v={}", mock.url());
    let mut args = serve_args(dir.path().to_str().unwrap(), &upstream);
    args.extend(["--shutdown-timeout", "5s"]);
    let mut p = Proc::start(&args);
    let addr = p.http_addr();
    let inflight = tokio::spawn(async move { get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        mock.count(),
        1,
        "request reached the vendor before the signal"
    );
    p.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    let r = inflight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "done"));
    let st = p.wait(Duration::from_secs(5)).expect("tagway did not exit");
    assert!(st.success(), "exit status {st}\n{}", p.log());
    assert!(p.log().contains("shutting down"), "{}", p.log());
}

#[test]
fn a_port_in_use_is_one_clear_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut p = Proc::start(&[
        "--listen",
        &addr,
        "--tls-listen",
        "off",
        "--admin-listen",
        "off",
    ]);
    let st = p
        .wait(Duration::from_secs(10))
        .expect("tagway kept running");
    assert_eq!(st.code(), Some(1));
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("tagway: "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("cannot listen on {addr} (--listen)")) && line.contains("in use"),
        "{line}"
    );
}

#[test]
fn an_unusable_certs_folder_is_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certs-is-a-file");
    std::fs::write(&file, "x").unwrap();
    let mut p = Proc::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--certs",
        file.to_str().unwrap(),
    ]);
    let st = p
        .wait(Duration::from_secs(10))
        .expect("tagway kept running");
    assert_eq!(st.code(), Some(1));
    let log = p.log();
    assert!(
        log.contains(&format!(
            "cannot read the certificates folder {} (--certs)",
            file.display()
        )),
        "{log}"
    );
    let mut p = Proc::start(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--certs",
        "/nonexistent/certs",
    ]);
    assert_eq!(
        p.wait(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(1)
    );
    assert!(
        p.log()
            .contains("certificates folder /nonexistent/certs (--certs) does not exist"),
        "{}",
        p.log()
    );
}

#[test]
fn the_embedded_default_starts_in_an_empty_folder() {
    // No rules/ and no certs/ in the working folder, only port flags (the defaults are busy
    // on a shared machine): embedded rules and a generated certificate.
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut p = Proc::start_in(
        dir,
        empty.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ],
    );
    let _ = p.http_addr();
    let log = p.log();
    assert!(
        log.contains("using the rule files embedded in the binary"),
        "{log}"
    );
    assert!(
        log.contains("self-signed certificate for localhost"),
        "{log}"
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait(Duration::from_secs(10)).expect("no exit").success());
}

#[test]
fn check_points_at_the_line_and_suggests_the_name() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(
        dir.path(),
        "[site]\n\n[upstreams.ga]\nurl = \"https://www.google-analytics.com\"\n\n[[route]]\nname = \"c\"\npath = \"/g/collect\"\nupstream = \"gaa\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["check", "--rules", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("00-test.toml:9:12: no upstream named \"gaa\"; did you mean `ga`?"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["check", "--rules", "rules"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shipped rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGHUP reloads the rules (for hosts where file watching is unavailable): the log says so
/// and the new rule set serves; a broken set is refused, logged with `file:line:col`, and the
/// old one keeps serving.
#[tokio::test]
async fn sighup_reloads_the_rules_and_a_broken_set_keeps_the_old_one() {
    let mock = Mock::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let route = |name: &str| {
        format!("[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"v\"\n")
    };
    write_rules(dir.path(), &crate::support::gateway::rules(&route("a")));
    let upstream = format!("v={}", mock.url());
    let mut p = Proc::start(&serve_args(dir.path().to_str().unwrap(), &upstream));
    let addr = p.http_addr();
    assert_eq!(get(addr, "/a").await.status, 204);
    let wait_for = |p: &Proc, what: &str, n: usize| {
        let t0 = Instant::now();
        while p.log().matches(what).count() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no {what:?} in the log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    p.signal(libc::SIGHUP);
    wait_for(&p, "SIGHUP: reloading rules and certificates", 1);
    wait_for(&p, "rules reloaded from", 1);

    // A good change (whether the watcher or a SIGHUP picks it up) serves the new route.
    write_rules(
        dir.path(),
        &crate::support::gateway::rules(&format!("{}\n{}", route("a"), route("b"))),
    );
    p.signal(libc::SIGHUP);
    wait_for(&p, "SIGHUP: reloading rules and certificates", 2);
    let t0 = Instant::now();
    while get(addr, "/b").await.status != 204 {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken rule: refused with check's message, the previous rules keep serving.
    std::fs::write(
        dir.path().join("10-broken.toml"),
        "[[route]]\nname = \"c\"\npath = \"/c\"\nupstream = \"v\"\n\n[[route.rule]]\nhash = [\"uid\"]\nnormalise = \"email\"\n",
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    wait_for(&p, "did you mean `normalize`?", 1);
    assert!(
        p.log()
            .contains("10-broken.toml:8:1: unknown field `normalise`"),
        "{}",
        p.log()
    );
    assert_eq!(get(addr, "/a").await.status, 204);
    assert_eq!(get(addr, "/b").await.status, 204);
    assert_eq!(get(addr, "/c").await.status, 404);
    p.signal(libc::SIGTERM);
    assert!(p.wait(Duration::from_secs(10)).is_some_and(|s| s.success()));
}
