//! The script rewritten for one first-party host, with its gzip and br encodings and its
//! entity tag. Built once per cached copy and host, on the blocking pool: the rewrite, gzip
//! (level 9) and br at quality 9 take tens of milliseconds on a 400 KB script, which the
//! first request for it waits for; br is then redone at quality 11 (about a second, ~8 %
//! smaller) in the background, one at a time, and replaces the first encoding in the cache.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::ScriptPolicy;
use super::cache::Copy;
use crate::gateway::Gateway;
use crate::respond::Reject;

/// br quality of the first encoding, which a request waits for.
const BR_FIRST: i32 = 9;
/// br quality of the encoding made afterwards in the background.
const BR_FINAL: i32 = 11;

/// Background br recompressions run at once (process-wide); the others wait their turn.
static FINAL_BR_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The script rewritten for one host, with its encodings and entity tag.
#[derive(Debug)]
pub struct Variant {
    pub identity: Bytes,
    /// Present when smaller than `identity`.
    pub gzip: Option<Bytes>,
    pub br: Option<Bytes>,
    /// Hash of `identity`; the `ETag` of each encoding derives from it. The br bytes may be
    /// re-encoded at a higher quality under the same tag: they decode to the same content,
    /// and ranges are not served, so a browser revalidating either keeps a valid copy.
    pub tag: String,
}

impl Variant {
    pub fn size(&self) -> u64 {
        (self.identity.len()
            + self.gzip.as_ref().map_or(0, Bytes::len)
            + self.br.as_ref().map_or(0, Bytes::len)) as u64
    }
}

/// The variant of `copy` for `host`: shared and built once when the copy is cached (then
/// improved in the background), made for this request alone and uncompressed when it is not.
pub async fn get(
    gw: &Arc<Gateway>,
    key: &str,
    copy: &Arc<Copy>,
    host: &str,
    policy: &Arc<ScriptPolicy>,
) -> Result<Arc<Variant>, Reject> {
    let build = |compress: bool| {
        let (copy, host, policy) = (copy.clone(), host.to_string(), policy.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                Arc::new(build(&copy.body, &host, &policy, compress))
            })
            .await
            .map_err(|_| Reject::UpstreamFailed("the script could not be prepared".into()))
        }
    };
    if !copy.cacheable {
        return build(false).await;
    }
    let cell = gw.scripts.variant_cell(key, copy, host);
    let mut built = false;
    let v = cell
        .get_or_try_init(|| {
            built = true;
            build(true)
        })
        .await?
        .clone();
    gw.scripts.account(key, copy, host, &v, &gw.metrics);
    if built && v.br.is_some() {
        let (gw, key, copy, host, first) = (
            gw.clone(),
            key.to_string(),
            copy.clone(),
            host.to_string(),
            v.clone(),
        );
        // One br-11 at a time, gateway-wide: each takes about a second of a core, and a burst
        // of new variants must not take every blocking thread at once.
        tokio::spawn(async move {
            let Ok(_permit) = FINAL_BR_SLOTS.acquire().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(better) = finer_br(&first) {
                    gw.scripts
                        .replace_variant(&key, &copy, &host, Arc::new(better), &gw.metrics);
                }
            })
            .await;
        });
    }
    Ok(v)
}

/// Rewrites for `host`; with `compress`, adds gzip and a first br encoding, each kept only when
/// smaller than the rewritten script.
fn build(body: &[u8], host: &str, policy: &ScriptPolicy, compress: bool) -> Variant {
    let identity = Bytes::from(policy.rewriter.apply(body, host));
    let digest = Sha256::digest(&identity);
    let tag = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let (gzip, br) = if compress {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let gzip = gz.write_all(&identity).and_then(|()| gz.finish()).ok();
        (
            gzip.and_then(|g| smaller(g, identity.len())),
            brotli(&identity, BR_FIRST).and_then(|b| smaller(b, identity.len())),
        )
    } else {
        (None, None)
    };
    Variant {
        identity,
        gzip,
        br,
        tag,
    }
}

/// `v` with br at the final quality, when that is smaller.
fn finer_br(v: &Variant) -> Option<Variant> {
    let current = v.br.as_ref()?.len();
    let br = brotli(&v.identity, BR_FINAL).and_then(|b| smaller(b, current))?;
    Some(Variant {
        identity: v.identity.clone(),
        gzip: v.gzip.clone(),
        br: Some(br),
        tag: v.tag.clone(),
    })
}

fn brotli(data: &[u8], quality: i32) -> Option<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: 22,
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).ok()?;
    Some(out)
}

fn smaller(c: Vec<u8>, than: usize) -> Option<Bytes> {
    (c.len() < than).then(|| Bytes::from(c))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read as _;

    use super::*;

    fn unbrotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::Decompressor::new(b, 4096)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A gtag.js stand-in built like `bench/payloads/gen-gtag-js.sh SIZE`.
    fn gtag_standin(size: usize) -> String {
        let hosts = [
            "https://www.google-analytics.com/g/collect",
            "https://region1.google-analytics.com/g/collect",
            "https://www.googletagmanager.com/gtag/js?id=",
            "https://analytics.google.com/g/collect",
        ];
        let mut out =
            format!("/* gtag.js stand-in for benchmarks: deterministic, {size} bytes */\n");
        for i in 0.. {
            let line = format!(
                "var a{i}=\"{}\";function f{i}(b,c){{return b?a{i}+\"&_p=\"+(c|0)+\"&x={}\":void 0}}\n",
                hosts[i % 4],
                (i * 7919) % 100_003
            );
            if out.len() + line.len() + 8 > size {
                break;
            }
            out.push_str(&line);
        }
        let pad = size - out.len() - 5;
        out.push_str("/*");
        out.push_str(&"x".repeat(pad));
        out.push_str("*/\n");
        out
    }

    #[test]
    fn encodings_decode_to_the_rewritten_script_and_the_final_br_is_smaller() {
        let rewrite: BTreeMap<String, String> =
            [("www.google-analytics.com".to_string(), "{host}".to_string())].into();
        let spec = super::super::ScriptSpec {
            rewrite: Some(toml::Spanned::new(0..0, rewrite)),
            ..Default::default()
        };
        let facts = super::super::RouteFacts {
            name: "s",
            upstream_origin: "https://www.googletagmanager.com",
            upstream_path: "/gtag/js",
            get_only: true,
            has_rules: false,
            scan_off: true,
        };
        let policy = super::super::compile(&spec, &facts).unwrap();
        let script = gtag_standin(30_000);
        let v = build(script.as_bytes(), "m.shop.example", &policy, true);
        let want = script.replace("www.google-analytics.com", "m.shop.example");
        assert_eq!(v.identity, want.as_bytes());
        let mut gz = String::new();
        flate2::read::GzDecoder::new(&v.gzip.as_ref().unwrap()[..])
            .read_to_string(&mut gz)
            .unwrap();
        assert_eq!(gz, want);
        assert_eq!(unbrotli(v.br.as_ref().unwrap()), want.as_bytes());

        let better = finer_br(&v).expect("quality 11 is smaller on this script");
        assert!(better.br.as_ref().unwrap().len() < v.br.as_ref().unwrap().len());
        assert_eq!(unbrotli(better.br.as_ref().unwrap()), want.as_bytes());
        assert_eq!(better.tag, v.tag);

        let plain = build(script.as_bytes(), "m.shop.example", &policy, false);
        assert!(plain.gzip.is_none() && plain.br.is_none());
        assert_eq!(plain.tag, v.tag);
    }
}
