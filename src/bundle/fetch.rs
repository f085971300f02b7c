//! Fetching a bundle from where `--bundle` says: a local path, `http(s)://` (with `ETag` /
//! `If-None-Match`, so an unchanged poll is a 304 and no body), or `oci://` (the manifest
//! digest compared before any blob is pulled). Every fetch is bounded: connect timeout, a
//! timeout on every read, a deadline for the whole download, and `--bundle-max-bytes`.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{header, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};

use super::BundleError;

/// Where bundles come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on this machine.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Http(Uri),
    /// An OCI artifact: `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:DIGEST`.
    Oci(super::oci::Reference),
}

impl Source {
    /// Parse `--bundle`. Plain `http://` is accepted for loopback hosts only, unless
    /// `allow_http` (`--bundle-allow-http`): a bundle fetched in the clear can be swapped by
    /// anyone on the path, and only a signature would notice.
    pub fn parse(url: &str, allow_http: bool) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("oci://") {
            return super::oci::Reference::parse(rest).map(Self::Oci);
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
            let host = uri.host().unwrap_or_default();
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(format!(
                    "`{url}` carries credentials; bundle URLs must not (use a private network or an OCI registry with --bundle-registry-auth)"
                ));
            }
            if uri.scheme_str() == Some("http") && !allow_http && !is_loopback(host) {
                return Err(format!(
                    "`{url}` is plain HTTP to a non-loopback host: use https://, or --bundle-allow-http if the bundle is signed and the network trusted"
                ));
            }
            return Ok(Self::Http(uri));
        }
        if lower.contains("://") {
            return Err(format!(
                "`{url}`: unsupported scheme (use https://, http://, oci:// or a local path)"
            ));
        }
        if url.is_empty() {
            return Err("--bundle is empty".to_owned());
        }
        Ok(Self::File(PathBuf::from(url)))
    }

    /// As shown in status and logs.
    pub fn label(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Http(uri) => uri.to_string(),
            Self::Oci(r) => format!("oci://{r}"),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How a fetch may spend its time and bytes.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any read (the response head, each piece of the body).
    pub read_timeout: Duration,
    /// Longest the whole download may take.
    pub download_timeout: Duration,
    /// Largest download.
    pub max_bytes: u64,
}

/// What a fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The source still serves what `validator` names (HTTP 304, the same OCI digest, the same
    /// file bytes).
    NotModified,
    /// A bundle, with what names it for the next conditional fetch.
    New {
        /// The archive.
        bytes: Bytes,
        /// `ETag` (HTTP), the manifest digest (OCI), or the sha256 of the bytes (file).
        validator: Option<String>,
    },
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// Fetches bundles from one source.
pub struct Fetcher {
    source: Source,
    limits: Limits,
    client: Option<Client>,
    oci: Option<super::oci::Puller>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("source", &self.source)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `source`; `ca` replaces the webpki roots for `https://` and OCI,
    /// `registry_auth` is a Docker `config.json` for OCI.
    pub fn new(
        source: Source,
        limits: Limits,
        ca: Option<&std::path::Path>,
        registry_auth: Option<&std::path::Path>,
        allow_http: bool,
    ) -> Result<Self, String> {
        let client = match &source {
            Source::Http(_) => Some(http_client(ca, limits.connect_timeout)?),
            _ => None,
        };
        let oci = match &source {
            Source::Oci(reference) => Some(super::oci::Puller::new(
                reference.clone(),
                ca,
                registry_auth,
                &limits,
                allow_http,
            )?),
            _ => None,
        };
        Ok(Self {
            source,
            limits,
            client,
            oci,
        })
    }

    /// The source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Fetch, conditionally on `known` (the validator of the bundle last seen).
    pub async fn fetch(&self, known: Option<&str>) -> Result<Fetched, BundleError> {
        let deadline = self.limits.download_timeout;
        let fetched = tokio::time::timeout(deadline, async {
            match &self.source {
                Source::File(path) => self.fetch_file(path.clone(), known).await,
                Source::Http(uri) => self.fetch_http(uri, known).await,
                Source::Oci(_) => match &self.oci {
                    Some(puller) => puller.fetch(known).await,
                    None => Err(BundleError::Fetch("no OCI client".to_owned())),
                },
            }
        })
        .await;
        fetched.unwrap_or_else(|_| {
            Err(BundleError::Fetch(format!(
                "`{}` did not deliver within {} (--bundle-download-timeout)",
                self.source.label(),
                humantime::format_duration(deadline)
            )))
        })
    }

    async fn fetch_file(&self, path: PathBuf, known: Option<&str>) -> Result<Fetched, BundleError> {
        let max = self.limits.max_bytes;
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let file = std::fs::File::open(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            let mut bytes = Vec::new();
            file.take(max.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            Ok::<_, String>(bytes)
        })
        .await
        .map_err(|e| BundleError::Fetch(format!("read task failed: {e}")))?
        .map_err(BundleError::Fetch)?;
        if read.len() as u64 > max {
            return Err(too_big(max));
        }
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&read));
        if known == Some(digest.as_str()) {
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::New {
            bytes: Bytes::from(read),
            validator: Some(digest),
        })
    }

    async fn fetch_http(&self, uri: &Uri, known: Option<&str>) -> Result<Fetched, BundleError> {
        let Some(client) = &self.client else {
            return Err(BundleError::Fetch("no HTTP client".to_owned()));
        };
        let mut request = http::Request::get(uri.clone()).header(
            header::ACCEPT,
            "application/gzip, application/x-gzip, application/octet-stream, */*;q=0.1",
        );
        if let Some(etag) = known {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| BundleError::Fetch(format!("cannot build the request: {e}")))?;
        let read_timeout = self.limits.read_timeout;
        let response = tokio::time::timeout(read_timeout, client.request(request))
            .await
            .map_err(|_| {
                BundleError::Fetch(format!(
                    "`{uri}` sent no response within {} (--bundle-read-timeout)",
                    humantime::format_duration(read_timeout)
                ))
            })?
            .map_err(|e| {
                BundleError::Fetch(format!("cannot fetch `{uri}`: {}", error_chain(&e)))
            })?;
        match response.status() {
            StatusCode::NOT_MODIFIED if known.is_some() => return Ok(Fetched::NotModified),
            StatusCode::OK => {}
            other => {
                return Err(BundleError::Fetch(format!(
                    "`{uri}` answered {other}{}",
                    if other.is_redirection() {
                        " (redirects are not followed: configure the final URL)"
                    } else {
                        ""
                    }
                )))
            }
        }
        let max = self.limits.max_bytes;
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_big(max));
        }
        let validator = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut bytes =
            Vec::with_capacity(usize::try_from(declared.unwrap_or(0).min(max)).unwrap_or(0));
        loop {
            let frame = tokio::time::timeout(read_timeout, body.frame())
                .await
                .map_err(|_| {
                    BundleError::Fetch(format!(
                        "`{uri}` sent nothing for {} in the middle of the body (--bundle-read-timeout)",
                        humantime::format_duration(read_timeout)
                    ))
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                BundleError::Fetch(format!("`{uri}`: the body broke off: {}", error_chain(&e)))
            })?;
            if let Ok(data) = frame.into_data() {
                if (bytes.len() + data.len()) as u64 > max {
                    return Err(too_big(max));
                }
                bytes.extend_from_slice(&data);
            }
        }
        if declared.is_some_and(|n| n != bytes.len() as u64) {
            return Err(BundleError::Fetch(format!(
                "`{uri}` sent {} bytes where Content-Length said {}",
                bytes.len(),
                declared.unwrap_or_default()
            )));
        }
        Ok(Fetched::New {
            bytes: Bytes::from(bytes),
            validator,
        })
    }
}

fn too_big(max: u64) -> BundleError {
    BundleError::TooLarge(format!(
        "the download exceeds {max} bytes (--bundle-max-bytes)"
    ))
}

/// An error with its causes, `a: b: c` (hyper's own message is often just "client error").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn http_client(ca: Option<&std::path::Path>, connect_timeout: Duration) -> Result<Client, String> {
    let tls = crate::tls::client_config(ca).map_err(|e| e.to_string())?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn sources_parse_and_plain_http_is_loopback_only() {
        assert!(matches!(
            Source::parse("https://b.example/x.tar.gz", false),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            Source::parse("http://127.0.0.1:8080/x", false),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            Source::parse("http://[::1]:8080/x", false),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            Source::parse("http://localhost/x", false),
            Ok(Source::Http(_))
        ));
        let e = Source::parse("http://bundles.internal/x", false).unwrap_err();
        assert!(e.contains("--bundle-allow-http"), "{e}");
        assert!(Source::parse("http://bundles.internal/x", true).is_ok());
        assert!(Source::parse("https://u:p@b.example/x", false)
            .unwrap_err()
            .contains("credentials"));
        assert!(Source::parse("ftp://b.example/x", false)
            .unwrap_err()
            .contains("unsupported"));
        assert_eq!(
            Source::parse("/srv/b.tar.gz", false).unwrap(),
            Source::File(PathBuf::from("/srv/b.tar.gz"))
        );
    }
}
