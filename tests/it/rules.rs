//! The rule engine as users meet it: rule files with their own `[[test]]`s (the shipped ones
//! and `tests/rules/`, which cover every action and condition), and requests through the
//! proxy whose payloads leave cleaned and otherwise byte-identical.

use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::Full;
use tagway::config::{RuleText, RulesSource, load};
use tagway::ruletest;

use crate::support::client::{Via, req};
use crate::support::*;

/// Loads a rules folder and runs its tests; panics with every failure.
fn run_tests(source: RulesSource) -> usize {
    let rules = load(&source, &[]).unwrap_or_else(|e| panic!("rules do not load: {e}"));
    let outcomes = ruletest::run_all(&rules);
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| format!("{} ({}): {}", o.name, o.at, o.failures.join("; ")))
        .collect();
    assert!(
        failed.is_empty(),
        "failing rule tests:\n{}",
        failed.join("\n")
    );
    outcomes.len()
}

#[test]
fn the_shipped_rule_files_pass_their_own_tests() {
    let n = run_tests(RulesSource::Dir("rules".into()));
    assert!(
        n >= 4,
        "the shipped GA4 rules carry at least 4 tests, found {n}"
    );
}

#[test]
fn every_action_and_condition_behaves_as_its_tests_say() {
    let n = run_tests(RulesSource::Dir("tests/rules".into()));
    assert!(n >= 30, "found only {n} tests in tests/rules");
    // The files really cover every action and condition the language has.
    let text: String = std::fs::read_dir("tests/rules")
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    for needle in [
        "\ndrop = ",
        "\nkeep = ",
        "\nhash = ",
        "normalize = \"email\"",
        "normalize = \"phone\"",
        "algorithm = \"sha256\"",
        "\nredact = ",
        "patterns = ",
        "replace = \"hash\"",
        "\nstrip_url = ",
        "keep_params = ",
        "drop_params = ",
        "path_segments = ",
        "\ntruncate_ip = ",
        "\nset = ",
        "\nrename = ",
        "\ndrop_request = true",
        "when.present",
        "when.equals",
        "when.matches",
        "unless.present",
        "when.event",
        "when.gpc",
        "when.consent_denied",
        "when.consent_granted",
        "when.client_ip",
        "when.bot",
        "scan_exempt",
        "scan_detectors",
        "id_field = ",
        "gdpr_consent=",
        "tcf_cookie",
    ] {
        assert!(
            text.contains(needle),
            "tests/rules has no case for {needle:?}"
        );
    }
}

/// The runner must fail wrong expectations, or the tests above would prove nothing.
#[test]
fn a_wrong_expectation_fails_with_a_message_saying_what_differs() {
    let text = r#"
[site]
hash_key = { file = "tests/rules/hash-key.txt" }

[upstreams.v]
url = "https://vendor.example"

[[route]]
name = "r"
path = "/r"
upstream = "v"

[[route.rule]]
hash = ["uid"]

[[test]]
name = "wrong on purpose"
route = "other"
request.url = "/r?uid=u1&a=abc1&dt=mail%20jane.doe%40example.com"
expect.dropped = true
expect.fields = { a = "2" }
expect.changed = ["a"]
expect.unchanged = ["uid"]
expect.absent = ["a"]
expect.present = ["nothere"]
expect.not_contains = ["u1", "abc1", "jane.doe@example.com"]
"#;
    let rules = load(
        &RulesSource::Texts(vec![RuleText {
            name: "wrong.toml".into(),
            text: text.into(),
        }]),
        &[],
    )
    .unwrap();
    let out = ruletest::run_all(&rules);
    let f = &out[0].failures;
    let all = f.join("\n");
    for want in [
        "reached route \"r\", expected \"other\"",
        "expected the request to be dropped",
        "field a: expected \"2\", got \"abc1\"",
        "field a: expected it changed",
        "field uid: expected unchanged \"u1\"",
        "field a: expected absent",
        "field nothere: expected present",
        "\"abc1\" still leaves the gateway (as is, in the URL)",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // `u1` was hashed and the scan redacted the email: neither is a leak.
    assert!(!all.contains("\"u1\" still leaves"), "{all}");
    assert!(!all.contains("jane.doe"), "{all}");
    assert_eq!(f.len(), 8, "{all}");
}

/// `header:` and `cookie:` expectations are read from the request and from what leaves, also
/// on a route without rules (where no rule observer runs).
#[test]
fn header_and_cookie_expectations_are_checked_on_a_plain_route() {
    let text = r#"
[upstreams.v]
url = "https://vendor.example"

[[route]]
name = "plain"
path = "/p"
upstream = "v"

[[test]]
name = "right and wrong on purpose"
request.url = "/p"
request.headers = { "user-agent" = "UA1", cookie = "_ga=G1; _fbp=F1" }
expect.unchanged = ["header:user-agent"]
expect.absent = ["cookie:_ga", "header:user-agent"]
expect.present = ["cookie:_fbp"]
expect.fields = { "header:user-agent" = "other" }
"#;
    let rules = load(
        &RulesSource::Texts(vec![RuleText {
            name: "plain.toml".into(),
            text: text.into(),
        }]),
        &[],
    )
    .unwrap();
    let out = ruletest::run_all(&rules);
    let all = out[0].failures.join("\n");
    for want in [
        "field header:user-agent: expected absent, got \"UA1\"",
        "field cookie:_fbp: expected present, it is absent",
        "field header:user-agent: expected \"other\", got \"UA1\"",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert_eq!(out[0].failures.len(), 3, "{all}");
}

/// The query string of the relay benchmark's GA4 hit (w1): an email, a phone number and a
/// token in the page URL, the referrer, `uid` and `ep.*`.
const GA4_HIT: &str = include_str!("../../bench/payloads/w1-query.txt");

fn ga4_rules() -> String {
    let site = "[site]\norigins = [\"https://shop.example\"]\n";
    format!(
        "{site}\n{}",
        std::fs::read_to_string("rules/10-ga4.toml").unwrap()
    )
}

#[tokio::test]
async fn a_ga4_hit_leaves_without_personal_data_and_otherwise_byte_identical() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&ga4_rules()).upstream("google-analytics", mock.url())).await;
    let query = GA4_HIT.trim();
    let r = get(gw.http, &format!("/g/collect?{query}")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let sent = seen[0].uri.query().unwrap().to_string();

    // None of the personal data leaves, in any encoding.
    let decoded = tagway::decode::query::unescape(&sent);
    let twice = tagway::decode::query::unescape(&decoded);
    for pii in [
        "jane.doe",
        "example.com&",
        "+15551234567",
        "15551234567",
        "555 123 4567",
        "ab12cd34ef56",
        "12 Main Street",
    ] {
        for (form, text) in [
            ("raw", sent.as_str()),
            ("decoded", &*decoded),
            ("twice", &*twice),
        ] {
            assert!(!text.contains(pii), "{pii:?} leaves ({form}): {text}");
        }
    }

    // Everything else is byte-identical, in its original order: the pairs that went out
    // unchanged are exactly the received ones minus those the rules touched.
    let touched = ["uid", "dl", "dr", "ep.customer_email", "ep.phone"];
    let touched_or_dropped = |p: &&str| {
        let k = p.split('=').next().unwrap();
        touched.contains(&k) || k == "ep.shipping_address"
    };
    let before: Vec<&str> = query
        .split('&')
        .filter(|p| !touched_or_dropped(p))
        .collect();
    let after: Vec<&str> = sent
        .split('&')
        .filter(|p| !touched_or_dropped(p) && !p.starts_with("_uip="))
        .collect();
    assert_eq!(before, after);
    // The changes are the expected ones.
    let field = |k: &str| {
        sent.split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .map(|v| tagway::decode::query::unescape(v).into_owned())
    };
    assert_eq!(field("uid").unwrap().len(), 64, "uid is a keyed hash");
    assert_eq!(
        field("dl").unwrap(),
        "https://shop.example/checkout?utm_source=newsletter&utm_medium=email&utm_campaign=black_friday&gclid=Cj0KCQiA4NWrBhD-ARIsAFCKwWsTmUAa3k_dEXAMPLE0gclid0VALUE0xYz_BwE"
    );
    assert_eq!(field("dr").unwrap(), "https://mail.example/message");
    assert_eq!(field("ep.customer_email"), None);
    assert_eq!(field("ep.phone"), None);
    assert_eq!(field("ep.shipping_address"), None);
    // The test client is 127.0.0.1: a private address is never sent as the location hint.
    assert_eq!(field("_uip"), None);
}

fn json_rules(policy: &str) -> String {
    gateway_rules(&format!(
        "[[route]]\nname = \"j\"\npath = \"/j\"\nupstream = \"v\"\ncodec = \"json\"\non_undecodable = \"{policy}\"\nanswer = {{ status = 200, content_type = \"text/plain\", body = \"ok\" }}\n\n[[route.rule]]\ndrop = [\"email\"]\n"
    ))
}

use crate::support::gateway::rules as gateway_rules;

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut b = req("POST", path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(
        Via {
            addr,
            tls: None,
            h2: false,
        },
        b.body(Full::new(Bytes::from(body))).unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_undecodable_body_is_never_forwarded_half_processed() {
    // reject: 400 with a message saying what is wrong, counted, the vendor never contacted.
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&json_rules("reject")).upstream("v", mock.url())).await;
    let r = post(
        gw.http,
        "/j",
        &[("content-type", "application/json")],
        b"{\"email\":\"a@b.example\",".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("JSON"), "{}", r.text());
    let r = post(
        gw.http,
        "/j",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("tagway-error"), Some("undecodable"));
    let undecodable = tagway::respond::Reject::KINDS
        .iter()
        .position(|k| *k == "undecodable")
        .unwrap();
    assert_eq!(gw.gw.metrics.rejected[undecodable].load(Relaxed), 2);
    assert_eq!(mock.count(), 0);

    // drop: answered as the vendor would (the route's answer), nothing forwarded.
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&json_rules("drop")).upstream("v", mock.url())).await;
    let r = post(gw.http, "/j", &[], b"[1,2".to_vec()).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(gw.gw.metrics.dropped_undecodable.load(Relaxed), 1);
    assert_eq!(mock.count(), 0);

    // A good body goes through, cleaned.
    let r = post(
        gw.http,
        "/j",
        &[],
        br#"{"event":"x","email":"a@b.example"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(mock.seen()[0].body, Bytes::from_static(br#"{"event":"x"}"#));
}

#[tokio::test]
async fn compressed_bodies_are_cleaned_and_sent_compressed_again() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&json_rules("reject")).upstream("v", mock.url())).await;
    let body = br#"{"event":"x","email":"a@b.example","note":"call +1 555 123 4567"}"#;
    let gz = tagway::decode::wrap::compress(tagway::decode::wrap::Compression::Gzip, body);
    let r = post(
        gw.http,
        "/j",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gz,
    )
    .await;
    assert_eq!(r.status, 204);
    let seen = &mock.seen()[0];
    assert_eq!(seen.headers.get("content-encoding").unwrap(), "gzip");
    let plain = tagway::decode::wrap::decompress(
        tagway::decode::wrap::Compression::Gzip,
        &seen.body,
        1 << 20,
    )
    .unwrap();
    assert_eq!(plain, br#"{"event":"x","note":"call [phone]"}"#);
    assert_eq!(
        seen.headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string()),
        Some(seen.body.len().to_string())
    );
}

/// `GET /tr?…` (a pixel hit) with the given User-Agent.
async fn pixel(addr: std::net::SocketAddr, user_agent: &str) -> Reply {
    let r = req("GET", "/tr?id=1&ev=PageView")
        .header("user-agent", user_agent)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(
        Via {
            addr,
            tls: None,
            h2: false,
        },
        r,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn drop_request_answers_as_the_vendor_without_contacting_it() {
    let mock = Mock::plain().await;
    let routes = "[[route]]\nname = \"p\"\npath = \"/tr\"\nupstream = \"v\"\nanswer = { status = 200, content_type = \"image/gif\", body_base64 = \"R0lGODlhAQABAAAAACw=\" }\n\n[[route.rule]]\nname = \"bots are not counted\"\ndrop_request = true\nwhen.bot = true\n";
    let gw = Gw::start(GwOptions::new(&gateway_rules(routes)).upstream("v", mock.url())).await;
    let bot = pixel(gw.http, "Googlebot/2.1 (+http://www.google.com/bot.html)").await;
    assert_eq!(bot.status, 200);
    assert_eq!(bot.header("content-type"), Some("image/gif"));
    assert_eq!(&bot.body[..6], b"GIF89a");
    assert_eq!(mock.count(), 0);
    assert_eq!(gw.gw.metrics.dropped_by_rule.load(Relaxed), 1);
    let browser = pixel(gw.http, "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0").await;
    assert_eq!(browser.status, 204);
    assert_eq!(mock.count(), 1);
}

#[test]
fn explain_shows_before_after_and_the_rule_as_text_and_json() {
    let url = "https://localhost/g/collect?v=2&tid=G-1&uid=jane%40example.com&en=page_view";
    let run = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tagway"));
        c.args([
            "explain",
            "--rules",
            "rules",
            "--url",
            url,
            "--client-ip",
            "203.0.113.9",
        ]);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(false);
    assert!(text.contains("query:uid"), "{text}");
    assert!(text.contains("before  jane@example.com"), "{text}");
    assert!(
        text.contains("by      user id hashed (rules/10-ga4.toml:"),
        "{text}"
    );
    assert!(text.contains("query:_uip"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let uid = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "query:uid")
        .unwrap();
    assert_eq!(uid["before"], "jane@example.com");
    assert_eq!(uid["after"].as_str().unwrap().len(), 64);
    assert!(
        uid["changed_by"][0]
            .as_str()
            .unwrap()
            .starts_with("user id hashed")
    );
    assert_eq!(v["route"], "ga4-collect");
    assert!(!v["url"].as_str().unwrap().contains("jane"));
}

#[test]
fn tagway_test_exits_non_zero_when_a_rule_test_fails() {
    let ok = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["test", "--rules", "tests/rules"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("passed, 0 failed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("00.toml"),
        "[upstreams.v]\nurl = \"https://v.example\"\n\n[[route]]\nname = \"r\"\npath = \"/r\"\nupstream = \"v\"\n\n[[test]]\nname = \"expects a drop that does not happen\"\nrequest.url = \"/r?a=1\"\nexpect.absent = [\"a\"]\n",
    )
    .unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["test", "--rules", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  expects a drop that does not happen"),
        "{stdout}"
    );
    assert!(
        stdout.contains("field a: expected absent, got \"1\""),
        "{stdout}"
    );
}

/// Mistakes in rules are caught at load with `file:line:col` and what to change; none of them
/// is silently ignored.
#[test]
fn check_points_at_each_mistake_in_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"[upstreams.v]
url = "https://v.example"

[[route]]
name = "r"
path = "/r"
upstream = "v"

[[route.rule]]
drop = ["header:user-agent"]

[[route.rule]]
redact = ["dt"]
patterns = ["(unclosed"]

[[route.rule]]
drop = ["x"]
when.client_ip = ["10.0.0.0/33"]

[[route.rule]]
redact = ["dt"]
detectors = ["emial"]

[[route.rule]]
set = { a = "{client_addr}" }

[[route.rule]]
hash = ["uid"]
keep_params = ["utm_*"]

[[route.rule]]
hash = ["uid"]
drop = ["x"]

[[route.rule]]
drop = ["a..b"]
"#;
    std::fs::write(dir.path().join("00-site.toml"), rules).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["check", "--rules", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "00-site.toml:10:9: \"header:user-agent\": rules change the payload, not headers or cookies",
        "00-site.toml:14:13: invalid regex",
        "00-site.toml:18:18: client_ip: \"10.0.0.0/33\" is not an address or CIDR",
        "00-site.toml:22:13: unknown detector \"emial\"; did you mean `email`?",
        "00-site.toml:25:7: set a: unknown placeholder {client_addr}",
        "`keep_params` applies to strip_url rules, not to hash",
        "00-site.toml:31:1: one action per rule; this one has drop and hash",
        "00-site.toml:36:9: field selector \"a..b\": empty segment",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_refuses_a_rules_folder_that_does_not_exist() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagway"))
        .args(["check", "--rules", "/nonexistent/tagway-rules"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no rules folder at /nonexistent/tagway-rules"),
    );
}
