//! Rules swapped while running: a good change takes effect, a broken one leaves the old rules
//! serving and says where the problem is.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::support::gateway::rules;
use crate::support::*;

#[tokio::test]
async fn rule_changes_apply_and_broken_files_keep_the_old_rules() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(
        "[[route]]\nname = \"a\"\npath = \"/a\"\nupstream = \"v\"\n",
    ))
    .upstream("v", mock.url());
    o.watch = true;
    let gw = Gw::start(o).await;
    assert_eq!(get(gw.http, "/b").await.status, 404);

    let file = gw.rules_dir.path().join("00-test.toml");
    std::fs::write(&file, rules("[[route]]\nname = \"a\"\npath = \"/a\"\nupstream = \"v\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"v\"\n")).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if get(gw.http, "/b").await.status == 204 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "new route not served within 5 s");

    std::fs::write(
        gw.rules_dir.path().join("10-broken.toml"),
        "[[route]]\nname = \"c\"\npathh = \"/c\"\nupstream = \"v\"\n",
    )
    .unwrap();
    for _ in 0..50 {
        if gw.gw.metrics.rules_reload_failures.load(Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.gw.metrics.rules_reload_failures.load(Relaxed), 1);
    assert_eq!(gw.gw.metrics.rules_last_reload_failed.load(Relaxed), 1);
    assert_eq!(
        get(gw.http, "/a").await.status,
        204,
        "old rules keep serving"
    );
    assert_eq!(get(gw.http, "/b").await.status, 204);
    let err = gw.gw.reload_rules().unwrap_err().to_string();
    assert!(
        err.contains("10-broken.toml:3:1: unknown field `pathh`"),
        "{err}"
    );
    assert!(err.contains("did you mean `path`?"), "{err}");
}
