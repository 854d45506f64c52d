//! The gRPC surface: generated messages, the customer service handlers, and
//! the mapping of failures to statuses.

mod auth;
pub mod codec;
mod convert;
pub mod error;
mod observe;
mod page_token;
mod service;

pub use auth::Authenticator;
pub use observe::ObserveLayer;
pub use page_token::PageTokens;
pub use service::CustomerApi;

/// Messages, client and server generated from `proto/customers/v1/customer.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("customers.v1");

    /// The encoded descriptors of the proto and everything it imports, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("customers_descriptor");
}
