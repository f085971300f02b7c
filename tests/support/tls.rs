//! Test PKI made in the test (rcgen): a CA, server certificates for `localhost`/`127.0.0.1`,
//! client certificates with SAN URIs, and a rustls client that speaks h2 or http/1.1.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::DEADLINE;

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM (PKCS#8).
    pub key_pem: String,
    /// Certificate DER.
    pub der: CertificateDer<'static>,
}

impl Ca {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "flex-auth test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(&params)
    }

    /// A client certificate carrying the SAN URI `uri`.
    pub fn client(&self, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "client");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params)
    }

    fn sign(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Write `leaf` to `dir/tls.crt` and `dir/tls.key` the way a Secret update does: each file
/// replaced by a rename, so a reader sees a whole old or a whole new file.
pub fn install(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    for (path, text) in [(&key, &leaf.key_pem), (&cert, &leaf.cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

/// A client configuration trusting `ca`, presenting `identity` when given, offering `alpn`.
pub fn client_config(ca: &Ca, identity: Option<&Leaf>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

use rustls::pki_types::pem::PemObject as _;

/// One TLS connection: the negotiated ALPN protocol and the certificate the server presented.
pub struct Connected {
    /// `h2` or `http/1.1`.
    pub alpn: String,
    /// The server's leaf certificate.
    pub server_cert: CertificateDer<'static>,
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Connect over TLS and speak whatever ALPN chose. Errors are the handshake's.
pub async fn connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<Connected, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("TLS handshake within the deadline")?;
    let (_, session) = stream.get_ref();
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let server_cert = session.peer_certificates().unwrap()[0].clone().into_owned();
    let sender = if alpn == "h2" {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Sender::H2(sender)
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Sender::H1(sender)
    };
    Ok(Connected {
        alpn,
        server_cert,
        sender,
    })
}

impl Connected {
    /// One request on this connection; `Err` when the server closed or refused it.
    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(StatusCode, serde_json::Value), hyper::Error> {
        let request = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let exchange = async {
            // Wait until the connection can take the next request: right after a response the
            // HTTP/1.1 dispatcher may still be finishing the previous exchange, and sending then
            // fails with "connection was not ready".
            let response = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(request).await?
                }
            };
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            ))
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("exchange within the deadline")
    }
}
