//! Why an operation on a customer was refused.

use super::violations::Violations;

/// A refusal that the client can act on. Each variant maps to exactly one
/// gRPC code and `ErrorInfo.reason` in the API layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CustomerError {
    #[error("the request has invalid fields")]
    Invalid(Violations),
    #[error("no customer has this id")]
    NotFound,
    #[error("a customer with this id exists already")]
    AlreadyExists,
    #[error("the customer changed since the given etag was read")]
    EtagMismatch,
    #[error("the customer asked to be forgotten and can no longer change")]
    Forgotten,
    #[error("default_source_id must name a source attached to the customer")]
    SourceNotAttached,
    #[error("the source is not attached to this customer")]
    SourceNotFound,
    #[error("the customer has the maximum number of sources already")]
    TooManySources,
    #[error("this request_id was used for a different request")]
    RequestIdReused,
}
