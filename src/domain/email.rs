//! Email addresses, checked for syntax only.

use serde::{Deserialize, Serialize};

use super::text::bounded_text;
use super::violations::{Reason, Violations};

/// Longest accepted address, in characters (the SMTP path limit).
const MAX_CHARS: usize = 254;

/// A plain `local@domain` address, stored exactly as given.
///
/// Syntax comes from the `email_address` crate; on top of it we refuse
/// display names, quoted local parts, IP-literal domains and domains without
/// a dot, none of which a shop can ship a receipt to. Internationalised local
/// parts and domains are accepted unchanged. Whether the mailbox exists is not
/// our question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses `value`, recording a violation for `field` when it is not a
    /// plain address.
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        let text = bounded_text(field, value, MAX_CHARS, violations)?;
        let options = email_address::Options::default()
            .with_minimum_sub_domains(2)
            .without_domain_literal()
            .without_display_text();
        let quoted = text.starts_with('"');
        if quoted
            || email_address::EmailAddress::parse_with_options(&text, options).is_err()
            || !is_host_name(text.rsplit_once('@').map(|(_, d)| d).unwrap_or(""))
        {
            violations.add(
                field,
                Reason::InvalidFormat,
                "must be a plain address like name@example.com",
            );
            return None;
        }
        Some(Self(text))
    }

    /// Wraps a value read back from the store, which only holds parsed ones.
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The address in lower case, for case-insensitive comparison.
    pub fn folded(&self) -> String {
        self.0.to_lowercase()
    }

    /// The address as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `domain` is a host name: labels of letters (any script), digits
/// and inner hyphens, and a top-level label that is not all digits. The
/// crate accepts `a@192.0.2.1` and `a@exa_mple.com`; no mail goes there.
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    let top_ok = labels
        .last()
        .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()));
    labels.len() >= 2 && labels.iter().all(label_ok) && top_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(value: &str) -> bool {
        let mut violations = Violations::new();
        EmailAddress::parse("email", value, &mut violations).is_some()
    }

    #[test]
    fn plain_and_internationalised_addresses_are_accepted() {
        assert!(accepts("ana.lima+orders@example.com.br"));
        assert!(accepts("用户@例子.广告"));
        assert!(accepts("jörg@bücher.de"));
    }

    #[test]
    fn display_names_quotes_literals_and_dotless_domains_are_rejected() {
        for value in [
            "Ana <ana@example.com>",
            "\"ana lima\"@example.com",
            "ana@[192.0.2.1]",
            "ana@localhost",
            "ana",
            "@example.com",
            "ana@@example.com",
            "ana@example..com",
            "ana@192.0.2.1",
            "ana@exa_mple.com",
            "ana@exa%mple.com",
            "ana@example.123",
        ] {
            assert!(!accepts(value), "{value}");
        }
    }

    #[test]
    fn addresses_longer_than_254_characters_are_rejected() {
        let local = "a".repeat(64);
        let domain = format!("{}.com", "b".repeat(250 - 64));
        let mut violations = Violations::new();
        assert!(
            EmailAddress::parse("email", &format!("{local}@{domain}"), &mut violations).is_none()
        );
        assert_eq!(violations.iter().next().unwrap().reason, Reason::TooLong);
    }
}
