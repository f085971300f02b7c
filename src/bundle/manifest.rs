//! `manifest.json`: what a bundle holds, every file with its sha256 and size, and the checks a
//! manifest must pass before anything it names is trusted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BundleError;

/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's name inside the archive.
pub const MANIFEST: &str = "manifest.json";
/// The signatures' name inside the archive.
pub const SIGNATURES: &str = "signatures.json";

/// A bundle's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The publisher's name for this release, e.g. `2026-12-02.1` or a git commit.
    pub revision: String,
    /// When the bundle was built (RFC 3339, UTC).
    pub created: String,
    /// The policy package.
    pub package: PackageEntry,
    /// The registry snapshot or entities file.
    pub registry: RegistryEntry,
    /// Every file of the archive except `manifest.json` and `signatures.json`, sorted by path.
    pub files: Vec<FileEntry>,
}

/// The policy package inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    /// The package name, as the package reports it.
    pub name: String,
    /// The version its manifest declares, if any.
    pub version: Option<String>,
    /// Where the package is: a directory (`package/ops-warden`) or one file
    /// (`package/ops.cedar`, `package/policy_package.md`).
    pub path: String,
}

/// The registry's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryFormat {
    /// A registry snapshot (`--registry`).
    Snapshot,
    /// Raw Cedar entities JSON (`--entities`).
    Entities,
}

impl RegistryFormat {
    /// As written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Entities => "entities",
        }
    }
}

/// The registry inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Snapshot or entities.
    pub format: RegistryFormat,
    /// The file, e.g. `registry/registry.json`.
    pub path: String,
}

/// One file the manifest vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the archive.
    pub path: String,
    /// Lower-case hex sha256 of its bytes.
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

impl Manifest {
    /// Parse `manifest.json` strictly: no unknown field, no key twice at any depth, and every
    /// rule of [`Manifest::check`].
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        crate::json::check_unique_keys(bytes)
            .map_err(|e| BundleError::Manifest(format!("not valid JSON: {e}")))?;
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The rules JSON types cannot say: the version, a usable revision, safe unique paths, hex
    /// digests, and a package and registry that are files of the bundle.
    pub fn check(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Manifest(m));
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        check_revision(&self.revision).map_err(BundleError::Manifest)?;
        if humantime::parse_rfc3339(&self.created).is_err() {
            return bad(format!(
                "created `{}` is not an RFC 3339 UTC time such as `2026-12-02T10:00:00Z`",
                self.created
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, file) in self.files.iter().enumerate() {
            check_path(&file.path)
                .map_err(|m| BundleError::Manifest(format!("files[{i}]: {m}")))?;
            if file.path == MANIFEST || file.path == SIGNATURES {
                return bad(format!(
                    "files[{i}]: `{}` cannot vouch for itself",
                    file.path
                ));
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return bad(format!(
                    "files[{i}] (`{}`): sha256 must be 64 lower-case hex digits",
                    file.path
                ));
            }
            if seen.insert(file.path.as_str(), ()).is_some() {
                return bad(format!("files[{i}]: `{}` is listed twice", file.path));
            }
        }
        check_path(&self.package.path)
            .map_err(|m| BundleError::Manifest(format!("package.path: {m}")))?;
        check_path(&self.registry.path)
            .map_err(|m| BundleError::Manifest(format!("registry.path: {m}")))?;
        let package_dir = format!("{}/", self.package.path);
        let in_package = |path: &str| path == self.package.path || path.starts_with(&package_dir);
        if !self.files.iter().any(|f| in_package(&f.path)) {
            return bad(format!(
                "package.path `{}` names no file of the bundle",
                self.package.path
            ));
        }
        if !seen.contains_key(self.registry.path.as_str()) {
            return bad(format!(
                "registry.path `{}` is not a file of the bundle",
                self.registry.path
            ));
        }
        if in_package(&self.registry.path) {
            return bad(format!(
                "registry.path `{}` is inside the package `{}`",
                self.registry.path, self.package.path
            ));
        }
        Ok(())
    }

    /// Whether `path` belongs to the package.
    pub fn in_package(&self, path: &str) -> bool {
        path == self.package.path
            || path
                .strip_prefix(self.package.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// A revision: 1 to 128 characters of `A-Z a-z 0-9 . _ : + -`. It travels in headers, metrics
/// labels and file names, so nothing else is allowed.
pub fn check_revision(revision: &str) -> Result<(), String> {
    let ok = !revision.is_empty()
        && revision.len() <= 128
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "revision `{}` must be 1 to 128 characters of A-Z a-z 0-9 . _ : + -",
            revision.escape_default()
        ))
    }
}

/// A path inside a bundle: relative, `/`-separated, at most 1,024 bytes; every component 1 to
/// 255 printable ASCII characters other than `\`, and neither `.` nor `..`. What passes can be
/// joined under a directory and stays inside it on every platform.
pub fn check_path(path: &str) -> Result<(), String> {
    let why = if path.is_empty() {
        Some("is empty")
    } else if path.len() > 1024 {
        Some("is longer than 1024 bytes")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if !path.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ') || path.contains('\\') {
        Some("holds a character other than printable ASCII (or a backslash)")
    } else if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255)
    {
        Some("has an empty, `.` or `..` component (or one over 255 bytes)")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("path `{}` {why}", path.escape_default())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_directory_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "a\\b",
            "a\u{0}b",
            "a/",
            "é",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} passed");
        }
        for good in ["manifest.json", "package/ops-warden/ops.cedar", "a b/c.d"] {
            assert!(check_path(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn revisions_are_label_safe() {
        assert!(check_revision("2026-12-02.1+g3b3c").is_ok());
        for bad in ["", "a b", "a\"b", "a\nb", &"x".repeat(129)] {
            assert!(check_revision(bad).is_err(), "{bad:?} passed");
        }
    }
}
