//! Hot reload: watches the rules and certificates folders (and listens for SIGHUP) and reloads
//! what changed, debounced so an editor's write-rename-delete sequence is one reload. Reloads
//! go through [`Gateway::reload_rules`] / [`Gateway::reload_certs`], which keep the old state
//! when the new one is broken.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::RulesSource;
use crate::gateway::Gateway;

/// How long the folders must be quiet before a reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Rules,
    Certs,
}

/// Starts watching. The returned watcher must be kept alive for as long as reloads should
/// happen; `None` when there is nothing to watch or the platform refused.
pub fn start(gw: Arc<Gateway>) -> Option<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel::<What>();
    let rules_dir: Option<PathBuf> = match &gw.settings.rules {
        RulesSource::Dir(d) => Some(d.canonicalize().unwrap_or_else(|_| d.clone())),
        _ => None,
    };
    let certs_dir: Option<PathBuf> = gw
        .certs
        .as_ref()
        .map(|c| c.dir().to_path_buf())
        .filter(|d| d.is_dir())
        .map(|d| d.canonicalize().unwrap_or(d));
    tokio::spawn(reloader(gw.clone(), rx));
    spawn_sighup(tx.clone());

    let (rd, cd) = (rules_dir.clone(), certs_dir.clone());
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        for p in &ev.paths {
            if rd.as_ref().is_some_and(|d| p.starts_with(d)) {
                let _ = tx.send(What::Rules);
            }
            if cd.as_ref().is_some_and(|d| p.starts_with(d)) {
                let _ = tx.send(What::Certs);
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("file watching unavailable ({e}); reload with SIGHUP");
            return None;
        }
    };
    for (dir, mode) in [
        (rules_dir, RecursiveMode::NonRecursive),
        (certs_dir, RecursiveMode::Recursive),
    ] {
        if let Some(d) = dir
            && let Err(e) = watcher.watch(&d, mode)
        {
            tracing::warn!("cannot watch {} ({e}); reload with SIGHUP", d.display());
        }
    }
    Some(watcher)
}

async fn reloader(gw: Arc<Gateway>, mut rx: mpsc::UnboundedReceiver<What>) {
    while let Some(first) = rx.recv().await {
        let (mut rules, mut certs) = (first == What::Rules, first == What::Certs);
        // Debounce: wait until nothing has arrived for DEBOUNCE.
        while let Ok(Some(w)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            rules |= w == What::Rules;
            certs |= w == What::Certs;
        }
        if rules {
            let _ = gw.reload_rules();
        }
        if certs {
            gw.reload_certs();
        }
    }
}

#[cfg(unix)]
fn spawn_sighup(tx: mpsc::UnboundedSender<What>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading rules and certificates");
                    let _ = tx.send(What::Rules);
                    let _ = tx.send(What::Certs);
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP: {e}"),
    }
}

#[cfg(not(unix))]
fn spawn_sighup(_tx: mpsc::UnboundedSender<What>) {}
