//! What a page of customers is asked for: filters, size and position.

use time::OffsetDateTime;

use super::customer::CustomerId;

/// Customers per page when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 10;
/// Most customers per page; larger requests are capped to this.
pub const MAX_PAGE_SIZE: usize = 100;
/// Most ids in one `ids` filter.
pub const MAX_IDS_FILTER: usize = 100;

/// Filters of a listing; every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Lower-cased email to compare with each customer's lower-cased email.
    pub email_folded: Option<String>,
    /// Only customers created strictly after this time.
    pub created_after: Option<OffsetDateTime>,
    /// Only customers created strictly before this time.
    pub created_before: Option<OffsetDateTime>,
    /// Only these customers; sorted and without repeats.
    pub ids: Option<Vec<CustomerId>>,
}

/// A position in the newest-first order: the last customer of the previous
/// page. The next page starts strictly after it, so customers created while
/// a client pages (which sort before it) never shift what comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub create_time: OffsetDateTime,
    pub id: CustomerId,
}

/// One page request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub page_size: usize,
    pub after: Option<Cursor>,
}
