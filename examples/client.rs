//! A walk through the customer service with the library's generated gRPC
//! client (`customers::api::pb`). Start a server (`cargo run`), then:
//!
//! ```sh
//! cargo run --example client -- [http://127.0.0.1:50051]
//! ```
//!
//! It creates a customer (with a `request_id`, so a retry cannot create a
//! second one), changes one field with an update mask guarded by the etag it
//! read (and shows that the old etag is then refused), attaches a payment
//! source, finds the customer by email page by page, and finally erases it
//! (the request to be forgotten) and prints what is left. A failed call
//! prints its gRPC code and the `ErrorInfo` reason, which is what callers
//! should branch on.
//!
//! When the server requires API keys, put one in `CUSTOMERS_API_KEY`; it is
//! sent as `authorization: Bearer <key>` with every call.

use std::time::{SystemTime, UNIX_EPOCH};

use customers::api::pb::customer_service_client::CustomerServiceClient;
use customers::api::pb::{
    AttachSourceRequest, CreateCustomerRequest, Customer, ListCustomersRequest, Shipping,
    UpdateCustomerRequest,
};
use prost_types::FieldMask;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_types::StatusExt;

type Client = CustomerServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to every call, when there is a key.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let key = std::env::var("CUSTOMERS_API_KEY").ok();
    let bearer = key.map(|key| format!("Bearer {key}").parse()).transpose()?;
    let channel = Channel::from_shared(url)?.connect().await?;
    let mut client = CustomerServiceClient::with_interceptor(channel, Bearer(bearer));
    // Any status that escapes the walk ends the program with its code and reason.
    walk(&mut client)
        .await
        .map_err(|status| anyhow::anyhow!(describe(&status)))
}

/// The gRPC code, the ErrorInfo reason (every error of this service has one)
/// and the message of a failed call.
fn describe(status: &Status) -> String {
    let reason = status.get_details_error_info().map(|info| info.reason);
    let reason = reason.unwrap_or_else(|| "<no ErrorInfo>".into());
    format!("{:?} / {reason}: {}", status.code(), status.message())
}

/// An update of the fields of `customer` named by `path`.
fn update(customer: Customer, path: &str) -> UpdateCustomerRequest {
    let update_mask = Some(FieldMask {
        paths: vec![path.into()],
    });
    UpdateCustomerRequest {
        customer: Some(customer),
        update_mask,
    }
}

async fn walk(client: &mut Client) -> Result<(), Status> {
    // A per-run suffix, so the example can run again against the same database.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let email = format!("ada.{run}@example.com");

    // 1. Create. The id is left empty, so the server generates one. Retrying
    //    with the same request_id and customer returns the first result.
    let shipping = Shipping {
        name: Some("Ada Lovelace".into()),
        ..Default::default()
    };
    let customer = Customer {
        email: Some(email.clone()),
        shipping: Some(shipping),
        locale: Some("en_GB".into()),
        metadata: [("crm".to_owned(), "42".to_owned())].into(),
        ..Default::default()
    };
    let request = CreateCustomerRequest {
        customer: Some(customer),
        request_id: format!("example-{run}"),
    };
    let created = client.create_customer(request).await?.into_inner();
    println!("created {} (etag {})", created.id, created.etag);

    // 2. Change only the locale. Sending the etag we read makes the update
    //    conditional: had anyone changed the customer since, it would fail
    //    with ABORTED / ETAG_MISMATCH and change nothing.
    let change = Customer {
        id: created.id.clone(),
        etag: created.etag.clone(),
        locale: Some("en_US".into()),
        ..Default::default()
    };
    let request = update(change.clone(), "locale");
    let updated = client.update_customer(request).await?.into_inner();
    println!("locale now {:?} (etag {})", updated.locale, updated.etag);
    // The etag read at creation is stale now, so the same update is refused.
    match client.update_customer(update(change, "locale")).await {
        Err(status) => println!("stale etag refused as expected: {}", describe(&status)),
        Ok(_) => println!("unexpected: the stale etag was accepted"),
    }

    // 3. Attach a payment source; attaching the same one again is a no-op.
    let attach = AttachSourceRequest {
        customer_id: created.id.clone(),
        source_id: "src_card_4242".into(),
    };
    let attached = client.attach_source(attach).await?.into_inner();
    let sources: Vec<&str> = attached.sources.iter().map(|s| s.id.as_str()).collect();
    println!("sources: {sources:?}");

    // 4. List by email (case-insensitive), following next_page_token until it
    //    comes back empty. A token is only valid with the same filters.
    let (mut page_token, mut found) = (String::new(), Vec::new());
    loop {
        let request = ListCustomersRequest {
            email: email.clone(),
            page_size: 10,
            page_token,
            ..Default::default()
        };
        let page = client.list_customers(request).await?.into_inner();
        found.extend(page.customers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    println!("customers with {email}: {found:?}");

    // 5. Erase: the request to be forgotten scrubs the personal data (email,
    //    shipping, tax ids, metadata, locale, sources) and disables the
    //    customer; any later update is FAILED_PRECONDITION / CUSTOMER_FORGOTTEN.
    let forget = Customer {
        id: created.id.clone(),
        request_to_be_forgotten: Some(true),
        ..Default::default()
    };
    let request = update(forget, "request_to_be_forgotten");
    let erased = client.update_customer(request).await?.into_inner();
    println!("after erasure: {erased:#?}");
    Ok(())
}
