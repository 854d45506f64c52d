//! Country codes.

use serde::{Deserialize, Serialize};

use super::violations::{Reason, Violations};

/// An ISO 3166-1 alpha-2 code in upper case, or `XK` (Kosovo, user-assigned
/// but used by carriers and tax authorities alike).
///
/// Lower-case input is rejected rather than fixed up, so that what a client
/// reads back is always what it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CountryCode(String);

impl CountryCode {
    /// Parses `value`, recording a violation for `field` when it is not a
    /// known upper-case code.
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        let upper = value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase());
        if upper && (value == "XK" || isocountry::CountryCode::for_alpha2(value).is_ok()) {
            return Some(Self(value.to_owned()));
        }
        violations.add(
            field,
            Reason::InvalidFormat,
            "must be an upper-case ISO 3166-1 alpha-2 country code",
        );
        None
    }

    /// The two-letter code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(value: &str) -> bool {
        CountryCode::parse("country", value, &mut Violations::new()).is_some()
    }

    #[test]
    fn real_codes_and_kosovo_are_accepted() {
        for code in ["DE", "JP", "BR", "US", "GR", "XK", "AX"] {
            assert!(accepts(code), "{code}");
        }
    }

    #[test]
    fn lower_case_unknown_and_alpha3_codes_are_rejected() {
        for code in ["de", "De", "ZZ", "UK", "EL", "DEU", "", "D", "ＤＥ"] {
            assert!(!accepts(code), "{code}");
        }
    }
}
