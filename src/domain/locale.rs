//! Supported locales.

use serde::{Deserialize, Serialize};

use super::violations::{Reason, Violations};

/// Every locale a customer may have, `ll_CC` (ISO 639-1 language, ISO 3166-1
/// country). Emails and invoices are rendered in these; adding one is a
/// product decision, so the list is explicit rather than "any valid tag".
pub const SUPPORTED_LOCALES: &[&str] = &[
    "ar_AE", "ar_SA", "bg_BG", "cs_CZ", "da_DK", "de_AT", "de_CH", "de_DE", "el_GR", "en_AU",
    "en_CA", "en_GB", "en_IE", "en_IN", "en_NZ", "en_SG", "en_US", "en_ZA", "es_AR", "es_ES",
    "es_MX", "et_EE", "fi_FI", "fr_BE", "fr_CA", "fr_CH", "fr_FR", "he_IL", "hi_IN", "hr_HR",
    "hu_HU", "id_ID", "it_CH", "it_IT", "ja_JP", "ko_KR", "lt_LT", "lv_LV", "ms_MY", "nb_NO",
    "nl_BE", "nl_NL", "pl_PL", "pt_BR", "pt_PT", "ro_RO", "ru_RU", "sk_SK", "sl_SI", "sq_AL",
    "sv_SE", "th_TH", "tr_TR", "uk_UA", "vi_VN", "zh_CN", "zh_HK", "zh_TW",
];

/// One of [`SUPPORTED_LOCALES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Locale(String);

impl Locale {
    /// Parses `value`, recording a violation for `field` when it is not in
    /// the supported list (matched exactly: `en_us` is rejected).
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        if SUPPORTED_LOCALES.binary_search(&value).is_ok() {
            return Some(Self(value.to_owned()));
        }
        violations.add(
            field,
            Reason::Unsupported,
            "must be a supported locale such as en_US (see the README for the list)",
        );
        None
    }

    /// Wraps a value read back from the store, which only holds parsed ones.
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The `ll_CC` tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_for_binary_search() {
        assert!(SUPPORTED_LOCALES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn only_listed_locales_in_exact_form_are_accepted() {
        let parse = |v| Locale::parse("locale", v, &mut Violations::new()).is_some();
        assert!(parse("ja_JP"));
        assert!(parse("de_DE"));
        assert!(!parse("en_us"));
        assert!(!parse("en-US"));
        assert!(!parse("en"));
        assert!(!parse("xx_XX"));
    }
}
