//! Bearer-token verification per request (issue 19): EdDSA, ES256 and RS256 from a JWKS file
//! and HS256 from a secret file, with the verified-token cache on (`--jwt-cache-entries`, the
//! default) and off (`0`): the cost the proxy and forward-auth pay per request before Cedar.
//! Results: docs/benchmarks.md. Run: `cargo bench --bench auth`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

use base64::Engine as _;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flex_auth::auth::{AuthSettings, Authenticator, JwksSource};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "broker";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key pair: the JWK of its public half and a token it signed.
fn signed(
    alg: &'static rcgen::SignatureAlgorithm,
    jwt_alg: Algorithm,
    kid: &str,
) -> (serde_json::Value, String) {
    let pair = rcgen::KeyPair::generate_for(alg).unwrap();
    let raw = pair.public_key_raw();
    let jwk = match jwt_alg {
        Algorithm::EdDSA => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(raw)}),
        _ => {
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
        }
    };
    let pem = pair.serialize_pem();
    let key = match jwt_alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    let mut header = Header::new(jwt_alg);
    header.kid = Some(kid.to_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims =
        json!({"sub": "agent-demo", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600});
    (jwk, jsonwebtoken::encode(&header, &claims, &key).unwrap())
}

fn authenticate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ed_jwk, ed_token) = signed(&rcgen::PKCS_ED25519, Algorithm::EdDSA, "ed");
    let (es_jwk, es_token) = signed(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "es");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [ed_jwk, es_jwk]}).to_string()).unwrap();
    let secret = dir.path().join("hs256.secret");
    let secret_bytes = b"0123456789abcdef0123456789abcdef-bench";
    std::fs::write(&secret, secret_bytes).unwrap();
    let hs_token = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"sub": "agent-demo", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret_bytes),
        )
        .unwrap()
    };
    let mut group = c.benchmark_group("authenticate");
    for cache in [true, false] {
        let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
        settings.jwks = Some(JwksSource::File(jwks.clone()));
        settings.hs256_secret_file = Some(secret.clone());
        settings.algorithms = Some(vec![
            flex_auth::auth::Alg::EdDSA,
            flex_auth::auth::Alg::ES256,
            flex_auth::auth::Alg::HS256,
        ]);
        settings.token_cache_entries = if cache { 10_000 } else { 0 };
        let auth = runtime.block_on(Authenticator::new(settings)).unwrap();
        let label = if cache { "cached" } else { "uncached" };
        for (alg, token) in [
            ("eddsa", &ed_token),
            ("es256", &es_token),
            ("hs256", &hs_token),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            // Verified once before measuring, so the cached variant measures hits.
            runtime.block_on(auth.authenticate(&headers)).unwrap();
            group.bench_function(format!("{alg}/{label}"), |b| {
                b.iter(|| {
                    runtime
                        .block_on(auth.authenticate(black_box(&headers)))
                        .unwrap()
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, authenticate);
criterion_main!(benches);
