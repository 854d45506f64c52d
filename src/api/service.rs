//! Handlers of `customers.v1.CustomerService`: parse the request into domain
//! values (collecting every violation), call the store, convert the result.

use tonic::{Code, Request, Response, Status};

use super::convert::{customer_to_proto, masked, parse_id, parse_profile, resolve_mask};
use super::error::{invalid_argument, status};
use super::pb::{self, customer_service_server::CustomerService};
use crate::domain::{
    AccountScope, CustomerError, CustomerId, CustomerPatch, Etag, Leaf, Reason, Violations,
    bounded_text,
};
use crate::store::CustomerStore;

/// Longest request_id of CreateCustomer.
const MAX_REQUEST_ID_CHARS: usize = 64;

/// The service implementation, over a store.
#[derive(Debug, Clone)]
pub struct CustomerApi {
    store: CustomerStore,
    /// The owner of every row until API keys say otherwise.
    scope: AccountScope,
}

impl CustomerApi {
    /// A service that acts for the default account.
    pub fn new(store: CustomerStore) -> Self {
        Self {
            store,
            scope: AccountScope::default_account(),
        }
    }
}

/// Fails with INVALID_ARGUMENT when anything was rejected.
fn check(violations: Violations) -> Result<(), Status> {
    violations.into_result(()).map_err(invalid_argument)
}

fn not_yet(rpc: &str) -> Status {
    status(
        Code::Unimplemented,
        &format!("{rpc} is not implemented yet"),
        "NOT_IMPLEMENTED",
    )
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    #[tracing::instrument(name = "CreateCustomer", skip_all, fields(customer_id))]
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
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
        tracing::Span::current().record("customer_id", id.as_str());

        // No source can be attached before the customer exists.
        if profile.default_source_id.is_some() {
            return Err(CustomerError::SourceNotAttached.into());
        }
        let created = self.store.insert(&self.scope, &id, &profile).await?;
        tracing::debug!("customer created");
        Ok(Response::new(customer_to_proto(created)))
    }

    #[tracing::instrument(name = "GetCustomer", skip_all, fields(customer_id))]
    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_id("id", &request.id, &mut violations);
        check(violations)?;
        let id = id.expect("a valid request has an id");
        tracing::Span::current().record("customer_id", id.as_str());

        let customer = self.store.get(&self.scope, &id).await?;
        Ok(Response::new(customer_to_proto(customer)))
    }

    #[tracing::instrument(name = "UpdateCustomer", skip_all, fields(customer_id))]
    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let Some(customer) = request.customer else {
            violations.add("customer", Reason::Required, "must be present");
            return Err(invalid_argument(violations));
        };

        let id = parse_id("customer.id", &customer.id, &mut violations);
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
        tracing::Span::current().record("customer_id", id.as_str());

        let etag = (!customer.etag.is_empty()).then(|| Etag::from_trusted(customer.etag));
        let patch = CustomerPatch {
            mask,
            values: profile,
            forget,
        };
        let updated = self
            .store
            .update(&self.scope, &id, etag.as_ref(), &patch)
            .await?;
        tracing::debug!(forget, "customer updated");
        Ok(Response::new(customer_to_proto(updated)))
    }

    async fn list_customers(
        &self,
        _request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        Err(not_yet("ListCustomers"))
    }

    async fn delete_customer(
        &self,
        _request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<()>, Status> {
        Err(not_yet("DeleteCustomer"))
    }

    async fn attach_source(
        &self,
        _request: Request<pb::AttachSourceRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        Err(not_yet("AttachSource"))
    }

    async fn detach_source(
        &self,
        _request: Request<pb::DetachSourceRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        Err(not_yet("DetachSource"))
    }
}
