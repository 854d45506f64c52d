//! Character rules shared by every string field.
//!
//! Lengths count Unicode scalar values, because clients think in characters
//! and a byte limit would reject short names in non-Latin scripts.

use super::violations::{Reason, Violations};

/// Checks free text: at most `max_chars` characters and no control
/// characters. Returns the text unchanged (no trimming, no normalisation)
/// when it passes, and records a violation for `field` when it does not.
pub fn bounded_text(
    field: &str,
    value: &str,
    max_chars: usize,
    violations: &mut Violations,
) -> Option<String> {
    if value.chars().any(char::is_control) {
        violations.add(
            field,
            Reason::ControlCharacter,
            "must not contain control characters",
        );
        return None;
    }
    let length = value.chars().count();
    if length > max_chars {
        violations.add(
            field,
            Reason::TooLong,
            format!("must be at most {max_chars} characters, got {length}"),
        );
        return None;
    }
    Some(value.to_owned())
}

/// Invisible formatting characters (Unicode category Cf, the common ones):
/// in an id they would make two different ids look the same.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// Checks an identifier: 1..=`max_chars` characters, no control characters,
/// no whitespace, no invisible formatting characters, no `/`, and not `.`
/// or `..` (ids appear in resource paths and logs).
pub fn identifier(
    field: &str,
    value: &str,
    max_chars: usize,
    violations: &mut Violations,
) -> Option<String> {
    if value.is_empty() {
        violations.add(field, Reason::Required, "must not be empty");
        return None;
    }
    let text = bounded_text(field, value, max_chars, violations)?;
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || is_invisible(c))
        || text == "."
        || text == ".."
    {
        violations.add(
            field,
            Reason::ForbiddenCharacter,
            "must not contain whitespace, invisible characters or '/', nor be '.' or '..'",
        );
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_id(value: &str, max: usize) -> Result<String, Violations> {
        let mut violations = Violations::new();
        let id = identifier("id", value, max, &mut violations);
        violations.into_result(()).map(|()| id.unwrap())
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let forty = "é".repeat(40);
        assert_eq!(check_id(&forty, 40).unwrap(), forty);
        let error = check_id(&"é".repeat(41), 40).unwrap_err();
        assert_eq!(error.iter().next().unwrap().reason, Reason::TooLong);
    }

    #[test]
    fn identifiers_reject_whitespace_slash_and_control_characters() {
        for (value, reason) in [
            ("a b", Reason::ForbiddenCharacter),
            ("a/b", Reason::ForbiddenCharacter),
            ("a\u{00a0}b", Reason::ForbiddenCharacter),
            ("cus\u{200b}", Reason::ForbiddenCharacter),
            ("\u{202e}cus", Reason::ForbiddenCharacter),
            ("..", Reason::ForbiddenCharacter),
            ("a\0b", Reason::ControlCharacter),
            ("a\u{7f}", Reason::ControlCharacter),
            ("", Reason::Required),
        ] {
            let error = check_id(value, 40).unwrap_err();
            assert_eq!(error.iter().next().unwrap().reason, reason, "{value:?}");
        }
    }

    #[test]
    fn text_is_kept_exactly_as_sent() {
        let mut violations = Violations::new();
        let text = bounded_text("name", "  Ｚoë  ", 10, &mut violations);
        assert_eq!(text.as_deref(), Some("  Ｚoë  "));
        assert!(violations.is_empty());
    }
}
