//! Free-form key/value metadata.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::text::bounded_text;
use super::violations::{Reason, Violations};

const MAX_KEYS: usize = 50;
const MAX_KEY_CHARS: usize = 40;
const MAX_VALUE_CHARS: usize = 500;

/// At most 50 entries; keys 1..=40 characters, values at most 500, neither
/// with control characters. An empty value means "no entry": it is dropped,
/// never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Parses a whole map; `field` is its path (`customer.metadata`).
    pub fn parse<'a>(
        field: &str,
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
        violations: &mut Violations,
    ) -> Metadata {
        let mut map = BTreeMap::new();
        for (key, value) in entries {
            if let Some((key, value)) = Self::parse_entry(field, key, value, violations)
                && !value.is_empty()
            {
                map.insert(key, value);
            }
        }
        let metadata = Metadata(map);
        metadata.check_size(field, violations);
        metadata
    }

    /// Parses one entry, reporting problems on `field.<key>`.
    pub fn parse_entry(
        field: &str,
        key: &str,
        value: &str,
        violations: &mut Violations,
    ) -> Option<(String, String)> {
        let before = violations.iter().count();
        // The key may itself be hostile, so the path names it only when it
        // passed its own checks.
        let key_field = format!("{field}.key");
        let key = if key.is_empty() {
            violations.add(&key_field, Reason::InvalidFormat, "must not be empty");
            None
        } else {
            bounded_text(&key_field, key, MAX_KEY_CHARS, violations)
        };
        let value_field = match &key {
            Some(key) => format!("{field}.{key}"),
            None => format!("{field}.value"),
        };
        let value = bounded_text(&value_field, value, MAX_VALUE_CHARS, violations);
        if violations.iter().count() != before {
            return None;
        }
        Some((key?, value?))
    }

    /// Records a violation when there are more entries than allowed.
    pub fn check_size(&self, field: &str, violations: &mut Violations) {
        if self.0.len() > MAX_KEYS {
            violations.add(
                field,
                Reason::TooMany,
                format!("must have at most {MAX_KEYS} keys, got {}", self.0.len()),
            );
        }
    }

    /// Sets `key` to `value`, or removes it when `value` is empty.
    pub fn set(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_owned(), value.to_owned());
        }
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[(&str, &str)]) -> (Metadata, Violations) {
        let owned: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut violations = Violations::new();
        let metadata = Metadata::parse("m", owned.iter().map(|(k, v)| (k, v)), &mut violations);
        (metadata, violations)
    }

    #[test]
    fn fifty_keys_pass_and_fifty_one_fail() {
        let keys: Vec<String> = (0..51).map(|i| format!("k{i}")).collect();
        let entries: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert!(parse(&entries[..50]).1.is_empty());
        let (_, violations) = parse(&entries);
        assert_eq!(violations.iter().next().unwrap().reason, Reason::TooMany);
    }

    #[test]
    fn bad_keys_and_values_name_their_entry() {
        let long_value = "v".repeat(501);
        let (_, violations) = parse(&[("", "x"), ("ok", &long_value), ("a\0", "x")]);
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["m.key", "m.ok", "m.key"]);
    }

    #[test]
    fn empty_values_are_dropped() {
        let (metadata, violations) = parse(&[("a", ""), ("b", "1")]);
        assert!(violations.is_empty());
        assert_eq!(metadata.iter().count(), 1);
    }
}
