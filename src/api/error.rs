//! The one place where failures become gRPC statuses.
//!
//! Every status carries an `ErrorInfo` in the `customers.v1` domain so that
//! clients branch on `reason`, never on message text; validation failures
//! add a `BadRequest` listing every rejected field. Internal failures are
//! logged here in full and sent as a generic message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{CustomerError, Violations};
use crate::store::StoreError;

/// `ErrorInfo.domain` of every error this service sends.
pub const ERROR_DOMAIN: &str = "customers.v1";

/// Most bytes of field violations sent in one status (base64 in a header,
/// so about 4/3 of this on the wire).
const MAX_DETAILS_BYTES: usize = 4096;

/// A status with an `ErrorInfo` of `reason`.
pub fn status(code: Code, message: &str, reason: &str) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT listing every violation. The reason is
/// `MISSING_PARAMETER` when a required value is absent, else
/// `INVALID_PARAMETER`.
///
/// The details travel in a response header, which clients cap at 8 KiB or
/// more; a request with so many bad fields that their list would pass
/// [`MAX_DETAILS_BYTES`] gets the first ones, and the message and the
/// ErrorInfo metadata say how many there were.
pub fn invalid_argument(violations: Violations) -> Status {
    let reason = if violations.has_missing() {
        "MISSING_PARAMETER"
    } else {
        "INVALID_PARAMETER"
    };
    let total = violations.iter().count();
    let mut budget = MAX_DETAILS_BYTES;
    let fields: Vec<tonic_types::FieldViolation> = violations
        .into_iter()
        .map(|v| {
            let mut field = tonic_types::FieldViolation::new(v.field, v.description);
            field.reason = v.reason.as_str().to_owned();
            field
        })
        .take_while(|f| {
            let size = f.field.len() + f.description.len() + f.reason.len() + 16;
            let fits = size <= budget;
            budget = budget.saturating_sub(size);
            fits
        })
        .collect();
    let listed = fields.len();
    let metadata = if listed < total {
        HashMap::from([
            ("violations".to_owned(), total.to_string()),
            ("listed".to_owned(), listed.to_string()),
        ])
    } else {
        HashMap::new()
    };
    let message = match (total, listed) {
        (1, 1) => format!(
            "invalid field {}: {}",
            fields[0].field, fields[0].description
        ),
        (n, m) if m < n => {
            format!("{n} fields are invalid; the BadRequest details list the first {m}")
        }
        (n, _) => format!("{n} fields are invalid; see the BadRequest details"),
    };
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    details.set_bad_request(fields);
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// RESOURCE_EXHAUSTED for a call refused at one of the server's limits:
/// calls served at once, or API keys being looked up at once.
pub fn overloaded() -> Status {
    status(
        Code::ResourceExhausted,
        "the server is at a limit of work in progress; retry with backoff",
        "OVERLOADED",
    )
}

/// INVALID_ARGUMENT for a request body that is not valid protobuf.
pub fn malformed_request() -> Status {
    status(
        Code::InvalidArgument,
        "the request is not a valid protobuf message",
        "MALFORMED_REQUEST",
    )
}

impl From<CustomerError> for Status {
    fn from(error: CustomerError) -> Self {
        let message = error.to_string();
        let (code, reason) = match error {
            CustomerError::Invalid(violations) => return invalid_argument(violations),
            CustomerError::NotFound => (Code::NotFound, "CUSTOMER_NOT_FOUND"),
            CustomerError::AlreadyExists => (Code::AlreadyExists, "CUSTOMER_EXISTS"),
            CustomerError::EtagMismatch => (Code::Aborted, "ETAG_MISMATCH"),
            CustomerError::Forgotten => (Code::FailedPrecondition, "CUSTOMER_FORGOTTEN"),
            CustomerError::SourceNotAttached => (Code::FailedPrecondition, "SOURCE_NOT_ATTACHED"),
            CustomerError::SourceNotFound => (Code::NotFound, "SOURCE_NOT_FOUND"),
            CustomerError::TooManySources => (Code::FailedPrecondition, "TOO_MANY_SOURCES"),
            CustomerError::RequestIdReused => (Code::FailedPrecondition, "REQUEST_ID_REUSED"),
        };
        status(code, &message, reason)
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Rejected(error) => error.into(),
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                status(
                    Code::Unavailable,
                    "the database is unavailable; nothing was changed, retry later",
                    "DATABASE_UNAVAILABLE",
                )
            }
            StoreError::Internal(cause) => {
                tracing::error!(error = ?cause, "database error");
                status(Code::Internal, "internal error", "INTERNAL")
            }
        }
    }
}
