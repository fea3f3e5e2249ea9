//! One delivery attempt and what the vendor's answer means: delivered, retry (with the
//! backoff and `Retry-After`), or dead letter.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;

use super::DeliverySettings;
use crate::deliver::{Outgoing, UpstreamClient};
use crate::respond::Reject;
use crate::ruleset::Upstream;

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The vendor answered (status unknown when its answer was over the size limit).
    Delivered(Option<StatusCode>),
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Dead {
        reason: &'static str,
        why: String,
        status: Option<u16>,
    },
}

/// Exponential backoff with jitter: between half and all of `base · 2^(attempts-1)`, capped.
pub(super) fn backoff(d: &DeliverySettings, attempts: u32) -> Duration {
    let exp = d
        .backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(d.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// One attempt: send, read the answer to its end (so the connection is reused), classify.
pub(super) async fn attempt(client: &UpstreamClient, up: &Upstream, out: &Outgoing) -> Outcome {
    match client.send_ref(up, out).await {
        Ok((res, deadline)) => {
            let status = res.status();
            let after = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let _ = tokio::time::timeout_at(deadline, res.into_body().collect()).await;
            classify(status, after)
        }
        Err(
            r @ (Reject::UpstreamConnect(_)
            | Reject::UpstreamTimeout(_)
            | Reject::UpstreamFailed(_)),
        ) => Outcome::Retry {
            why: r.message(),
            after: None,
        },
        Err(Reject::UpstreamTooLarge(_)) => Outcome::Delivered(None),
        Err(r) => Outcome::Dead {
            reason: "unsendable",
            why: r.message(),
            status: None,
        },
    }
}

fn classify(status: StatusCode, after: Option<Duration>) -> Outcome {
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        return Outcome::Retry {
            why: format!("the vendor answered {code}"),
            after,
        };
    }
    if status.is_client_error() {
        return Outcome::Dead {
            reason: "rejected",
            why: format!("the vendor answered {code}; a 4xx is not retried"),
            status: Some(code),
        };
    }
    Outcome::Delivered(Some(status))
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried() {
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            Outcome::Retry { after: Some(a), .. } if a == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None),
            Outcome::Dead {
                reason: "rejected",
                status: Some(400),
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None),
            Outcome::Delivered(Some(StatusCode::NO_CONTENT))
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let d = DeliverySettings {
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..DeliverySettings::default()
        };
        for _ in 0..100 {
            let b1 = backoff(&d, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&d, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b30 = backoff(&d, 30);
            assert!(b30 >= Duration::from_millis(500) && b30 <= Duration::from_millis(1000));
        }
    }
}
