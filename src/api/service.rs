//! Handlers of `customers.v1.CustomerService`: parse the request into domain
//! values (collecting every violation), call the store, convert the result.

use std::sync::Arc;

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::convert::{
    customer_to_proto, masked, parse_id, parse_profile, parse_timestamp, resolve_mask,
};
use super::error::{invalid_argument, overloaded};
use super::observe::record_customer;
use super::page_token::PageTokens;
use super::pb::{self, customer_service_server::CustomerService};
use crate::domain::{
    AccountScope, Cursor, CustomerError, CustomerId, CustomerPatch, DEFAULT_PAGE_SIZE, Etag,
    IdempotencyKey, Leaf, ListFilter, ListQuery, MAX_IDS_FILTER, MAX_PAGE_SIZE, Reason, SourceId,
    Violations, bounded_text,
};
use crate::store::CustomerStore;

/// Largest encoded ListCustomersResponse we send: below the 4 MiB that
/// clients accept by default, with room for framing.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Longest email filter, as for stored emails.
const MAX_EMAIL_FILTER_CHARS: usize = 254;

/// Longest request_id of CreateCustomer.
const MAX_REQUEST_ID_CHARS: usize = 64;

/// The service implementation, over a store.
#[derive(Debug, Clone)]
pub struct CustomerApi {
    store: CustomerStore,
    tokens: PageTokens,
    /// Decides the account and mode each call acts for.
    auth: Arc<Authenticator>,
    /// Places for the calls served at once; see [`CustomerApi::admit`].
    calls: Arc<Semaphore>,
}

impl CustomerApi {
    /// A service over `store` that authenticates with `auth`, signs page
    /// tokens with `tokens` and serves at most `max_calls` calls at once.
    pub fn new(
        store: CustomerStore,
        tokens: PageTokens,
        auth: Arc<Authenticator>,
        max_calls: usize,
    ) -> Self {
        Self {
            store,
            tokens,
            auth,
            calls: Arc::new(Semaphore::new(max_calls)),
        }
    }

    /// Admits a call: the owner the call acts for, then a place among the
    /// calls served at once, held until the permit drops, or OVERLOADED at
    /// once when there is none. Only authenticated calls take places, so
    /// callers without a valid key cannot crowd out those with one (their
    /// key lookups have a limit of their own; see `auth`). Handlers run
    /// only once their request has arrived whole, so a client that opens
    /// calls and never finishes sending them holds no place either.
    async fn admit<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(AccountScope, OwnedSemaphorePermit), Status> {
        let scope = self.auth.scope(request.metadata()).await?;
        let place = self
            .calls
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded())?;
        Ok((scope, place))
    }

    /// Parses the filters, size and position of a ListCustomers request.
    fn parse_list(
        &self,
        scope: &AccountScope,
        request: &pb::ListCustomersRequest,
    ) -> Result<ListQuery, Status> {
        let mut violations = Violations::new();
        let page_size = match usize::try_from(request.page_size) {
            Err(_) => {
                violations.add("page_size", Reason::OutOfRange, "must not be negative");
                0
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        let email_folded = (!request.email.is_empty())
            .then(|| {
                bounded_text(
                    "email",
                    &request.email,
                    MAX_EMAIL_FILTER_CHARS,
                    &mut violations,
                )
            })
            .flatten()
            .map(|email| email.to_lowercase());
        let created_after = request
            .created_after
            .as_ref()
            .and_then(|t| parse_timestamp("created_after", t, &mut violations));
        let requested_before = request
            .created_before
            .as_ref()
            .and_then(|t| parse_timestamp("created_before", t, &mut violations));
        let created_before = requested_before.and_then(ceil_to_micros);
        if let (Some(after), Some(before)) = (created_after, requested_before)
            && after > created_before.unwrap_or(before)
        {
            violations.add(
                "created_after",
                Reason::OutOfRange,
                "must not be later than created_before",
            );
        }
        let ids = if request.ids.len() > MAX_IDS_FILTER {
            violations.add(
                "ids",
                Reason::TooMany,
                format!("must have at most {MAX_IDS_FILTER} entries"),
            );
            None
        } else {
            let mut ids: Vec<CustomerId> = request
                .ids
                .iter()
                .enumerate()
                .filter_map(|(i, id)| parse_id(&format!("ids[{i}]"), id, &mut violations))
                .collect();
            ids.sort();
            ids.dedup();
            (!ids.is_empty()).then_some(ids)
        };
        let filter = ListFilter {
            email_folded,
            created_after,
            created_before,
            ids,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            let cursor = self.tokens.verify(scope, &filter, &request.page_token);
            if cursor.is_none() {
                violations.add(
                    "page_token",
                    Reason::InvalidFormat,
                    "is not a token this server issued for these filters",
                );
            }
            cursor
        };
        check(violations)?;
        Ok(ListQuery {
            filter,
            page_size,
            after,
        })
    }
}

/// Rounds up to a whole microsecond, the precision of stored times, so that
/// the exclusive bound `create_time < before` keeps a customer created
/// within the microsecond below a bound that has nanoseconds. (Rounding the
/// lower bound down needs nothing: the database does that.)
///
/// A bound within the last microsecond of year 9999 has no microsecond
/// above it that a timestamp here can hold. Every stored customer was
/// created before it, so it becomes no bound at all (None).
fn ceil_to_micros(time: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    match time.nanosecond() % 1000 {
        0 => Some(time),
        below => time.checked_add(time::Duration::nanoseconds(i64::from(1000 - below))),
    }
}

/// Parses the customer and source ids of AttachSource and DetachSource.
fn parse_source_request(
    customer_id: &str,
    source_id: &str,
) -> Result<(CustomerId, SourceId), Status> {
    let mut violations = Violations::new();
    let customer = parse_id("customer_id", customer_id, &mut violations);
    let source = SourceId::parse("source_id", source_id, &mut violations);
    check(violations)?;
    Ok((customer.expect("valid"), source.expect("valid")))
}

/// Fails with INVALID_ARGUMENT when anything was rejected.
fn check(violations: Violations) -> Result<(), Status> {
    violations.into_result(()).map_err(invalid_argument)
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let customer = request.customer.unwrap_or_default();
        let mut violations = Violations::new();

        let id = if customer.id.is_empty() {
            Some(CustomerId::generate())
        } else {
            parse_id("customer.id", &customer.id, &mut violations)
        };
        let profile = parse_profile("customer", &customer, &mut violations);
        if customer.request_to_be_forgotten.is_some() {
            violations.add(
                "customer.request_to_be_forgotten",
                Reason::NotAllowed,
                "can only be set on update, once the customer exists",
            );
        }
        bounded_text(
            "request_id",
            &request.request_id,
            MAX_REQUEST_ID_CHARS,
            &mut violations,
        );
        check(violations)?;
        let id = id.expect("a valid request has an id");
        record_customer(id.as_str());

        // No source can be attached before the customer exists.
        if profile.default_source_id.is_some() {
            return Err(CustomerError::SourceNotAttached.into());
        }
        let key = (!request.request_id.is_empty()).then(|| {
            let requested = (!customer.id.is_empty()).then_some(&id);
            IdempotencyKey::new(&scope, &request.request_id, requested, &profile)
        });
        let created = self
            .store
            .insert(&scope, &id, &profile, key.as_ref())
            .await?;
        tracing::debug!("customer created");
        Ok(Response::new(customer_to_proto(created)))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id("id", &request.id, &mut violations);
        check(violations)?;
        let id = id.expect("a valid request has an id");
        record_customer(id.as_str());

        let customer = self.store.get(&scope, &id).await?;
        Ok(Response::new(customer_to_proto(customer)))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let Some(customer) = request.customer else {
            violations.add("customer", Reason::Required, "must be present");
            return Err(invalid_argument(violations));
        };

        let id = parse_id("customer.id", &customer.id, &mut violations);
        let etag = Etag::parse_guard("customer.etag", &customer.etag, &mut violations);
        let mask = resolve_mask(request.update_mask.as_ref(), &customer, &mut violations);
        let values = masked(&mask, &customer);
        let profile = parse_profile("customer", &values, &mut violations);
        let forget = match values.request_to_be_forgotten {
            Some(false) => {
                violations.add(
                    "customer.request_to_be_forgotten",
                    Reason::NotAllowed,
                    "can only be set to true; erasure cannot be undone",
                );
                false
            }
            Some(true) => mask.contains(Leaf::RequestToBeForgotten),
            None => false,
        };
        check(violations)?;
        let id = id.expect("a valid request has an id");
        record_customer(id.as_str());

        let patch = CustomerPatch {
            mask,
            values: profile,
            forget,
        };
        let updated = self
            .store
            .update(&scope, &id, etag.as_ref(), &patch)
            .await?;
        tracing::debug!(forget, "customer updated");
        Ok(Response::new(customer_to_proto(updated)))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let query = self.parse_list(&scope, request.get_ref())?;
        let rows = self.store.list(&scope, &query).await?;

        let mut more = rows.len() > query.page_size;
        let mut customers = Vec::with_capacity(query.page_size.min(rows.len()));
        let mut bytes = 0;
        let mut last: Option<Cursor> = None;
        for customer in rows.into_iter().take(query.page_size) {
            let cursor = Cursor {
                create_time: customer.create_time,
                id: customer.id.clone(),
            };
            let message = customer_to_proto(customer);
            // Tag and length prefix of the repeated field: at most 6 bytes.
            let size = message.encoded_len() + 6;
            if !customers.is_empty() && bytes + size > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += size;
            customers.push(message);
            last = Some(cursor);
        }
        let next_page_token = match (more, last) {
            (true, Some(cursor)) => self.tokens.issue(&scope, &query.filter, &cursor),
            _ => String::new(),
        };
        tracing::debug!(count = customers.len(), "page listed");
        Ok(Response::new(pb::ListCustomersResponse {
            customers,
            next_page_token,
        }))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<()>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id("id", &request.id, &mut violations);
        let etag = Etag::parse_guard("etag", &request.etag, &mut violations);
        check(violations)?;
        let id = id.expect("a valid request has an id");
        record_customer(id.as_str());

        self.store.delete(&scope, &id, etag.as_ref()).await?;
        tracing::debug!("customer deleted");
        Ok(Response::new(()))
    }

    async fn attach_source(
        &self,
        request: Request<pb::AttachSourceRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let (id, source) = parse_source_request(&request.customer_id, &request.source_id)?;
        record_customer(id.as_str());

        let customer = self.store.attach_source(&scope, &id, &source).await?;
        Ok(Response::new(customer_to_proto(customer)))
    }

    async fn detach_source(
        &self,
        request: Request<pb::DetachSourceRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let (scope, _place) = self.admit(&request).await?;
        let request = request.into_inner();
        let (id, source) = parse_source_request(&request.customer_id, &request.source_id)?;
        record_customer(id.as_str());

        let customer = self.store.detach_source(&scope, &id, &source).await?;
        Ok(Response::new(customer_to_proto(customer)))
    }
}
