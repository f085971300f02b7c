//! Reading a bearer credential: the header, the JWT's own header (algorithm before anything
//! else), duplicate claims, and the mapping of the JWT library's errors to ours.

use base64::Engine as _;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::Alg;

/// Longest bearer token considered.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who a request comes from, after verification.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The subject id (prefix + claim value).
    pub subject: String,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// sha256 of the bearer credential, lowercase hex: what records carry instead of it.
    pub credential_sha256: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer credential: send `Authorization: Bearer <token>`")]
    Missing,
    /// The header is not a single well-formed bearer credential.
    #[error("{0}")]
    Malformed(String),
    /// The token's `alg` is not on the allow-list.
    #[error("algorithm `{0}` is not accepted")]
    AlgorithmNotAllowed(String),
    /// No key with the token's `kid`, even after a refresh.
    #[error("no key with kid `{0}`")]
    UnknownKey(String),
    /// The token's `alg` is not the algorithm of the key it names.
    #[error("algorithm `{alg}` does not match key `{kid}` ({key_alg})")]
    AlgorithmMismatch {
        /// What the token says.
        alg: String,
        /// The key.
        kid: String,
        /// The key's algorithm.
        key_alg: &'static str,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the skew).
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the skew).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Wrong `iss`.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// No accepted `aud`.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    /// Keys or secret are not usable: a server problem, answered 503.
    #[error("credentials cannot be verified right now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Metric label: a small fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownKey(_) => "unknown_kid",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Every reason label, for metrics that start at zero.
    pub const REASONS: [&'static str; 12] = [
        "missing",
        "malformed",
        "algorithm_not_allowed",
        "unknown_kid",
        "algorithm_mismatch",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "unavailable",
    ];
}

/// The token of the single `Authorization: Bearer …` header.
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "more than one Authorization header".to_owned(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization header is not ASCII".to_owned()))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "Authorization scheme is not Bearer".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed(format!(
            "bearer token exceeds {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(token)
}

/// A verified token whose claims name a key twice is refused: the JWT library keeps the last
/// value, and a service behind flex-auth that reads the token again may keep the first.
pub(super) fn reject_duplicate_claims(token: &str) -> Result<(), AuthError> {
    let payload = token.split('.').nth(1).unwrap_or("");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed("token claims are not base64url".to_owned()))?;
    crate::json::check_unique_keys(&decoded).map_err(|e| match e {
        crate::json::JsonError::DuplicateKey { path } => {
            AuthError::Malformed(format!("token claims name `{path}` twice"))
        }
        crate::json::JsonError::Syntax(_) => {
            AuthError::Malformed("token claims are not JSON".to_owned())
        }
    })
}

/// The token's algorithm (checked against the allow-list before anything else) and `kid`.
pub(super) fn token_header(
    token: &str,
    allowed: &[Alg],
) -> Result<(Alg, Option<String>), AuthError> {
    let malformed = |what: &str| AuthError::Malformed(format!("token is not a JWT: {what}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header = crate::json::parse_value(&decoded).map_err(|e| match e {
        crate::json::JsonError::DuplicateKey { path } => {
            malformed(&format!("header names `{path}` twice"))
        }
        crate::json::JsonError::Syntax(_) => malformed("header is not JSON"),
    })?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("header has no `alg`"))?;
    let alg = allowed
        .iter()
        .copied()
        .find(|a| a.as_str() == alg_name)
        .ok_or_else(|| AuthError::AlgorithmNotAllowed(alg_name.chars().take(32).collect()))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("`kid` is not a string")),
    };
    Ok((alg, kid))
}

pub(super) fn classify(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Malformed(format!("claim `{claim}` has the wrong type"))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed("(mismatch)".to_owned())
        }
        _ => AuthError::Malformed("token cannot be decoded".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(AuthError::Missing));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap_err().reason(), "malformed");
        headers.insert(http::header::AUTHORIZATION, "bearer a.b.c".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("a.b.c"));
        headers.append(http::header::AUTHORIZATION, "Bearer d.e.f".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused_before_any_key_lookup() {
        let header = |json: &str| {
            format!(
                "{}.e30.",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
            )
        };
        let allowed = [Alg::EdDSA];
        assert_eq!(
            token_header(&header(r#"{"alg":"none"}"#), &allowed),
            Err(AuthError::AlgorithmNotAllowed("none".into()))
        );
        assert_eq!(
            token_header(&header(r#"{"alg":"HS256","kid":"k"}"#), &allowed),
            Err(AuthError::AlgorithmNotAllowed("HS256".into()))
        );
        assert_eq!(
            token_header(&header(r#"{"alg":"EdDSA","kid":"k"}"#), &allowed),
            Ok((Alg::EdDSA, Some("k".into())))
        );
        assert_eq!(
            token_header("garbage", &allowed).unwrap_err().reason(),
            "malformed"
        );
    }
}
