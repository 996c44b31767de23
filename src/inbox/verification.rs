//! Verifying inbound deliveries: the request as the inbox sees it, the reasons a delivery is
//! refused, and the three schemes (Standard Webhooks, GitHub, a bearer token), each checked over
//! the raw body in constant time.

use std::collections::HashMap;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::Millis;
use crate::config::{InboxScheme, InboxSourceConfig, Secret};
use crate::exec::http::standard_webhooks_signature;

/// Bytes of an HMAC-SHA256.
const MAC_LEN: usize = 32;
/// Longest accepted delivery id (the idempotency key `hook:<source>:<id>` stays within 256).
pub const MAX_DELIVERY_ID: usize = 180;
/// Most signatures looked at in one `webhook-signature` header.
const MAX_SIGNATURES: usize = 16;

/// Delivery id headers tried, in order, for a bearer source without `delivery_id_header`.
pub const DEFAULT_DELIVERY_ID_HEADERS: [&str; 2] = ["idempotency-key", "x-delivery-id"];

/// Why a delivery was refused; the code is stable (API error code and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A header the scheme needs is absent or empty.
    MissingHeader,
    /// No signature header.
    MissingSignature,
    /// The signature is empty, short, or not in the scheme's format.
    MalformedSignature,
    /// A well-formed signature that does not match.
    InvalidSignature,
    /// `webhook-timestamp` is not a number of seconds.
    InvalidTimestamp,
    /// `webhook-timestamp` is too far from keel's clock.
    TimestampOutOfTolerance,
    /// No `Authorization` header (bearer scheme).
    MissingToken,
    /// The bearer token is wrong or not a bearer token.
    InvalidToken,
    /// The delivery id is too long or has characters other than visible ASCII.
    InvalidDeliveryId,
    /// The body is not JSON.
    InvalidPayload,
    /// The body is larger than `server.max_body_bytes`.
    PayloadTooLarge,
    /// The queue is full (`queue.max_depth`).
    QueueFull,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 12] = [
        Reason::MissingHeader,
        Reason::MissingSignature,
        Reason::MalformedSignature,
        Reason::InvalidSignature,
        Reason::InvalidTimestamp,
        Reason::TimestampOutOfTolerance,
        Reason::MissingToken,
        Reason::InvalidToken,
        Reason::InvalidDeliveryId,
        Reason::InvalidPayload,
        Reason::PayloadTooLarge,
        Reason::QueueFull,
    ];

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingHeader => "missing_header",
            Reason::MissingSignature => "missing_signature",
            Reason::MalformedSignature => "malformed_signature",
            Reason::InvalidSignature => "invalid_signature",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            Reason::MissingToken => "missing_token",
            Reason::InvalidToken => "invalid_token",
            Reason::InvalidDeliveryId => "invalid_delivery_id",
            Reason::InvalidPayload => "invalid_payload",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::QueueFull => "queue_full",
        }
    }

    /// Whether the delivery failed to prove where it came from (answered 401).
    pub fn is_authentication(self) -> bool {
        !matches!(
            self,
            Reason::InvalidDeliveryId
                | Reason::InvalidPayload
                | Reason::PayloadTooLarge
                | Reason::QueueFull
        )
    }
}

/// A refused delivery: the reason and a message for the sender (never the body or a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What was wrong, for the sender and the rejections list.
    pub message: String,
    /// The delivery id, when the request carried a usable one.
    pub delivery_id: Option<String>,
}

impl Rejection {
    /// A rejection without a delivery id.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            delivery_id: None,
        }
    }

    pub(super) fn with_id(mut self, id: &str) -> Self {
        self.delivery_id = valid_delivery_id(id).then(|| id.to_string());
        self
    }
}

/// An inbound request as the inbox sees it.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    headers: HashMap<String, String>,
    /// The raw body, exactly as received.
    pub body: Vec<u8>,
    /// The peer's address, when known.
    pub remote_addr: Option<String>,
}

impl Delivery {
    /// A delivery of `body` with no headers yet.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Delivery {
            body: body.into(),
            ..Delivery::default()
        }
    }

    /// Adds a header; names are case-insensitive and the first value of a name is kept.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.add_header(name, value);
        self
    }

    /// Adds a header in place (see [`Delivery::with_header`]).
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.headers
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| value.to_string());
    }

    /// A header's value, trimmed; `None` when absent or blank.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }
}

/// Whether `id` is 1 to [`MAX_DELIVERY_ID`] visible ASCII characters.
pub fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DELIVERY_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

fn hmac_sha256(key: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn required<'a>(delivery: &'a Delivery, name: &str) -> Result<&'a str, Rejection> {
    delivery.header(name).ok_or_else(|| {
        Rejection::new(
            Reason::MissingHeader,
            format!("the `{name}` header is missing"),
        )
    })
}

/// Checks a delivery against its source's scheme; returns the delivery id.
///
/// `now_ms` is keel's clock; `tolerance_s` bounds the Standard Webhooks timestamp both ways.
pub fn verify(
    source: &InboxSourceConfig,
    delivery: &Delivery,
    now_ms: Millis,
    tolerance_s: u64,
) -> Result<String, Rejection> {
    // Config validation requires a secret; without one nothing verifies (an empty HMAC key or
    // token would let anyone in).
    let secret = source
        .secret
        .as_ref()
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            let reason = match source.scheme {
                InboxScheme::Bearer => Reason::InvalidToken,
                _ => Reason::InvalidSignature,
            };
            Rejection::new(reason, "this source has no secret configured")
        })?;
    let id = match source.scheme {
        InboxScheme::StandardWebhooks => {
            verify_standard_webhooks(secret, delivery, now_ms, tolerance_s)?
        }
        InboxScheme::Github => verify_github(secret, delivery)?,
        InboxScheme::Bearer => {
            verify_bearer(secret, source.delivery_id_header.as_deref(), delivery)?
        }
    };
    if !valid_delivery_id(&id) {
        return Err(Rejection::new(
            Reason::InvalidDeliveryId,
            format!(
                "the delivery id must be 1 to {MAX_DELIVERY_ID} visible ASCII characters (got {} bytes)",
                id.len()
            ),
        ));
    }
    Ok(id)
}

fn verify_standard_webhooks(
    secret: &str,
    delivery: &Delivery,
    now_ms: Millis,
    tolerance_s: u64,
) -> Result<String, Rejection> {
    let id = required(delivery, "webhook-id")?;
    let timestamp = required(delivery, "webhook-timestamp").map_err(|r| r.with_id(id))?;
    let header = delivery.header("webhook-signature").ok_or_else(|| {
        Rejection::new(
            Reason::MissingSignature,
            "the `webhook-signature` header is missing",
        )
        .with_id(id)
    })?;
    let timestamp: i64 = timestamp.parse().map_err(|_| {
        Rejection::new(
            Reason::InvalidTimestamp,
            "`webhook-timestamp` must be whole seconds since the Unix epoch",
        )
        .with_id(id)
    })?;
    let skew = now_ms.div_euclid(1000).abs_diff(timestamp);
    if skew > tolerance_s {
        return Err(Rejection::new(
            Reason::TimestampOutOfTolerance,
            format!(
                "`webhook-timestamp` is {skew} s away from keel's clock (tolerance {tolerance_s} s)"
            ),
        )
        .with_id(id));
    }
    let expected = standard_webhooks_signature(secret, id, timestamp, &delivery.body)
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.strip_prefix("v1,")?)
                .ok()
        })
        .filter(|mac| mac.len() == MAC_LEN)
        .ok_or_else(|| {
            Rejection::new(
                Reason::InvalidSignature,
                "this source's secret cannot sign; fix inbox.sources.<name>.secret",
            )
            .with_id(id)
        })?;
    let mut well_formed = 0;
    let mut matched = subtle::Choice::from(0);
    for candidate in header.split(' ').filter(|c| !c.is_empty()) {
        if well_formed == MAX_SIGNATURES {
            break;
        }
        // Only full-length v1 signatures are compared; an empty or short one never is.
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(mac) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            continue;
        };
        if mac.len() != MAC_LEN {
            continue;
        }
        well_formed += 1;
        matched |= mac.ct_eq(&expected);
    }
    if well_formed == 0 {
        return Err(Rejection::new(
            Reason::MalformedSignature,
            "`webhook-signature` holds no `v1,<base64>` signature of 32 bytes",
        )
        .with_id(id));
    }
    if !bool::from(matched) {
        return Err(Rejection::new(
            Reason::InvalidSignature,
            "no signature in `webhook-signature` matches",
        )
        .with_id(id));
    }
    Ok(id.to_string())
}

fn verify_github(secret: &str, delivery: &Delivery) -> Result<String, Rejection> {
    let header = delivery.header("x-hub-signature-256").ok_or_else(|| {
        Rejection::new(
            Reason::MissingSignature,
            "the `X-Hub-Signature-256` header is missing",
        )
    })?;
    let id = required(delivery, "x-github-delivery")?;
    let mac = header
        .strip_prefix("sha256=")
        .filter(|hex| hex.len() == 2 * MAC_LEN)
        .and_then(decode_hex)
        .ok_or_else(|| {
            Rejection::new(
                Reason::MalformedSignature,
                "`X-Hub-Signature-256` must be `sha256=` and 64 hex digits",
            )
            .with_id(id)
        })?;
    let expected = hmac_sha256(secret.as_bytes(), &delivery.body);
    if !bool::from(mac.ct_eq(&expected)) {
        return Err(Rejection::new(
            Reason::InvalidSignature,
            "`X-Hub-Signature-256` does not match",
        )
        .with_id(id));
    }
    Ok(id.to_string())
}

fn verify_bearer(
    secret: &str,
    id_header: Option<&str>,
    delivery: &Delivery,
) -> Result<String, Rejection> {
    let header = delivery.header("authorization").ok_or_else(|| {
        Rejection::new(
            Reason::MissingToken,
            "the `Authorization: Bearer <token>` header is missing",
        )
    })?;
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    // Hashing first makes the comparison constant time whatever the lengths.
    let presented = blake3::hash(token.as_bytes());
    let wanted = blake3::hash(secret.as_bytes());
    if token.is_empty() || !bool::from(presented.as_bytes().ct_eq(wanted.as_bytes())) {
        return Err(Rejection::new(
            Reason::InvalidToken,
            "the bearer token is not this source's",
        ));
    }
    let id = match id_header {
        Some(name) => delivery.header(name),
        None => DEFAULT_DELIVERY_ID_HEADERS
            .iter()
            .find_map(|name| delivery.header(name)),
    };
    Ok(match id {
        Some(id) => id.to_string(),
        None => blake3::hash(&delivery.body).to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommandHandlerConfig, Config, HandlerConfig};

    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &str = r#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn source(scheme: InboxScheme, secret: &str) -> InboxSourceConfig {
        InboxSourceConfig {
            scheme,
            secret: Some(Secret::new(secret)),
            task_type: "t".into(),
            delivery_id_header: None,
        }
    }

    fn sw(id: &str, ts: &str, sig: &str, body: &str) -> Delivery {
        Delivery::new(body)
            .with_header("webhook-id", id)
            .with_header("webhook-timestamp", ts)
            .with_header("webhook-signature", sig)
    }

    fn reason(r: Result<String, Rejection>) -> Reason {
        r.expect_err("should be refused").reason
    }

    fn check_sw(d: &Delivery, now_s: i64) -> Result<String, Rejection> {
        verify(
            &source(InboxScheme::StandardWebhooks, SW_SECRET),
            d,
            now_s * 1000,
            300,
        )
    }

    #[test]
    fn standard_webhooks_spec_vectors_verify() {
        let d = sw(SW_ID, &SW_TS.to_string(), SW_SIG, SW_BODY);
        assert_eq!(check_sw(&d, SW_TS).unwrap(), SW_ID);

        let src = source(
            InboxScheme::StandardWebhooks,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        );
        let d = sw(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            r#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(
            verify(&src, &d, 1_649_367_553_000, 300).unwrap(),
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"
        );
        // One byte of the body changed: the same signature no longer verifies.
        let d = sw(SW_ID, &SW_TS.to_string(), SW_SIG, r#"{"test": 2432232315}"#);
        assert_eq!(reason(check_sw(&d, SW_TS)), Reason::InvalidSignature);
    }

    #[test]
    fn standard_webhooks_refuses_empty_short_wrong_and_foreign_signatures() {
        let ts = SW_TS.to_string();
        let short = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 16])
        );
        let truncated = &SW_SIG[..SW_SIG.len() - 4];
        let wrong = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        );
        let cases: &[(&str, Reason)] = &[
            ("v1,", Reason::MalformedSignature),
            ("v1", Reason::MalformedSignature),
            (&short, Reason::MalformedSignature),
            (truncated, Reason::MalformedSignature),
            ("v1,!!!notbase64!!!", Reason::MalformedSignature),
            (
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                Reason::MalformedSignature,
            ),
            ("v1, v1,", Reason::MalformedSignature),
            (&wrong, Reason::InvalidSignature),
        ];
        for (sig, want) in cases {
            let d = sw(SW_ID, &ts, sig, SW_BODY);
            assert_eq!(reason(check_sw(&d, SW_TS)), *want, "{sig:?}");
        }
        // The right signature under another secret.
        let other = source(
            InboxScheme::StandardWebhooks,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        );
        let d = sw(SW_ID, &ts, SW_SIG, SW_BODY);
        assert_eq!(
            reason(verify(&other, &d, SW_TS * 1000, 300)),
            Reason::InvalidSignature
        );
    }

    #[test]
    fn standard_webhooks_accepts_any_matching_signature_of_a_list() {
        let ts = SW_TS.to_string();
        let wrong = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode([9u8; 32])
        );
        for header in [
            format!("{wrong} {SW_SIG}"),
            format!("v1, {SW_SIG}"),
            format!("v1a,abc {SW_SIG} {wrong}"),
        ] {
            let d = sw(SW_ID, &ts, &header, SW_BODY);
            assert_eq!(check_sw(&d, SW_TS).unwrap(), SW_ID, "{header}");
        }
        let d = sw(SW_ID, &ts, &format!("{wrong} {wrong}"), SW_BODY);
        assert_eq!(reason(check_sw(&d, SW_TS)), Reason::InvalidSignature);
    }

    #[test]
    fn standard_webhooks_checks_headers_and_timestamp_both_ways() {
        let ts = SW_TS.to_string();
        let full = sw(SW_ID, &ts, SW_SIG, SW_BODY);
        for (missing, want) in [
            ("webhook-id", Reason::MissingHeader),
            ("webhook-timestamp", Reason::MissingHeader),
            ("webhook-signature", Reason::MissingSignature),
        ] {
            let mut d = Delivery::new(SW_BODY);
            for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
                if name != missing {
                    d.add_header(name, full.header(name).unwrap());
                }
            }
            assert_eq!(reason(check_sw(&d, SW_TS)), want, "without {missing}");
            // Blank counts as missing.
            d.add_header(missing, "  ");
            assert_eq!(reason(check_sw(&d, SW_TS)), want, "blank {missing}");
        }
        let d = sw(SW_ID, "16142653.30", SW_SIG, SW_BODY);
        assert_eq!(reason(check_sw(&d, SW_TS)), Reason::InvalidTimestamp);
        // The tolerance is inclusive, in both directions.
        assert!(check_sw(&full, SW_TS + 300).is_ok());
        assert!(check_sw(&full, SW_TS - 300).is_ok());
        let old = check_sw(&full, SW_TS + 301).unwrap_err();
        assert_eq!(old.reason, Reason::TimestampOutOfTolerance);
        assert_eq!(old.delivery_id.as_deref(), Some(SW_ID));
        assert_eq!(
            reason(check_sw(&full, SW_TS - 301)),
            Reason::TimestampOutOfTolerance
        );
        // Header names are case-insensitive.
        let d = Delivery::new(SW_BODY)
            .with_header("Webhook-Id", SW_ID)
            .with_header("WEBHOOK-TIMESTAMP", &ts)
            .with_header("Webhook-Signature", SW_SIG);
        assert!(check_sw(&d, SW_TS).is_ok());
    }

    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &str = "Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn gh(sig: Option<&str>, delivery: Option<&str>) -> Result<String, Rejection> {
        let mut d = Delivery::new(GH_BODY);
        if let Some(sig) = sig {
            d.add_header("X-Hub-Signature-256", sig);
        }
        if let Some(id) = delivery {
            d.add_header("X-GitHub-Delivery", id);
        }
        verify(&source(InboxScheme::Github, GH_SECRET), &d, 0, 300)
    }

    #[test]
    fn github_docs_example_verifies_in_either_hex_case() {
        let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        assert_eq!(gh(Some(GH_SIG), Some(id)).unwrap(), id);
        let upper = format!("sha256={}", GH_SIG["sha256=".len()..].to_ascii_uppercase());
        assert_eq!(gh(Some(&upper), Some(id)).unwrap(), id);
        let other = verify(
            &source(InboxScheme::Github, "another secret"),
            &Delivery::new(GH_BODY)
                .with_header("x-hub-signature-256", GH_SIG)
                .with_header("x-github-delivery", id),
            0,
            300,
        );
        assert_eq!(reason(other), Reason::InvalidSignature);
    }

    #[test]
    fn github_refuses_empty_short_wrong_and_missing() {
        let id = Some("d-1");
        let wrong = format!("sha256={}", "ab".repeat(32));
        let cases: &[(&str, Reason)] = &[
            ("sha256=", Reason::MalformedSignature),
            ("sha256=757107ea0eb2509f", Reason::MalformedSignature),
            (&GH_SIG[..GH_SIG.len() - 1], Reason::MalformedSignature),
            (
                "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                Reason::MalformedSignature,
            ),
            (
                "SHA256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                Reason::MalformedSignature,
            ),
            (
                "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                Reason::MalformedSignature,
            ),
            (&wrong, Reason::InvalidSignature),
        ];
        for (sig, want) in cases {
            assert_eq!(reason(gh(Some(sig), id)), *want, "{sig}");
        }
        assert_eq!(reason(gh(None, id)), Reason::MissingSignature);
        assert_eq!(reason(gh(Some(GH_SIG), None)), Reason::MissingHeader);
    }

    #[test]
    fn bearer_compares_the_token_and_finds_the_delivery_id() {
        let token = "0123456789abcdef-token";
        let mut src = source(InboxScheme::Bearer, token);
        let auth = format!("Bearer {token}");
        let body = br#"{"x":1}"#;
        let check = |src: &InboxSourceConfig, d: &Delivery| verify(src, d, 0, 300);

        let d = Delivery::new(&body[..]).with_header("authorization", &auth);
        assert_eq!(
            check(&src, &d).unwrap(),
            blake3::hash(body).to_hex().to_string(),
            "no id header: the body's hash"
        );
        let d = d
            .with_header("x-delivery-id", "second")
            .with_header("idempotency-key", "first");
        assert_eq!(check(&src, &d).unwrap(), "first");
        let d = Delivery::new(&body[..])
            .with_header("authorization", &format!("bearer {token}"))
            .with_header("x-delivery-id", "second");
        assert_eq!(check(&src, &d).unwrap(), "second");
        src.delivery_id_header = Some("x-request-id".into());
        let d = d.with_header("x-request-id", "mine");
        assert_eq!(check(&src, &d).unwrap(), "mine");

        for bad in [
            format!("Bearer {token}x"),
            format!("Bearer {}", &token[1..]),
            format!("Basic {token}"),
            token.to_string(),
            "Bearer ".to_string(),
        ] {
            let d = Delivery::new(&body[..]).with_header("authorization", &bad);
            assert_eq!(reason(check(&src, &d)), Reason::InvalidToken, "{bad}");
        }
        let d = Delivery::new(&body[..]);
        assert_eq!(reason(check(&src, &d)), Reason::MissingToken);
    }

    #[test]
    fn delivery_ids_are_bounded_visible_ascii() {
        let token = "0123456789abcdef-token";
        let src = source(InboxScheme::Bearer, token);
        let auth = format!("Bearer {token}");
        for (id, ok) in [
            ("a".repeat(MAX_DELIVERY_ID), true),
            ("a".repeat(MAX_DELIVERY_ID + 1), false),
            ("has space".to_string(), false),
            ("tab\there".to_string(), false),
            ("ünï".to_string(), false),
        ] {
            let d = Delivery::new("{}")
                .with_header("authorization", &auth)
                .with_header("idempotency-key", &id);
            let r = verify(&src, &d, 0, 300);
            assert_eq!(r.is_ok(), ok, "{id:?}: {r:?}");
            if !ok {
                assert_eq!(r.unwrap_err().reason, Reason::InvalidDeliveryId);
            }
        }
    }

    #[test]
    fn reasons_have_distinct_codes() {
        let codes: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert!(Reason::InvalidSignature.is_authentication());
        assert!(!Reason::InvalidPayload.is_authentication());
    }

    fn config_with(source: InboxSourceConfig) -> Config {
        let mut config = Config::default();
        config.handlers.insert(
            "t".into(),
            HandlerConfig::Command(CommandHandlerConfig {
                program: "/bin/true".into(),
                args: Vec::new(),
                working_dir: None,
                env_allow: Vec::new(),
                timeout_seconds: 10,
                concurrency: None,
                max_attempts: None,
            }),
        );
        config.inbox.sources.insert("src".into(), source);
        config
    }

    fn config_error(config: &Config) -> String {
        config
            .validate()
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn config_is_validated_naming_the_key() {
        config_with(source(InboxScheme::StandardWebhooks, SW_SECRET))
            .validate()
            .expect("valid");

        let mut c = config_with(source(InboxScheme::StandardWebhooks, SW_SECRET));
        c.inbox.sources.get_mut("src").unwrap().task_type = "nothing".into();
        let err = config_error(&c);
        assert!(
            err.starts_with("inbox.sources.src.task_type: ") && err.contains("[handlers.nothing]"),
            "{err}"
        );

        for (scheme, secret) in [
            (
                InboxScheme::StandardWebhooks,
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            (InboxScheme::StandardWebhooks, "whsec_c2hvcnQ="),
            (InboxScheme::Github, ""),
            (InboxScheme::Github, "fifteen bytes!!"),
            (InboxScheme::Bearer, "short"),
            (InboxScheme::Github, "***"),
        ] {
            let err = config_error(&config_with(source(scheme, secret)));
            assert!(err.starts_with("inbox.sources.src.secret: "), "{err}");
            assert!(secret.len() < 4 || !err.contains(secret), "{err}");
        }

        let mut s = source(InboxScheme::Github, GH_SECRET);
        s.delivery_id_header = Some("x-id".into());
        let err = config_error(&config_with(s));
        assert!(
            err.starts_with("inbox.sources.src.delivery_id_header: "),
            "{err}"
        );

        let mut c = config_with(source(InboxScheme::Github, GH_SECRET));
        c.inbox.replay_retention_seconds = 599;
        let err = config_error(&c);
        assert!(
            err.starts_with("inbox.replay_retention_seconds: must be at least 600"),
            "{err}"
        );

        let mut c = config_with(source(InboxScheme::Github, GH_SECRET));
        c.queue.idempotency_retention_seconds = 300;
        let err = config_error(&c);
        assert!(
            err.starts_with("queue.idempotency_retention_seconds: "),
            "{err}"
        );

        let mut c = config_with(source(InboxScheme::Github, GH_SECRET));
        let s = c.inbox.sources.remove("src").unwrap();
        c.inbox.sources.insert("bad name".into(), s);
        assert!(config_error(&c).starts_with("inbox.sources.bad name: "));
    }

    #[test]
    fn a_source_secret_can_come_from_a_file_named_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keel.toml");
        std::fs::write(
            &file,
            "[handlers.t]\nkind = \"command\"\nprogram = \"/bin/true\"\n\
             [inbox.sources.gh]\nscheme = \"github\"\ntask_type = \"t\"\n",
        )
        .unwrap();
        let options = |env: Vec<(String, String)>| crate::config::LoadOptions {
            file: Some(file.clone()),
            env,
            ..Default::default()
        };
        let err = Config::load(&options(Vec::new())).unwrap_err().to_string();
        assert!(
            err.starts_with("inbox.sources.gh.secret: must be set")
                && err.contains("KEEL_INBOX__SOURCES__GH__SECRET_FILE"),
            "{err}"
        );
        let secret_file = dir.path().join("gh.secret");
        std::fs::write(&secret_file, format!("{GH_SECRET}\n")).unwrap();
        let config = Config::load(&options(vec![(
            "KEEL_INBOX__SOURCES__GH__SECRET_FILE".into(),
            secret_file.display().to_string(),
        )]))
        .expect("loads");
        let source = &config.inbox.sources["gh"];
        assert_eq!(source.secret.as_ref().map(Secret::expose), Some(GH_SECRET));
        let d = Delivery::new(GH_BODY)
            .with_header("x-hub-signature-256", GH_SIG)
            .with_header("x-github-delivery", "d-1");
        assert_eq!(verify(source, &d, 0, 300).unwrap(), "d-1");
    }

    #[test]
    fn a_source_without_a_secret_verifies_nothing() {
        // An empty HMAC key is one anyone can sign with: such a delivery must still be refused.
        let mut src = source(InboxScheme::Github, GH_SECRET);
        src.secret = None;
        let empty_key_sig = format!("sha256={}", crate::audit::hex(&hmac_sha256(b"", b"{}")));
        let d = Delivery::new("{}")
            .with_header("x-hub-signature-256", &empty_key_sig)
            .with_header("x-github-delivery", "d-1");
        assert_eq!(reason(verify(&src, &d, 0, 300)), Reason::InvalidSignature);
        src.secret = Some(Secret::new(""));
        assert_eq!(reason(verify(&src, &d, 0, 300)), Reason::InvalidSignature);
        let mut src = source(InboxScheme::Bearer, "x");
        src.secret = None;
        let d = Delivery::new("{}").with_header("authorization", "Bearer ");
        assert_eq!(reason(verify(&src, &d, 0, 300)), Reason::InvalidToken);
    }

    #[test]
    fn sources_load_from_toml_and_print_without_secrets() {
        let text = format!(
            "[handlers.t]\nkind = \"command\"\nprogram = \"/bin/true\"\n\
             [inbox.sources.gh]\nscheme = \"github\"\nsecret = \"{GH_SECRET}\"\ntask_type = \"t\"\n\
             [inbox.sources.sw]\nscheme = \"standard-webhooks\"\nsecret = \"{SW_SECRET}\"\ntask_type = \"t\"\n"
        );
        let config: Config = toml::from_str(&text).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.inbox.sources["gh"].scheme, InboxScheme::Github);
        assert_eq!(
            config.inbox.sources["sw"].scheme,
            InboxScheme::StandardWebhooks
        );
        let printed = config.to_redacted_toml();
        assert!(!printed.contains(GH_SECRET) && !printed.contains(SW_SECRET));
        assert!(
            printed.contains("scheme = \"standard-webhooks\""),
            "{printed}"
        );

        let err = toml::from_str::<Config>(
            "[inbox.sources.x]\nscheme = \"hmac\"\nsecret = \"s\"\ntask_type = \"t\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("hmac"), "{err}");
    }
}
