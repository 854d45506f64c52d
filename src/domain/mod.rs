//! Validated customer types and the rules that govern them. No I/O here.
//!
//! Raw strings from the wire become these types once, at the API boundary,
//! with every failing field collected in [`Violations`]. Code past that
//! boundary never re-checks a value.

mod api_key;
mod country;
mod customer;
mod email;
mod error;
mod listing;
mod locale;
mod metadata;
mod tax;
mod text;
mod update_mask;
mod violations;

pub use api_key::PresentedKey;
pub use country::CountryCode;
pub use customer::{
    AccountScope, AdditionalAddressInfo, Address, Customer, CustomerId, CustomerKind,
    CustomerPatch, Etag, IdempotencyKey, MAX_SOURCES, Profile, Shipping, Source, SourceId,
};
pub use email::EmailAddress;
pub use error::CustomerError;
pub use listing::{
    Cursor, DEFAULT_PAGE_SIZE, ListFilter, ListQuery, MAX_IDS_FILTER, MAX_PAGE_SIZE,
};
pub use locale::{Locale, SUPPORTED_LOCALES};
pub use metadata::Metadata;
pub use tax::{TAX_ID_TYPES, TaxIdentifier};
pub use text::{bounded_text, identifier};
pub use update_mask::{Leaf, UpdateMask};
pub use violations::{FieldViolation, Reason, Violations};
