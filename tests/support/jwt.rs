//! Real signed JWTs for tests, made with aws-lc-rs directly (not with the library flex-auth
//! verifies with): keys generated per test, a JWKS document for their public halves.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signing key with its `kid`.
pub enum Signer {
    /// Ed25519.
    Ed(Ed25519KeyPair),
    /// ECDSA P-256.
    Es(EcdsaKeyPair),
    /// RSA 2048.
    Rs(RsaKeyPair),
    /// HMAC-SHA256 secret.
    Hs(Vec<u8>),
}

/// A key pair (or secret) and the `kid` it is published under.
pub struct TestKey {
    /// The key id.
    pub kid: String,
    /// The signer.
    pub signer: Signer,
}

impl TestKey {
    /// A fresh Ed25519 key.
    pub fn ed25519(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            signer: Signer::Ed(pair),
        }
    }

    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.to_owned(),
            signer: Signer::Es(pair),
        }
    }

    /// A fresh RSA-2048 key.
    pub fn rs256(kid: &str) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        Self {
            kid: kid.to_owned(),
            signer: Signer::Rs(pair),
        }
    }

    /// An HMAC secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            kid: "hs".to_owned(),
            signer: Signer::Hs(secret.to_vec()),
        }
    }

    /// The algorithm name.
    pub fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ed(_) => "EdDSA",
            Signer::Es(_) => "ES256",
            Signer::Rs(_) => "RS256",
            Signer::Hs(_) => "HS256",
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Ed(pair) => json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid,
                "use": "sig", "x": b64(pair.public_key().as_ref())}),
            Signer::Es(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            Signer::Rs(pair) => {
                let components =
                    aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                    "n": b64(&components.n), "e": b64(&components.e)})
            }
            Signer::Hs(secret) => json!({"kty": "oct", "kid": self.kid, "k": b64(secret)}),
        }
    }

    /// Sign `claims` with this key, its algorithm and `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// Sign claims given as raw JSON text (e.g. with a key twice, which `Value` cannot hold).
    pub fn sign_raw_claims(&self, claims: &str) -> String {
        self.sign_raw(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}).to_string(),
            claims,
        )
    }

    /// Sign with an arbitrary header (algorithm confusion, unknown kid, …).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    fn sign_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Es(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rs(pair) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .unwrap();
                out
            }
            Signer::Hs(secret) => hmac(secret, input.as_bytes()),
        };
        format!("{input}.{}", b64(&signature))
    }
}

/// HMAC-SHA256.
pub fn hmac(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
}

/// A JWKS document with the public halves of `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// Claims valid now for `subject`, issuer and audience given.
pub fn claims(subject: &str, issuer: &str, audience: &str) -> Value {
    let now = now();
    json!({"sub": subject, "iss": issuer, "aud": audience, "iat": now, "nbf": now - 5, "exp": now + 300})
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}
