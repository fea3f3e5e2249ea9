//! The site's ids in the PostHog, Plausible and Segment presets: with `[site.ids]` lists, a
//! beacon goes through only when every id it carries — wherever that vendor's clients put it —
//! is the site's own, and it carries one. Checked through the explain path with the shipped
//! preset files (the shipped site lists no ids, so their `[[test]]`s cannot show this).

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method};
use tagway::config::{RuleText, RulesSource, load};
use tagway::inspect::{self, Request};

const SITE: &str = r#"
[site]
origins = ["https://shop.example"]

[site.ids]
posthog = ["phc_OURS"]
plausible = ["shop.example"]
segment = ["WK_OURS"]
"#;

/// Where `body` sent to `url` ends up: `Ok(route)` forwarded, `Err(why)` not forwarded.
fn send(
    rules: &tagway::ruleset::RuleSet,
    url: &str,
    ctype: &str,
    body: &str,
) -> Result<String, String> {
    let mut r = Request::from_url(Method::POST, url).unwrap();
    r.headers
        .insert("content-type", HeaderValue::from_str(ctype).unwrap());
    r.body = Bytes::from(body.to_string());
    r.client_ip = "203.0.113.7".parse().unwrap();
    let ins = inspect::inspect(rules, &r, &mut |_, _| {}).unwrap_or_else(|e| panic!("{url}: {e}"));
    match (ins.sent, ins.dropped) {
        (Some(_), None) => Ok(ins.route),
        (_, Some(why)) => Err(why),
        (None, None) => panic!("{url}: neither sent nor dropped"),
    }
}

fn rules() -> tagway::ruleset::RuleSet {
    let mut texts = vec![RuleText {
        name: "00-site.toml".into(),
        text: SITE.into(),
    }];
    for f in ["30-posthog.toml", "31-plausible.toml", "33-segment.toml"] {
        texts.push(RuleText {
            name: f.into(),
            text: std::fs::read_to_string(format!("rules/{f}")).unwrap(),
        });
    }
    load(&RulesSource::Texts(texts), &[]).expect("the presets load with a site listing ids")
}

#[test]
fn posthog_plausible_and_segment_relay_only_the_sites_own_ids() {
    let rules = rules();
    let json = "application/json";
    let plain = "text/plain";
    let ok = |r: Result<String, String>, route: &str, what: &str| {
        assert_eq!(r.as_deref(), Ok(route), "{what}");
    };
    let foreign = |r: Result<String, String>, what: &str| {
        let why = r.expect_err(what);
        assert!(why.starts_with("the site's ids: "), "{what}: {why}");
    };

    // PostHog: posthog-js arrays and {api_key, batch} bodies, the capture API, flags.
    let ev = |tok: &str| {
        format!(r#"{{"event":"$pageview","properties":{{"token":"{tok}","distinct_id":"d1"}}}}"#)
    };
    let e = "/ingest/e/";
    ok(
        send(&rules, e, plain, &format!("[{}]", ev("phc_OURS"))),
        "posthog-e",
        "array, own token",
    );
    ok(
        send(
            &rules,
            e,
            plain,
            &format!(
                r#"{{"api_key":"phc_OURS","batch":[{},{}]}}"#,
                ev("phc_OURS"),
                ev("phc_OURS")
            ),
        ),
        "posthog-e",
        "batch, own key and tokens",
    );
    foreign(
        send(
            &rules,
            e,
            plain,
            &format!(
                r#"{{"api_key":"phc_OURS","batch":[{},{}]}}"#,
                ev("phc_OURS"),
                ev("phc_SPAM")
            ),
        ),
        "one event of another project",
    );
    foreign(
        send(&rules, e, plain, &format!("[{}]", ev("phc_SPAM"))),
        "another token",
    );
    foreign(
        send(
            &rules,
            e,
            plain,
            r#"[{"event":"x","properties":{"distinct_id":"d1"}}]"#,
        ),
        "no token",
    );
    let capture = "/ingest/i/v0/e/";
    ok(
        send(
            &rules,
            capture,
            json,
            r#"{"api_key":"phc_OURS","event":"signed_up","distinct_id":"u1","properties":{}}"#,
        ),
        "posthog-capture",
        "capture API, own api_key",
    );
    foreign(
        send(
            &rules,
            capture,
            json,
            r#"{"api_key":"phc_SPAM","event":"signed_up","distinct_id":"u1"}"#,
        ),
        "capture API, another api_key",
    );
    ok(
        send(
            &rules,
            "/ingest/batch/",
            json,
            &format!(r#"{{"api_key":"phc_OURS","batch":[{}]}}"#, ev("phc_OURS")),
        ),
        "posthog-batch",
        "batch API",
    );
    let flags = "/ingest/flags/?v=2&compression=base64";
    let form = |tok: &str| {
        let doc = format!(r#"{{"token":"{tok}","distinct_id":"u1"}}"#);
        format!(
            "data={}",
            base64::engine::general_purpose::STANDARD.encode(doc)
        )
    };
    let form_ct = "application/x-www-form-urlencoded";
    ok(
        send(&rules, flags, form_ct, &form("phc_OURS")),
        "posthog-flags",
        "flags, base64 form",
    );
    foreign(
        send(&rules, flags, form_ct, &form("phc_SPAM")),
        "flags, another token (base64)",
    );
    foreign(
        send(
            &rules,
            "/ingest/flags/?v=2",
            json,
            r#"{"token":"phc_SPAM","distinct_id":"u1"}"#,
        ),
        "flags, another token (JSON)",
    );

    // Plausible: `d`, or `domain` in the Events API's long names.
    let pe = "/api/event";
    ok(
        send(
            &rules,
            pe,
            plain,
            r#"{"n":"pageview","u":"https://shop.example/","d":"shop.example"}"#,
        ),
        "plausible-event",
        "own domain",
    );
    ok(
        send(
            &rules,
            pe,
            json,
            r#"{"name":"pageview","url":"https://shop.example/","domain":"shop.example"}"#,
        ),
        "plausible-event",
        "own domain, long names",
    );
    foreign(
        send(
            &rules,
            pe,
            plain,
            r#"{"n":"pageview","u":"https://spam.example/","d":"spam.example"}"#,
        ),
        "another domain",
    );
    foreign(
        send(
            &rules,
            pe,
            plain,
            r#"{"n":"pageview","u":"https://shop.example/"}"#,
        ),
        "no domain",
    );

    // Segment: writeKey in each event, or at the top of a batch.
    let t = r#"{"type":"track","event":"e","anonymousId":"a1","writeKey":"WK_OURS"}"#;
    ok(
        send(&rules, "/v1/t", plain, t),
        "segment-api",
        "own write key",
    );
    foreign(
        send(&rules, "/v1/t", plain, &t.replace("WK_OURS", "WK_SPAM")),
        "another write key",
    );
    foreign(
        send(
            &rules,
            "/v1/t",
            plain,
            r#"{"type":"track","event":"e","anonymousId":"a1"}"#,
        ),
        "no write key",
    );
    ok(
        send(
            &rules,
            "/v1/b",
            plain,
            r#"{"writeKey":"WK_OURS","batch":[{"type":"page","anonymousId":"a1"}]}"#,
        ),
        "segment-batch",
        "batch with the key at its top",
    );
    foreign(
        send(
            &rules,
            "/v1/b",
            plain,
            &format!(r#"{{"batch":[{t},{}]}}"#, t.replace("WK_OURS", "WK_SPAM")),
        ),
        "batch with one event of another source",
    );
    ok(
        send(
            &rules,
            "/v1/m",
            plain,
            r#"{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1}]}"#,
        ),
        "segment-metrics",
        "the library's metrics carry no key",
    );
}

#[test]
fn id_field_is_one_selector_or_a_non_empty_list() {
    let load_route = |id_field: &str| {
        let text = crate::support::gateway::rules(&format!(
            "[[route]]\nname = \"r\"\npath = \"/r\"\nupstream = \"v\"\nid_field = {id_field}\nid_list = \"v\"\n"
        ));
        load(
            &RulesSource::Texts(vec![RuleText {
                name: "t.toml".into(),
                text,
            }]),
            &[],
        )
    };
    assert!(load_route("\"tid\"").is_ok());
    assert!(load_route("[\"api_key\", \"**.token\"]").is_ok());
    let e = load_route("[]").unwrap_err().to_string();
    assert!(e.contains("id_field = []: name the field"), "{e}");
    let e = load_route("[\"a[\"]").unwrap_err().to_string();
    assert!(e.contains("t.toml:") && e.contains("field selector"), "{e}");
    let e = load_route("3").unwrap_err().to_string();
    assert!(e.contains("a field selector or a list of them"), "{e}"); // A header or cookie never holds the id: such a route would drop every beacon.
    for f in ["\"header:x-id\"", "[\"tid\", \"cookie:_id\"]"] {
        let e = load_route(f).unwrap_err().to_string();
        assert!(e.contains("not from headers or cookies"), "{f}: {e}");
    }
}
