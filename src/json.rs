//! Strict JSON reading for every document flex-auth takes from outside: request bodies, batch
//! and AuthZEN items, bodies a proxy route reads, registry snapshots and entities files (on disk
//! or pushed). The one rule added to RFC 8259 here: **an object never names a key twice**, at
//! any depth. serde_json keeps the last of two equal keys; other parsers keep the first or fail.
//! When flex-auth and the service behind it read one body differently, a decision is made on one
//! value and acted on with another — a classic authorization bypass — so a duplicate is refused
//! with the JSON path of the second occurrence.
//!
//! Keys are compared after unescaping (`"a"` and `"\u0061"` are the same key). Nothing else about
//! the document changes: [`check_unique_keys`] only reads (no allocation for keys without escapes),
//! and [`parse_value`] builds the same [`Value`] `serde_json::from_slice` would, in the same one
//! pass (a duplicate is seen when the map insert returns the earlier value).
//!
//! Architecture invariant: this module is a leaf; it knows nothing of HTTP, policy or files.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all (or trailing bytes after the document).
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// An object names the same key twice.
    #[error("duplicate key `{path}`: an object may name a key only once")]
    DuplicateKey {
        /// JSON path of the second occurrence, e.g. `context.ttl_hours` or `checks[1].id`.
        path: String,
    },
}

/// One step of a JSON path, collected on the way out of a failed descent.
enum Step {
    Key(String),
    Index(usize),
}

/// What a failed walk leaves behind: the path, innermost step first.
#[derive(Default)]
struct Trail {
    steps: Vec<Step>,
    duplicate: bool,
}

impl Trail {
    fn path(&self) -> String {
        let mut path = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Key(key) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Step::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        path
    }

    fn into_error(self, error: serde_json::Error) -> JsonError {
        if self.duplicate {
            JsonError::DuplicateKey { path: self.path() }
        } else {
            JsonError::Syntax(error)
        }
    }
}

/// Fail if any object in `bytes` names a key twice (or if `bytes` is not one JSON document).
/// Costs one read of the document; meant to run before a typed parse of the same bytes.
pub fn check_unique_keys(bytes: &[u8]) -> Result<(), JsonError> {
    let mut trail = Trail::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk { trail: &mut trail }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    walked.map_err(|e| trail.into_error(e))
}

/// Parse `bytes` into a [`Value`], refusing duplicate keys at any depth.
pub fn parse_value(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut trail = Trail::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Build { trail: &mut trail }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| trail.into_error(e))
}

/// Objects up to this many keys are checked by a linear scan (cheaper than hashing).
const SCAN: usize = 16;

/// The keys seen so far in one object.
enum Seen<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(std::collections::HashSet<Cow<'de, str>>),
}

impl<'de> Seen<'de> {
    /// Record `key`; false if it was seen before.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        match self {
            Self::Few(keys) => {
                if keys.contains(&key) {
                    return false;
                }
                if keys.len() < SCAN {
                    keys.push(key);
                } else {
                    let mut set: std::collections::HashSet<_> = keys.drain(..).collect();
                    set.insert(key);
                    *self = Self::Many(set);
                }
                true
            }
            Self::Many(set) => set.insert(key),
        }
    }
}

/// A key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Reads a value and discards it, checking keys.
struct Walk<'t> {
    trail: &'t mut Trail,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            match seq.next_element_seed(Walk {
                trail: &mut *self.trail,
            }) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.trail.steps.push(Step::Index(index));
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::Few(Vec::new());
        while let Some(key) = map.next_key_seed(Key)? {
            if !seen.insert(key.clone()) {
                return Err(duplicate(self.trail, key.into_owned()));
            }
            if let Err(e) = map.next_value_seed(Walk {
                trail: &mut *self.trail,
            }) {
                self.trail.steps.push(Step::Key(key.into_owned()));
                return Err(e);
            }
        }
        Ok(())
    }
}

fn duplicate<E: de::Error>(trail: &mut Trail, key: String) -> E {
    trail.duplicate = true;
    trail.steps.push(Step::Key(key));
    E::custom("duplicate key")
}

/// Builds a [`Value`], checking keys.
struct Build<'t> {
    trail: &'t mut Trail,
}

impl<'de> DeserializeSeed<'de> for Build<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json's own reader never yields a non-finite number; `Null` mirrors `Value`.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(Build {
                trail: &mut *self.trail,
            }) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.trail.steps.push(Step::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(duplicate(self.trail, key));
            }
            let value = match map.next_value_seed(Build {
                trail: &mut *self.trail,
            }) {
                Ok(value) => value,
                Err(e) => {
                    self.trail.steps.push(Step::Key(key));
                    return Err(e);
                }
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// One element of a streamed array, as its text: a caller may read it typed, or as a [`Value`]
/// with [`Element::value`] (keys checked, paths named from the document's top).
pub struct Element<'a> {
    raw: &'a str,
    index: usize,
    member: &'a str,
}

impl Element<'_> {
    /// The element's JSON text, exactly as in the document (already known to be JSON).
    pub fn raw(&self) -> &str {
        self.raw
    }

    /// Its position in the array.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The element as a [`Value`], refusing a duplicate key with its path in the whole
    /// document (`actors[3].attributes.team`).
    pub fn value(&self) -> Result<Value, JsonError> {
        parse_value(self.raw.as_bytes()).map_err(|e| match e {
            JsonError::DuplicateKey { path } => {
                let at = format!("{}[{}]", self.member, self.index);
                JsonError::DuplicateKey {
                    path: if path.is_empty() {
                        at
                    } else if path.starts_with('[') {
                        format!("{at}{path}")
                    } else {
                        format!("{at}.{path}")
                    },
                }
            }
            other => other,
        })
    }
}

/// For `#[serde(deserialize_with = "crate::json::strict_map")]`: a JSON object read as
/// [`parse_value`] reads it — a duplicate key at any depth is an error.
pub fn strict_map<'de, D: de::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    let mut trail = Trail::default();
    match (Build { trail: &mut trail }).deserialize(d)? {
        Value::Object(map) => Ok(map),
        _ => Err(de::Error::custom("expected a JSON object")),
    }
}

/// Parse a JSON object, checking keys at every depth as [`parse_value`] does, with one member
/// streamed: when `streamed` names an array, its elements are handed to `each` one at a time, in
/// order, as text ([`Element`]), and never held together; an error from `each` ends the parse
/// with that error. Returns the other members, and whether the streamed member was an array (a
/// non-array value under that key is returned as a member like the others, for the caller's
/// schema check to name). The top level must be an object.
pub fn parse_streamed(
    bytes: &[u8],
    streamed: &str,
    each: &mut dyn FnMut(Element<'_>) -> Result<(), JsonError>,
) -> Result<(Map<String, Value>, bool), JsonError> {
    let mut trail = Trail::default();
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Top {
        trail: &mut trail,
        streamed,
        each,
        failed: &mut failed,
    }
    .deserialize(&mut de)
    .and_then(|top| de.end().map(|()| top));
    if let Some(e) = failed {
        return Err(e);
    }
    parsed.map_err(|e| trail.into_error(e))
}

/// The top-level object of [`parse_streamed`].
struct Top<'t, 'f> {
    trail: &'t mut Trail,
    streamed: &'t str,
    each: &'f mut dyn FnMut(Element<'_>) -> Result<(), JsonError>,
    failed: &'t mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = (Map<String, Value>, bool);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = (Map<String, Value>, bool);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::new();
        let mut was_streamed = false;
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) || (was_streamed && key == self.streamed) {
                return Err(duplicate(self.trail, key));
            }
            let value = if key == self.streamed {
                map.next_value_seed(Elements {
                    trail: &mut *self.trail,
                    member: self.streamed,
                    each: &mut *self.each,
                    failed: &mut *self.failed,
                })
            } else {
                map.next_value_seed(Build {
                    trail: &mut *self.trail,
                })
                .map(Some)
            };
            match value {
                Ok(Some(value)) => {
                    object.insert(key, value);
                }
                Ok(None) => was_streamed = true,
                Err(e) => {
                    self.trail.steps.push(Step::Key(key));
                    return Err(e);
                }
            }
        }
        Ok((object, was_streamed))
    }
}

/// The streamed member: an array's elements go to `each` as text (and the value is `None`);
/// anything else is built as a [`Value`].
struct Elements<'t, 'f> {
    trail: &'t mut Trail,
    member: &'t str,
    each: &'f mut dyn FnMut(Element<'_>) -> Result<(), JsonError>,
    failed: &'t mut Option<JsonError>,
}

impl<'de> DeserializeSeed<'de> for Elements<'_, '_> {
    type Value = Option<Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_, '_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut index = 0;
        loop {
            // The element's text, borrowed from the document; its syntax is checked here.
            match seq.next_element::<&'de serde_json::value::RawValue>() {
                Ok(Some(raw)) => {
                    let element = Element {
                        raw: raw.get(),
                        index,
                        member: self.member,
                    };
                    if let Err(e) = (self.each)(element) {
                        *self.failed = Some(e);
                        return Err(de::Error::custom("refused by the reader of the element"));
                    }
                    index += 1;
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.trail.steps.push(Step::Index(index));
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Build { trail: self.trail }.visit_map(map).map(Some)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Value::Number(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Value::String(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate_path(text: &str) -> Option<String> {
        let checked = match check_unique_keys(text.as_bytes()) {
            Err(JsonError::DuplicateKey { path }) => Some(path),
            _ => None,
        };
        let parsed = match parse_value(text.as_bytes()) {
            Err(JsonError::DuplicateKey { path }) => Some(path),
            _ => None,
        };
        assert_eq!(checked, parsed, "both readers agree on {text}");
        checked
    }

    #[test]
    fn a_streamed_array_is_handed_over_element_by_element_and_keys_are_still_checked() {
        let mut seen = Vec::new();
        let (rest, streamed) = parse_streamed(
            br#"{"a":1,"items":[{"x":1},2,[3]],"b":"c"}"#,
            "items",
            &mut |e| {
                seen.push((e.index(), e.value()?));
                Ok(())
            },
        )
        .unwrap();
        assert!(streamed);
        assert_eq!(rest.len(), 2);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], (2, serde_json::json!([3])));
        let duplicate = |text: &str| match parse_streamed(text.as_bytes(), "items", &mut |e| {
            e.value().map(|_| ())
        }) {
            Err(JsonError::DuplicateKey { path }) => Some(path),
            _ => None,
        };
        assert_eq!(
            duplicate(r#"{"items":[{"k":1},{"k":1,"k":2}]}"#).as_deref(),
            Some("items[1].k")
        );
        assert_eq!(
            duplicate(r#"{"items":[{"k":[{"j":1,"j":2}]}]}"#).as_deref(),
            Some("items[0].k[0].j")
        );
        assert_eq!(
            duplicate(r#"{"items":[],"items":[]}"#).as_deref(),
            Some("items")
        );
        assert_eq!(
            duplicate(r#"{"a":1,"a":2,"items":[]}"#).as_deref(),
            Some("a")
        );
        let (rest, streamed) = parse_streamed(br#"{"items":5}"#, "items", &mut |_| Ok(())).unwrap();
        assert!(!streamed);
        assert_eq!(rest["items"], 5);
        assert!(parse_streamed(br#"[1]"#, "items", &mut |_| Ok(())).is_err());
        assert!(parse_streamed(br#"{"items":[1,"#, "items", &mut |_| Ok(())).is_err());
        // The element's text is the document's, and a typed reader refuses duplicates too.
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(deserialize_with = "strict_map")]
            m: Map<String, Value>,
        }
        let mut raws = Vec::new();
        parse_streamed(br#"{"items":[ {"m": {"a": 1}} ]}"#, "items", &mut |e| {
            raws.push(e.raw().to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(raws, [r#"{"m": {"a": 1}}"#]);
        assert_eq!(serde_json::from_str::<Typed>(&raws[0]).unwrap().m["a"], 1);
        assert!(serde_json::from_str::<Typed>(r#"{"m": {"a": 1, "a": 2}}"#).is_err());
        assert!(serde_json::from_str::<Typed>(r#"{"m": {"a": {"b": 1, "b": 1}}}"#).is_err());
    }

    #[test]
    fn duplicates_are_found_at_every_depth_with_their_path() {
        assert_eq!(duplicate_path(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_path(r#"{"context":{"ttl_hours":24,"ttl_hours":4}}"#).as_deref(),
            Some("context.ttl_hours")
        );
        assert_eq!(
            duplicate_path(r#"{"checks":[{},{"x":{"k":[1,{"id":1,"id":2}]}}]}"#).as_deref(),
            Some("checks[1].x.k[1].id")
        );
        assert_eq!(
            duplicate_path(r#"[{"a":1},{"b":1,"b":1}]"#).as_deref(),
            Some("[1].b")
        );
    }

    #[test]
    fn escaped_keys_are_compared_unescaped() {
        assert_eq!(
            duplicate_path(r#"{"ttl_hours":1,"ttl\u005fhours":2}"#).as_deref(),
            Some("ttl_hours")
        );
        assert_eq!(duplicate_path(r#"{"a":1,"A":2,"a ":3}"#), None);
    }

    #[test]
    fn large_objects_switch_to_a_set_and_still_find_duplicates() {
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let unique = format!("{{{}}}", keys.join(","));
        assert_eq!(duplicate_path(&unique), None);
        let repeated = format!("{{{},\"k3\":0}}", keys.join(","));
        assert_eq!(duplicate_path(&repeated).as_deref(), Some("k3"));
    }

    #[test]
    fn parse_value_matches_serde_json_on_unique_documents() {
        for text in [
            r#"{"a":[1,-2,3.5,true,null,"s\n"],"b":{"c":{}},"d":18446744073709551615}"#,
            "[]",
            "\"x\"",
            "1e3",
        ] {
            let ours = parse_value(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn syntax_errors_and_trailing_bytes_are_not_duplicates() {
        for text in [r#"{"a":1"#, r#"{"a":1} x"#, "", "{'a':1}"] {
            assert!(matches!(
                check_unique_keys(text.as_bytes()),
                Err(JsonError::Syntax(_))
            ));
            assert!(matches!(
                parse_value(text.as_bytes()),
                Err(JsonError::Syntax(_))
            ));
        }
    }
}
