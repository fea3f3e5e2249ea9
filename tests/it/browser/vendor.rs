//! Mock vendors that answer as PostHog, Plausible and Segment do, so that their client
//! libraries carry on as they would with the real service (flags and settings included).

use crate::support::{Mock, MockReply};

/// Answers as PostHog's ingestion host does.
pub async fn posthog() -> Mock {
    Mock::plain_with(|s| {
        let path = s.uri.path();
        let json = |body: &str| {
            MockReply::status(200)
                .header("content-type", "application/json")
                .body(body.to_string())
        };
        let remote_config = path.starts_with("/array/") && path.ends_with("/config");
        if path.starts_with("/flags/") || path.starts_with("/decide/") || remote_config {
            json(FLAGS)
        } else if path.starts_with("/array/") && path.ends_with("/config.js") {
            MockReply::status(200)
                .header("content-type", "application/javascript")
                .body(format!(
                    "(function(){{window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{{}};window._POSTHOG_REMOTE_CONFIG['{TOKEN}']={{config:{FLAGS},siteApps:[]}}}})();"
                ))
        } else if ["/e/", "/i/v0/e/", "/batch/", "/capture/"]
            .iter()
            .any(|p| path.starts_with(p))
        {
            json(r#"{"status":1}"#)
        } else {
            MockReply::status(404)
        }
    })
    .await
}

pub const TOKEN: &str = "phc_BROWSERTESTPROJECTTOKEN000000000000000000";

/// What `/flags/?v=2&config=true` answers: no flags, gzip accepted, events to `/i/v0/e/`.
const FLAGS: &str = r#"{"config":{"enable_collect_everything":false},"featureFlags":{},"featureFlagPayloads":{},"errorsWhileComputingFlags":false,"flags":{},"supportedCompression":["gzip","gzip-js"],"analytics":{"endpoint":"/i/v0/e/"},"sessionRecording":false,"heatmaps":false,"surveys":false,"capturePerformance":false,"autocaptureExceptions":false,"autocapture_opt_out":true,"toolbarParams":{},"isAuthenticated":false,"siteApps":[],"defaultIdentifiedOnly":true,"elementsChainAsString":true}"#;

/// Answers as plausible.io's event API does.
pub async fn plausible() -> Mock {
    Mock::plain_with(|s| {
        if s.uri.path() == "/api/event" {
            MockReply::status(202)
                .header("content-type", "text/plain")
                .body("ok")
        } else {
            MockReply::status(404)
        }
    })
    .await
}

pub const WRITE_KEY: &str = "BROWSERTESTWRITEKEY0";

/// Answers as Segment's CDN (settings) and tracking API do.
pub async fn segment() -> Mock {
    Mock::plain_with(|s| {
        let path = s.uri.path();
        if path == format!("/v1/projects/{WRITE_KEY}/settings") {
            MockReply::status(200)
                .header("content-type", "application/json")
                .body(SETTINGS.replace("WRITE_KEY", WRITE_KEY))
        } else if path.starts_with("/v1/") && s.method == http::Method::POST {
            MockReply::status(200)
                .header("content-type", "application/json")
                .body(r#"{"success":true}"#)
        } else {
            MockReply::status(404)
        }
    })
    .await
}

/// A workspace's CDN settings with only the Segment destination (no device-mode scripts to
/// load). The API host is Segment's own: the page overrides it, as a proxied site does.
const SETTINGS: &str = r#"{"integrations":{"Segment.io":{"apiKey":"WRITE_KEY","unbundledIntegrations":[],"addBundledMetadata":true,"maybeBundledConfigIds":{},"versionSettings":{"version":"4.4.7","componentTypes":["browser"]},"apiHost":"api.segment.io/v1"}},"plan":{"track":{"__default":{"enabled":true,"integrations":{}}},"identify":{"__default":{"enabled":true}},"group":{"__default":{"enabled":true}}},"edgeFunction":{},"analyticsNextEnabled":true,"middlewareSettings":{},"enabledMiddleware":{},"metrics":{"sampleRate":0},"legacyVideoPluginsEnabled":false,"remotePlugins":[]}"#;
