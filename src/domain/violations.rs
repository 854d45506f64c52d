//! Collects every failing field of one request, so that a client learns of
//! all its mistakes in a single round trip.

use std::fmt;

/// Why a field was rejected. Rendered in `BadRequest.FieldViolation.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A required value is missing.
    Required,
    /// The value has more characters than allowed.
    TooLong,
    /// The collection has more entries than allowed.
    TooMany,
    /// The value contains a control character (NUL included).
    ControlCharacter,
    /// The value contains a character the field forbids (whitespace, `/`).
    ForbiddenCharacter,
    /// The value does not have the required syntax.
    InvalidFormat,
    /// The value is not one of the supported ones.
    Unsupported,
    /// The value repeats an earlier entry.
    Duplicate,
    /// The value is outside the permitted range.
    OutOfRange,
    /// The field may not be set in this request.
    NotAllowed,
}

impl Reason {
    /// The machine-readable name, stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Required => "REQUIRED",
            Reason::TooLong => "TOO_LONG",
            Reason::TooMany => "TOO_MANY",
            Reason::ControlCharacter => "CONTROL_CHARACTER",
            Reason::ForbiddenCharacter => "FORBIDDEN_CHARACTER",
            Reason::InvalidFormat => "INVALID_FORMAT",
            Reason::Unsupported => "UNSUPPORTED",
            Reason::Duplicate => "DUPLICATE",
            Reason::OutOfRange => "OUT_OF_RANGE",
            Reason::NotAllowed => "NOT_ALLOWED",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected field, named by its path in the request
/// (`customer.shipping.address.country`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: Reason,
    /// A human sentence. Never contains the rejected value, which may be
    /// personal data.
    pub description: String,
}

/// Every violation found in one request, in the order the fields were read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` was rejected.
    pub fn add(
        &mut self,
        field: impl Into<String>,
        reason: Reason,
        description: impl Into<String>,
    ) {
        self.0.push(FieldViolation {
            field: field.into(),
            reason,
            description: description.into(),
        });
    }

    /// Whether nothing was rejected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any violation was reported for a missing value.
    pub fn has_missing(&self) -> bool {
        self.0.iter().any(|v| v.reason == Reason::Required)
    }

    /// The violations, in order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    /// Moves all of `other` into `self`.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when nothing was rejected, else every violation.
    pub fn into_result<T>(self, value: T) -> Result<T, Violations> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl IntoIterator for Violations {
    type Item = FieldViolation;
    type IntoIter = std::vec::IntoIter<FieldViolation>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
