//! Which writable fields an update touches.
//!
//! A mask is resolved to a set of leaf fields once, so that applying it is a
//! plain copy per leaf. Group paths (`shipping`, `shipping.address`) and `*`
//! expand to their leaves, repeated and overlapping paths merge, and
//! OUTPUT_ONLY paths are dropped so that a client may send back what it read.

use std::collections::BTreeSet;

use super::violations::{Reason, Violations};

/// A writable field of a customer that an update can change on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leaf {
    Email,
    ShippingName,
    ShippingPhone,
    ShippingEmail,
    ShippingOrganization,
    AddressLine1,
    AddressLine2,
    AddressCity,
    AddressPostalCode,
    AddressState,
    AddressCountry,
    Neighborhood,
    Division,
    PhoneticName,
    DefaultSourceId,
    TaxIdentifiers,
    Locale,
    Type,
    Enabled,
    RequestToBeForgotten,
    Metadata,
}

impl Leaf {
    /// Every leaf with its path, in wire names.
    pub const ALL: &[(Leaf, &str)] = &[
        (Leaf::Email, "email"),
        (Leaf::ShippingName, "shipping.name"),
        (Leaf::ShippingPhone, "shipping.phone"),
        (Leaf::ShippingEmail, "shipping.email"),
        (Leaf::ShippingOrganization, "shipping.organization"),
        (Leaf::AddressLine1, "shipping.address.line1"),
        (Leaf::AddressLine2, "shipping.address.line2"),
        (Leaf::AddressCity, "shipping.address.city"),
        (Leaf::AddressPostalCode, "shipping.address.postal_code"),
        (Leaf::AddressState, "shipping.address.state"),
        (Leaf::AddressCountry, "shipping.address.country"),
        (
            Leaf::Neighborhood,
            "shipping.additional_address_info.neighborhood",
        ),
        (Leaf::Division, "shipping.additional_address_info.division"),
        (
            Leaf::PhoneticName,
            "shipping.additional_address_info.phonetic_name",
        ),
        (Leaf::DefaultSourceId, "default_source_id"),
        (Leaf::TaxIdentifiers, "tax_identifiers"),
        (Leaf::Locale, "locale"),
        (Leaf::Type, "type"),
        (Leaf::Enabled, "enabled"),
        (Leaf::RequestToBeForgotten, "request_to_be_forgotten"),
        (Leaf::Metadata, "metadata"),
    ];

    /// The leaf's path, e.g. `shipping.address.city`.
    pub fn path(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(leaf, _)| *leaf == self)
            .map(|(_, path)| *path)
            .unwrap_or("")
    }
}

/// Most paths in one mask; a customer has far fewer fields.
const MAX_PATHS: usize = 100;

/// OUTPUT_ONLY fields and the immutable id: named in a mask, they are
/// ignored. Their sub-paths (`id.x`, `create_time.seconds`) are not fields a
/// client could mean, so they are reported as unknown.
const IGNORED: &[&str] = &[
    "id",
    "sources",
    "live_mode",
    "create_time",
    "update_time",
    "etag",
];

/// The resolved set of fields an update changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateMask {
    leaves: BTreeSet<Leaf>,
    /// Single metadata entries (`metadata.<key>`); empty when the whole map
    /// is replaced.
    metadata_keys: BTreeSet<String>,
}

impl UpdateMask {
    /// Resolves the paths of a `google.protobuf.FieldMask`. Unknown paths are
    /// reported on `update_mask.paths[i]`.
    pub fn parse(paths: &[String], violations: &mut Violations) -> UpdateMask {
        let mut mask = UpdateMask::default();
        if paths.len() > MAX_PATHS {
            violations.add(
                "update_mask.paths",
                Reason::TooMany,
                format!("must have at most {MAX_PATHS} paths"),
            );
            return mask;
        }
        for (index, path) in paths.iter().enumerate() {
            if !mask.add_path(path) {
                violations.add(
                    format!("update_mask.paths[{index}]"),
                    Reason::Unsupported,
                    "is not a writable field of Customer",
                );
            }
        }
        if mask.leaves.contains(&Leaf::Metadata) {
            mask.metadata_keys.clear();
        }
        mask
    }

    /// A mask of exactly these leaves and metadata keys.
    pub fn from_parts(
        leaves: impl IntoIterator<Item = Leaf>,
        keys: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut mask = UpdateMask {
            leaves: leaves.into_iter().collect(),
            metadata_keys: keys.into_iter().collect(),
        };
        if mask.leaves.contains(&Leaf::Metadata) {
            mask.metadata_keys.clear();
        }
        mask
    }

    fn add_path(&mut self, path: &str) -> bool {
        if path == "*" {
            self.leaves.extend(Leaf::ALL.iter().map(|(leaf, _)| *leaf));
            return true;
        }
        if IGNORED.contains(&path) {
            return true;
        }
        if let Some(key) = path.strip_prefix("metadata.") {
            if key.is_empty() {
                return false;
            }
            self.metadata_keys.insert(key.to_owned());
            return true;
        }
        let before = self.leaves.len();
        let mut matched = false;
        for (leaf, leaf_path) in Leaf::ALL {
            let inside = leaf_path
                .strip_prefix(path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
            if inside {
                self.leaves.insert(*leaf);
                matched = true;
            }
        }
        matched || self.leaves.len() != before
    }

    /// Whether `leaf` is changed.
    pub fn contains(&self, leaf: Leaf) -> bool {
        self.leaves.contains(&leaf)
    }

    /// The changed leaves, in declaration order.
    pub fn leaves(&self) -> impl Iterator<Item = Leaf> + '_ {
        self.leaves.iter().copied()
    }

    /// Metadata entries changed one by one.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata_keys.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(paths: &[&str]) -> (UpdateMask, Violations) {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let mut violations = Violations::new();
        (UpdateMask::parse(&paths, &mut violations), violations)
    }

    #[test]
    fn groups_expand_to_their_leaves() {
        let (mask, violations) = parse(&["shipping.address"]);
        assert!(violations.is_empty());
        assert_eq!(mask.leaves().count(), 6);
        assert!(mask.contains(Leaf::AddressCountry));
        assert!(!mask.contains(Leaf::ShippingName));
    }

    #[test]
    fn star_covers_every_writable_leaf() {
        let (mask, _) = parse(&["*"]);
        assert_eq!(mask.leaves().count(), Leaf::ALL.len());
    }

    #[test]
    fn overlapping_paths_merge_and_whole_metadata_absorbs_keys() {
        let (mask, _) = parse(&["shipping", "shipping.name", "metadata.a", "metadata"]);
        assert_eq!(mask.leaves().count(), 14);
        assert_eq!(mask.metadata_keys().count(), 0);
    }

    #[test]
    fn metadata_keys_are_everything_after_the_first_dot() {
        let (mask, _) = parse(&["metadata.a.b"]);
        assert_eq!(mask.metadata_keys().collect::<Vec<_>>(), ["a.b"]);
    }

    #[test]
    fn output_only_paths_are_ignored_and_unknown_paths_reported() {
        let (mask, violations) = parse(&[
            "id",
            "etag",
            "create_time",
            "sources",
            "shipp",
            "shipping.address.zip",
            "metadata.",
        ]);
        assert_eq!(mask.leaves().count(), 0);
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "update_mask.paths[4]",
                "update_mask.paths[5]",
                "update_mask.paths[6]"
            ]
        );
    }

    #[test]
    fn partial_segment_names_do_not_match() {
        let (_, violations) = parse(&["ship", "shipping.addr"]);
        assert_eq!(violations.iter().count(), 2);
    }
}
