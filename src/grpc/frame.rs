//! gRPC over HTTP/2 for unary calls, as far as flex-auth needs it: one length-prefixed message in
//! the request body, one in the response followed by the `grpc-status` trailer, a status-only
//! answer for calls it does not serve, and the caller's `grpc-timeout`.
//!
//! Compressed messages are refused: flex-auth advertises no `grpc-accept-encoding`, and Envoy
//! sends `ext_authz` checks uncompressed.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::http::Buffered;

/// The gRPC status codes flex-auth answers with (`google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// The call succeeded (an ext_authz answer, allow or deny, is a successful call).
    Ok = 0,
    /// Bad input.
    InvalidArgument = 3,
    /// The deadline passed.
    DeadlineExceeded = 4,
    /// No such health service.
    NotFound = 5,
    /// Denied.
    PermissionDenied = 7,
    /// Too large.
    ResourceExhausted = 8,
    /// Not a method this listener serves.
    Unimplemented = 12,
    /// flex-auth failed.
    Internal = 13,
    /// flex-auth cannot decide now.
    Unavailable = 14,
    /// No valid credential.
    Unauthenticated = 16,
}

impl Code {
    /// The `grpc-status` value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// Why a request body is not one gRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than the five bytes of the prefix.
    #[error("the body is not a gRPC message: {0} bytes, a message needs at least 5")]
    Short(usize),
    /// The compressed flag is set.
    #[error("compressed messages are not accepted (send with `grpc-encoding: identity`)")]
    Compressed,
    /// A flag other than 0 or 1.
    #[error("the message prefix has the unknown flag {0}")]
    Flag(u8),
    /// The prefix announces another length than the body holds.
    #[error("the message prefix announces {announced} bytes and the body holds {held} after it (a unary call carries exactly one message)")]
    Length {
        /// From the prefix.
        announced: u64,
        /// After the prefix.
        held: usize,
    },
}

/// The one message of a unary call's body.
pub fn unary_message(body: &[u8]) -> Result<&[u8], FrameError> {
    let (prefix, message) = body
        .split_first_chunk::<5>()
        .ok_or(FrameError::Short(body.len()))?;
    let [flag, length @ ..] = *prefix;
    match flag {
        0 => {}
        1 => return Err(FrameError::Compressed),
        other => return Err(FrameError::Flag(other)),
    }
    let announced = u64::from(u32::from_be_bytes(length));
    if announced != message.len() as u64 {
        return Err(FrameError::Length {
            announced,
            held: message.len(),
        });
    }
    Ok(message)
}

/// A successful unary answer: `message` framed, then `grpc-status: 0`.
pub fn answer(message: &impl prost::Message) -> Response<Buffered> {
    let len = message.encoded_len();
    let Ok(prefix_len) = u32::try_from(len) else {
        return status_only(Code::Internal, "the answer is too large to frame");
    };
    let mut framed = BytesMut::with_capacity(5 + len);
    framed.put_u8(0);
    framed.put_u32(prefix_len);
    // A `BytesMut` grows as needed, so encoding cannot run out of room.
    if message.encode(&mut framed).is_err() {
        return status_only(Code::Internal, "the answer could not be encoded");
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(Buffered::new(framed.freeze()).with_trailers(trailers));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A status-only ("trailers-only") answer: `grpc-status` and `grpc-message` in the headers, no
/// message.
pub fn status_only(code: Code, message: &str) -> Response<Buffered> {
    let mut response = Response::new(Buffered::default());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code.as_i32()));
    // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_RESERVED).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// What `grpc-message` percent-encodes: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_RESERVED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Whether a request says it carries gRPC (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/grpc")
                || essence
                    .get(..17)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc+"))
                    && essence
                        .get(17..)
                        .is_some_and(|s| s.eq_ignore_ascii_case("proto"))
        })
}

/// The caller's deadline from `grpc-timeout` (`1-8 digits` + `H M S m u n`), if it sent a valid
/// one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..split)?, text.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// How long flex-auth gives a call: `limit`, or less when the caller's own deadline is sooner —
/// then nine tenths of it, so that the deny for a call that ran out of time reaches the caller
/// before it gives up (a caller that gives up may allow: Envoy's `failure_mode_allow`).
pub fn call_budget(caller: Option<Duration>, limit: Duration) -> Duration {
    match caller {
        Some(caller) => limit.min(caller.mul_f64(0.9)),
        None => limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, announced: u32, message: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend_from_slice(&announced.to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    #[test]
    fn a_unary_body_is_exactly_one_uncompressed_message() {
        assert_eq!(unary_message(&framed(0, 3, b"abc")), Ok(&b"abc"[..]));
        assert_eq!(unary_message(&framed(0, 0, b"")), Ok(&b""[..]));
        assert_eq!(unary_message(b"\0\0\0"), Err(FrameError::Short(3)));
        assert_eq!(
            unary_message(&framed(1, 3, b"abc")),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            unary_message(&framed(7, 3, b"abc")),
            Err(FrameError::Flag(7))
        );
        // Two messages, a truncated one, a prefix that claims more than was sent.
        let mut two = framed(0, 1, b"a");
        two.extend(framed(0, 1, b"b"));
        assert!(matches!(
            unary_message(&two),
            Err(FrameError::Length { announced: 1, .. })
        ));
        assert!(matches!(
            unary_message(&framed(0, 5, b"abc")),
            Err(FrameError::Length {
                announced: 5,
                held: 3
            })
        ));
        assert!(matches!(
            unary_message(&framed(0, u32::MAX, b"")),
            Err(FrameError::Length { .. })
        ));
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_specification_writes_them() {
        let with = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&headers)
        };
        assert_eq!(with("200m"), Some(Duration::from_millis(200)));
        assert_eq!(with("1S"), Some(Duration::from_secs(1)));
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(with("5n"), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "m",
            "123456789m",
            "10",
            "10x",
            "-1S",
            "1.5S",
            "+1S",
            " 1S",
        ] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
        assert_eq!(
            call_budget(Some(Duration::from_millis(200)), Duration::from_secs(5)),
            Duration::from_millis(180)
        );
        assert_eq!(
            call_budget(Some(Duration::from_secs(60)), Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            call_budget(None, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=utf-8", true),
            ("application/grpc+json", false),
            ("application/grpc-web", false),
            ("application/json", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn a_status_only_answer_percent_encodes_its_message() {
        let response = status_only(Code::Unimplemented, "no `x` here: 100% sure\n");
        assert_eq!(response.headers()["grpc-status"], "12");
        assert_eq!(
            response.headers()["grpc-message"],
            "no `x` here: 100%25 sure%0A"
        );
    }
}
