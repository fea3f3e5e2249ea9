//! The browser side: checks that Chromium, Node and the npm packages are there (installing the
//! pinned packages with `npm ci` when only they are missing), then runs
//! `tests/browser/run.mjs` as a child process in its own process group, stopped by its PID.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the browser run may take before it is stopped (a bound, not an assertion: the
/// run takes a few seconds).
const BOUND: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub fn chromium() -> PathBuf {
    std::env::var_os("TAGWAY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// `false` only when the browser tests are skipped on purpose (`TAGWAY_SKIP_BROWSER=1`, which
/// CI never sets). Anything missing is a failure that says how to install it.
pub fn preflight() -> bool {
    if std::env::var("TAGWAY_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("browser tests SKIPPED: TAGWAY_SKIP_BROWSER=1 is set");
        return false;
    }
    let install = "run the install steps of .ci/run (apt-get install -y chromium nodejs npm; \
                   npm ci in tests/browser), or set TAGWAY_SKIP_BROWSER=1 to skip these tests";
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "the browser tests need Debian's Chromium at {} (TAGWAY_CHROMIUM overrides the path): {install}",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the browser tests need Node.js (`node` on PATH): {install}"
    );
    let dir = browser_dir();
    // Installing is .ci/run's job (`npm ci` against the lock file): a test never reaches
    // beyond loopback, so it does not fetch packages itself.
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the browser tests need the npm packages pinned in {}/package-lock.json: {install}",
        dir.display()
    );
    true
}

/// Runs `run.mjs` with `args`; returns the JSON report it prints, or panics with its stderr.
pub fn run(args: &[String]) -> serde_json::Value {
    let dir = browser_dir();
    let stderr_path = tempfile::NamedTempFile::new().unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("node")
            .arg(dir.join("run.mjs"))
            .args(args)
            .current_dir(&dir)
            .env("TAGWAY_CHROMIUM", chromium())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_path.reopen().unwrap())
            // Its own process group, so the browser it starts is stopped with it.
            .process_group(0)
            .spawn()
            .expect("node starts")
    };
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(BOUND).is_err() {
            // SAFETY: kill(2) on the process group of the child this test started (its PID).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            return true;
        }
        false
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let _ = tx.send(());
    let killed = watchdog.join().unwrap();
    let stderr = std::fs::read_to_string(stderr_path.path()).unwrap_or_default();
    assert!(
        !killed,
        "the browser run did not finish within {BOUND:?} and was stopped\n{stderr}"
    );
    assert!(
        status.success(),
        "run.mjs failed ({status}):\n{stderr}\n{stdout}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("run.mjs printed no report ({e}):\n{stdout}\n{stderr}"))
}
