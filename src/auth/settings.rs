//! Authentication settings: the accepted algorithms, where keys come from, and the checks that
//! refuse a configuration that can never work.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::Algorithm;

/// A setting that is wrong, named by its environment variable so an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SettingError {
    /// The environment variable of the flag to blame (e.g. `FLEX_AUTH_JWKS`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl SettingError {
    pub(crate) fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }
}

/// A signature algorithm flex-auth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// HMAC with SHA-256 (shared secret from `--hs256-secret-file` only).
    HS256,
}

impl Alg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::HS256 => "HS256",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
            Self::HS256 => Algorithm::HS256,
        }
    }

    /// The asymmetric algorithms, the default allow-list with a JWKS.
    pub const ASYMMETRIC: [Self; 3] = [Self::EdDSA, Self::ES256, Self::RS256];
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        [Self::EdDSA, Self::ES256, Self::RS256, Self::HS256]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a supported JWT algorithm: use EdDSA, ES256, RS256 or HS256"
                )
            })
    }
}

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JSON file (re-read on refresh).
    File(PathBuf),
    /// An `https://` URL (`http://` only for a loopback host).
    Url(Uri),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(uri) => write!(f, "{uri}"),
        }
    }
}

impl std::str::FromStr for JwksSource {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the JWKS source is empty".to_owned());
        }
        let lower = text.to_ascii_lowercase();
        if !lower.starts_with("https://") && !lower.starts_with("http://") {
            return Ok(Self::File(PathBuf::from(text)));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let host = uri.host().unwrap_or("");
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") || host.starts_with("127.");
        if uri.scheme_str() == Some("http") && !loopback {
            return Err(format!(
                "`{text}`: fetch keys over https:// (plain http:// is accepted only for a loopback host)"
            ));
        }
        Ok(Self::Url(uri))
    }
}

/// Authentication settings (from `--jwks`, `--issuer`, `--audience`, …).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The key set for EdDSA / ES256 / RS256 tokens.
    pub jwks: Option<JwksSource>,
    /// The one accepted `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name at least one).
    pub audiences: Vec<String>,
    /// Accepted algorithms; `None` derives them: the asymmetric three with a JWKS, HS256 with a
    /// secret file.
    pub algorithms: Option<Vec<Alg>>,
    /// File holding the HS256 shared secret.
    pub hs256_secret_file: Option<PathBuf>,
    /// Claim the subject is read from.
    pub subject_claim: String,
    /// Prefix put before the claim's value (e.g. `iam:`).
    pub subject_prefix: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// At most one JWKS refresh for an unknown `kid` per this interval.
    pub jwks_refresh_interval: Duration,
    /// Keys are re-fetched this often even when every `kid` is known.
    pub jwks_cache_ttl: Duration,
    /// PEM CA bundle trusted for an `https://` JWKS URL instead of the webpki roots.
    pub jwks_ca: Option<PathBuf>,
    /// Verified tokens remembered by their sha256 (0: no cache).
    pub token_cache_entries: usize,
}

/// Default for `--jwt-cache-entries`.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 10_000;

impl AuthSettings {
    /// Settings with the defaults of the command line and no key source.
    pub fn new(issuer: &str, audiences: &[&str]) -> Self {
        Self {
            jwks: None,
            issuer: Some(issuer.to_owned()),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            algorithms: None,
            hs256_secret_file: None,
            subject_claim: "sub".to_owned(),
            subject_prefix: String::new(),
            clock_skew: Duration::from_secs(60),
            jwks_refresh_interval: Duration::from_secs(30),
            jwks_cache_ttl: Duration::from_secs(300),
            jwks_ca: None,
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
        }
    }

    /// Whether any authentication is configured.
    pub fn configured(&self) -> bool {
        self.jwks.is_some() || self.hs256_secret_file.is_some()
    }

    /// The effective allow-list.
    pub fn allowed(&self) -> Vec<Alg> {
        match &self.algorithms {
            Some(list) => list.clone(),
            None => {
                let mut list = Vec::new();
                if self.jwks.is_some() {
                    list.extend(Alg::ASYMMETRIC);
                }
                if self.hs256_secret_file.is_some() {
                    list.push(Alg::HS256);
                }
                list
            }
        }
    }

    /// Problems that no amount of waiting fixes, each naming the setting to change.
    pub fn validate(&self) -> Result<(), SettingError> {
        if !self.configured() {
            return Err(SettingError::new(
                "FLEX_AUTH_JWKS",
                "no credential verification is configured: set --jwks or --hs256-secret-file"
                    .to_owned(),
            ));
        }
        if self.issuer.as_deref().is_none_or(str::is_empty) {
            return Err(SettingError::new(
                "FLEX_AUTH_ISSUER",
                "--issuer is required: every token's `iss` is checked".to_owned(),
            ));
        }
        if self.audiences.iter().all(String::is_empty) {
            return Err(SettingError::new(
                "FLEX_AUTH_AUDIENCE",
                "--audience is required: every token's `aud` is checked".to_owned(),
            ));
        }
        if let Some(ca) = &self.jwks_ca {
            if !matches!(self.jwks, Some(JwksSource::Url(_))) {
                return Err(SettingError::new(
                    "FLEX_AUTH_JWKS_CA",
                    "--jwks-ca is set but --jwks is not a URL: the CA bundle would trust nothing"
                        .to_owned(),
                ));
            }
            if let Err(e) = crate::tls::client_config(Some(ca)) {
                return Err(SettingError::new("FLEX_AUTH_JWKS_CA", e.to_string()));
            }
        }
        let allowed = self.allowed();
        if allowed.is_empty() {
            return Err(SettingError::new(
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--jwt-algorithms allows nothing".to_owned(),
            ));
        }
        if allowed.contains(&Alg::HS256) && self.hs256_secret_file.is_none() {
            return Err(SettingError::new(
                "FLEX_AUTH_HS256_SECRET_FILE",
                "--jwt-algorithms allows HS256 but no --hs256-secret-file is set".to_owned(),
            ));
        }
        if self.hs256_secret_file.is_some() && !allowed.contains(&Alg::HS256) {
            return Err(SettingError::new(
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--hs256-secret-file is set but --jwt-algorithms does not allow HS256".to_owned(),
            ));
        }
        if self.jwks.is_some() && !allowed.iter().any(|a| *a != Alg::HS256) {
            return Err(SettingError::new(
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--jwks is set but --jwt-algorithms allows no EdDSA, ES256 or RS256".to_owned(),
            ));
        }
        if self.subject_claim.is_empty() {
            return Err(SettingError::new(
                "FLEX_AUTH_SUBJECT_CLAIM",
                "--subject-claim is empty".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_parse_case_insensitively_and_refuse_the_rest() {
        assert_eq!("eddsa".parse::<Alg>(), Ok(Alg::EdDSA));
        assert_eq!("RS256".parse::<Alg>(), Ok(Alg::RS256));
        assert!("none".parse::<Alg>().is_err());
        assert!("PS256".parse::<Alg>().is_err());
    }

    #[test]
    fn jwks_sources_refuse_plain_http_off_loopback() {
        assert!(matches!(
            "https://idp.example/jwks".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            "http://127.0.0.1:9/jwks".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!("http://idp.example/jwks"
            .parse::<JwksSource>()
            .unwrap_err()
            .contains("https://"));
        assert_eq!(
            "/etc/jwks.json".parse::<JwksSource>(),
            Ok(JwksSource::File("/etc/jwks.json".into()))
        );
    }

    #[test]
    fn settings_require_issuer_audience_and_a_key_source() {
        let mut s = AuthSettings::new("https://issuer", &["broker"]);
        assert_eq!(s.validate().unwrap_err().setting, "FLEX_AUTH_JWKS");
        s.jwks = Some(JwksSource::File("/x".into()));
        assert!(s.validate().is_ok());
        s.audiences.clear();
        assert_eq!(s.validate().unwrap_err().setting, "FLEX_AUTH_AUDIENCE");
        s.audiences.push("broker".into());
        s.issuer = None;
        assert_eq!(s.validate().unwrap_err().setting, "FLEX_AUTH_ISSUER");
        s.issuer = Some("i".into());
        s.algorithms = Some(vec![Alg::HS256]);
        assert_eq!(
            s.validate().unwrap_err().setting,
            "FLEX_AUTH_HS256_SECRET_FILE"
        );
    }
}
