//! Tax identifiers and their per-type format checks.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::violations::{Reason, Violations};

/// Every supported tax identifier type with the format its compact value must
/// match (after spaces, dots and dashes are removed and letters upper-cased).
/// Only the shape is checked, not check digits or registration.
pub const TAX_ID_TYPES: &[(&str, &str)] = &[
    ("au_abn", r"[0-9]{11}"),
    ("br_cnpj", r"[0-9]{14}"),
    ("ca_bn", r"[0-9]{9}"),
    ("ch_vat", r"CHE[0-9]{9}(MWST|TVA|IVA)?"),
    ("eu_vat", EU_VAT),
    (
        "gb_vat",
        r"GB([0-9]{9}|[0-9]{12}|GD[0-4][0-9]{2}|HA[5-9][0-9]{2})",
    ),
    ("in_gst", r"[0-9]{2}[A-Z]{5}[0-9]{4}[A-Z][0-9A-Z]Z[0-9A-Z]"),
    ("jp_cn", r"[0-9]{13}"),
    ("no_vat", r"[0-9]{9}MVA"),
    ("us_ein", r"[0-9]{9}"),
];

/// EU VAT numbers: the member state's VAT prefix (`EL` for Greece, `XI` for
/// Northern Ireland) followed by that state's national format.
const EU_VAT: &str = concat!(
    r"ATU[0-9]{8}|BE[01][0-9]{9}|BG[0-9]{9,10}|CY[0-9]{8}[A-Z]|CZ[0-9]{8,10}",
    r"|DE[0-9]{9}|DK[0-9]{8}|EE[0-9]{9}|EL[0-9]{9}|ES[0-9A-Z][0-9]{7}[0-9A-Z]",
    r"|FI[0-9]{8}|FR[0-9A-HJ-NP-Z]{2}[0-9]{9}|HR[0-9]{11}|HU[0-9]{8}",
    r"|IE[0-9][0-9A-Z+*][0-9]{5}[A-W][A-I]?|IT[0-9]{11}|LT([0-9]{9}|[0-9]{12})",
    r"|LU[0-9]{8}|LV[0-9]{11}|MT[0-9]{8}|NL[0-9]{9}B[0-9]{2}|PL[0-9]{10}|PT[0-9]{9}",
    r"|RO[0-9]{2,10}|SE[0-9]{12}|SI[0-9]{8}|SK[0-9]{10}",
    r"|XI([0-9]{9}|[0-9]{12}|GD[0-4][0-9]{2}|HA[5-9][0-9]{2})",
);

/// The longest value accepted before compaction, in characters.
const MAX_VALUE_CHARS: usize = 40;

static PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    TAX_ID_TYPES
        .iter()
        .map(|(kind, pattern)| {
            let anchored = format!("^(?:{pattern})$");
            (
                *kind,
                Regex::new(&anchored).expect("tax id patterns are valid"),
            )
        })
        .collect()
});

/// A tax identifier whose value has the format of its type, stored in
/// compact upper-case form (`de 123.456.788` becomes `DE123456788`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxIdentifier {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl TaxIdentifier {
    /// Parses one identifier; `field` is its path, e.g.
    /// `customer.tax_identifiers[0]`.
    pub fn parse(
        field: &str,
        kind: &str,
        value: &str,
        violations: &mut Violations,
    ) -> Option<Self> {
        let Some((kind, pattern)) = PATTERNS.iter().find(|(k, _)| *k == kind) else {
            violations.add(
                format!("{field}.type"),
                if kind.is_empty() {
                    Reason::Required
                } else {
                    Reason::Unsupported
                },
                "must be a supported tax identifier type such as eu_vat (see the README)",
            );
            return None;
        };
        let value_field = format!("{field}.value");
        if value.chars().count() > MAX_VALUE_CHARS {
            violations.add(
                value_field,
                Reason::TooLong,
                format!("must be at most {MAX_VALUE_CHARS} characters"),
            );
            return None;
        }
        let compact: String = value
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if compact.is_empty() {
            violations.add(value_field, Reason::Required, "must not be empty");
            return None;
        }
        if !pattern.is_match(&compact) {
            violations.add(
                value_field,
                Reason::InvalidFormat,
                format!("is not a valid {kind} number"),
            );
            return None;
        }
        Some(Self {
            kind: (*kind).to_owned(),
            value: compact,
        })
    }

    /// The type, e.g. `eu_vat`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The compact value, e.g. `DE123456788`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: &str, value: &str) -> Result<TaxIdentifier, Violations> {
        let mut violations = Violations::new();
        let parsed = TaxIdentifier::parse("t", kind, value, &mut violations);
        violations.into_result(()).map(|()| parsed.unwrap())
    }

    #[test]
    fn values_are_compacted_and_upper_cased() {
        let id = parse("eu_vat", "de 123.456-788").unwrap();
        assert_eq!((id.kind(), id.value()), ("eu_vat", "DE123456788"));
    }

    #[test]
    fn eu_vat_follows_the_member_state_prefix() {
        for ok in [
            "EL123456789",
            "XI123456789",
            "NL123456789B01",
            "FRAB123456789",
            "ATU12345678",
        ] {
            assert!(parse("eu_vat", ok).is_ok(), "{ok}");
        }
        for bad in [
            "GR123456789",
            "DE12345678",
            "US123456789",
            "NL123456789",
            "GB123456789",
        ] {
            assert_eq!(
                parse("eu_vat", bad)
                    .unwrap_err()
                    .iter()
                    .next()
                    .unwrap()
                    .field,
                "t.value",
                "{bad}"
            );
        }
    }

    #[test]
    fn other_types_have_their_own_shapes() {
        assert!(parse("gb_vat", "GB 123 4567 89").is_ok());
        assert!(parse("ch_vat", "CHE-123.456.789 MWST").is_ok());
        assert!(parse("no_vat", "123456789MVA").is_ok());
        assert!(parse("us_ein", "12-3456789").is_ok());
        assert!(parse("gb_vat", "123456789").is_err());
    }

    #[test]
    fn unknown_and_empty_types_are_reported_on_the_type_field() {
        let error = parse("xx_vat", "123").unwrap_err();
        let violation = error.iter().next().unwrap();
        assert_eq!(
            (violation.field.as_str(), violation.reason),
            ("t.type", Reason::Unsupported)
        );
        let error = parse("", "123").unwrap_err();
        assert_eq!(error.iter().next().unwrap().reason, Reason::Required);
    }

    #[test]
    fn control_characters_never_match_a_format() {
        assert!(parse("eu_vat", "DE12345678\0").is_err());
    }
}
