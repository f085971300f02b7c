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

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flex_auth::auth::{AuthSettings, Authenticator, JwksSource};
use http::{HeaderMap, HeaderValue};
use serde_json::json;

// The tests' signer (aws-lc-rs directly, not the library flex-auth verifies with).
#[allow(
    dead_code,
    reason = "the benchmark signs with a part of the tests' helpers"
)]
#[path = "../tests/support/jwt.rs"]
mod jwt;
use jwt::TestKey;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "broker";

fn authenticate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ed = TestKey::ed25519("ed");
    let es = TestKey::es256("es");
    let rs = TestKey::rs256("rs");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [ed.jwk(), es.jwk(), rs.jwk()]}).to_string(),
    )
    .unwrap();
    let secret = dir.path().join("hs256.secret");
    let secret_bytes = b"0123456789abcdef0123456789abcdef-bench";
    std::fs::write(&secret, secret_bytes).unwrap();
    let hs = TestKey::hs256(secret_bytes);
    let claims = jwt::claims("agent-demo", ISSUER, AUDIENCE);
    let (ed_token, es_token, rs_token) = (ed.sign(&claims), es.sign(&claims), rs.sign(&claims));
    // The secret file holds no kid: an HS256 token is verified by its algorithm alone.
    let hs_token = hs.sign_with_header(&json!({"alg": "HS256", "typ": "JWT"}), &claims);
    let mut group = c.benchmark_group("authenticate");
    for cache in [true, false] {
        let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
        settings.jwks = Some(JwksSource::File(jwks.clone()));
        settings.hs256_secret_file = Some(secret.clone());
        settings.algorithms = Some(vec![
            flex_auth::auth::Alg::EdDSA,
            flex_auth::auth::Alg::ES256,
            flex_auth::auth::Alg::RS256,
            flex_auth::auth::Alg::HS256,
        ]);
        settings.token_cache_entries = if cache { 10_000 } else { 0 };
        let auth = runtime.block_on(Authenticator::new(settings)).unwrap();
        let label = if cache { "cached" } else { "uncached" };
        for (alg, token) in [
            ("eddsa", &ed_token),
            ("es256", &es_token),
            ("rs256", &rs_token),
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
