//! Micro-benchmarks of decode → rules → encode (`transform::process`), the work the gateway
//! adds to a relayed request:
//!
//! - `ga4_hit`: the ~1.2 KB GA4 page_view of the relay benchmark (w1), with an email, a phone
//!   number and a token in its page URL, referrer, `uid` and `ep.*`, through the shipped GA4
//!   rule set and the personal-data scan; `ga4_hit_clean`: the same hit without them;
//! - `posthog_batch`: a ~2 KB PostHog JSON batch through a PostHog-style rule set and the scan.
//!
//! Run: `cargo bench --bench rules` (criterion prints the median estimate per iteration).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use tagway::config::{RuleText, RulesSource, load};
use tagway::route::Lookup;
use tagway::transform::{Processed, process};

// The gateway binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOC: tagway::alloc::MiMalloc = tagway::alloc::MiMalloc;

const GA4_QUERY: &str = include_str!("../bench/payloads/w1-query.txt");

const POSTHOG_RULES: &str = r#"
[upstreams.posthog]
url = "https://us.i.posthog.com"

[[route]]
name = "posthog-batch"
path = "/e/"
upstream = "posthog"
codec = "json"
events = "[*]"
scan_exempt = ["properties.token", "uuid"]

[[route.rule]]
name = "email-like distinct ids hashed"
hash = ["properties.distinct_id", "properties.$user_id"]
when.matches = { "properties.distinct_id" = "@" }

[[route.rule]]
strip_url = ["properties.$current_url", "properties.$referrer"]
keep_params = ["utm_*"]

[[route.rule]]
hash = ["$set.email"]
normalize = "email"

[[route.rule]]
drop = ["$set.name", "$set.phone"]

[[route.rule]]
set = { "properties.$ip" = "{client_ip_anonymized}" }
"#;

fn posthog_batch() -> String {
    let event = |i: usize, name: &str, url: &str| {
        format!(
            r#"{{"uuid":"01900000-0000-7000-8000-00000000000{i}","event":"{name}","properties":{{"token":"phc_FAKE0000000000000000000000","distinct_id":"0190aa00-0000-7000-8000-0000000000aa","$device_id":"0190aa00-0000-7000-8000-0000000000aa","$session_id":"0190bb00-0000-7000-8000-0000000000bb","$window_id":"0190cc00-0000-7000-8000-0000000000cc","$current_url":"{url}","$host":"shop.example.com","$pathname":"/reset","$referrer":"https://mail.example.net/","$referring_domain":"mail.example.net","$browser":"Chrome","$os":"Mac OS X","$lib":"web","$lib_version":"1.200.0","$insert_id":"x1y2z3{i}"}},"offset":412}}"#
        )
    };
    let mut events = vec![
        event(
            1,
            "$pageview",
            "https://shop.example.com/reset?email=jane.doe%40example.com&token=abc123&utm_source=mail",
        ),
        event(2, "$pageleave", "https://shop.example.com/account"),
        event(
            3,
            "$autocapture",
            "https://shop.example.com/account?tab=orders",
        ),
    ];
    events.push(
        r#"{"uuid":"01900000-0000-7000-8000-000000000004","event":"$identify","properties":{"token":"phc_FAKE0000000000000000000000","distinct_id":"jane.doe@example.com","$anon_distinct_id":"0190aa00-0000-7000-8000-0000000000aa","$current_url":"https://shop.example.com/account","$lib":"web"},"$set":{"email":"jane.doe@example.com","name":"Jane Doe","plan":"gold"},"offset":35}"#
            .to_string(),
    );
    format!("[{}]", events.join(","))
}

fn bench(c: &mut Criterion) {
    // The shipped site settings and GA4 preset, and the PostHog-style rules above (not the
    // shipped PostHog preset, whose upstream and route names these would collide with; this
    // rule set stays fixed so that numbers compare across changes to the preset).
    let mut texts = RulesSource::Dir("rules".into())
        .read()
        .expect("shipped rules");
    texts.retain(|t| t.name.ends_with("00-site.toml") || t.name.ends_with("10-ga4.toml"));
    assert_eq!(texts.len(), 2, "rules/00-site.toml and rules/10-ga4.toml");
    texts.push(RuleText {
        name: "bench-posthog.toml".into(),
        text: POSTHOG_RULES.into(),
    });
    let rules = load(&RulesSource::Texts(texts), &[]).expect("rules compile");
    let client = "203.0.113.77".parse().unwrap();
    let route = |path: &str| match rules.routes.find("localhost", &Method::POST, path) {
        Lookup::Found(r, _) => r,
        _ => panic!("no route for {path}"),
    };

    let ga4 = route("/g/collect");
    let headers = HeaderMap::new();
    // Sanity: the rules really run (the hit changes and keeps its event name).
    match process(&rules, ga4, GA4_QUERY, &headers, b"", client, None).unwrap() {
        Processed::Forward { query: Some(q), .. } => {
            assert!(q.contains("en=page_view") && !q.contains("jane.doe"))
        }
        other => panic!("unexpected {other:?}"),
    }
    // `TAGWAY_PROFILE_ITERS=N`: run each case N times and exit, for instruction counting
    // under callgrind (deterministic, unlike wall-clock time on a shared machine).
    if let Some(n) = std::env::var("TAGWAY_PROFILE_ITERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let ph = route("/e/");
        let body = posthog_batch();
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let which = std::env::var("TAGWAY_PROFILE_CASE").unwrap_or_default();
        for _ in 0..n {
            if which != "posthog" {
                black_box(
                    process(
                        &rules,
                        ga4,
                        black_box(GA4_QUERY),
                        &headers,
                        b"",
                        client,
                        None,
                    )
                    .unwrap(),
                );
            }
            if which != "ga4" {
                black_box(
                    process(
                        &rules,
                        ph,
                        "ip=1",
                        &h,
                        black_box(body.as_bytes()),
                        client,
                        None,
                    )
                    .unwrap(),
                );
            }
        }
        std::process::exit(0);
    }
    // The same hit without personal data (what most page views look like): what the rules and
    // the scan cost when there is nothing to remove.
    let clean = GA4_QUERY
        .trim()
        .split('&')
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("");
            !matches!(
                k,
                "uid" | "ep.customer_email" | "ep.phone" | "ep.shipping_address"
            )
        })
        .map(|p| match p.split_once('=') {
            Some(("dl", _)) => "dl=https%3A%2F%2Fshop.example%2Fcheckout%3Futm_source%3Dnewsletter",
            Some(("dr", _)) => "dr=https%3A%2F%2Fmail.example%2F",
            _ => p,
        })
        .collect::<Vec<_>>()
        .join("&");
    c.bench_function(&format!("ga4_hit_clean_{}B", clean.len()), |b| {
        b.iter(|| process(&rules, ga4, black_box(&clean), &headers, b"", client, None).unwrap())
    });
    c.bench_function("ga4_hit", |b| {
        b.iter(|| {
            process(
                &rules,
                ga4,
                black_box(GA4_QUERY),
                &headers,
                b"",
                client,
                None,
            )
            .unwrap()
        })
    });

    let ph = route("/e/");
    let body = posthog_batch();
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    match process(
        &rules,
        ph,
        "ip=1&_=1707755800000&ver=1.200.0",
        &h,
        body.as_bytes(),
        client,
        None,
    )
    .unwrap()
    {
        Processed::Forward { body: Some(b), .. } => {
            let s = String::from_utf8_lossy(&b);
            assert!(
                !s.contains("jane.doe") && s.contains("\"$ip\":\"203.0.113.0\""),
                "{s}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    c.bench_function(&format!("posthog_batch_{}B", body.len()), |b| {
        b.iter(|| {
            process(
                &rules,
                ph,
                "ip=1&_=1707755800000&ver=1.200.0",
                &h,
                black_box(body.as_bytes()),
                client,
                None,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
