//! Content hashes: the short sha256 that names a loaded policy package or registry version.

use std::fmt;

use sha2::{Digest, Sha256};

/// The first 16 lowercase hex digits of a sha256 over loaded content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentHash(String);

impl ContentHash {
    /// Hash one byte string.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_digest(Sha256::digest(bytes).as_slice())
    }

    /// Hash named parts (file name, content), each length-prefixed so that moving bytes from one
    /// part to the next changes the hash.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut hasher = Sha256::new();
        for (name, content) in parts {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name);
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(content);
        }
        Self::from_digest(hasher.finalize().as_slice())
    }

    fn from_digest(digest: &[u8]) -> Self {
        use fmt::Write as _;
        let mut hex = String::with_capacity(16);
        for byte in digest.iter().take(8) {
            let _ = write!(hex, "{byte:02x}");
        }
        Self(hex)
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sixteen_hex_digits_and_content_sensitive() {
        let a = ContentHash::of_bytes(b"a");
        assert_eq!(a.as_str().len(), 16);
        assert!(a
            .as_str()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, ContentHash::of_bytes(b"b"));
        let ab = ContentHash::of_parts([(&b"x"[..], &b"ab"[..]), (&b"y"[..], &b""[..])]);
        let a_b = ContentHash::of_parts([(&b"x"[..], &b"a"[..]), (&b"y"[..], &b"b"[..])]);
        assert_ne!(ab, a_b);
    }
}
